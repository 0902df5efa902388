"""A node's core budget, shared across stages by demand.

With ``Supervisor(flow, cores=N)`` at most N job-running processes live at once, and the
supervisor moves them between stages as the work moves: a stage's demand is its jobs at hand
(waiting plus running) times its measured mean job time (decayed, so it follows the work).
:class:`Balancer` gives cores nobody holds to the stage whose work per process would be
largest (:func:`allocate`: from scratch), and moves processes one at a time from the
counts there are, with hysteresis:

- a move must be worth it: the stage that gains has at least ``batch`` seconds of work per
  process after the move, and its work per process beats the giver's by ``margin``; a
  stage with jobs keeps its last process (its jobs would wait, and in a pipeline the
  stages after it would run dry);
- a stage whose count changed keeps it for ``dwell`` seconds; only a process with nothing at
  hand (more processes than jobs) may leave earlier, to a stage where it is worth it — or,
  once its stage has had nothing at hand and finished no job for ``idle_grace`` seconds, to
  any stage with jobs;
- a stage with jobs and no process for ``max_wait`` seconds gets one whatever else holds.

Work at hand answers to the counts themselves (a stage without a process piles up jobs, one
with two drains), so without those three the next look undoes the last move. The manager
thread carries out a decision: a stage that loses a process lets it finish the job in hand
and pause; a stage that gains one resumes or starts one. This module decides; it starts or
stops nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

__all__ = ["Balancer", "StageLoad", "allocate", "describe"]

#: weight of the newest sample in a stage's mean job time (exponential decay)
DECAY = 0.3
#: a stage whose job time is not known yet is assumed to take this long (seconds)
UNKNOWN_JOB_TIME = 0.05
#: a move's gainer must have this share more work per process than its giver keeps
MARGIN = 0.2
#: a move's gainer must have at least this much work per process after it (seconds)
BATCH = 0.25
#: a stage whose count changed keeps it this long, unless its processes have nothing at hand
DWELL = 1.0
#: the processes of a stage that had nothing at hand and finished no job for this long go
#: to any stage with jobs
IDLE_GRACE = 0.1
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
    """Process counts per stage from scratch, at most ``cores`` in all: each stage first
    gets its ``min``, then each core goes where the work per process would be largest —
    so a stage with a little work waits while a backed-up one has the cores (the
    ``Balancer`` sees that it does not wait for long) — never more processes than a stage
    has jobs, never over its ``max``."""
    counts = Balancer(cores).decide(loads, {}, now=0.0)
    return counts if counts is not None else {x.name: 0 for x in loads}


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
    """Decisions over time: measured job times and the hysteresis (margin, batch, dwell)."""

    cores: int
    dwell: float = DWELL
    max_wait: float = MAX_WAIT
    margin: float = MARGIN
    batch: float = BATCH
    idle_grace: float = IDLE_GRACE
    mean_time: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)
    _moved_at: dict[str, float] = field(default_factory=dict)
    _idle_since: dict[str, float] = field(default_factory=dict)
    _empty_since: dict[str, float] = field(default_factory=dict)

    def observe(self, stage: str, busy_seconds: float, jobs: int) -> None:
        """Cumulative busy time and job count of a stage's processes (as their status
        records say); the difference since the last observation updates the mean."""
        before = self._seen.get(stage)
        self._seen[stage] = (busy_seconds, jobs)
        if before is None or jobs <= before[1] or busy_seconds < before[0]:
            return
        self._empty_since.pop(stage, None)  # it finished jobs: not idle, whatever it has now
        sample = (busy_seconds - before[0]) / (jobs - before[1])
        old = self.mean_time.get(stage)
        self.mean_time[stage] = sample if old is None else (1 - DECAY) * old + DECAY * sample

    def timed(self, loads: Sequence[StageLoad]) -> list[StageLoad]:
        """``loads`` with the measured mean job times; a stage not measured yet is taken to
        be as quick as the quickest one known."""
        known = [t for t in self.mean_time.values() if t > 0]
        guess = min(known) if known else None
        return [
            replace(x, mean_time=self.mean_time.get(x.name, x.mean_time or guess)) for x in loads
        ]

    def decide(
        self, loads: Sequence[StageLoad], current: Mapping[str, int], now: float | None = None
    ) -> dict[str, int] | None:
        """The new counts, or None to keep the current ones. Cores nobody holds go where
        the work per process would be largest; then one process at a time moves to the
        neediest stage from the giver that loses least by it, while such a move is allowed
        (see the module's docstring)."""
        now = time.monotonic() if now is None else now
        for x in loads:  # since when has a stage had jobs but no process, or the reverse?
            n = current.get(x.name, 0)
            if x.jobs and not n:
                self._idle_since.setdefault(x.name, now)
            else:
                self._idle_since.pop(x.name, None)
            if n and not x.jobs:
                self._empty_since.setdefault(x.name, now)
            else:
                self._empty_since.pop(x.name, None)
        loads = self.timed(loads)
        counts = {x.name: current.get(x.name, 0) for x in loads}
        free = self.cores - sum(counts.values())
        gained: set[str] = set()
        for _ in range(len(loads) * self.cores):  # each round moves one process, or ends
            move = self._next_move(loads, counts, gained, free, now)
            if move is None:
                break
            giver, taker = move
            if giver is None:
                free -= 1
            else:
                counts[giver] -= 1
            counts[taker] += 1
            gained.add(taker)
        changed = [name for name, n in counts.items() if n != current.get(name, 0)]
        if not changed:
            return None
        for name in changed:
            self._moved_at[name] = now
        return counts

    def _next_move(
        self,
        loads: Sequence[StageLoad],
        counts: Mapping[str, int],
        gained: set[str],
        free: int,
        now: float,
    ) -> tuple[str | None, str] | None:
        """``(giver, taker)`` of the next process to move (giver None: a core nobody holds),
        or None when no move is allowed."""

        def per_process(x: StageLoad, n: int) -> float:
            return x.work() / n if n else math.inf

        takers = [x for x in loads if counts[x.name] < min(x.max, max(x.jobs, x.min))]
        urgent = {  # below its floor, or waited too long without a process
            x.name
            for x in takers
            if counts[x.name] < x.min
            or (not counts[x.name] and now - self._idle_since.get(x.name, now) >= self.max_wait)
        }
        takers.sort(key=lambda x: (x.name not in urgent, -per_process(x, counts[x.name] + 1)))
        for taker in takers:
            if free > 0:
                return None, taker.name
            after = per_process(taker, counts[taker.name] + 1)
            worth = taker.name in urgent or after >= self.batch
            givers = []
            for x in loads:
                n = counts[x.name]
                if x is taker or x.name in gained or n <= x.min:
                    continue
                idle = n > x.jobs  # a process with nothing at hand costs nothing to move
                spare = now - self._empty_since.get(x.name, now) >= self.idle_grace
                settled = now - self._moved_at.get(x.name, -math.inf) >= self.dwell
                if (
                    spare
                    or (idle and worth)
                    or taker.name in urgent
                    or (
                        worth
                        and settled
                        and n > 1  # a stage's last process leaves only when it is idle
                        and after > (1 + self.margin) * per_process(x, n)
                    )
                ):
                    givers.append((not idle, not settled, per_process(x, n - 1), x.name))
            if givers:
                return min(givers)[3], taker.name
        return None
