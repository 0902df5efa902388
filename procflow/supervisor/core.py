"""The supervisor: forks one process per worker, orders their lifecycle, watches them.

One manager thread does all process work: it forks (so every worker's parent thread lives as
long as the worker), waits on the workers' pipes and process sentinels plus its own timers
(no polling loop when nothing happens), re-emits worker logs, renews the locks of running
jobs, enforces time and memory limits, recovers the job of a worker that died, and respawns
it with backoff. Public methods run in the caller's thread and wait on a condition the
manager thread signals.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle
import psutil

from .. import codec
from ..errors import (
    ConfigurationError,
    RedisUnavailableError,
    SupervisorStateError,
    WorkerStartError,
    describe_exit,
)
from ..monitor import FlowMonitor
from ..settings import DEFAULT_DRAIN_TIMEOUT
from ..store import keys
from ..worker import WorkerPayload, log_outcome
from ..workers import WorkerGroup, WorkerHandle
from . import slots
from .child import WorkerEvents, worker_main
from .logs import reemit

if TYPE_CHECKING:
    from ..flow import Flow

__all__ = ["LifecycleEvent", "Supervisor"]

T = TypeVar("T")

_RESPAWN_MAX = 30.0


@dataclass(frozen=True)
class LifecycleEvent:
    """``who`` (``flow`` or a worker name) did ``what`` at ``time_ns`` on the monotonic clock
    that every process of this machine shares."""

    who: str
    what: str
    time_ns: int
    pid: int


@dataclass(eq=False)
class _Child:
    handle: WorkerHandle
    raw: Any
    events: WorkerEvents
    process: Any = None
    conn: Connection | None = None
    phase: str = "new"
    client_id: int | None = None
    spawned_at: float = 0.0
    crashes: int = 0
    respawn_at: float | None = None
    kill_reason: str | None = None
    end_reason: str = ""
    error: str | None = None
    ps: psutil.Process | None = None
    gone: bool = True
    exitcode: int | None = None

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def _default_start_method() -> str:
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _node_id(value: str | None) -> str:
    """The node's name in lock values: letters, digits, ``.``, ``_`` and ``-`` (anything else
    becomes ``_``), at most 60 characters."""
    node = value or os.environ.get("PROCFLOW_NODE_ID") or socket.gethostname() or "node"
    return re.sub(r"[^A-Za-z0-9._-]", "_", node)[:60] or "node"


class Supervisor:
    """The process manager behind ``start_all`` / ``stop_all``, and a context manager for
    batch pipelines::

        with Supervisor(flow) as sup:
            ids = flow.create_jobs(options)
            jobs = sup.wait(ids, timeout=600)

    ``node_id`` names this machine in lock values (default: ``$PROCFLOW_NODE_ID`` or the host
    name); ``drain_timeout`` is how long a graceful stop lets running jobs finish;
    ``monitor=False`` leaves expired-lock recovery to other nodes; ``start_method`` is the
    multiprocessing start method (``fork`` on Linux, else ``spawn``)."""

    def __init__(
        self,
        flow: Flow[Any, Any, Any],
        *,
        node_id: str | None = None,
        start_method: str | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        monitor: bool = True,
        log_level: str = "INFO",
        limit_interval: float = 0.1,
        monitor_interval: float = 1.0,
    ) -> None:
        self.flow = flow
        if flow.supervisor is not None and flow.supervisor is not self and flow.supervisor.running:
            raise SupervisorStateError(f"flow {flow.name!r} already has a running supervisor")
        flow.supervisor = self
        self.node_id = _node_id(node_id)
        me = psutil.Process()
        self.pid = me.pid
        self.holder = f"{self.node_id}|{me.pid}|{me.create_time():.2f}"
        method = start_method or _default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"start_method {method!r} is not available here; choose from "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        self.ctx: Any = multiprocessing.get_context(method)
        self.drain_timeout = drain_timeout
        self.log_level = log_level.upper()
        self.limit_interval = limit_interval
        self.log = flow.logger.bind(worker="supervisor", pid=me.pid)
        self.monitor = (
            FlowMonitor(flow, self.holder, interval=monitor_interval) if monitor else None
        )
        self.lifecycle: list[LifecycleEvent] = []
        self._state = "new"
        self._cond = threading.Condition()
        self._children: dict[WorkerHandle, _Child] = {}
        self._blobs: dict[WorkerGroup, bytes] = {}
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], list[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._pending: list[Callable[[], None]] = []
        self._next_pending = 0.0
        self._last_renew = 0.0
        self._next_limits = 0.0
        self._immediate = False
        self._respawn = True
        atexit.register(self._at_exit)

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state in ("starting", "running", "stopping")

    @property
    def state(self) -> str:
        return self._state

    def _record(
        self, who: str, what: str, time_ns: int | None = None, pid: int | None = None
    ) -> None:
        with self._cond:
            self.lifecycle.append(
                LifecycleEvent(who, what, time_ns or time.monotonic_ns(), pid or self.pid)
            )
            self._cond.notify_all()

    def worker_state(self, handle: WorkerHandle) -> str:
        child = self._children.get(handle)
        return "new" if child is None else child.phase

    def worker_pid(self, handle: WorkerHandle) -> int | None:
        child = self._children.get(handle)
        return None if child is None or child.gone else child.pid

    def worker_pids(self) -> list[int]:
        """Pids of the worker processes alive now."""
        with self._cond:
            return [c.pid for c in self._children.values() if not c.gone and c.pid is not None]

    def slot(self, handle: WorkerHandle) -> slots.SlotView:
        """What a worker holds now (state, job, lease token)."""
        return slots.read_slot(self._children[handle].raw)

    # -- the manager thread ----------------------------------------------------------------

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _in_manager(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the manager thread and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return fn()
        box: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self._commands.put((run, box))
        self._poke()
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _ensure_core(self) -> None:
        """Connect the flow and start the manager thread, once."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._state == "stopped":
                self._state = "new"
        self.flow.connect()
        self._record("flow", "connected")
        self._reclaim()
        self._respawn = True
        self._immediate = False
        self._thread = threading.Thread(
            target=self._manage, name="procflow-supervisor", daemon=True
        )
        self._thread.start()

    def _manage(self) -> None:
        try:
            while True:
                self._run_commands()
                with self._cond:
                    live = [c for c in self._children.values() if not c.gone]
                    if self._state == "stopped" and not live:
                        return
                objects: list[Any] = [self._wake_r]
                for c in live:
                    if c.conn is not None:
                        objects.append(c.conn)
                    objects.append(c.process.sentinel)
                ready = wait(objects, timeout=self._timeout())
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                for c in live:
                    if c.conn is not None and c.conn in ready:
                        self._drain(c)
                for c in live:
                    if c.process.sentinel in ready:
                        self._on_exit(c)
                self._timers()
        except Exception:
            self.log.exception("the supervisor's manager thread crashed")
            raise

    def _run_commands(self) -> None:
        while True:
            try:
                run, _ = self._commands.get_nowait()
            except queue.Empty:
                return
            run()

    def _renew_interval(self) -> float:
        """A third of the shortest lock time among live workers (at least 0.3 s)."""
        times = [c.handle.group.lock_time for c in self._children.values() if not c.gone]
        return max(0.3, min(times, default=30.0) / 3)

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._last_renew + self._renew_interval()]
        if self._limits_wanted():
            deadlines.append(self._next_limits)
        if self._pending:
            deadlines.append(self._next_pending)
        deadlines += [c.respawn_at for c in self._children.values() if c.respawn_at is not None]
        return max(0.0, min(deadlines) - now) if deadlines else 1.0

    def _limits_wanted(self) -> bool:
        return any(
            c.handle.group.stage.spec.timeout is not None
            or c.handle.group.stage.memory_limit is not None
            for c in self._children.values()
            if not c.gone
        )

    def _timers(self) -> None:
        now = time.monotonic()
        if now >= self._last_renew + self._renew_interval():
            self._last_renew = now
            self._renew()
        if self._limits_wanted() and now >= self._next_limits:
            self._check_limits()
            self._next_limits = now + self.limit_interval
        if self._pending and now >= self._next_pending:
            self._retry_pending()
        for c in list(self._children.values()):
            if c.respawn_at is not None and now >= c.respawn_at:
                c.respawn_at = None
                if self._respawn and self._state in ("starting", "running"):
                    self._spawn(c.handle, start=True)

    # -- processes ---------------------------------------------------------------------------

    def _payload(self, group: WorkerGroup) -> bytes:
        blob = self._blobs.get(group)
        if blob is None:
            flow = self.flow
            stage = group.stage
            payload = WorkerPayload(
                worker="",
                flow=flow.name,
                redis=flow.redis,
                stage=stage,
                kind=group.kind,
                fn=group.fn,
                lock_time=group.lock_time,
                block_timeout=group.block_timeout,
                key_ttl=flow.key_ttl,
                holder=self.holder,
                routes={q.name: keys.waiting(q.name) for q in flow.queues},
                child_stages={n: flow.stages[full].keys for n, full in stage.children.items()},
                max_jobs_per_child=group.max_jobs_per_child,
                max_age=group.max_age,
                log_level=self.log_level,
            )
            try:
                blob = cloudpickle.dumps(payload)
            except Exception as exc:
                raise ConfigurationError(
                    f"the worker function for {stage.name!r} cannot be sent to a worker "
                    f"process: {type(exc).__name__}: {exc}"
                ) from exc
            self._blobs[group] = blob
        return blob

    def _child(self, handle: WorkerHandle) -> _Child:
        child = self._children.get(handle)
        if child is None:
            ev = self.ctx.Event
            child = _Child(
                handle=handle,
                raw=self.ctx.RawValue(slots.SlotData),
                events=WorkerEvents(ev(), ev(), ev(), ev()),
            )
            with self._cond:
                self._children[handle] = child
        return child

    def _spawn(self, handle: WorkerHandle, start: bool = False) -> _Child:
        """Fork the worker process of ``handle`` (manager thread only). With ``start``, its
        connect and start events are set at once (a replacement joins a running pool)."""
        child = self._child(handle)
        if not child.gone:
            return child
        blob = self._payload(handle.group)
        ctypes.memset(ctypes.addressof(child.raw), 0, ctypes.sizeof(child.raw))
        if not start:
            for event in child.events:
                event.clear()
        else:
            child.events.stop.clear()
            child.events.disconnect.clear()
            child.events.connect.set()
            child.events.start.set()
        parent_end, child_end = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=worker_main,
            args=(blob, handle.name, child.raw, child.events, child_end, self.pid, self.log_level),
            name=f"procflow {handle.name}",
            daemon=True,
        )
        process.start()
        child_end.close()
        with self._cond:
            child.process = process
            child.conn = parent_end
            child.phase = "spawned"
            child.gone = False
            child.kill_reason = None
            child.error = None
            child.client_id = None
            child.exitcode = None
            child.spawned_at = time.monotonic()
            try:
                child.ps = psutil.Process(process.pid)
            except psutil.Error:
                child.ps = None
            self._cond.notify_all()
        self.log.bind(queue=handle.group.stage.name).debug(
            "spawned worker {} (pid {})", handle.name, process.pid
        )
        return child

    def _drain(self, child: _Child) -> None:
        conn = child.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._message(child, conn.recv())
        except (EOFError, OSError):
            conn.close()
            child.conn = None

    def _message(self, child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "log":
            reemit(message[1])
            return
        pid = child.pid or 0
        with self._cond:
            if kind in ("connected", "started", "stopped", "disconnected"):
                # (kind, time on the shared monotonic clock, extra)
                child.phase = kind
                self.lifecycle.append(LifecycleEvent(child.name, kind, message[1], pid))
                if kind == "connected":
                    child.client_id = message[2]
                elif kind == "stopped":
                    child.end_reason = message[2]
            elif kind == "connect_failed":
                child.error = message[1]
                child.phase = "failed"
            self._cond.notify_all()

    def _on_exit(self, child: _Child) -> None:
        """A worker process ended: learn why, deal with its job, maybe respawn it."""
        self._drain(child)
        # the sentinel closes while the process exits, a moment before it can be reaped
        child.process.join(5)
        code = child.process.exitcode
        snap = slots.read_slot(child.raw)
        pid = child.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # whatever the job started
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        planned = child.phase == "disconnected" and code == 0
        recycled = planned and child.end_reason.startswith("recycle")
        log = self.log.bind(queue=child.handle.group.stage.name, worker=child.name, pid=pid)
        if child.kill_reason == "shutdown":
            self._settle(child, snap, None, code)
        elif not planned:
            reason = child.kill_reason or f"the worker process died ({describe_exit(code)})"
            holding = snap.state in (slots.LEASING, slots.RUNNING, slots.COMPLETING)
            if child.phase == "failed":
                log.error("worker {} could not connect: {}", child.name, child.error)
            else:
                log.error(
                    "worker {} (pid {}) ended unexpectedly: {}{}",
                    child.name,
                    pid,
                    reason,
                    f"; it held job {snap.job}" if holding and snap.job else "",
                )
            self._settle(child, snap, reason, code)
        with self._cond:
            child.gone = True
            child.exitcode = code
            if child.phase not in ("failed", "disconnected"):
                child.phase = "dead"
            self._cond.notify_all()
        self._record(child.name, "exited", pid=pid)
        if recycled:
            log.info("worker {} recycled ({}); replacing it", child.name, child.end_reason)
            child.crashes = 0
            if self._respawn and self._state == "running":
                self._spawn(child.handle, start=True)
        elif not planned and child.phase != "failed" and self._respawn and self._state == "running":
            lived = time.monotonic() - child.spawned_at
            child.crashes = 1 if (lived > 30 or snap.jobs > 0) else child.crashes + 1
            delay = (
                0.0 if child.crashes <= 1 else min(_RESPAWN_MAX, 0.25 * 2 ** (child.crashes - 2))
            )
            if delay:
                log.warning(
                    "worker {} crashed {} times in a row; restarting it in {:.2f} s",
                    child.name,
                    child.crashes,
                    delay,
                )
            child.respawn_at = time.monotonic() + delay

    def _settle(
        self, child: _Child, snap: slots.SlotView, reason: str | None, code: int | None
    ) -> None:
        """Deal with the job a dead worker held. ``reason`` None: put it back uncounted
        (shutdown); else one failed attempt recorded with the exit code and signal."""
        stage = child.handle.group.stage
        store = self.flow.store
        sig = (
            signal.Signals(-code).name
            if code is not None and code < 0 and -code in signal.valid_signals()
            else None
        )
        ops: list[Callable[[], None]] = []
        if reason is None or snap.state == slots.LEASING:
            if snap.state in (slots.LEASING, slots.RUNNING, slots.COMPLETING):
                job, token = snap.job, snap.token
                ops.append(
                    lambda: self._requeue(stage, job if snap.state != slots.LEASING else "", token)
                )
                if snap.state == slots.LEASING and job:
                    ops.append(lambda: self._orphan(stage, job))
        elif snap.state in (slots.RUNNING, slots.COMPLETING) and snap.job:
            record = {
                "error": reason,
                "kind": "crash" if child.kill_reason is None else child.kill_reason.split(":")[0],
                "at": int(time.time() * 1000),
                "worker": child.name,
                "pid": child.pid,
                "exitCode": code,
                "signal": sig,
            }
            message = f"{reason} while running the job"
            job, token = snap.job, snap.token
            delays = stage.retry_delays_ms()

            def fail() -> None:
                outcome = store.fail(
                    stage.keys,
                    job,
                    token,
                    codec.encode(record),
                    codec.encode(message),
                    stage.spec.max_attempts,
                    delays,
                )
                log_outcome(self.log.bind(queue=stage.name, job=job), job, message, outcome)

            ops.append(fail)
        if snap.state == slots.COMPLETING and snap.next_token:
            next_token = snap.next_token
            ops.append(lambda: self._requeue(stage, "", next_token))
        for op in ops:
            self._attempt(op)

    def _requeue(self, stage: Any, job: str, token: str) -> None:
        got = self.flow.store.requeue(stage.keys, job, token)
        if got:
            self.log.bind(queue=stage.name, job=got).info(
                "job {} put back on {} (not counted as an attempt)", got, stage.keys.waiting
            )

    def _orphan(self, stage: Any, job: str) -> None:
        """A job our dead worker moved with BLMOVE but may not have claimed."""
        record = codec.encode(
            {
                "error": "worker died before claiming the job",
                "kind": "crash",
                "at": int(time.time() * 1000),
            }
        )
        outcome = self.flow.store.fail(
            stage.keys,
            job,
            "",
            record,
            codec.encode("worker died"),
            stage.spec.max_attempts,
            stage.retry_delays_ms(),
            mode="orphan",
        )
        if outcome.outcome is not None:
            log_outcome(self.log.bind(queue=stage.name, job=job), job, "worker died", outcome)

    def _attempt(self, op: Callable[[], None]) -> None:
        try:
            op()
        except RedisUnavailableError as exc:
            if not self._pending:
                self.log.warning("{}; will retry cleaning up after a dead worker", exc)
            self._pending.append(op)
            self._next_pending = time.monotonic() + 1.0

    def _retry_pending(self) -> None:
        ops, self._pending = self._pending, []
        for op in ops:
            self._attempt(op)
        if self._pending:
            self._next_pending = time.monotonic() + 1.0

    def _renew(self) -> None:
        locks = []
        for c in self._children.values():
            if c.gone:
                continue
            snap = slots.read_slot(c.raw)
            if snap.state in (slots.RUNNING, slots.COMPLETING) and snap.job and snap.token:
                stage = c.handle.group.stage
                locks.append(
                    (stage.keys.lock(snap.job), snap.token, int(c.handle.group.lock_time * 1000))
                )
        if not locks:
            return
        try:
            self.flow.store.renew(locks)
        except RedisUnavailableError as exc:
            self.log.warning("could not renew job locks: {}", exc)

    def _check_limits(self) -> None:
        now = time.monotonic()
        for c in self._children.values():
            if c.gone or c.kill_reason is not None:
                continue
            stage = c.handle.group.stage
            snap = slots.read_slot(c.raw)
            if snap.state != slots.RUNNING:
                continue
            timeout = stage.spec.timeout
            if timeout is not None and now - snap.started > timeout:
                self._kill(c, f"timeout: the job ran longer than its {timeout:g} s time limit")
                continue
            limit = stage.memory_limit
            if limit is not None and c.ps is not None:
                used = _tree_rss(c.ps)
                if used > limit:
                    self._kill(
                        c,
                        f"memory: the worker used {used / 2**20:.0f} MiB, over the queue's "
                        f"memory limit of {limit / 2**20:.0f} MiB",
                    )

    def _kill(self, child: _Child, reason: str) -> None:
        """SIGKILL a worker's whole process tree; its exit is then handled with ``reason``."""
        child.kill_reason = reason
        self.log.bind(queue=child.handle.group.stage.name, worker=child.name).warning(
            "killing worker {} (pid {}): {}", child.name, child.pid, reason.split(": ", 1)[-1]
        )
        _kill_tree(child.pid)

    # -- reclaim after a restart on this node -------------------------------------------

    def _reclaim(self) -> None:
        """Jobs whose lock names a supervisor of this node that is no longer alive are taken
        back now rather than after their locks expire."""
        stages = list(self.flow.stages.values())
        try:
            snapshot = self.flow.store.processing_snapshot([s.keys for s in stages])
        except RedisUnavailableError as exc:
            self.log.warning("could not look for jobs of a previous supervisor: {}", exc)
            return
        for stage, held in zip(stages, snapshot, strict=True):
            for job, lock in held:
                if lock is None or not self._dead_local_holder(lock):
                    continue
                record = {
                    "error": f"the supervisor holding the job died (lock {lock})",
                    "kind": "supervisor",
                    "at": int(time.time() * 1000),
                }
                message = "the supervisor running the job died"
                outcome = self.flow.store.fail(
                    stage.keys,
                    job,
                    lock,
                    codec.encode(record),
                    codec.encode(message),
                    stage.spec.max_attempts,
                    stage.retry_delays_ms(),
                )
                log_outcome(self.log.bind(queue=stage.name, job=job), job, message, outcome)

    def _dead_local_holder(self, lock: str) -> bool:
        parts = lock.split("|")
        if len(parts) != 5 or parts[0] != self.node_id:
            return False
        try:
            pid, ctime = int(parts[1]), float(parts[2])
        except ValueError:
            return False
        if f"{parts[0]}|{parts[1]}|{parts[2]}" == self.holder:
            return False
        try:
            alive = abs(psutil.Process(pid).create_time() - ctime) < 0.05
        except psutil.Error:
            alive = False
        return not alive

    # -- lifecycle: all workers --------------------------------------------------------

    def _wait_for(self, what: Callable[[], bool], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not what():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.2 if left is None else min(left, 0.2))
        return True

    def start(self, timeout: float = 60.0) -> None:
        """The flow connects; every worker process connects; only then does any start."""
        if self._state in ("starting", "running"):
            raise SupervisorStateError("the supervisor is already running")
        handles = self.flow.handles
        for group in self.flow.groups:
            self._payload(group)  # a function that cannot be pickled fails here, not in a child
        self._state = "starting"
        try:
            self._ensure_core()
        except BaseException:
            self._state = "stopped"
            raise
        try:
            children = self._in_manager(lambda: [self._spawn(h) for h in handles])
            for c in children:
                c.events.connect.set()
            self._await_all(children, ("connected",), "connect", timeout)
            for c in children:
                c.events.start.set()
            self._await_all(children, ("started",), "start", timeout)
        except BaseException:
            self._abort()
            raise
        self._state = "running"
        if self.monitor is not None:
            self.monitor.start()
        self.log.info(
            "supervisor running {} worker process(es) for flow {!r} on {} (node {})",
            len(children),
            self.flow.name,
            self.flow.redis.address,
            self.node_id,
        )

    def _await_all(
        self, children: Sequence[_Child], phases: Sequence[str], step: str, timeout: float
    ) -> None:
        def settled() -> bool:
            return all(
                c.phase in phases or c.phase in ("failed", "dead") or c.gone for c in children
            )

        if not self._wait_for(settled, timeout):
            late = [c.name for c in children if c.phase not in phases]
            raise WorkerStartError(
                f"worker(s) {', '.join(late)} did not {step} within {timeout:g} s"
            )
        bad = [c for c in children if c.phase not in phases]
        if bad:
            first = bad[0]
            why = first.error or f"its process ended ({describe_exit(first.exitcode)})"
            raise WorkerStartError(f"worker {first.name} could not {step}: {why}")

    def _abort(self) -> None:
        """A failed start: end every process, disconnect, leave nothing running."""
        self._respawn = False
        with self._cond:
            children = [c for c in self._children.values() if not c.gone]
        for c in children:
            c.kill_reason = "shutdown"
            _kill_tree(c.pid)
        self._wait_for(lambda: all(c.gone for c in children), 10)
        self._finish()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Every worker stops (the job in hand finishes and completes); only when all have
        stopped do they disconnect; the flow's connection closes last. Jobs still running
        after ``drain_timeout`` seconds are killed and put back on their waiting lists."""
        if self._state not in ("starting", "running"):
            return
        self._state = "stopping"
        self._respawn = False
        if self.monitor is not None:
            self.monitor.stop()
        drain = self.drain_timeout if drain_timeout is None else drain_timeout
        with self._cond:
            children = [c for c in self._children.values() if not c.gone]
        for c in children:
            c.raw.stop = 1
            c.events.stop.set()
        self._unblock(children)
        deadline = time.monotonic() + drain
        self._wait_for(
            lambda: (
                self._immediate
                or time.monotonic() >= deadline
                or all(
                    c.phase in ("stopped", "disconnected", "failed", "dead") or c.gone
                    for c in children
                )
            ),
            None,
        )
        left = [c for c in children if not c.gone and c.phase not in ("stopped", "disconnected")]
        if left:
            why = "immediate stop" if self._immediate else f"drain timeout of {drain:g} s"
            self.log.warning(
                "{}: killing {} worker(s) still running; their jobs go back to waiting",
                why,
                len(left),
            )
            for c in left:
                c.kill_reason = "shutdown"
                _kill_tree(c.pid)
        for c in children:
            c.events.disconnect.set()
        if not self._wait_for(lambda: all(c.gone for c in children), 15):
            for c in children:
                if not c.gone:
                    c.kill_reason = c.kill_reason or "shutdown"
                    _kill_tree(c.pid)
            self._wait_for(lambda: all(c.gone for c in children), 15)
        self._finish()

    def _unblock(self, children: Sequence[_Child]) -> None:
        ids = [c.client_id for c in children if c.client_id is not None]
        try:
            self.flow.store.unblock([i for i in ids if i is not None])
        except (RedisUnavailableError, Exception) as exc:  # workers return within block_timeout
            self.log.debug("CLIENT UNBLOCK failed: {}", exc)

    def _finish(self) -> None:
        self._state = "stopped"
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self._thread = None
        self.flow.disconnect()
        self._record("flow", "disconnected")
        self.log.info("supervisor stopped")

    def stop_now(self) -> None:
        """Escalate a stop in progress (a second SIGINT): kill what still runs, put its jobs
        back."""
        self._immediate = True
        with self._cond:
            self._cond.notify_all()

    def _at_exit(self) -> None:
        if self._state in ("starting", "running"):
            self.stop()

    def __enter__(self) -> Supervisor:
        if self._state not in ("starting", "running"):
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle: one worker ------------------------------------------------------------

    def connect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        if self._state == "stopping":
            raise SupervisorStateError("the supervisor is stopping")
        if self._state in ("new", "stopped"):
            self._state = "running"
            self._ensure_core()
        child = self._in_manager(lambda: self._spawn(handle))
        child.events.connect.set()
        self._await_all([child], ("connected", "started"), "connect", timeout)

    def start_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        child = self._children.get(handle)
        if child is None or child.gone or child.phase not in ("connected", "started"):
            raise SupervisorStateError(f"worker {handle.name} must be connected before it starts")
        child.events.start.set()
        self._await_all([child], ("started",), "start", timeout)

    def stop_worker(self, handle: WorkerHandle, timeout: float | None = None) -> None:
        child = self._children.get(handle)
        if child is None or child.gone:
            return
        child.raw.stop = 1
        child.events.stop.set()
        self._unblock([child])
        self._wait_for(
            lambda: child.phase in ("stopped", "disconnected", "dead") or child.gone, timeout
        )

    def disconnect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        child = self._children.get(handle)
        if child is None or child.gone:
            return
        if child.phase == "started":
            self.stop_worker(handle)
        child.events.disconnect.set()
        self._wait_for(lambda: child.gone, timeout)

    # -- batch pipelines --------------------------------------------------------------------

    def wait(
        self, job_ids: Sequence[str], timeout: float | None = None, progress: bool = False
    ) -> list[dict[str, Any]]:
        """Block until every job is done (finished or failed) and return their final hashes,
        in the order given. Raises WaitTimeoutError with the ids still pending."""
        from .waiting import wait_for_jobs

        return wait_for_jobs(self.flow, job_ids, timeout, progress)

    def run(self) -> int:
        """Run until SIGTERM or SIGINT (the CLI). The first signal drains gracefully; a second
        SIGINT stops at once, putting running jobs back. Returns the exit status."""
        stop = threading.Event()
        signals_seen: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            signals_seen.append(signum)
            if len(signals_seen) == 1:
                self.log.info(
                    "{} received: stopping; running jobs may take up to {:g} s to finish "
                    "(Ctrl-C again to stop now)",
                    signal.Signals(signum).name,
                    self.drain_timeout,
                )
                stop.set()
            else:
                self.log.warning("second signal: stopping now, running jobs go back to waiting")
                self.stop_now()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            self.start()
            while not stop.wait(1.0):
                if self._thread is None or not self._thread.is_alive():
                    self.log.error("the supervisor's manager thread is gone; stopping")
                    status = 1
                    break
            self.stop()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return status


def _tree_rss(proc: psutil.Process) -> int:
    try:
        total = int(proc.memory_info().rss)
        for kid in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(kid.memory_info().rss)
        return total
    except psutil.Error:
        return 0


def _kill_tree(pid: int | None) -> None:
    """SIGKILL a process, its process group and every descendant."""
    if pid is None:
        return
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    for target in (pid, *(k.pid for k in kids)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)
