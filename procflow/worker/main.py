"""The entry point of a worker process.

The process puts itself in its own process group (so the supervisor can kill whatever the job
started, and Ctrl-C in a terminal reaches only the supervisor), asks the kernel to kill it if
the supervisor dies (Linux), then follows the supervisor's commands — connect, start, stop,
disconnect — which arrive on a pipe of their own (a pipe, not a shared Event: sending on it
never waits for a process that died). It reports each step on its report pipe with the time on
the shared monotonic clock.
Nothing here imports the supervisor: the two sides share only this module's names, the
status record and the log messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import setproctitle
from loguru import logger

from ..cpus import WorkerSetup, limit_loaded_pools, setup_process
from .ending import EndReason
from .logs import install_child_logging
from .loop import WorkerLoop
from .payload import WorkerPayload
from .status import StatusWriter

__all__ = [
    "WORKER_MARK",
    "Command",
    "Commands",
    "Report",
    "worker_main",
]


class Command(str, Enum):
    """What the supervisor tells a worker on its command pipe. The lifecycle goes
    connect → start → stop → disconnect; ``pause`` and ``resume`` (the core budget) only
    wake the worker to look at its status record's pause flag."""

    CONNECT = "connect"
    START = "start"
    STOP = "stop"
    DISCONNECT = "disconnect"
    PAUSE = "pause"
    RESUME = "resume"

    def __str__(self) -> str:
        return self.value


class Report(str, Enum):
    """What a worker says on its report pipe, first in each message: ``(CONNECTED, ns,
    client id)``, ``(STARTED, ns)``, ``(STOPPED, ns, why the loop ended: an
    ``ending.Ending``)``, ``(DISCONNECTED, ns)`` (ns: the shared
    monotonic clock),
    ``(CONNECT_FAILED, error text)``, and ``(LOG, record)`` (``worker/logs.py``, which
    sends the plain text ``"log"``: the values are what travels)."""

    CONNECTED = "connected"
    STARTED = "started"
    STOPPED = "stopped"
    DISCONNECTED = "disconnected"
    CONNECT_FAILED = "connect_failed"
    LOG = "log"

    def __str__(self) -> str:
        return self.value


_PR_SET_PDEATHSIG = 1
#: the environment variable naming a worker process (``HOLDER|PID``) in what its jobs start:
#: the supervisor finds those processes by it when they outlive the worker
WORKER_MARK = "PROCFLOW_WORKER"
#: exit status of a worker whose supervisor died before it was set up
EXIT_ORPHANED = 70
#: exit status of a worker that could not connect
EXIT_CONNECT_FAILED = 3


class Commands:
    """The worker's end of its command pipe: what the supervisor has said so far."""

    def __init__(self, conn: Connection, parent_pid: int) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.said: set[Command] = set()

    def take(self, timeout: float) -> bool:
        """Read what was said within ``timeout`` seconds; False if the supervisor is gone."""
        if os.getppid() != self.parent_pid:
            return False
        try:
            if self.conn.poll(timeout):
                self._heard(self.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _heard(self, said: object) -> None:
        with contextlib.suppress(ValueError):  # nothing else is sent on this pipe
            self.said.add(Command(said))

    def wait_for(self, command: Command, abort: Command | None = None) -> bool:
        """Wait until ``command`` was said; False if ``abort`` was said first, or the
        supervisor is gone."""
        while command not in self.said:
            if abort is not None and abort in self.said:
                return False
            if os.getppid() != self.parent_pid:
                return False
            try:
                if self.conn.poll(0.5):
                    self._heard(self.conn.recv())
            except (EOFError, OSError):  # the supervisor closed it: it is gone
                return False
        return True


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(EXIT_ORPHANED)


def title(worker: str, flow: str) -> str:
    """What ``ps`` shows for a worker process."""
    return f"procflow: worker {worker} [flow {flow}]"


def worker_main(
    blob: bytes,
    worker: str,
    raw_status: Any,
    commands_conn: Connection,
    conn: Connection,
    parent_pid: int,
    log_level: str,
    setup: WorkerSetup,
) -> None:
    """Run one worker process from its cloudpickled WorkerPayload; ``setup`` (pinning,
    thread variables) is applied before the payload is unpickled."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_signal = {"seen": False}

    def on_term(signum: int, frame: Any) -> None:
        stop_signal["seen"] = True

    signal.signal(signal.SIGTERM, on_term)

    pid = os.getpid()
    # before the user's function arrives: unpickling it may import the user's module and
    # numpy with it, whose math library reads the thread variables once, when it loads
    notes = setup_process(setup)
    try:
        payload: WorkerPayload = cloudpickle.loads(blob)
    except Exception as exc:  # the function's module cannot be imported here, …
        why = f"its function could not be loaded: {type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, ValueError):
            conn.send((Report.CONNECT_FAILED, why))
        sys.exit(EXIT_CONNECT_FAILED)
    payload.worker = worker
    os.environ[WORKER_MARK] = f"{payload.holder}|{pid}"  # inherited by what the jobs start
    name = title(worker, payload.flow)
    setproctitle.setproctitle(name)  # the command line ps shows, where it can be rewritten
    setproctitle.setthreadtitle(name)  # and the process name (ps -o comm), always
    queue = payload.partitions[0].stage.name  # a partitioned flow's: the first partition's
    install_child_logging(conn, log_level, flow=payload.flow, queue=queue, worker=worker, pid=pid)
    log = logger.bind(flow=payload.flow, queue=queue, worker=worker, pid=pid)
    late = limit_loaded_pools()  # libraries loaded before the variables were set
    if late:
        notes.append(("WARNING" if setup.slot == 0 else "DEBUG", late))
    for level, note in notes:
        log.log(level, "worker {}: {}", worker, note)
    sessions = payload.open_sessions()
    commands = Commands(commands_conn, parent_pid)

    def gate() -> bool:  # paused: wait for the supervisor's word, holding no job
        while raw_status.pause:
            if stop_signal["seen"] or raw_status.stop or not commands.take(0.5):
                return False
        return True

    loop = WorkerLoop(
        payload,
        sessions[0],
        StatusWriter(raw_status),
        log,
        stop_flag=lambda: stop_signal["seen"],
        gate=gate,
        more_sessions=sessions[1:],
    )

    def send(*message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(message)

    if not commands.wait_for(Command.CONNECT, abort=Command.DISCONNECT):
        return
    try:
        loop.connect()
    except Exception as exc:
        send(Report.CONNECT_FAILED, f"{type(exc).__name__}: {exc}")
        sys.exit(EXIT_CONNECT_FAILED)
    send(Report.CONNECTED, time.monotonic_ns(), loop.client_id)
    if not commands.wait_for(Command.START, abort=Command.DISCONNECT):
        loop.disconnect()
        send(Report.DISCONNECTED, time.monotonic_ns())
        return
    send(Report.STARTED, time.monotonic_ns())
    try:
        ending = loop.run()
    except Exception:
        log.exception("worker loop crashed")
        sys.exit(1)
    send(Report.STOPPED, time.monotonic_ns(), ending)
    if ending.reason is EndReason.STOP and not stop_signal["seen"]:
        commands.wait_for(Command.DISCONNECT)
    loop.disconnect()
    send(Report.DISCONNECTED, time.monotonic_ns())
    sys.stdout.flush()
    sys.stderr.flush()
