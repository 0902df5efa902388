"""A node's core budget, shared across stages by demand.

With ``Supervisor(flow, cores=N)`` at most N job-running processes live at once, and the
supervisor moves them between stages as the work moves: a stage's demand is its jobs at hand
(waiting plus running) times its measured mean job time (decayed, so it follows the work).
:func:`allocate` turns demands into process counts; :class:`Balancer` adds the memory
(measured job times) and the hysteresis (a move must be worth it, and a stage's count moves
at most once per ``dwell`` seconds), so the counts do not flap. The manager thread carries
out a decision: a stage that loses a process lets it finish the job in hand and exit; a stage
that gains one gets a new process. This module decides; it starts or stops nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Balancer", "StageLoad", "allocate", "describe"]

#: weight of the newest sample in a stage's mean job time (exponential decay)
DECAY = 0.3
#: a stage whose job time is not known yet is assumed to take this long (seconds)
UNKNOWN_JOB_TIME = 0.05
#: a new allocation must cut the worst stage's work per process by this share to be adopted
GAIN = 0.2


@dataclass(frozen=True)
class StageLoad:
    """What one stage has at hand now, and its limits."""

    name: str
    waiting: int
    running: int
    mean_time: float | None
    min: int = 0
    max: int = 1_000_000

    @property
    def jobs(self) -> int:
        return self.waiting + self.running

    def work(self) -> float:
        """Seconds of work at hand, by the stage's mean job time."""
        mean = self.mean_time if self.mean_time is not None else UNKNOWN_JOB_TIME
        return self.jobs * max(mean, 1e-6)


def allocate(loads: Sequence[StageLoad], cores: int) -> dict[str, int]:
    """Process counts per stage, at most ``cores`` in all: each stage first gets its
    ``min`` (and one, if it has jobs at hand and cores remain), the rest goes where the work
    per process is largest, never more processes than a stage has jobs, never over its
    ``max``."""
    counts = {load.name: 0 for load in loads}
    left = cores
    by_work = sorted(loads, key=lambda load: -load.work())
    for load in by_work:  # the floors, the busiest stages first when cores are short
        want = max(load.min, 1 if load.jobs else 0)
        give = min(want, left, load.max)
        counts[load.name] = give
        left -= give
    while left > 0:
        candidates = [
            load
            for load in loads
            if counts[load.name] < min(load.max, load.jobs) and load.work() > 0
        ]
        if not candidates:
            break
        busiest = max(candidates, key=lambda load: load.work() / (counts[load.name] + 1))
        counts[busiest.name] += 1
        left -= 1
    return counts


def _worst(loads: Sequence[StageLoad], counts: Mapping[str, int]) -> float:
    """The largest work per process over the stages with jobs at hand (no process: inf)."""
    worst = 0.0
    for load in loads:
        if load.jobs:
            n = counts.get(load.name, 0)
            worst = max(worst, math.inf if n == 0 else load.work() / n)
    return worst


def describe(
    before: Mapping[str, int], after: Mapping[str, int], loads: Sequence[StageLoad]
) -> str:
    """``analyze 1→3, report 2→0 (waiting analyze=120 report=0)`` for the log."""
    moves = ", ".join(
        f"{name} {before.get(name, 0)}→{after[name]}"
        for name in after
        if after[name] != before.get(name, 0)
    )
    waiting = " ".join(f"{load.name}={load.waiting}" for load in loads)
    return f"{moves} (waiting {waiting})"


@dataclass
class Balancer:
    """Decisions over time: measured job times, hysteresis, a dwell time per stage."""

    cores: int
    dwell: float = 2.0
    mean_time: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)
    _moved_at: dict[str, float] = field(default_factory=dict)

    def observe(self, stage: str, busy_seconds: float, jobs: int) -> None:
        """Cumulative busy time and job count of a stage's processes (as their status
        records say); the difference since the last observation updates the mean."""
        before = self._seen.get(stage)
        self._seen[stage] = (busy_seconds, jobs)
        if before is None or jobs <= before[1] or busy_seconds < before[0]:
            return
        sample = (busy_seconds - before[0]) / (jobs - before[1])
        old = self.mean_time.get(stage)
        self.mean_time[stage] = sample if old is None else (1 - DECAY) * old + DECAY * sample

    def decide(
        self, loads: Sequence[StageLoad], current: Mapping[str, int], now: float | None = None
    ) -> dict[str, int] | None:
        """The new counts, or None to keep the current ones."""
        now = time.monotonic() if now is None else now
        loads = [
            StageLoad(
                x.name, x.waiting, x.running, self.mean_time.get(x.name, x.mean_time), x.min, x.max
            )
            for x in loads
        ]
        target = allocate(loads, self.cores)
        if all(target[name] == current.get(name, 0) for name in target):
            return None
        starving = any(x.jobs and current.get(x.name, 0) == 0 and target[x.name] for x in loads)
        worth_it = _worst(loads, target) < (1 - GAIN) * _worst(loads, current)
        if not (starving or worth_it):
            return None
        # a stage that moved lately keeps its count (unless it starves), so nothing flaps
        for x in loads:
            name = x.name
            recent = now - self._moved_at.get(name, -math.inf) < self.dwell
            if recent and target[name] != current.get(name, 0) and not (starving and x.jobs):
                target[name] = current.get(name, 0)
        total = sum(target.values())
        if total > self.cores:  # holding some stages back can overshoot: trim the gainers
            for name in sorted(target, key=lambda n: target[n] - current.get(n, 0), reverse=True):
                while total > self.cores and target[name] > current.get(name, 0):
                    target[name] -= 1
                    total -= 1
        if all(target[name] == current.get(name, 0) for name in target):
            return None
        for name in target:
            if target[name] != current.get(name, 0):
                self._moved_at[name] = now
        return target
