"""Why a worker loop ended: told to stop, or due for recycling (after so many jobs, or at an
age). The loop returns an ``Ending`` and the ``STOPPED`` report carries it to the supervisor,
which replaces a recycled worker (``recycles``); it becomes text only in the log
(``"recycle: 2 jobs done"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["STOP", "EndReason", "Ending"]


class EndReason(Enum):
    """Why a worker loop ends."""

    #: told to stop: by the supervisor (its status record, SIGTERM), or while paused
    STOP = "stop"
    #: due for recycling: it did ``max_jobs_per_child`` jobs
    RECYCLE_JOBS = "recycle-jobs"
    #: due for recycling: it is ``max_age`` seconds old
    RECYCLE_AGE = "recycle-age"


@dataclass(frozen=True)
class Ending:
    """Why a worker loop ended, and the detail its report gives (``2 jobs done``)."""

    reason: EndReason
    detail: str = ""

    @property
    def recycles(self) -> bool:
        """Due for recycling: its supervisor replaces it."""
        return self.reason is not EndReason.STOP

    def __str__(self) -> str:
        """As the log shows it: ``stop``, or ``recycle: `` and the detail."""
        if self.reason is EndReason.STOP:
            return "stop"
        return f"recycle: {self.detail}"


#: told to stop
STOP = Ending(EndReason.STOP)
