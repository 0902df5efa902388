"""FlowMonitor: the flow's caretaker, one active per flow and Redis.

Every supervisor runs a monitor thread, but only the one holding the leader lock
(``procflow:F:monitor``, a short TTL renewed each tick) acts; when its node dies another
takes over within the TTL. The leader:

- moves retries whose time has come from each stage's delayed set to its waiting list;
- finds jobs in processing lists with no lock (their worker or whole node died and the
  lock expired) and retries or fails them. A job must be seen without a lock on two scans
  at least ``grace`` seconds apart first, so a job that BLMOVE has just moved and whose lock
  is about to be set is never mistaken for an orphan; one that was never claimed goes back
  to waiting without costing an attempt. A scan costs O(jobs in processing);
- now and then checks parents parked for a while, in case their children finished without
  telling them (children marked done by another library, or expired).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..definition import FlowDefinition, Stage
from ..errors import RedisRefusedError, RedisUnavailableError
from ..failures import FailureRecord, record_failure
from ..store.redis import Store
from ..store.registry import Registry
from ..store.session import children_state

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["FlowMonitor", "MonitoredFlow", "Monitors"]


class MonitoredFlow(Protocol):
    """What a monitor needs of a flow (a ``procflow.Flow``)."""

    @property
    def name(self) -> str: ...
    @property
    def definition(self) -> FlowDefinition: ...
    @property
    def store(self) -> Store: ...
    @property
    def logger(self) -> Logger: ...


class FlowMonitor:
    """Runs in a thread of a supervisor (or on its own: ``start`` / ``stop``)."""

    def __init__(
        self,
        flow: MonitoredFlow,
        holder: str,
        *,
        interval: float = 1.0,
        leader_ttl: float = 5.0,
        grace: float = 2.0,
        parked_check: float = 10.0,
    ) -> None:
        self.flow = flow
        self.holder = holder
        self.interval = interval
        self.leader_ttl = max(leader_ttl, 3 * interval)
        self.grace = grace
        self.parked_check = parked_check
        self.log = flow.logger.bind(worker="monitor")
        #: the leadership is taken and given up through it (``procflow:F:monitor``)
        self.records = Registry(flow.store)
        self.is_leader = False
        self._lockless: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_parked = 0.0
        self._outage = False

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="procflow-monitor", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the thread and give up leadership (``release=False`` leaves the leader lock to
        expire, as when a node dies)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        if release:
            self.release()

    def release(self) -> None:
        """Give up leadership now (one try: the lock would expire anyway)."""
        if self.is_leader:
            with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
                self.records.resign_monitor(self.flow.name, self.holder)
            self.is_leader = False

    def step(self) -> float:
        """One round through outages and surprises (logged once per episode); returns how
        soon the next is wanted (seconds)."""
        wait = self.interval
        try:
            wait = min(wait, self.tick())
            if self._outage:
                self.log.info("monitor: Redis is reachable again")
                self._outage = False
        except (RedisUnavailableError, RedisRefusedError) as exc:
            if not self._outage:
                self.log.warning("monitor: {}", exc)
                self._outage = True
            self.is_leader = False
        except Exception:
            self.log.exception("monitor tick failed")
        return wait

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(max(0.01, self.step()))

    def tick(self) -> float:
        """One round; returns how soon the next is wanted (seconds)."""
        store = self.flow.store
        ttl_ms = int(self.leader_ttl * 1000)
        leader = self.records.lead_monitor(self.flow.name, self.holder, ttl_ms)
        if leader != self.is_leader:
            self.log.info(
                "monitor: {} the leader for flow {!r}",
                "now" if leader else "no longer",
                self.flow.name,
            )
            self.is_leader = leader
            self._lockless.clear()
        if not leader:
            return self.interval
        stages = list(self.flow.definition.stages.values())
        soonest = self.interval
        for moved, wait_ms in store.promote([s.keys for s in stages]):
            if wait_ms >= 0:
                soonest = min(soonest, wait_ms / 1000)
            if moved:
                soonest = 0.0 if moved >= 1000 else soonest
        self._scan_orphans(stages)
        now = time.monotonic()
        if now >= self._next_parked:
            self._next_parked = now + self.parked_check
            self._check_parked(stages)
            store.prune_failed([s.keys for s in stages])  # failed lists follow their jobs' TTL
        return soonest

    def _scan_orphans(self, stages: list[Stage]) -> None:
        store = self.flow.store
        snapshot = store.processing_snapshot([s.keys for s in stages])
        now = time.monotonic()
        seen: dict[tuple[str, str], float] = {}
        for stage, held in zip(stages, snapshot, strict=True):
            for job, lock in held:
                if lock is not None:
                    continue
                first = self._lockless.get((stage.name, job), now)
                if now - first < self.grace:
                    seen[(stage.name, job)] = first
                    continue
                self._recover(stage, job)
        self._lockless = seen

    def _recover(self, stage: Stage, job: str) -> None:
        record = FailureRecord.lock_expired(stage.name)
        log = self.log.bind(queue=stage.name)
        with self.flow.store.session(stage.keys) as session:
            record_failure(session, job, "", record, stage.retry_policy(), log, mode="orphan")

    def _check_parked(self, stages: list[Stage]) -> None:
        store = self.flow.store
        for stage in stages:
            if not stage.is_parent:
                continue
            for parent_id in store.parked_for(stage.keys, int(self.parked_check * 1000)):
                with store.session(stage.keys) as session:
                    children = session.children_of(parent_id)
                    all_done, _ = children_state(children, session.children_status(children))
                if all_done and store.unpark(stage.keys, parent_id):
                    self.log.bind(queue=stage.name, job=parent_id).info(
                        "parent job {} had every child done but was still parked; resumed",
                        parent_id,
                    )


class Monitors:
    """A flow's monitors, one per partition (expired locks and due retries are found in each
    partition's keys), run on one thread, round after round; none with ``enabled=False``."""

    def __init__(
        self,
        partitions: Sequence[MonitoredFlow],
        holder: str,
        interval: float,
        enabled: bool = True,
    ) -> None:
        self.each = (
            [FlowMonitor(p, holder, interval=interval) for p in partitions] if enabled else []
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.each or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="procflow-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(max(0.01, min(m.step() for m in self.each)))

    def stop(self) -> None:
        """Stop the thread and give up every partition's leadership."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        for monitor in self.each:
            monitor.release()
