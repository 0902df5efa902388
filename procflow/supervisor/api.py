"""The Supervisor: the public face of process management for one flow.

Its methods run in the caller's thread: they hand process work to the manager thread
(``manager.py``) and wait on the worker table's condition for the workers' reports. It owns
the order of the lifecycle — connect → start for all workers, stop → disconnect, the flow's
connection last — and the flow's monitor thread.
"""

from __future__ import annotations

import atexit
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from ..errors import (
    ConfigurationError,
    SupervisorStateError,
    WorkerStartError,
    describe_exit,
)
from ..handles import WorkerGroup, WorkerHandle
from ..partitions import Partition, Partitioning, StoreMap
from ..settings import DEFAULT_DRAIN_TIMEOUT, RedisSettings
from ..store import keys
from ..store.keys import Holder
from ..store.redis import Store
from ..worker.main import Command
from ..worker.status import StatusView, read_status
from .manager import Manager
from .monitor import Monitors
from .observers import Observers
from .process import (
    SHUTDOWN,
    SUBREAPER,
    LifecycleEvent,
    SupervisorState,
    WorkerProcess,
    WorkerState,
    WorkerTable,
    kill_tree,
)
from .rebalance import Limits, cores_of, start_budget
from .settle import Settler
from .signals import run_until_signalled

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["SupervisedFlow", "Supervisor"]

_STOP_GRACE = 15.0
#: the longest a reply may take on the supervisor's own connections (renewals, settling,
#: CLIENT UNBLOCK): a silent server must not hold up respawns and stops for long
SUPERVISOR_SOCKET_TIMEOUT = 2.0


class SupervisedFlow(Protocol):
    """What a supervisor needs of its flow (a ``procflow.Flow``). The supervisor points at
    its flow, never the other way: it adopts the flow's worker handles, which then ask it."""

    @property
    def name(self) -> str: ...
    @property
    def redis(self) -> RedisSettings: ...
    @property
    def partitions(self) -> tuple[Partition, ...]: ...
    @property
    def partitioning(self) -> Partitioning: ...
    @property
    def logger(self) -> Logger: ...
    @property
    def groups(self) -> list[WorkerGroup]: ...
    @property
    def handles(self) -> list[WorkerHandle]: ...
    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        progress: bool = False,
        raise_on_failure: bool = False,
    ) -> list[Any]: ...


def _default_start_method() -> str:
    return "fork" if sys.platform.startswith("linux") else "spawn"


