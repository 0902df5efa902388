"""The cost model: what a stage's jobs cost, how long its backlog will take, without I/O.

Each worker process measures every job it runs — wall time, and its own CPU time (of every
job but very short ones, of which it measures a sample) — in its status record (a histogram
over ``DURATION_BUCKETS`` and a sum of each, no Redis command); the supervisor's tally sums
them per stage on its node. From there:

- **A node's figures follow the work** (:class:`Decayed`): every heartbeat folds what its
  workers measured since the previous beat into figures that decay exponentially with a
  half-life of ``HALF_LIFE`` seconds (a job's weight halves every minute), but never below
  the weight of one job (an idle stage keeps its last figures, rescaled: its means and
  quantiles stay as they were), and publishes them in its record
  (:meth:`JobCost.as_record`): the jobs measured (a decayed count), the sums of their wall
  and CPU times and the two histograms.
- **Nodes combine by addition** (:meth:`JobCost.combined`): decayed counts, sums and
  histograms add, so the fleet's mean is the summed wall time over the summed count, and
  its p50 / p95 are read from the summed histogram (linear within a bucket:
  :func:`quantile`).
- **The backlog** of a stage in work-seconds (:func:`backlog_seconds`) is the jobs it still
  has to run — waiting + delayed (retries due later) + processing (each counted whole: how
  far a running job got is not known) — times the mean wall time. Parked parent jobs are
  not counted: their work is their children's, in the child stages' backlogs.
- **A stage's ETA** (:func:`eta_seconds`) is its backlog divided by the workers serving it
  (each worker process runs one job at a time, and the wall time already holds whatever a
  job waits on). None (null) when it has jobs to run but no job of it ran yet (no mean) or
  no worker serves it; 0 when it has nothing to run.
- **A flow's ETA** (:func:`flow_eta`) walks the stages in order, a pipeline: a stage cannot
  be done before the one before it, plus one of its own jobs, nor before it has run its own
  jobs and the ones still upstream of it (each passes every top stage). A parent stage's
  children run beside it: it is done when the slowest of them is. None when a stage on the
  way has work and no ETA.

``Waiting`` (``client/waiting.py``) needs none of this: a batch's ETA there is its jobs
still pending over the rate at which the batch's jobs finished during the wait.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DURATION_BUCKETS",
    "HALF_LIFE",
    "Decayed",
    "JobCost",
    "StageWork",
    "backlog_seconds",
    "by_stage",
    "eta_seconds",
    "flow_eta",
    "quantile",
    "seconds_text",
]

#: upper bounds (seconds) of the job-time histograms' buckets; one more counts the rest
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
WIDTH = len(DURATION_BUCKETS) + 1

#: seconds after which what a node measured counts half as much in its published figures
HALF_LIFE = 60.0


def quantile(histogram: Sequence[float], q: float, mean: float | None = None) -> float | None:
    """The ``q`` quantile (0 < q < 1) of a histogram over ``DURATION_BUCKETS``, linear
    within the bucket it falls in, as Prometheus's ``histogram_quantile`` reads one (the
    first bucket starts at 0; the last, unbounded one gives its lower bound). When every job
    is in one bucket and their ``mean`` is given, the bucket is narrowed to the widest span
    centred on the mean that it holds (jobs alike, 31 ms each, read as about 31 ms, not as
    spread over 25 … 50 ms). None for an empty histogram."""
    total = sum(histogram)
    if total <= 0:
        return None
    target = q * total
    seen = 0.0
    for i, n in enumerate(histogram):
        if n > 0 and seen + n >= target:
            low = DURATION_BUCKETS[i - 1] if i else 0.0
            alone = mean is not None and n >= total and mean >= low
            if i >= len(DURATION_BUCKETS):
                return max(low, mean) if alone and mean is not None else low
            high = DURATION_BUCKETS[i]
            if alone and mean is not None and mean <= high:
                half = min(mean - low, high - mean)
                low, high = mean - half, mean + half
            return low + (high - low) * (target - seen) / n
        seen += n
    return DURATION_BUCKETS[-1]


def _floats(value: Any) -> list[float]:
    """A histogram from a record: WIDTH numbers (anything else reads as empty)."""
    if isinstance(value, list) and len(value) == WIDTH:
        try:
            return [max(0.0, float(x)) for x in value]
        except (TypeError, ValueError):
            pass
    return [0.0] * WIDTH


def _number(value: Any) -> float:
    try:
        found = float(value)
    except (TypeError, ValueError):
        return 0.0
    return found if math.isfinite(found) and found > 0 else 0.0


@dataclass
class JobCost:
    """What a stage's jobs cost: a (decayed) count of jobs measured, the sums of their wall
    and CPU times, and a histogram of each."""

    jobs: float = 0.0
    wall_sum: float = 0.0
    cpu_sum: float = 0.0
    wall: list[float] = field(default_factory=lambda: [0.0] * WIDTH)
    cpu: list[float] = field(default_factory=lambda: [0.0] * WIDTH)

    @property
    def wall_mean(self) -> float | None:
        return self.wall_sum / self.jobs if self.jobs > 0 else None

    def wall_quantile(self, q: float) -> float | None:
        return quantile(self.wall, q, self.wall_mean)

    def cpu_quantile(self, q: float) -> float | None:
        return quantile(self.cpu, q, self.cpu_mean)

    @property
    def cpu_mean(self) -> float | None:
        """Over the jobs whose CPU time was measured (the histogram's total: a worker
        measures a sample of very short jobs)."""
        measured = sum(self.cpu)
        return self.cpu_sum / measured if measured > 0 else None

    def as_record(self) -> dict[str, Any]:
        """As a heartbeat carries it (rounded: the figures are estimates)."""
        return {
            "jobs": round(self.jobs, 4),
            "wallSum": round(self.wall_sum, 6),
            "cpuSum": round(self.cpu_sum, 6),
            "wall": [round(x, 4) for x in self.wall],
            "cpu": [round(x, 4) for x in self.cpu],
        }

    @classmethod
    def from_record(cls, data: Any) -> JobCost:
        """From a heartbeat's ``cost`` (anything unreadable reads as nothing measured)."""
        if not isinstance(data, Mapping):
            return cls()
        return cls(
            _number(data.get("jobs")),
            _number(data.get("wallSum")),
            _number(data.get("cpuSum")),
            _floats(data.get("wall")),
            _floats(data.get("cpu")),
        )

    @classmethod
    def combined(cls, costs: Sequence[JobCost]) -> JobCost:
        """Several nodes' figures as one: everything adds."""
        out = cls()
        for c in costs:
            out.jobs += c.jobs
            out.wall_sum += c.wall_sum
            out.cpu_sum += c.cpu_sum
            out.wall = [a + b for a, b in zip(out.wall, c.wall, strict=True)]
            out.cpu = [a + b for a, b in zip(out.cpu, c.cpu, strict=True)]
        return out


