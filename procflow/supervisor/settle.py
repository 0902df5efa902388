"""Settling the job a dead worker held, and the jobs of a dead supervisor of this node.

When a worker process ends unplanned, its status record says what it held: a lease in
flight, a running job, or a completion in flight (maybe with the next job's lease). Each is
settled by one store call that checks the lease token, so a step that comes too late (the
job moved on) changes nothing. A call that Redis cannot take now is kept and tried again
every second until it goes through.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import psutil

from ..definition import Stage
from ..errors import RedisRefusedError, RedisUnavailableError
from ..failures import FailureRecord, record_failure
from ..partitions import StoreMap
from ..store.keys import Holder, LeaseToken
from ..store.registry import CANCELLED_MESSAGE, Registry
from ..worker.status import Activity, StatusView

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Settler"]

_RETRY_EVERY = 1.0


class Settler:
    """Settles dead workers' jobs through ``stores`` (each stage's through the store that
    serves its partition); ``log`` is the supervisor's logger."""

    def __init__(self, stores: StoreMap, holder: Holder, log: Logger) -> None:
        self.stores = stores
        self.holder = holder
        self.log = log
        self.pending: list[Callable[[], None]] = []
        self.next_retry = 0.0

    # -- a dead worker ---------------------------------------------------------------------

    def settle(
        self,
        stage: Stage,
        view: StatusView,
        failure: FailureRecord | None,
    ) -> None:
        """Deal with what a dead worker held. ``failure`` None: put the job back uncounted
        (a shutdown); else one failed attempt with that record, if a job was running."""
        ops: list[Callable[[], None]] = []
        job, token = view.job, view.token
        if failure is None or view.activity is Activity.LEASING:
            if view.activity.holds_job:
                leased_only = view.activity is Activity.LEASING
                if leased_only and not job:  # a lease call for one or several jobs
                    for lost in view.lost_tokens():
                        ops.append(functools.partial(self._requeue, stage, "", lost))
                else:
                    ops.append(lambda: self._requeue(stage, "" if leased_only else job, token))
                if leased_only and job:
                    ops.append(lambda: self._never_claimed(stage, job))
        elif view.activity in (Activity.RUNNING, Activity.COMPLETING) and job:
            policy = stage.retry_policy()
            log = self.log.bind(queue=stage.name)

            def fail() -> None:
                with self.stores.of(stage).session(stage.keys) as session:
                    record_failure(session, job, token, failure, policy, log)

            ops.append(fail)
        if view.activity is Activity.COMPLETING and view.next_token:
            for lost in view.lost_tokens():
                ops.append(functools.partial(self._requeue, stage, "", lost))
        # prefetched jobs the worker never started go back uncounted
        for held_job, held_token in view.pending:
            ops.append(functools.partial(self._requeue, stage, held_job, held_token))
        for op in ops:
            self._attempt(op)

    def cancel(self, stage: Stage, view: StatusView, wanted: set[str]) -> None:
        """Finish an operator's cancel of the jobs in ``wanted`` that the stopped worker held
        (running or prefetched): they are marked cancelled (done, failed, not retried). What
        else it held is settled as after a shutdown (given back uncounted)."""
        held = [(view.job, view.token)] if view.job and view.activity.holds_job else []
        held += list(view.pending)
        registry = Registry(self.stores.of(stage))
        for job, token in held:
            if job not in wanted:
                self._attempt(functools.partial(self._requeue, stage, job, token))
                continue
            log = self.log.bind(queue=stage.name, job=job)

            def finish(job: str = job, token: str = token, log: Logger = log) -> None:
                outcome = registry.cancel_held(stage.keys, job, token, CANCELLED_MESSAGE)
                if outcome == "cancelled":
                    log.warning("job {} cancelled by an operator while it was held", job)
                else:
                    log.info("job {} was not cancelled: its lease had moved on ({})", job, outcome)

            self._attempt(finish)

    def _requeue(self, stage: Stage, job: str, token: str) -> None:
        with self.stores.of(stage).session(stage.keys) as session:
            got = session.requeue(job, token)
        if got:
            self.log.bind(queue=stage.name, job=got).info(
                "job {} put back on {} (not counted as an attempt)", got, stage.keys.waiting
            )

    def _never_claimed(self, stage: Stage, job: str) -> None:
        """A job our dead worker moved with BLMOVE but may not have claimed."""
        log = self.log.bind(queue=stage.name)
        with self.stores.of(stage).session(stage.keys) as session:
            record_failure(
                session,
                job,
                "",
                FailureRecord.never_claimed(),
                stage.retry_policy(),
                log,
                mode="orphan",
            )

    # -- Redis away: keep trying -----------------------------------------------------------

    def _attempt(self, op: Callable[[], None]) -> None:
        try:
            op()
        except (RedisUnavailableError, RedisRefusedError) as exc:
            if not self.pending:
                self.log.warning("{}; will retry cleaning up after a dead worker", exc)
            self.pending.append(op)
            self.next_retry = time.monotonic() + _RETRY_EVERY

    def retry_pending(self) -> None:
        ops, self.pending = self.pending, []
        for op in ops:
            self._attempt(op)
        if self.pending:
            self.next_retry = time.monotonic() + _RETRY_EVERY

    # -- a dead supervisor of this node --------------------------------------------------

    def reclaim(self, stages: Sequence[Stage]) -> None:
        """Jobs whose lock names a supervisor of this node that is no longer alive are taken
        back now rather than after their locks expire."""
        for store, group in self.stores.grouped(stages):
            try:
                snapshot = store.processing_snapshot([s.keys for s in group])
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self.log.warning("could not look for jobs of a previous supervisor: {}", exc)
                continue
            for stage, held in zip(group, snapshot, strict=True):
                log = self.log.bind(queue=stage.name)
                for job, lock in held:
                    if lock is None or not self.dead_local_holder(lock):
                        continue
                    self._attempt(functools.partial(self._reclaim_one, stage, job, lock, log))

    def _reclaim_one(self, stage: Stage, job: str, lock: str, log: Logger) -> None:
        with self.stores.of(stage).session(stage.keys) as session:
            record = FailureRecord.supervisor_died(lock)
            record_failure(session, job, lock, record, stage.retry_policy(), log)

    def dead_local_holder(self, lock: str) -> bool:
        """Whether ``lock`` was written by another supervisor of this node that is gone."""
        token = LeaseToken.parse(lock)
        if token is None or token.holder.node != self.holder.node:
            return False
        if str(token.holder) == str(self.holder):
            return False
        try:
            alive = (
                abs(psutil.Process(token.holder.pid).create_time() - token.holder.started) < 0.05
            )
        except psutil.Error:
            alive = False
        return not alive
