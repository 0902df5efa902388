"""The supervisor's watchdogs: lock renewal, the time limit and the memory limit.

The supervisor, not the worker, keeps running jobs' locks alive: a worker busy in a long
CPU-bound function (or stuck in C code) cannot renew anything, and a lock that outlives its
worker is what the monitor must never see. Every third of the shortest lock time, one
pipelined round trip renews the lock of every running job. The limits are checked every
``limit_interval`` seconds while some stage has one; a worker over a limit is killed with its
whole process tree and its exit is settled like a crash of that kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import RedisRefusedError, RedisUnavailableError
from ..partitions import StoreMap
from ..store.redis import Store
from ..worker.status import Activity, read_status
from .process import KillKind, KillReason, WorkerProcess, tree_rss
from .tally import Tally

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Watchdogs"]

_MIN_RENEW = 0.3
_IDLE_LOCK_TIME = 30.0


class Watchdogs:
    """Renewal and limits for the workers given to each call; ``kill(worker, reason)`` is
    how an over-limit worker is ended."""

    def __init__(
        self,
        stores: StoreMap,
        log: Logger,
        kill: Callable[[WorkerProcess, KillReason], None],
        limit_interval: float = 0.1,
        tally: Tally | None = None,
    ) -> None:
        self.stores = stores
        self.tally = tally
        self.log = log
        self.kill = kill
        self.limit_interval = limit_interval
        self.last_renew = 0.0
        self.next_limits = 0.0
        self._failing = False

    # -- renewal -------------------------------------------------------------------------

    @staticmethod
    def renew_interval(live: Sequence[WorkerProcess]) -> float:
        """A third of the shortest lock time among live workers (at least 0.3 s)."""
        return max(_MIN_RENEW, min((w.lock_time for w in live), default=_IDLE_LOCK_TIME) / 3)

    def renew(self, live: Sequence[WorkerProcess]) -> None:
        """Extend the lock of every job a live worker runs, completes or holds prefetched
        (one round trip)."""
        by_store: dict[int, tuple[Store, list[tuple[str, str, int]], list[str]]] = {}
        for w in live:
            view = read_status(w.status)
            stage = w.handle.group.stage_in_partition(view.partition)
            store, locks, names = by_store.setdefault(
                id(self.stores.of(stage)), (self.stores.of(stage), [], [])
            )
            ttl = int(w.lock_time * 1000)
            if view.activity in (Activity.RUNNING, Activity.COMPLETING) and view.job and view.token:
                locks.append((stage.keys.lock(view.job), view.token, ttl))
                names.append(w.handle.group.name)
            for job, token in view.pending:  # prefetched, waiting their turn: held too
                locks.append((stage.keys.lock(job), token, ttl))
                names.append(w.handle.group.name)
        try:
            for store, locks, names in by_store.values():
                if not locks:
                    continue
                held = store.renew(locks)
                if self.tally is not None:
                    for name, ok in zip(names, held, strict=True):
                        self.tally.renewed(name, ok)
            if self._failing:
                self.log.info("job locks renewed again")
                self._failing = False
        except (RedisUnavailableError, RedisRefusedError) as exc:
            if not self._failing:
                self.log.warning("could not renew job locks: {}; trying again", exc)
                self._failing = True

    # -- limits --------------------------------------------------------------------------

    @staticmethod
    def limits_wanted(live: Sequence[WorkerProcess]) -> bool:
        return any(
            w.handle.group.stage.spec.timeout is not None
            or w.handle.group.stage.memory_limit is not None
            for w in live
        )

    def check_limits(self, live: Sequence[WorkerProcess]) -> None:
        now = time.monotonic()
        for w in live:
            if w.kill_reason is not None:
                continue
            stage = w.handle.group.stage
            view = read_status(w.status)
            if view.activity is not Activity.RUNNING:
                continue
            timeout = stage.spec.timeout
            if timeout is not None and now - view.started > timeout:
                text = f"the job ran longer than its {timeout:g} s time limit"
                self.kill(w, KillReason(KillKind.TIMEOUT, text))
                continue
            limit = stage.memory_limit
            if limit is not None and w.ps is not None:
                used = tree_rss(w.ps)
                if used > limit:
                    text = (
                        f"the worker used {used / 2**20:.0f} MiB, over the queue's "
                        f"memory limit of {limit / 2**20:.0f} MiB"
                    )
                    self.kill(w, KillReason(KillKind.MEMORY, text))

    # -- the manager thread's timers -----------------------------------------------------

    def deadlines(self, live: Sequence[WorkerProcess]) -> list[float]:
        out = [self.last_renew + self.renew_interval(live)]
        if self.limits_wanted(live):
            out.append(self.next_limits)
        return out

    def tick(self, live: Sequence[WorkerProcess]) -> None:
        """Run whatever is due now."""
        now = time.monotonic()
        if now >= self.last_renew + self.renew_interval(live):
            self.last_renew = now
            self.renew(live)
        if self.limits_wanted(live) and now >= self.next_limits:
            self.check_limits(live)
            self.next_limits = now + self.limit_interval
