"""The entry point of a worker process.

The process puts itself in its own process group (so the supervisor can kill whatever the job
started, and Ctrl-C in a terminal reaches only the supervisor), asks the kernel to kill it if
the supervisor dies (Linux), then follows the supervisor's events: connect, start, stop,
disconnect. It reports each step on its pipe with the time on the shared monotonic clock.
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
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import cloudpickle
from loguru import logger

from ..store.session import StageSession
from .logs import install_child_logging
from .loop import WorkerLoop
from .payload import WorkerPayload
from .status import StatusWriter

__all__ = [
    "CONNECTED",
    "CONNECT_FAILED",
    "DISCONNECTED",
    "STARTED",
    "STOPPED",
    "WorkerEvents",
    "worker_main",
]

# What a worker reports on its pipe: (kind, monotonic ns, extra)
CONNECTED = "connected"  # extra: the blocking connection's client id
STARTED = "started"
STOPPED = "stopped"  # extra: why the loop ended ("stop" or "recycle: …")
DISCONNECTED = "disconnected"
CONNECT_FAILED = "connect_failed"  # (kind, error text)

_PR_SET_PDEATHSIG = 1
#: exit status of a worker whose supervisor died before it was set up
EXIT_ORPHANED = 70
#: exit status of a worker that could not connect
EXIT_CONNECT_FAILED = 3


class WorkerEvents(NamedTuple):
    """The four lifecycle events of one worker (multiprocessing.Event each)."""

    connect: Any
    start: Any
    stop: Any
    disconnect: Any


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(EXIT_ORPHANED)


def _wait(event: Any, parent_pid: int, abort: Any = None) -> bool:
    """Wait for ``event``; False if ``abort`` is set first or the supervisor is gone."""
    while True:
        if event.wait(0.5):
            return True
        if abort is not None and abort.is_set():
            return False
        if os.getppid() != parent_pid:
            return False


def worker_main(
    blob: bytes,
    worker: str,
    raw_status: Any,
    events: WorkerEvents,
    conn: Connection,
    parent_pid: int,
    log_level: str,
) -> None:
    """Run one worker process from its cloudpickled WorkerPayload."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_signal = {"seen": False}

    def on_term(signum: int, frame: Any) -> None:
        stop_signal["seen"] = True

    signal.signal(signal.SIGTERM, on_term)

    pid = os.getpid()
    payload: WorkerPayload = cloudpickle.loads(blob)
    payload.worker = worker
    stage = payload.stage
    install_child_logging(
        conn, log_level, flow=payload.flow, queue=stage.name, worker=worker, pid=pid
    )
    log = logger.bind(flow=payload.flow, queue=stage.name, worker=worker, pid=pid)
    session = StageSession.open(
        payload.redis,
        stage.keys,
        fields=stage.fields,
        lock_ms=payload.options.lock_ms,
        block_timeout=payload.options.block_timeout,
    )
    loop = WorkerLoop(
        payload, session, StatusWriter(raw_status), log, stop_flag=lambda: stop_signal["seen"]
    )

    def send(*message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(message)

    if not _wait(events.connect, parent_pid, events.disconnect):
        return
    try:
        loop.connect()
    except Exception as exc:
        send(CONNECT_FAILED, f"{type(exc).__name__}: {exc}")
        sys.exit(EXIT_CONNECT_FAILED)
    send(CONNECTED, time.monotonic_ns(), loop.client_id)
    if not _wait(events.start, parent_pid, events.disconnect):
        loop.disconnect()
        send(DISCONNECTED, time.monotonic_ns())
        return
    send(STARTED, time.monotonic_ns())
    try:
        reason = loop.run()
    except Exception:
        log.exception("worker loop crashed")
        sys.exit(1)
    send(STOPPED, time.monotonic_ns(), reason)
    if reason == "stop" and not stop_signal["seen"]:
        _wait(events.disconnect, parent_pid)
    loop.disconnect()
    send(DISCONNECTED, time.monotonic_ns())
    sys.stdout.flush()
    sys.stderr.flush()
