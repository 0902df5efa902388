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
#: the longest a stage with jobs waits without a process before it is given one (seconds)
MAX_WAIT = 1.0


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
    """Process counts per stage, at most ``cores`` in all: each stage first gets its ``min``,
    then each core goes where the work per process would be largest — so a stage with a
    little work waits while a backed-up one has the cores (``Balancer`` sees that it does
    not wait for long) — never more processes than a stage has jobs, never over its
    ``max``."""
    counts = {load.name: 0 for load in loads}
    left = cores
    by_work = sorted(loads, key=lambda load: -load.work())
    for load in by_work:  # the floors, the busiest stages first when cores are short
        give = min(load.min, left, load.max)
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


def _cost(loads: Sequence[StageLoad], counts: Mapping[str, int], cores: int) -> float:
    """About how long the work at hand takes with these counts: the slowest stage that has
    processes, and never less than all the work spread over every core."""
    slowest = max(
        (x.work() / counts[x.name] for x in loads if x.jobs and counts.get(x.name, 0)),
        default=0.0,
    )
    return max(slowest, sum(x.work() for x in loads) / cores)


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
    dwell: float = 0.25
    max_wait: float = MAX_WAIT
    mean_time: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)
    _moved_at: dict[str, float] = field(default_factory=dict)
    _idle_since: dict[str, float] = field(default_factory=dict)

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
        for x in loads:  # how long has a stage had jobs but no process?
            if x.jobs and not current.get(x.name, 0):
                self._idle_since.setdefault(x.name, now)
            else:
                self._idle_since.pop(x.name, None)
        known = [t for t in self.mean_time.values() if t > 0]
        guess = min(known) if known else None  # a new stage: like the quickest one known
        loads = [
            StageLoad(
                x.name,
                x.waiting,
                x.running,
                self.mean_time.get(x.name, x.mean_time if x.mean_time is not None else guess),
                max(x.min, 1 if now - self._idle_since.get(x.name, now) >= self.max_wait else 0),
                x.max,
            )
            for x in loads
        ]
        target = allocate(loads, self.cores)
        if all(target[name] == current.get(name, 0) for name in target):
            return None
        starving = {
            x.name for x in loads if x.jobs and not current.get(x.name, 0) and target[x.name]
        }
        gain = _cost(loads, target, self.cores) < (1 - GAIN) * _cost(loads, current, self.cores)
        if not starving and not gain:
            return None  # not worth a move
        # a stage that moved lately keeps its count, so nothing flaps — except that a stage
        # with nothing at hand may always give its processes up, and a starving stage (jobs,
        # no process) gets one whatever moved lately
        for x in loads:
            name, now_has = x.name, current.get(x.name, 0)
            if now - self._moved_at.get(name, -math.inf) >= self.dwell:
                continue
            if (target[name] < now_has and x.jobs and not starving) or (
                target[name] > now_has and name not in starving
            ):
                target[name] = now_has
        total = sum(target.values())
        for name in sorted(target, key=lambda n: (n in starving, current.get(n, 0) - target[n])):
            while total > self.cores and target[name] > current.get(name, 0):
                target[name] -= 1  # over the budget: the least needy gainers give way
                total -= 1
        if all(target[name] == current.get(name, 0) for name in target):
            return None
        for name in target:
            if target[name] != current.get(name, 0):
                self._moved_at[name] = now
        return target