class Decayed:
    """One stage's figures on one node, following the work: ``update`` takes the node's
    cumulative counts (they only grow) and folds what is new since the last call into
    figures whose weight halves every ``half_life`` seconds, down to one job's weight."""

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        self.half_life = half_life
        self.cost = JobCost()
        self._last: JobCost | None = None
        self._at: float | None = None

    def update(self, cumulative: JobCost, now: float) -> JobCost:
        """Fold in what ``cumulative`` (the node's counts since it started) holds beyond the
        last call's, at ``now`` (monotonic seconds); returns the figures. A count that went
        down (a worker's record read twice as it ended) adds nothing."""
        last = self._last or JobCost()
        factor = 1.0 if self._at is None else 0.5 ** (max(0.0, now - self._at) / self.half_life)
        c = self.cost

        def step(old: float, new: float, before: float) -> float:
            return old * factor + max(0.0, new - before)

        c.jobs = step(c.jobs, cumulative.jobs, last.jobs)
        c.wall_sum = step(c.wall_sum, cumulative.wall_sum, last.wall_sum)
        c.cpu_sum = step(c.cpu_sum, cumulative.cpu_sum, last.cpu_sum)
        c.wall = [step(*x) for x in zip(c.wall, cumulative.wall, last.wall, strict=True)]
        c.cpu = [step(*x) for x in zip(c.cpu, cumulative.cpu, last.cpu, strict=True)]
        if 0 < c.jobs < 1:  # an idle stage keeps its figures, as much as one job weighs
            scale = 1 / c.jobs
            c.jobs, c.wall_sum, c.cpu_sum = 1.0, c.wall_sum * scale, c.cpu_sum * scale
            c.wall = [x * scale for x in c.wall]
            c.cpu = [x * scale for x in c.cpu]
        self._last = cumulative
        self._at = now
        return c


