"""Carrying out the core budget on the manager thread (the policy is ``budget.py``).

Every ``interval`` seconds: read how many jobs wait per stage (one pipelined round trip),
see what the live workers run and how long their jobs took, ask the Balancer, and carry out a
decision — a stage that loses processes pauses them (each finishes the job in hand, then holds,
connected, taking nothing: idle ones first, nothing is killed mid-job), a stage that gains
resumes one of its paused processes (instant) or gets a new one. A core is used again only
once the process that held it has paused, so no more than the budget's processes ever run
jobs; while a decision waits for that, the budget looks every ``PENDING_INTERVAL`` (status
records only, no Redis), so a freed core is not left idle for a whole interval.

Each decision is one DEBUG line (``rebalanced: …``); at INFO, one summary at most every
``SUMMARY_EVERY`` seconds (``budget: 6 moves in the last 5.0 s: …``). ``moves`` counts the
processes moved since the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..cpus import usable_cpus
from ..errors import ConfigurationError, RedisRefusedError, RedisUnavailableError
from ..handles import PARENT, WorkerGroup, WorkerHandle
from ..partitions import StoreMap
from ..worker.status import Activity, read_status
from .budget import Balancer, StageLoad, describe
from .process import WorkerProcess, WorkerTable

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["CoreBudget", "Limits", "cores_of", "start_budget"]

#: how often the budget looks at the work (seconds)
INTERVAL = 0.05
#: how often it looks whether a paused process has freed its core, while a decision waits
PENDING_INTERVAL = 0.005
#: the fewest seconds between two INFO summaries of the moves
SUMMARY_EVERY = 5.0


@dataclass(frozen=True)
class Limits:
    """A stage's process limits under a budget (``--workers check=1:8``)."""

    min: int = 0
    max: int | None = None


