"""What this node's workers did, summed: the numbers behind heartbeats and metrics.

Each worker process counts its own job outcomes, durations and CPU times in its
shared-memory status record (no Redis command); the supervisor adds the records of the live
processes to what the processes that ended had counted, and counts itself what only it
sees: how a worker process ended (a crash, a time or memory limit, a cancel) and how often
one was replaced. No multiprocess mode, no files: one process sees every outcome.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..cost import DURATION_BUCKETS, JobCost
from ..worker.status import Outcome, StatusView

__all__ = ["StageTally", "Tally"]


@dataclass
class StageTally:
    """One stage's sums on this node."""

    outcomes: list[int] = field(default_factory=lambda: [0] * len(Outcome))
    durations: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    redis_errors: int = 0
    #: how worker processes of this stage ended unplanned, by kind (crash, timeout, …)
    ended: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    renewals: int = 0
    renewals_lost: int = 0
    #: the CPU time of the worker processes while they ran jobs, as ``durations``
    cpu: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    cpu_sum: float = 0.0

    def add(self, view: StatusView) -> None:
        for i, n in enumerate(view.outcomes):
            self.outcomes[i] += n
        for i, n in enumerate(view.durations):
            self.durations[i] += n
        self.duration_sum += view.duration_sum
        self.redis_errors += view.redis_errors
        for i, n in enumerate(view.cpu_durations):
            self.cpu[i] += n
        self.cpu_sum += view.cpu_sum

    def copy(self) -> StageTally:
        return StageTally(
            list(self.outcomes),
            list(self.durations),
            self.duration_sum,
            self.redis_errors,
            Counter(self.ended),
            self.restarts,
            self.renewals,
            self.renewals_lost,
            list(self.cpu),
            self.cpu_sum,
        )

    def cost(self) -> JobCost:
        """Every job measured here so far, for the cost model (``cost.Decayed``)."""
        return JobCost(
            float(sum(self.durations)),
            self.duration_sum,
            self.cpu_sum,
            [float(n) for n in self.durations],
            [float(n) for n in self.cpu],
        )

    @property
    def jobs(self) -> int:
        return sum(self.outcomes)


class Tally:
    """Per stage: what the ended worker processes counted, plus what the supervisor saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, StageTally] = {}

    def _stage(self, stage: str) -> StageTally:
        tally = self._stages.get(stage)
        if tally is None:
            tally = self._stages[stage] = StageTally()
        return tally

    def retire(self, stage: str, view: StatusView) -> None:
        """A worker process of ``stage`` ended: keep what its record counted."""
        with self._lock:
            self._stage(stage).add(view)

    def ended(self, stage: str, kind: str) -> None:
        with self._lock:
            self._stage(stage).ended[kind] += 1

    def restarted(self, stage: str) -> None:
        with self._lock:
            self._stage(stage).restarts += 1

    def renewed(self, stage: str, held: bool) -> None:
        with self._lock:
            tally = self._stage(stage)
            tally.renewals += 1
            if not held:
                tally.renewals_lost += 1

    def snapshot(self, live: Iterable[tuple[str, StatusView]]) -> dict[str, StageTally]:
        """Per stage: the ended processes' sums plus the live records ``live`` (stage, view)."""
        with self._lock:
            out = {name: t.copy() for name, t in self._stages.items()}
        for stage, view in live:
            tally = out.get(stage)
            if tally is None:
                tally = out[stage] = StageTally()
            tally.add(view)
        return out
