"""What the supervisor knows about each worker process, and the two state machines.

``WorkerProcess`` is the supervisor's record of one worker (handle, OS process, pipe,
status record, lifecycle state, crash count, why the supervisor killed it: a ``KillReason``);
``WorkerTable`` holds them all behind one
condition that the manager thread signals and the public methods wait on. Also here: killing
a process tree and measuring its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import psutil

from ..handles import WorkerHandle
from ..worker import main as child
from ..worker.ending import Ending
from ..worker.main import Command, Report

__all__ = [
    "SHUTDOWN",
    "SUBREAPER",
    "KillKind",
    "KillReason",
    "LifecycleEvent",
    "Orphans",
    "SupervisorState",
    "WorkerProcess",
    "WorkerState",
    "WorkerTable",
    "kill_tree",
    "subreaper_setting",
    "tree_rss",
]


class SupervisorState(str, Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (SupervisorState.STARTING, SupervisorState.RUNNING)


class WorkerState(str, Enum):
    """A worker's lifecycle as the supervisor sees it. The middle four are what the worker
    reports on its pipe; ``failed`` is a worker that could not connect, ``dead`` one that
    ended any other way than a clean disconnect."""

    NEW = "new"
    SPAWNED = "spawned"
    CONNECTED = Report.CONNECTED.value
    STARTED = Report.STARTED.value
    STOPPED = Report.STOPPED.value
    DISCONNECTED = Report.DISCONNECTED.value
    FAILED = "failed"
    DEAD = "dead"

    @property
    def ended(self) -> bool:
        """Stopped taking jobs, for good or not."""
        return self in (WorkerState.STOPPED, WorkerState.DISCONNECTED, _FAILED, _DEAD)

    def __str__(self) -> str:
        return self.value


_FAILED, _DEAD = WorkerState.FAILED, WorkerState.DEAD
_SEND_LOCK = threading.Lock()
#: what a worker reports → its new state
REPORTED = {
    Report.CONNECTED: WorkerState.CONNECTED,
    Report.STARTED: WorkerState.STARTED,
    Report.STOPPED: WorkerState.STOPPED,
    Report.DISCONNECTED: WorkerState.DISCONNECTED,
}


class KillKind(str, Enum):
    """Why the supervisor SIGKILLed a worker. ``shutdown``: the supervisor stops (a drain
    timeout, an immediate stop, a failed start) and the job goes back to waiting; the others
    end the job's attempt: ``cancel`` (an operator cancelled it), ``timeout`` (its stage's
    time limit), ``memory`` (its stage's memory limit). The value is also the kind counted in
    the tally and written in the failure record."""

    SHUTDOWN = "shutdown"
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    MEMORY = "memory"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class KillReason:
    """A kill's kind and what to tell about it (``text``, for the log and the job's failure
    message, which reads ``kind: text``)."""

    kind: KillKind
    text: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.text}" if self.text else self.kind.value


#: the kill of a stopping supervisor
SHUTDOWN = KillReason(KillKind.SHUTDOWN)


@dataclass(frozen=True)
class LifecycleEvent:
    """``who`` (``flow`` or a worker name) did ``what`` at ``time_ns`` on the monotonic clock
    that every process of this machine shares."""

    who: str
    what: str
    time_ns: int
    pid: int


@dataclass(eq=False)
class WorkerProcess:
    """The supervisor's record of one worker; it outlives the OS processes that replace
    each other under it. ``status`` is the shared-memory record the worker writes."""

    handle: WorkerHandle
    status: Any
    process: Any = None
    conn: Connection | None = None
    #: the supervisor's end of the process's command pipe (a new pipe for each process)
    commands: Connection | None = None
    state: WorkerState = WorkerState.NEW
    client_id: int | None = None
    spawned_at: float = 0.0
    #: whether the current process got past its start (it reported started, or its status
    #: record shows it leased a job): its death is then a crash, never a failed start
    past_start: bool = False
    #: when a process of this record last got past its start (ns, the shared monotonic
    #: clock; 0: never)
    started_ns: int = 0
    crashes: int = 0
    respawn_at: float | None = None
    kill_reason: KillReason | None = None
    #: why its loop ended, as it reported (None: it did not say)
    ending: Ending | None = None
    error: str | None = None
    ps: psutil.Process | None = None
    gone: bool = True
    exitcode: int | None = None
    #: the job ids an operator cancelled that this worker held when it was stopped for them
    cancelled: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)

    @property
    def lock_time(self) -> float:
        return self.handle.group.options.lock_time

    def pause(self) -> None:
        """Hold this worker's core free (the core budget): it takes no job until resumed."""
        self.status.pause = 1
        self.tell(Command.PAUSE)  # wakes nothing: the worker sees the flag before its next job

    def resume(self) -> None:
        self.status.pause = 0
        self.tell(Command.RESUME)  # wakes the paused worker at once

    def tell(self, *commands: Command) -> None:
        """Send lifecycle commands (``Command.CONNECT`` …). Never waits on the process: a
        command to a process that is gone is dropped."""
        if Command.STOP in commands:
            self.status.stop = 1  # the loop checks this between jobs, without a system call
        conn = self.commands
        if conn is None:
            return
        with _SEND_LOCK:
            for command in commands:
                try:
                    conn.send(command)
                except (OSError, ValueError):  # gone, or closed: nothing left to tell
                    return