@dataclass
class CoreBudget:
    """At most ``cores`` job-running processes over ``groups``, moved by demand."""

    cores: int
    groups: Sequence[WorkerGroup]
    stores: StoreMap
    table: WorkerTable
    log: Logger
    limits: dict[str, Limits] = field(default_factory=dict)
    interval: float = INTERVAL
    balancer: Balancer = field(init=False)
    next_tick: float = 0.0
    #: busy seconds and jobs of a stage's processes that have exited
    retired: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: told to pause, still finishing a job: their cores are not free yet
    pausing: set[WorkerHandle] = field(default_factory=set)
    #: paused: alive and connected, holding no core
    paused: set[WorkerHandle] = field(default_factory=set)
    #: a decision whose growth waits for pausing processes (never over the budget)
    pending: dict[str, int] | None = None
    #: processes moved from one stage to another (or into a free core) since the start
    moves: int = 0
    #: since the last INFO summary: when it was, and processes gained / lost per stage
    summarized_at: float = field(default_factory=time.monotonic)
    gained: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.balancer = Balancer(self.cores)

    # -- what is where -------------------------------------------------------------------

    def _active(self, group: WorkerGroup) -> list[WorkerProcess]:
        out = []
        for handle in group.handles:
            w = self.table.get(handle)
            if w is not None and not w.gone and handle not in self.pausing | self.paused:
                out.append(w)
        return out

    def _waiting(self) -> list[int]:
        """Jobs waiting per group, summed over the partitions of its stage."""
        stages = [stage for g in self.groups for stage in g.stages]
        counts = iter(self.stores.waiting_counts(stages))
        return [sum(next(counts) for _ in g.stages) for g in self.groups]

    def current(self) -> dict[str, int]:
        return {g.name: len(self._active(g)) for g in self.groups}

    def on_exit(self, w: WorkerProcess) -> bool:
        """Remember what an exited process did (its status record is reused); whether it
        may be replaced (not a paused one: it held no core)."""
        view = read_status(w.status)
        name = w.handle.group.name
        busy, jobs = self.retired.get(name, (0.0, 0))
        self.retired[name] = (busy + view.busy, jobs + view.jobs)
        held = w.handle in self.pausing | self.paused
        self.pausing.discard(w.handle)
        self.paused.discard(w.handle)
        return not held

    def _settle_pauses(self) -> None:
        for handle in list(self.pausing):
            w = self.table.get(handle)
            if w is None or w.gone or read_status(w.status).activity is Activity.PAUSED:
                self.pausing.discard(handle)
                if w is not None and not w.gone:
                    self.paused.add(handle)

    def _loads(self, waiting: Sequence[int]) -> list[StageLoad]:
        loads = []
        for group, n in zip(self.groups, waiting, strict=True):
            name = group.name
            busy, jobs = self.retired.get(name, (0.0, 0))
            running = 0
            for w in self._active(group):
                view = read_status(w.status)
                busy, jobs = busy + view.busy, jobs + view.jobs
                running += view.activity in (Activity.RUNNING, Activity.COMPLETING)
            self.balancer.observe(name, busy, jobs)
            limit = self.limits.get(name, Limits())
            most = min(len(group.handles), limit.max if limit.max is not None else self.cores)
            loads.append(StageLoad(name, n, running, None, limit.min, most))
        return loads

    # -- deciding --------------------------------------------------------------------------

    def initial(self) -> list[WorkerHandle]:
        """The handles to start with: by the work waiting now, else the first stage."""
        try:
            waiting = self._waiting()
        except (RedisUnavailableError, RedisRefusedError):
            waiting = [0] * len(self.groups)
        target = self.balancer.decide(self._loads(waiting), self.current()) or {}
        if not any(target.values()):  # nothing waits yet: the first stages, one core each
            target = {g.name: 1 for g in self.groups[: self.cores]}
        return [h for g in self.groups for h in g.handles[: target.get(g.name, 0)]]

    def tick(self, spawn: Callable[[WorkerHandle], object], unblock: Callable[[int], None]) -> None:
        """Look at the work; move processes if the balancer says so. A stage grows only into
        cores that are free: processes told to go must have exited first, so no more than
        ``cores`` processes ever run jobs."""
        now = time.monotonic()
        self.next_tick = now + self.interval
        self._summarize(now)
        self._settle_pauses()
        if self.pending is None:
            self._decide(unblock)
        if self.pending is not None:
            self._grow_into_free(self.pending, spawn)
        if self.pending is not None:  # a core frees when a pausing process has paused
            self.next_tick = now + PENDING_INTERVAL

    def _decide(self, unblock: Callable[[int], None]) -> None:
        try:
            waiting = self._waiting()
        except (RedisUnavailableError, RedisRefusedError):
            return  # no news of the work: keep the counts
        loads = self._loads(waiting)
        current = self.current()
        target = self.balancer.decide(loads, current)
        if target is None:
            return
        self.log.debug("rebalanced: {}", describe(current, target, loads))
        for name, n in target.items():
            delta = n - current[name]
            if delta > 0:
                self.gained[name] = self.gained.get(name, 0) + delta
                self.moves += delta
            elif delta < 0:
                self.lost[name] = self.lost.get(name, 0) - delta
        for group in self.groups:  # shrink first: the cores are freed before they are used
            self._shrink(group, current[group.name] - target[group.name], unblock)
        self.pending = target

    def _summarize(self, now: float) -> None:
        """One INFO line for the moves since the last one, at most every SUMMARY_EVERY."""
        if not self.gained or now - self.summarized_at < SUMMARY_EVERY:
            return
        moved = sum(self.gained.values())
        stages = ", ".join(
            f"{g.name} +{self.gained.get(g.name, 0)}/-{self.lost.get(g.name, 0)}"
            for g in self.groups
            if g.name in self.gained or g.name in self.lost
        )
        counts = " ".join(f"{name}={n}" for name, n in self.current().items())
        self.log.info(
            "budget: {} move(s) in the last {:.1f} s: {}; now {}",
            moved,
            now - self.summarized_at,
            stages,
            counts,
        )
        self.summarized_at = now
        self.gained.clear()
        self.lost.clear()

    def _grow_into_free(
        self, target: dict[str, int], spawn: Callable[[WorkerHandle], object]
    ) -> None:
        self._settle_pauses()
        current = self.current()
        free = self.cores - sum(current.values()) - len(self.pausing)
        for group in self.groups:
            want = min(target.get(group.name, 0) - current[group.name], free)
            free -= self._grow(group, want, spawn)
        current = self.current()
        if not self.pausing or all(current[name] >= n for name, n in target.items()):
            self.pending = None  # reached, or nothing left to wait for

    def _shrink(self, group: WorkerGroup, n: int, unblock: Callable[[int], None]) -> None:
        if n <= 0:
            return
        active = self._active(group)
        idle_first = sorted(
            active, key=lambda w: read_status(w.status).activity is not Activity.WAITING
        )
        for w in idle_first[:n]:
            self.pausing.add(w.handle)
            w.pause()  # finishes the job in hand, then holds
            if w.client_id is not None:
                unblock(w.client_id)

    def _grow(self, group: WorkerGroup, n: int, spawn: Callable[[WorkerHandle], object]) -> int:
        """Resume (or else start) up to ``n`` processes for ``group``; returns how many."""
        started = 0
        for handle in group.handles:  # a paused process first: it is connected already
            w = self.table.get(handle)
            if started < n and handle in self.paused and w is not None and not w.gone:
                self.paused.discard(handle)
                w.resume()
                started += 1
        for handle in group.handles:
            w = self.table.get(handle)
            if started < n and (w is None or w.gone) and handle not in self.pausing:
                spawn(handle)
                started += 1
        return started


def cores_of(cores: int | str | None) -> int | None:
    """A core budget: a number >= 1, ``auto`` (the cores this process may use), or None."""
    if cores is None:
        return None
    if cores == "auto":
        return usable_cpus()
    if isinstance(cores, int) and not isinstance(cores, bool) and cores >= 1:
        return cores
    raise ConfigurationError(f"cores must be a number >= 1 or 'auto', got {cores!r}")


def start_budget(
    cores: int,
    groups: Sequence[WorkerGroup],
    stores: StoreMap,
    table: WorkerTable,
    log: Logger,
    limits: Mapping[str, Limits],
) -> tuple[CoreBudget, list[WorkerHandle]]:
    """The budget over ``groups`` and the processes to start with. Every job-running group
    may use up to its max (default: all the cores); the first processes go where the work
    waits now. Parent stages only create child jobs and pass parents on — light work — so
    they keep their own workers outside the budget."""
    running = [g for g in groups if g.kind != PARENT]
    for group in running:
        limit = limits.get(group.name, Limits())
        group.set_count(limit.max if limit.max is not None else cores)
    budget = CoreBudget(cores, running, stores, table, log, dict(limits))
    handles = budget.initial()
    parents = [h for g in groups if g.kind == PARENT for h in g.handles]
    log.info(
        "core budget: {} process(es) over {} stage(s); starting with {}",
        cores,
        len(running),
        ", ".join(h.name for h in handles) or "none",
    )
    return budget, handles + parents
