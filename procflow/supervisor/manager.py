"""The supervisor's manager thread: it forks the workers and watches them.

One thread does all process work, so every worker's parent thread lives as long as the
worker (``PR_SET_PDEATHSIG`` is tied to it). It waits on the workers' pipes and process
sentinels, a wake-up pipe and its own timers — no polling loop when nothing happens — and:
re-emits worker logs, follows their lifecycle reports, runs the watchdogs, settles the job of
a worker that died and respawns it with backoff. Other threads hand it work with
``Manager.call``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle
import psutil

from ..cpus import WorkerSetup
from ..definition import FlowDefinition
from ..errors import ConfigurationError, RedisRefusedError, RedisUnavailableError, describe_exit
from ..failures import FailureRecord
from ..handles import WorkerGroup, WorkerHandle
from ..partitions import StoreMap
from ..settings import RedisSettings
from ..worker.main import Command, Report, worker_main
from ..worker.status import Activity, StatusRecord, clear_status, read_status
from .logs import reemit
from .process import (
    REPORTED,
    KillKind,
    KillReason,
    LifecycleEvent,
    Orphans,
    SupervisorState,
    WorkerProcess,
    WorkerState,
    WorkerTable,
    kill_tree,
)
from .rebalance import CoreBudget
from .settle import Settler
from .tally import StageTally, Tally
from .watchdogs import Watchdogs

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Manager"]

T = TypeVar("T")

#: the longest wait before respawning a worker that keeps crashing (seconds)
RESPAWN_MAX = 30.0
#: a worker that lived this long (or finished a job) before crashing starts a new streak
CRASH_STREAK_RESET = 30.0
#: how often adopted processes of live workers are checked for having ended (seconds)
ORPHAN_SCAN = 5.0


class Manager:
    """The manager thread and the process work it does. ``state`` tells it the supervisor's
    state; it respawns only while ``respawn`` is set and the supervisor is running.
    ``slot_of`` gives a worker's index among all of the flow's workers (its core when
    pinned); a run's core budget, if any, comes with ``start_thread``."""

    def __init__(
        self,
        table: WorkerTable,
        settler: Settler,
        *,
        ctx: Any,
        flow_name: str,
        partitions: Sequence[tuple[FlowDefinition, RedisSettings]],
        holder: str,
        log: Logger,
        log_level: str,
        state: Callable[[], SupervisorState],
        slot_of: Callable[[WorkerHandle], int],
        limit_interval: float = 0.1,
    ) -> None:
        self.table = table
        self.settler = settler
        #: what this node's workers did (heartbeats, metrics)
        self.tally = Tally()
        self.watchdogs = Watchdogs(settler.stores, log, self.kill, limit_interval, self.tally)
        self.ctx = ctx
        self.flow_name = flow_name
        #: each partition's definition and connection settings (one: an unpartitioned flow)
        self.partitions = list(partitions)
        self.holder = holder
        self.log = log
        self.log_level = log_level
        self.state = state
        self.respawn = True
        self.orphans = Orphans(holder)
        self.slot_of = slot_of
        #: this run's core budget, when the supervisor has one (``Supervisor(flow, cores=N)``)
        self.budget: CoreBudget | None = None
        self._next_orphans = 0.0
        self.thread: threading.Thread | None = None
        self._blobs: dict[WorkerGroup, bytes] = {}
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def repoint(
        self, stores: StoreMap, partitions: Sequence[tuple[FlowDefinition, RedisSettings]]
    ) -> None:
        """The flow moved to other servers (``Flow.use_redis``; before the thread starts):
        settle and renew through ``stores`` from now on, and tell new workers ``partitions``."""
        self.settler.stores = stores
        self.watchdogs.stores = stores
        self.partitions = list(partitions)
        self._blobs.clear()  # their payloads name the old servers

    # -- the thread ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start_thread(self, budget: CoreBudget | None = None) -> None:
        """Start a run's thread, under ``budget`` if the supervisor has a core budget."""
        self.budget = budget
        self.respawn = True
        for w in self.table:  # a respawn due from a previous run must not join this start early
            w.respawn_at = None
        self.thread = threading.Thread(target=self._run, name="procflow-supervisor", daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> bool:
        """Wake the thread (it ends once the supervisor is stopped and no worker lives) and
        wait for it; False if it is still running after ``timeout`` seconds."""
        self.poke()
        thread, self.thread = self.thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the manager thread and return its result (or raise its error)."""
        if threading.current_thread() is self.thread:
            return fn()
        box: list[tuple[bool, Any]] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self._commands.put(run)
        self.poke()
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _run(self) -> None:
        """The loop; an unexpected error in one round is logged and the next round goes on
        (after a pause), so no fault of one worker or one Redis call stops the others'
        supervision."""
        failures = 0
        while True:
            try:
                if self._round():
                    return
                failures = 0
            except Exception:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    self.log.exception("the supervisor's manager thread hit an error; going on")
                time.sleep(min(1.0, 0.05 * failures))  # back-off, not synchronisation

    def _round(self) -> bool:
        """One wait-and-handle round; True when the thread should end."""
        self._run_commands()
        live = self.table.live()
        if self.state() is SupervisorState.STOPPED and not live:
            return True
        objects: list[Any] = [self._wake_r]
        for w in live:
            if w.conn is not None:
                objects.append(w.conn)
            objects.append(w.process.sentinel)
        ready = wait(objects, timeout=self._timeout(live))
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for w in live:
            if w.conn is not None and w.conn in ready:
                self._drain(w)
        for w in live:
            if w.process.sentinel in ready:
                self._on_exit(w)
        self._timers()
        return False

    def _run_commands(self) -> None:
        while True:
            try:
                run = self._commands.get_nowait()
            except queue.Empty:
                return
            run()

    def _timeout(self, live: list[WorkerProcess]) -> float:
        deadlines = self.watchdogs.deadlines(live)
        if self.settler.pending:
            deadlines.append(self.settler.next_retry)
        deadlines += [w.respawn_at for w in self.table if w.respawn_at is not None]
        if self.orphans.known:
            deadlines.append(self._next_orphans)
        if self.budget is not None and self.state() is SupervisorState.RUNNING:
            deadlines.append(self.budget.next_tick)
        return max(0.0, min(deadlines) - time.monotonic())

    def _timers(self) -> None:
        self.watchdogs.tick(self.table.live())
        if self.settler.pending and time.monotonic() >= self.settler.next_retry:
            self.settler.retry_pending()
        now = time.monotonic()
        if self.orphans.known and now >= self._next_orphans:
            self._collect_orphans()
        budget = self.budget
        if (
            budget is not None
            and self.state() is SupervisorState.RUNNING
            and now >= budget.next_tick
        ):
            budget.tick(self.replace, self._unblock_one)
        for w in self.table:
            if w.respawn_at is not None and now >= w.respawn_at:
                w.respawn_at = None
                self.replace(w.handle)

    # -- forking ---------------------------------------------------------------------------

    def blob(self, group: WorkerGroup) -> bytes:
        """The group's cloudpickled WorkerPayload (made once; an unpicklable function fails
        here, in the supervisor, not in a child)."""
        blob = self._blobs.get(group)
        if blob is None:
            payload = group.payload(self.flow_name, self.partitions, self.holder, self.log_level)
            try:
                blob = cloudpickle.dumps(payload)
            except Exception as exc:
                raise ConfigurationError(
                    f"the worker function for {group.name!r} cannot be sent to a worker "
                    f"process: {type(exc).__name__}: {exc}"
                ) from exc
            self._blobs[group] = blob
        return blob

    def record(self, handle: WorkerHandle) -> WorkerProcess:
        w = self.table.get(handle)
        if w is None:
            w = WorkerProcess(handle=handle, status=self.ctx.RawValue(StatusRecord))
            with self.table.cond:
                self.table.by_handle[handle] = w
        return w

    def replace(self, handle: WorkerHandle) -> None:
        """Fork a replacement for ``handle`` and start it, unless a stop has begun. The check
        and the fork hold the table's lock, which ``Supervisor.stop`` holds while it takes its
        list of workers to stop: a replacement is either in that list or never forked. While
        the supervisor is still starting, only a worker that got past its start is replaced
        (``_on_exit`` decides): every worker was connected before any was told to start."""
        with self.table.cond:
            if self.respawn and self.state().active:
                self.spawn(handle, start=True)

    def spawn(self, handle: WorkerHandle, start: bool = False) -> WorkerProcess:
        """Fork the worker process of ``handle`` (manager thread only). With ``start``, its
        connect and start commands are sent at once (a replacement joins a running pool)."""
        w = self.record(handle)
        if not w.gone:
            return w
        blob = self.blob(handle.group)
        if w.process is not None:
            self.tally.restarted(handle.group.name)
        clear_status(w.status)
        parent_end, child_end = self.ctx.Pipe(duplex=False)
        commands_in, commands_out = self.ctx.Pipe(duplex=False)
        setup = WorkerSetup.of(handle.group.options, self.slot_of(handle))
        process = self.ctx.Process(
            target=worker_main,
            args=(
                blob,
                handle.name,
                w.status,
                commands_in,
                child_end,
                os.getpid(),
                self.log_level,
                setup,
            ),
            name=f"procflow {handle.name}",
            daemon=True,
        )
        process.start()
        child_end.close()
        commands_in.close()
        self.orphans.workers.add(process.pid)
        with self.table.cond:
            w.process = process
            w.conn = parent_end
            w.commands = commands_out
            w.state = WorkerState.SPAWNED
            w.past_start = False
            w.gone = False
            w.kill_reason = None
            w.cancelled = set()
            w.error = None
            w.client_id = None
            w.exitcode = None
            w.spawned_at = time.monotonic()
            try:
                w.ps = psutil.Process(process.pid)
            except psutil.Error:
                w.ps = None
            self.table.cond.notify_all()
        if start:
            w.tell(Command.CONNECT, Command.START)
        self.log.bind(queue=handle.group.name).debug(
            "spawned worker {} (pid {})", handle.name, process.pid
        )
        return w

    def cancel(self, job_ids: set[str]) -> list[str]:
        """Stop the workers running any of ``job_ids`` (an operator cancelled them); their
        exit finishes the cancel. Returns the ids found here."""
        found = []
        for w in self.table.live():
            view = read_status(w.status)
            held = {job for job, _ in view.pending}
            if view.job and view.activity.holds_job:
                held.add(view.job)
            mine = held & job_ids
            if mine and w.kill_reason is None:
                found += sorted(mine)
                w.cancelled = mine
                text = f"job {', '.join(sorted(mine))} was cancelled by an operator"
                self.kill(w, KillReason(KillKind.CANCEL, text))
        return found

    def tallies(self) -> dict[str, StageTally]:
        """Per stage: what this node's worker processes did, the ended ones and the live."""
        live = self.table.live()
        return self.tally.snapshot((w.handle.group.name, read_status(w.status)) for w in live)

    def kill(self, w: WorkerProcess, reason: KillReason) -> None:
        """SIGKILL a worker's whole process tree; its exit is then settled by ``reason``."""
        w.kill_reason = reason
        if reason.kind is not KillKind.SHUTDOWN:
            self.log.bind(queue=w.handle.group.name, worker=w.name).warning(
                "killing worker {} (pid {}): {}", w.name, w.pid, reason.text
            )
        self.orphans.note(w.pid, kill_tree(w.pid))

    # -- what workers say ------------------------------------------------------------------

    def _drain(self, w: WorkerProcess) -> None:
        conn = w.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._message(w, conn.recv())
        except (EOFError, OSError):
            conn.close()
            w.conn = None

    def _message(self, w: WorkerProcess, message: tuple[Any, ...]) -> None:
        try:
            kind = Report(message[0])
        except ValueError:
            self.log.debug("worker {} sent an unknown message {!r}", w.name, message[0])
            return
        if kind is Report.LOG:
            reemit(message[1])
            return
        with self.table.cond:
            state = REPORTED.get(kind)
            if state is not None:  # (kind, time on the shared monotonic clock, extra)
                w.state = state
                event = LifecycleEvent(w.name, kind.value, message[1], w.pid or 0)
                self.table.lifecycle.append(event)
                if state is WorkerState.CONNECTED:
                    w.client_id = message[2]
                elif state is WorkerState.STARTED:
                    w.past_start = True
                    w.started_ns = message[1]
                elif state is WorkerState.STOPPED:
                    w.ending = message[2]
            elif kind is Report.CONNECT_FAILED:
                w.error = message[1]
                w.state = WorkerState.FAILED
            self.table.cond.notify_all()

    def _unblock_one(self, client_id: int) -> None:
        # failing that, it returns from BLMOVE within its block_timeout anyway
        with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
            self.settler.stores.first.unblock([client_id])

    # -- a worker ended ----------------------------------------------------------------------

    def _collect_orphans(self, ended: WorkerProcess | None = None) -> None:
        """Kill what the jobs of ended workers left running in sessions of their own (this
        process is their subreaper), reap what of it ended."""
        self._next_orphans = time.monotonic() + ORPHAN_SCAN
        live = {w.pid for w in self.table.live() if w is not ended and w.pid is not None}
        killed = self.orphans.collect(live)
        if killed:
            self.log.warning("killed {} process(es) that a worker's jobs had left running", killed)

    def _on_exit(self, w: WorkerProcess) -> None:
        """A worker process ended: learn why, settle its job, maybe respawn it."""
        self._drain(w)
        # the sentinel closes while the process exits, a moment before it can be reaped
        w.process.join(5)
        code = w.process.exitcode
        view = read_status(w.status)
        pid = w.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # whatever the job started
        for end in (w.conn, w.commands):
            if end is not None:
                end.close()
        w.conn = w.commands = None
        if not w.past_start and (view.jobs or view.activity is not Activity.IDLE):
            with self.table.cond:  # it leased a job: it had started, whatever it reported
                w.past_start = True
                w.started_ns = time.monotonic_ns()
        planned = w.state is WorkerState.DISCONNECTED and code == 0
        recycled = planned and w.ending is not None and w.ending.recycles
        stage = w.handle.group.stage_in_partition(view.partition)  # what it held is there
        log = self.log.bind(queue=stage.name, worker=w.name, pid=pid)
        self._collect_orphans(ended=w)
        replace = self.budget.on_exit(w) if self.budget is not None else True
        self.tally.retire(w.handle.group.name, view)
        killed = w.kill_reason
        if killed is not None and killed.kind is KillKind.SHUTDOWN:
            self.settler.settle(stage, view, None)
        elif killed is not None and killed.kind is KillKind.CANCEL:
            self.tally.ended(w.handle.group.name, KillKind.CANCEL.value)
            self.settler.cancel(stage, view, w.cancelled)
        elif not planned:
            reason = str(killed) if killed else f"the worker process died ({describe_exit(code)})"
            if w.state is WorkerState.FAILED:
                log.error("worker {} could not connect: {}", w.name, w.error)
            else:
                held = f"; it held job {view.job}" if view.activity.holds_job and view.job else ""
                log.error("worker {} (pid {}) ended unexpectedly: {}{}", w.name, pid, reason, held)
            kind = "crash" if killed is None else killed.kind.value
            self.tally.ended(w.handle.group.name, kind)
            record = FailureRecord.worker_died(reason, kind, worker=w.name, pid=pid, exitcode=code)
            self.settler.settle(stage, view, record)
        with self.table.cond:
            w.gone = True
            w.exitcode = code
            if w.state not in (WorkerState.FAILED, WorkerState.DISCONNECTED):
                w.state = WorkerState.DEAD
            self.table.cond.notify_all()
        self.table.record(w.name, "exited", pid=pid)
        # a worker that got past its start while the others still start (a job that killed
        # it at once) crashed like any other: it is replaced as in a running pool
        state = self.state()
        running = (
            replace
            and self.respawn
            and (
                state is SupervisorState.RUNNING
                or (state is SupervisorState.STARTING and w.past_start)
            )
        )
        if recycled:
            log.info("worker {} recycled ({}); replacing it", w.name, w.ending)
            w.crashes = 0
            if replace:
                self.replace(w.handle)
        elif not planned and running:  # a replacement that could not connect tries again
            self._schedule_respawn(w, view.jobs, log)

    def _schedule_respawn(self, w: WorkerProcess, jobs: int, log: Logger) -> None:
        """Right away after a first crash; with doubling delays while it keeps crashing."""
        lived = time.monotonic() - w.spawned_at
        w.crashes = 1 if (lived > CRASH_STREAK_RESET or jobs > 0) else w.crashes + 1
        delay = 0.0 if w.crashes <= 1 else min(RESPAWN_MAX, 0.25 * 2 ** (w.crashes - 2))
        if delay:
            log.warning(
                "worker {} crashed {} times in a row; restarting it in {:.2f} s",
                w.name,
                w.crashes,
                delay,
            )
        w.respawn_at = time.monotonic() + delay