class Supervisor:
    """The process manager behind ``start_all`` / ``stop_all``, and a context manager for
    batch pipelines:

        with Supervisor(flow) as sup:
            ids = flow.create_jobs(options)
            jobs = sup.wait(ids, timeout=600)

    ``node_id`` names this machine in lock values (default: ``$PROCFLOW_NODE_ID`` or the host
    name); ``drain_timeout`` is how long a graceful stop lets running jobs finish;
    ``monitor=False`` leaves expired-lock recovery to other nodes; ``start_method`` is the
    multiprocessing start method (``fork`` on Linux, else ``spawn``). ``heartbeat`` (default
    on) registers the flow and writes this node's record every 2 s for ``procflow status``
    and the dashboard; ``metrics_port`` serves Prometheus metrics there (0: a free port,
    ``sup.metrics_port`` tells which)."""

    def __init__(
        self,
        flow: SupervisedFlow,
        *,
        node_id: str | None = None,
        start_method: str | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        monitor: bool = True,
        log_level: str = "INFO",
        limit_interval: float = 0.1,
        monitor_interval: float = 1.0,
        cores: int | str | None = None,
        limits: Mapping[str, Limits] | None = None,
        heartbeat: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        self.flow = flow
        self._state = SupervisorState.NEW
        self._adopt(flow.handles)
        self.node_id = keys.node_id(node_id)
        me = psutil.Process()
        self.pid = me.pid
        holder = Holder(self.node_id, me.pid, me.create_time())
        self.holder = str(holder)
        method = start_method or _default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"start_method {method!r} is not available here; choose from "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        self.drain_timeout = drain_timeout
        self.log_level = log_level.upper()
        self.log = flow.logger.bind(worker="supervisor", pid=me.pid)
        #: one per partition (expired locks and due retries are per partition's keys)
        self.monitors = Monitors(flow.partitions, self.holder, monitor_interval, enabled=monitor)
        self._immediate = False
        #: whether this supervisor holds the process's subreaper setting (SUBREAPER)
        self._subreaper = False
        self.table = WorkerTable()
        self.stores = StoreMap.of_partitions(flow.partitions, SUPERVISOR_SOCKET_TIMEOUT)
        self.manager = Manager(
            self.table,
            Settler(self.stores, holder, self.log),
            ctx=multiprocessing.get_context(method),
            flow_name=flow.name,
            partitions=[(part.definition, part.redis) for part in flow.partitions],
            holder=self.holder,
            log=self.log,
            log_level=self.log_level,
            state=lambda: self._state,
            slot_of=self._slot,
            limit_interval=limit_interval,
        )
        self.observers = Observers(
            flow.name,
            flow.partitioning,
            [part.definition for part in flow.partitions],
            self.manager,
            self.table,
            node=self.node_id,
            state=lambda: self._state,
            log=self.log,
            heartbeat=heartbeat,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        self.cores = cores_of(cores)
        self.limits = dict(limits or {})
        atexit.register(self._at_exit)

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state in (
            SupervisorState.STARTING,
            SupervisorState.RUNNING,
            SupervisorState.STOPPING,
        )

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def lifecycle(self) -> list[LifecycleEvent]:
        """Every connect/start/stop/disconnect/exit, in order, with monotonic times."""
        return self.table.lifecycle

    def _adopt(self, handles: Sequence[WorkerHandle]) -> None:
        """These workers run under this supervisor now: their handles ask it. Raises
        SupervisorStateError, adopting none, while another supervisor runs one of them."""
        for handle in handles:
            held = handle.supervisor
            if held is not None and held is not self and held.running:
                raise SupervisorStateError(
                    f"flow {self.flow.name!r} already has a running supervisor "
                    f"(worker {handle.name} runs under it); stop it first"
                )
        for handle in handles:
            handle.adopt(self)

    def _slot(self, handle: WorkerHandle) -> int:
        """A worker's index among all of the flow's workers: pinning goes round-robin by it."""
        handles = self.flow.handles
        return handles.index(handle) if handle in handles else handle.index

    def worker_state(self, handle: WorkerHandle) -> str:
        w = self.table.get(handle)
        return WorkerState.NEW.value if w is None else w.state.value

    def worker_pid(self, handle: WorkerHandle) -> int | None:
        w = self.table.get(handle)
        return None if w is None or w.gone else w.pid

    def worker_pids(self) -> list[int]:
        """Pids of the worker processes alive now."""
        return [w.pid for w in self.table.live() if w.pid is not None]

    def worker_status(self, handle: WorkerHandle) -> StatusView:
        """What a worker holds now (activity, job, lease token), from its status record."""
        w = self.table.get(handle)
        if w is None:
            raise SupervisorStateError(f"worker {handle.name} was never spawned")
        return read_status(w.status)

    # -- the flow's side ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The supervisor's own connection (of a partitioned flow: to partition 0)."""
        return self.stores.first

    def _follow_flow(self) -> None:
        """Before a run: if the flow moved to other servers since the last (``use_redis``),
        the supervisor's connections and the workers' payloads follow it."""
        if self.manager.alive:
            return
        fresh = StoreMap.of_partitions(self.flow.partitions, SUPERVISOR_SOCKET_TIMEOUT)
        if self.stores.settings != fresh.settings:
            self.stores.close()
            self.stores = fresh
            self.manager.repoint(
                self.stores, [(p.definition, p.redis) for p in self.flow.partitions]
            )

    def _ensure_core(self, budgeted: bool = False) -> list[WorkerHandle]:
        """Connect the flow and start the manager thread, once. Returns the workers to
        start: all of the flow's, or with ``budgeted`` under a core budget the budget's
        first ones (``rebalance.start_budget``), the budget going to the manager thread."""
        if self.manager.alive:
            return self.flow.handles
        self.flow.connect()
        # orphans of workers' jobs come here, to be found and killed; given back in _finish
        SUBREAPER.hold()
        self._subreaper = True
        try:
            self.table.record("flow", "connected")
            self.manager.settler.reclaim(
                [
                    stage
                    for part in self.flow.partitions
                    for stage in part.definition.stages.values()
                ]
            )
            budget, handles = None, self.flow.handles
            if budgeted and self.cores:
                budget, handles = start_budget(
                    self.cores, self.flow.groups, self.stores, self.table, self.log, self.limits
                )
            self._immediate = False
            self.manager.start_thread(budget)
        except BaseException:
            self._release_host()
            raise
        return handles

    def _release_host(self) -> None:
        """Reap what this supervisor adopted and give the host back its subreaper setting
        (once all of the process's supervisors have stopped)."""
        if not self._subreaper:
            return
        self._subreaper = False
        live = {w.pid for w in self.table.live() if w.pid is not None}
        killed = self.manager.orphans.reap_all(live)
        if killed:
            self.log.warning("killed {} process(es) that workers' jobs had left running", killed)
        SUBREAPER.release()

    def _kill(self, w: WorkerProcess) -> None:
        """SIGKILL a worker's tree as the supervisor stops; what it had started is noted, to
        be reaped when it comes here."""
        w.kill_reason = w.kill_reason or SHUTDOWN
        self.manager.orphans.note(w.pid, kill_tree(w.pid))

    def _finish(self) -> None:
        self._state = SupervisorState.STOPPED
        self.observers.stop()
        if not self.manager.join(30):
            self.log.warning(
                "the manager thread did not end within 30 s of the stop (workers still alive: {})",
                ", ".join(w.name for w in self.table.live()) or "none",
            )
        self._release_host()
        self.stores.close()
        self.flow.disconnect()
        self.table.record("flow", "disconnected")
        self.log.info("supervisor stopped")

    # -- lifecycle: all workers --------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """The flow connects; every worker process connects; only then does any start."""
        if self._state.active:
            raise SupervisorStateError("the supervisor is already running")
        self._follow_flow()
        for group in self.flow.groups:
            self.manager.blob(group)  # a function that cannot be pickled fails here
        self._adopt(self.flow.handles)
        self._state = SupervisorState.STARTING
        try:
            handles = self._ensure_core(budgeted=True)
        except BaseException:
            self._state = SupervisorState.STOPPED
            raise
        try:
            self._adopt(self.flow.handles)  # a core budget makes its groups' handles anew
            workers = self.manager.call(lambda: [self.manager.spawn(h) for h in handles])
            for w in workers:
                w.tell(Command.CONNECT)
            self._await_all(workers, (WorkerState.CONNECTED,), "connect", timeout)
            told = time.monotonic_ns()
            for w in workers:
                w.tell(Command.START)
            self._await_all(workers, (WorkerState.STARTED,), "start", timeout, since=told)
        except BaseException:
            self._abort()
            raise
        self._state = SupervisorState.RUNNING
        self.manager.poke()  # its timers depend on the state (the core budget's tick)
        self.monitors.start()
        self.observers.start(self.stores)
        self.log.info(
            "supervisor running {} worker process(es) for flow {!r} on {} (node {})",
            len(workers),
            self.flow.name,
            self.flow.redis.address,
            self.node_id,
        )

    def _await_all(
        self,
        workers: Sequence[WorkerProcess],
        states: Sequence[WorkerState],
        step: str,
        timeout: float,
        since: int | None = None,
    ) -> None:
        """Wait until every worker reached one of ``states``; raise WorkerStartError naming
        the first that failed or ended instead. With ``since`` (the shared monotonic clock,
        ns), a worker whose process got past its start after that time counts as started even
        if it has died since: that is a crash of the job it took, settled and replaced by the
        manager thread like any other, not a failed start."""

        def reached(w: WorkerProcess) -> bool:
            return w.state in states or (since is not None and w.started_ns >= since)

        def settled() -> bool:
            return all(
                reached(w) or w.state in (WorkerState.FAILED, WorkerState.DEAD) or w.gone
                for w in workers
            )

        if not self.table.wait_for(settled, timeout):
            late = [w.name for w in workers if not reached(w)]
            raise WorkerStartError(
                f"worker(s) {', '.join(late)} did not {step} within {timeout:g} s"
            )
        bad = [w for w in workers if not reached(w)]
        if bad:
            first = bad[0]
            why = first.error or f"its process ended ({describe_exit(first.exitcode)})"
            raise WorkerStartError(f"worker {first.name} could not {step}: {why}")

    def _abort(self) -> None:
        """A failed start: end every process, disconnect, leave nothing running."""
        self.manager.respawn = False
        workers = self.table.live()
        for w in workers:
            w.kill_reason = SHUTDOWN
            self._kill(w)
        self.table.wait_for(lambda: all(w.gone for w in workers), 10)
        self._finish()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Every worker stops (the job in hand finishes and completes); only when all have
        stopped do they disconnect; the flow's connection closes last. Jobs still running
        after ``drain_timeout`` seconds are killed and put back on their waiting lists."""
        if not self._state.active:
            return
        with self.table.cond:  # no replacement is forked after this (Manager.replace)
            self._state = SupervisorState.STOPPING
            self.manager.respawn = False
            workers = self.table.live()
        self.monitors.stop()
        drain = self.drain_timeout if drain_timeout is None else drain_timeout
        for w in workers:
            w.tell(Command.STOP)
        self._unblock(workers)
        deadline = time.monotonic() + drain
        self.table.wait_for(
            lambda: (
                self._immediate
                or time.monotonic() >= deadline
                or all(w.state.ended or w.gone for w in workers)
            ),
            None,
        )
        left = [
            w
            for w in workers
            if not w.gone and w.state not in (WorkerState.STOPPED, WorkerState.DISCONNECTED)
        ]
        if left:
            why = "immediate stop" if self._immediate else f"drain timeout of {drain:g} s"
            self.log.warning(
                "{}: killing {} worker(s) still running; their jobs go back to waiting",
                why,
                len(left),
            )
            for w in left:
                w.kill_reason = SHUTDOWN
                self._kill(w)
        # what the jobs left running below them comes here when they exit: noted now, it is
        # reaped even if it has ended by then
        self.manager.orphans.note_below(w.pid for w in workers if w.pid is not None and not w.gone)
        for w in workers:
            w.tell(Command.DISCONNECT)
        if not self.table.wait_for(lambda: all(w.gone for w in workers), _STOP_GRACE):
            for w in workers:
                if not w.gone:
                    self._kill(w)
            self.table.wait_for(lambda: all(w.gone for w in workers), _STOP_GRACE)
        self._finish()

    def _unblock(self, workers: Sequence[WorkerProcess]) -> None:
        ids = [w.client_id for w in workers if w.client_id is not None]
        try:
            self.store.unblock([i for i in ids if i is not None])
        except Exception as exc:  # workers return within block_timeout anyway
            self.log.debug("CLIENT UNBLOCK failed: {}", exc)

    def stop_now(self) -> None:
        """Escalate a stop in progress (a second SIGINT): kill what still runs, put its jobs
        back."""
        self._immediate = True
        self.table.changed()

    def _at_exit(self) -> None:
        if self._state.active:
            self.stop()

    def __enter__(self) -> Supervisor:
        if not self._state.active:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle: one worker ------------------------------------------------------------

    def connect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        """Spawn and connect one worker (adopting it: its handle asks this supervisor from
        now on); the flow connects first if the supervisor was not running."""
        if self._state is SupervisorState.STOPPING:
            raise SupervisorStateError("the supervisor is stopping")
        self._adopt([handle])
        if self._state in (SupervisorState.NEW, SupervisorState.STOPPED):
            self._follow_flow()
            self._state = SupervisorState.RUNNING
            self._ensure_core()
        w = self.manager.call(lambda: self.manager.spawn(handle))
        w.tell(Command.CONNECT)
        self._await_all([w], (WorkerState.CONNECTED, WorkerState.STARTED), "connect", timeout)

    def start_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        w = self.table.get(handle)
        if w is None or w.gone or w.state not in (WorkerState.CONNECTED, WorkerState.STARTED):
            raise SupervisorStateError(f"worker {handle.name} must be connected before it starts")
        told = time.monotonic_ns()
        w.tell(Command.START)
        self._await_all([w], (WorkerState.STARTED,), "start", timeout, since=told)
        self.monitors.start()  # due retries and expired locks need it, however workers start

    def stop_worker(self, handle: WorkerHandle, timeout: float | None = None) -> None:
        w = self.table.get(handle)
        if w is None or w.gone:
            return
        w.tell(Command.STOP)
        self._unblock([w])
        self.table.wait_for(
            lambda: (
                w.state in (WorkerState.STOPPED, WorkerState.DISCONNECTED, WorkerState.DEAD)
                or w.gone
            ),
            timeout,
        )

    def disconnect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        w = self.table.get(handle)
        if w is None or w.gone:
            return
        if w.state is WorkerState.STARTED:
            self.stop_worker(handle)
        w.tell(Command.DISCONNECT)
        self.table.wait_for(lambda: w.gone, timeout)
        if not self.table.live():
            self.monitors.stop()

    # -- batch pipelines and nodes ------------------------------------------------------

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        progress: bool = False,
        *,
        raise_on_failure: bool = False,
    ) -> list[dict[str, Any]]:
        """Block until every job is done (finished or failed) and return their final hashes,
        in the order given. Raises WaitTimeoutError with the ids still pending. The same as
        ``flow.wait``, which works in any process."""
        return self.flow.wait(
            job_ids, timeout, progress=progress, raise_on_failure=raise_on_failure
        )

    def run(self) -> int:
        """Run until SIGTERM or SIGINT (the CLI). The first signal drains gracefully; a second
        SIGINT stops at once, putting running jobs back. Returns the exit status: 0 after a
        clean stop, 1 when the manager thread died."""
        return run_until_signalled(self)

    @property
    def metrics_port(self) -> int | None:
        """The port of the Prometheus endpoint, once it listens (None without one)."""
        return self.observers.port

    def manager_alive(self) -> bool:
        """Whether the manager thread (which watches the workers) still runs."""
        return self.manager.alive
