"""Running a supervisor until a signal (the command line): the first SIGTERM or SIGINT drains,
a second SIGINT stops at once."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Runnable", "run_until_signalled"]


class Runnable(Protocol):
    """What a signal-driven run needs of a supervisor."""

    log: Logger
    drain_timeout: float

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stop_now(self) -> None: ...
    def manager_alive(self) -> bool: ...


def run_until_signalled(sup: Runnable) -> int:
    """Start ``sup``, run until SIGTERM or SIGINT, stop it; returns the exit status (0 after
    a clean stop, 1 when the manager thread died)."""
    stop = threading.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            sup.log.info(
                "{} received: stopping; running jobs may take up to {:g} s to finish "
                "(Ctrl-C again to stop now)",
                signal.Signals(signum).name,
                sup.drain_timeout,
            )
            stop.set()
        else:
            sup.log.warning("second signal: stopping now, running jobs go back to waiting")
            sup.stop_now()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        sup.start()
        while not stop.wait(1.0):
            if not sup.manager_alive():
                sup.log.error("the supervisor's manager thread is gone; stopping")
                status = 1
                break
        sup.stop()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return status
