"""What the supervisor knows about each worker process, and the two state machines.

``WorkerProcess`` is the supervisor's record of one worker (handle, OS process, pipe,
status record, lifecycle state, crash count); ``WorkerTable`` holds them all behind one
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import psutil

from ..handles import WorkerHandle
from ..worker import main as child

__all__ = [
    "LifecycleEvent",
    "Orphans",
    "SupervisorState",
    "WorkerProcess",
    "WorkerState",
    "WorkerTable",
    "become_subreaper",
    "kill_tree",
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
    CONNECTED = child.CONNECTED
    STARTED = child.STARTED
    STOPPED = child.STOPPED
    DISCONNECTED = child.DISCONNECTED
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
    s.value: s
    for s in (
        WorkerState.CONNECTED,
        WorkerState.STARTED,
        WorkerState.STOPPED,
        WorkerState.DISCONNECTED,
    )
}


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
    kill_reason: str | None = None
    end_reason: str = ""
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
        self.tell("pause")  # wakes nothing: the worker sees the flag before its next job

    def resume(self) -> None:
        self.status.pause = 0
        self.tell("resume")  # wakes the paused worker at once

    def tell(self, *commands: str) -> None:
        """Send lifecycle commands (``child.CONNECT`` …). Never waits on the process: a
        command to a process that is gone is dropped."""
        if child.STOP in commands:
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


def become_subreaper() -> bool:
    """Make this process the one that orphaned descendants are re-parented to (Linux), so a
    process a job started in a session of its own (``setsid``, a daemon) is still found when
    its worker dies. Returns whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Orphans:
    """The processes this supervisor adopted from its workers' jobs. ``collect`` kills those
    whose worker is gone and reaps them; a process without this supervisor's mark (the
    program's own children) is left alone."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.known: dict[int, int] = {}  # adopted pid -> the worker pid it came from
        #: every worker pid this supervisor started: a mark naming another pid is not ours
        self.workers: set[int] = set()

    def _mark(self, proc: psutil.Process) -> int | None:
        try:
            mark = proc.environ().get(child.WORKER_MARK, "")
        except psutil.Error:
            return None
        holder, _, worker = mark.rpartition("|")
        if holder != self.holder or not worker.isdigit() or int(worker) not in self.workers:
            return None
        return int(worker)

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
                worker = self._mark(proc)
                if worker is None:
                    continue
                self.known[pid] = worker
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and worker not in live_workers:
                    kill_tree(pid)
                    killed += 1
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, 0 if worker not in live_workers else os.WNOHANG)[0]:
                    self.known.pop(pid, None)
        return killed


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


def kill_tree(pid: int | None) -> None:
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