class WorkerTable:
    """Every worker record, the lifecycle log, and the condition guarding them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.by_handle: dict[WorkerHandle, WorkerProcess] = {}
        self.lifecycle: list[LifecycleEvent] = []

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self.by_handle.values()))

    def get(self, handle: WorkerHandle) -> WorkerProcess | None:
        return self.by_handle.get(handle)

    def live(self) -> list[WorkerProcess]:
        with self.cond:
            return [w for w in self.by_handle.values() if not w.gone]

    def record(
        self, who: str, what: str, time_ns: int | None = None, pid: int | None = None
    ) -> None:
        with self.cond:
            self.lifecycle.append(
                LifecycleEvent(who, what, time_ns or time.monotonic_ns(), pid or os.getpid())
            )
            self.cond.notify_all()

    def changed(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, what: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``what()`` holds (checked on every change); False after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not what():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(0.2 if left is None else min(left, 0.2))
        return True


_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def subreaper_setting() -> int | None:
    """This process's child-subreaper setting now (None where it cannot be read)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        value = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
            return None
        return int(value.value)
    except (OSError, AttributeError):
        return None


def _set_subreaper(on: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, on, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class _Subreaper:
    """This process's child-subreaper setting (Linux), held by the supervisors running in it.
    The first to start reads what the process had and turns it on, so the processes a job
    started in a session of their own (``setsid``, a daemon) come here when their worker dies,
    to be found and killed; the last to stop gives the process its own setting back. The
    setting belongs to the host (a batch pipeline, a web app, a test runner that imported
    procflow): while it is on, every process orphaned anywhere below the host is re-parented
    to it, and stays a zombie there once it ends if nobody reaps it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        #: what the host had before the first holder (None: nothing to give back)
        self.before: int | None = None

    def hold(self) -> bool:
        """One holder more; the first turns the setting on. Returns whether this process is
        a subreaper now."""
        if not sys.platform.startswith("linux"):
            return False
        with self.lock:
            self.holders += 1
            if self.holders == 1:
                was = subreaper_setting()
                if was is not None and (was or _set_subreaper(1)):
                    self.before = was
            return self.before is not None

    def release(self) -> None:
        """One holder fewer; the last gives the host back the setting it had."""
        with self.lock:
            self.holders = max(0, self.holders - 1)
            if self.holders or self.before is None:
                return
            before, self.before = self.before, None
            if not before:
                _set_subreaper(0)


#: the one setting of this process, shared by all its supervisors
SUBREAPER = _Subreaper()


class Orphans:
    """The processes this supervisor adopted from its workers' jobs (it is their subreaper).
    ``collect`` kills those whose worker is gone and reaps them; ``reap_all`` does it for
    every one when the supervisor stops.

    A child of this process is the supervisor's to kill and reap only if it is known to come
    from one of its workers; everything else (the program's own children, which it will wait
    for itself: a ``subprocess.Popen`` it owns, a multiprocessing pool) is left alone. A child
    comes from a worker if

    - it was seen below a worker (``note``: the trees the supervisor kills, and the trees of
      its workers as they stop) with the same start time, or
    - it is in a process group one of its workers led, not as the group's leader (each worker
      leads a group of its own, and a group id is not reused while a member, even a zombie,
      is left), or
    - it carries the mark of one of its workers (``PROCFLOW_WORKER``, inherited through the
      environment: how a process a job started in a session of its own is found).

    The first two also hold for a zombie, whose environment can no longer be read. What none
    of them catches (a process in a session of its own that ended before it was ever seen, or
    one that cleared its environment) is left to the program.
    """

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.known: dict[int, int] = {}  # adopted pid -> the worker pid it came from
        #: every worker pid this supervisor started: a mark naming another pid is not ours
        self.workers: set[int] = set()
        #: processes seen below a worker: pid -> (start time, the worker's pid)
        self.seen: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def note(self, worker: int | None, procs: Iterable[psutil.Process]) -> None:
        """Remember ``procs`` as descendants of ``worker`` (any thread)."""
        if worker is None:
            return
        found = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                found[proc.pid] = (proc.create_time(), worker)
        with self._lock:
            self.seen.update(found)

    def note_below(self, workers: Iterable[int]) -> None:
        """Remember what runs below each of ``workers`` now, before they end (one pass over
        the process table for all of them)."""
        below: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            below.setdefault(proc.info["ppid"], []).append(proc)
        for worker in workers:
            found, todo = [], list(below.get(worker, ()))
            while todo:
                proc = todo.pop()
                found.append(proc)
                todo += below.get(proc.pid, ())
            self.note(worker, found)

    def _mark(self, proc: psutil.Process) -> int | None:
        try:
            mark = proc.environ().get(child.WORKER_MARK, "")
        except psutil.Error:
            return None
        holder, _, worker = mark.rpartition("|")
        if holder != self.holder or not worker.isdigit() or int(worker) not in self.workers:
            return None
        return int(worker)

    def _owner(self, proc: psutil.Process) -> int | None:
        """The worker ``proc`` (a child of this process) came from; None: not ours."""
        pid = proc.pid
        with self._lock:
            seen = self.seen.get(pid)
        if seen is not None:
            with contextlib.suppress(psutil.Error):
                if abs(proc.create_time() - seen[0]) < 0.05:
                    return seen[1]
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != pid and group in self.workers:
                return group
        return self._mark(proc)

    def collect(self, live_workers: set[int]) -> int:
        """Kill and reap the adopted processes of workers not in ``live_workers``, reap the
        adopted ones that ended; returns how many were killed."""
        killed = 0
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return 0
        for proc in children:
            pid = proc.pid
            if pid in live_workers:
                continue
            worker = self.known.get(pid)
            if worker is None:
                worker = self._owner(proc)
                if worker is None:
                    continue
                self.known[pid] = worker
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and worker not in live_workers:
                    self.note(worker, kill_tree(pid))
                    killed += 1
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, 0 if worker not in live_workers else os.WNOHANG)[0]:
                    self.known.pop(pid, None)
            if not psutil.pid_exists(pid):
                self.known.pop(pid, None)
        self._forget_gone()
        return killed

    def reap_all(self, live_workers: set[int], timeout: float = 5.0) -> int:
        """The supervisor stops: kill and reap every adopted process of a worker not in
        ``live_workers``, also those re-parented here while it does (the descendants of what
        it kills). Returns how many were killed."""
        killed = self.collect(live_workers)
        deadline = time.monotonic() + timeout
        while self._left(live_workers) and time.monotonic() < deadline:
            killed += self.collect(live_workers)
            time.sleep(0.01)  # polled: a killed tree's members are re-parented as they exit
        return killed

    def _left(self, live_workers: set[int]) -> bool:
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return False
        for proc in children:
            if proc.pid in live_workers:
                continue
            worker = self.known.get(proc.pid) or self._owner(proc)
            if worker is not None and worker not in live_workers:
                return True
        return False

    def _forget_gone(self) -> None:
        with self._lock:
            for pid in [p for p in self.seen if not psutil.pid_exists(p)]:
                del self.seen[pid]


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants (bytes; 0 if it is gone)."""
    try:
        total = int(proc.memory_info().rss)
        for kid in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(kid.memory_info().rss)
        return total
    except psutil.Error:
        return 0


def kill_tree(pid: int | None) -> list[psutil.Process]:
    """SIGKILL a process, its process group and every descendant; returns the descendants
    it found (those that are re-parented here are the supervisor's to reap)."""
    if pid is None:
        return []
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    for target in (pid, *(k.pid for k in kids)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)
    return kids
