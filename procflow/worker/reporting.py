"""Progress from inside a job: ``procflow.progress(0.4, "parsed 4,000 rows")``.

A worker function calls ``progress`` as often as it likes — thousands of times a second
cost a few microseconds each: the report is kept in memory and written to the wire at most
every :data:`INTERVAL` seconds (the job field ``progress:Q``, announced on
``procflow:F:progress`` for watchers such as ``wait(..., progress=True)``). The last report
always reaches the job: it is written with the job's completion, in the same script call.
Outside a job (a plain call in a test, say) it does nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .. import codec

__all__ = ["INTERVAL", "Reporter", "current", "progress"]

#: the shortest time between two progress writes of one job (seconds)
INTERVAL = 0.2


class Reporter:
    """One job's progress: ``send(value_json, announcement_json)`` writes it (the worker's
    stage session)."""

    __slots__ = ("_last_sent", "_latest", "_send", "_sent", "interval", "job_id", "queue")

    def __init__(
        self,
        job_id: str,
        queue: str,
        send: Callable[[str, str], None],
        interval: float = INTERVAL,
    ) -> None:
        self.job_id = job_id
        self.queue = queue
        self.interval = interval
        self._send = send
        self._latest: tuple[float | None, str, int] | None = None
        self._sent = True
        self._last_sent = 0.0

    def report(self, fraction: float | None, message: str) -> None:
        if fraction is not None and not (
            isinstance(fraction, int | float) and math.isfinite(fraction) and 0 <= fraction <= 1
        ):
            raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        if not isinstance(message, str):
            raise ValueError(f"progress message must be a string, got {type(message).__name__}")
        self._latest = (None if fraction is None else float(fraction), message, 0)
        self._sent = False
        now = time.monotonic()
        if now - self._last_sent >= self.interval:
            self._last_sent = now
            self._sent = True
            self._send(self.value_json(), self._announcement())

    def value_json(self) -> str:
        """The ``progress:Q`` value of the last report."""
        fraction, message, _ = self._latest or (None, "", 0)
        return codec.encode(
            {"fraction": fraction, "message": message, "at": int(time.time() * 1000)}
        )

    def _announcement(self, ended: bool = False) -> str:
        fraction, message, _ = self._latest or (None, "", 0)
        report = {"id": self.job_id, "queue": self.queue, "fraction": fraction, "message": message}
        if ended:
            report["ended"] = True
        return codec.encode(report)

    def finish(self) -> None:
        """The function returned or raised: a job that reported progress announces that its
        run in this stage ended (watchers stop counting it as running)."""
        if self._latest is not None:
            self._send(self.value_json(), self._announcement(ended=True))

    @property
    def reported(self) -> bool:
        """Whether the job reported any progress (its last report is then written with the
        completion)."""
        return self._latest is not None


_current: Reporter | None = None


def current() -> Reporter | None:
    """The progress reporter of the job running in this process, if any."""
    return _current


def begin(reporter: Reporter) -> None:
    """The worker, before it calls a job's function."""
    global _current
    _current = reporter


def end() -> Reporter | None:
    """The worker, after the function returned or raised: the job's reporter."""
    global _current
    reporter, _current = _current, None
    return reporter


def progress(fraction: float | None = None, message: str = "") -> None:
    """Report how far the running job is: ``fraction`` from 0 to 1 (None when unknown) and a
    short message. Cheap; rate-limited to the wire. A no-op outside a procflow job."""
    reporter = _current
    if reporter is not None:
        reporter.report(fraction, message)