#: worker states (in a heartbeat's record) that count as serving a stage, for its ETA
SERVING = ("idle", "running", "starting")


def by_stage(
    nodes: Sequence[Mapping[str, Any]], short: Callable[[str], str] = str
) -> dict[str, tuple[JobCost, int]]:
    """Per stage, from the live nodes' heartbeat records: the nodes' figures added up, and
    the worker processes serving it (idle, running or starting). ``short`` names a stage
    the way the user wrote it (a partition's stage names carry its tag)."""
    costs: dict[str, list[JobCost]] = {}
    workers: dict[str, int] = {}
    for node in nodes:
        stages = node.get("stages")
        if isinstance(stages, Mapping):
            for name, entry in stages.items():
                if isinstance(entry, Mapping) and "cost" in entry:
                    costs.setdefault(short(str(name)), []).append(
                        JobCost.from_record(entry["cost"])
                    )
        for w in node.get("workers") or []:
            serving = isinstance(w, Mapping) and w.get("state") in SERVING
            if serving and isinstance(w.get("stage"), str):
                name = short(w["stage"])
                workers[name] = workers.get(name, 0) + 1
    return {
        name: (JobCost.combined(costs.get(name, [])), workers.get(name, 0))
        for name in {*costs, *workers}
    }


def backlog_seconds(pending: int, mean: float | None) -> float | None:
    """Work-seconds of ``pending`` jobs (waiting + delayed + processing) at ``mean`` wall
    seconds each: 0 with nothing pending, None when there is and no mean is known."""
    if pending <= 0:
        return 0.0
    if mean is None:
        return None
    return pending * mean


def eta_seconds(backlog: float | None, workers: int) -> float | None:
    """Seconds until a stage has run its backlog, with ``workers`` worker processes on it:
    0 for no backlog, None for an unknown backlog or none to run it."""
    if backlog is None:
        return None
    if backlog <= 0:
        return 0.0
    if workers <= 0:
        return None
    return backlog / workers


@dataclass(frozen=True)
class StageWork:
    """A stage as :func:`flow_eta` sees it."""

    name: str
    parent: str | None
    pending: int
    mean: float | None
    workers: int


def flow_eta(stages: Sequence[StageWork]) -> float | None:
    """Seconds until every stage has run what it holds and what will still come from
    upstream, the stages in pipeline order (each top stage, its child stages after it): see
    the module's docstring. 0 when nothing is pending; None when a stage that will have work
    has no mean or no worker."""
    done = 0.0  # when the previous top stage is done (with its children)
    upstream = 0  # jobs pending in the top stages before this one
    children: dict[str, list[StageWork]] = {}
    for s in stages:
        if s.parent is not None:
            children.setdefault(s.parent, []).append(s)
    for s in stages:
        if s.parent is not None:
            continue
        work = s.pending + upstream
        own = 0.0
        if work > 0:
            eta = eta_seconds(backlog_seconds(work, s.mean), s.workers)
            if eta is None or s.mean is None:
                return None
            own = max(done + s.mean if upstream else 0.0, eta)
        for child in children.get(s.name, []):
            eta = eta_seconds(backlog_seconds(child.pending, child.mean), child.workers)
            if eta is None:
                return None
            own = max(own, eta)
        done = max(done, own)
        upstream += s.pending
    return done


def seconds_text(seconds: float | None) -> str:
    """A duration or an ETA as people read it: ``-`` (not known), ``12 s``, ``4 min``,
    ``1.5 h``."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
