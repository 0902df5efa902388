"""The worker's side of its stage session: the calls a loop makes (a ``Protocol``: the real
``StageSession``, or a fake one in unit tests), and ``Retrier``, which runs each call through
Redis outages and refusals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import RedisRefusedError, RedisUnavailableError
from ..failures import Failer
from ..store.keys import token_at
from ..store.records import Lease
from ..store.session import ChildJob
from .status import StatusWriter

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["JobSession", "Retrier"]

T = TypeVar("T")


class JobSession(Failer, Protocol):
    """The stage session a loop works through (``procflow.store.session.StageSession``);
    its ``fail`` is ``Failer``'s. ``prefetch``: how many jobs its next lease call takes (the
    loop sets it: ``batch.BatchSize``)."""

    prefetch: int
    #: the stage was paused at the last lease call (``flow.pause``): it leased nothing
    paused: bool

    def connect(self) -> int | None: ...
    def close(self) -> None: ...
    def lease(self, token: str) -> Lease | None: ...
    def lease_many(self, token: str) -> list[Lease]: ...
    def wait_for_job(self, timeout: float) -> str | None: ...
    def claim(self, job_id: str, token: str) -> Lease | None: ...
    def complete(
        self,
        job_id: str,
        token: str,
        result: Sequence[tuple[bytes, bytes]],
        next_waiting: str,
        next_token: str = "",
    ) -> tuple[int, list[Lease]]: ...
    def complete_many(
        self,
        jobs: Sequence[tuple[str, str, Sequence[tuple[bytes, bytes]], str]],
        next_token: str = "",
    ) -> tuple[list[int], list[Lease]]: ...
    def requeue(self, job_id: str, token: str) -> str | None: ...
    def report_progress(self, job_id: str, token: str, value_json: str, announce: str) -> bool: ...
    def spawn_children(
        self, job_id: str, token: str, children: Sequence[ChildJob], jobs_json: str, ttl: int
    ) -> int: ...
    def park(self, job_id: str, token: str) -> int: ...
    def children_jobs(self, job_id: str) -> bytes | None: ...
    def children_status(self, child_keys: Sequence[str]) -> list[Any]: ...


class Retrier:
    """Runs a worker's Redis calls until they work, logging one line per episode."""

    def __init__(
        self,
        session: JobSession,
        status: StatusWriter,
        log: Logger,
        sleep: Callable[[float], None],
        should_end: Callable[[], bool],
    ) -> None:
        self.session = session
        self.status = status
        self.log = log
        self._sleep = sleep
        self.should_end = should_end
        self._outage_since: float | None = None
        self._outage_kind = "is reachable"

    def call(
        self,
        op: Callable[[], T],
        lost_token: str = "",
        abort_on_stop: bool = False,
        lost_count: int = 1,
    ) -> T | None:
        """Run ``op`` until it works: through an outage (the server away, the connection
        broken) and through a refusal (``BUSY``, ``OOM``, ``NOPERM`` …: the server answered
        but did not run it), with backoff, logged once per episode. The lease is kept
        meanwhile (the supervisor renews it). After a broken connection, a lease that may have
        happened under ``lost_token`` (and the ``lost_count - 1`` tokens after it) is given
        back before ``op`` runs again."""
        delay = 0.05
        broken = False
        while True:
            try:
                if broken and lost_token:
                    for i in range(lost_count):
                        self.session.requeue("", token_at(lost_token, i) if i else lost_token)
                    broken = False
                result = op()
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self.status.redis_error()
                self._episode(exc)
                if isinstance(exc, RedisUnavailableError):
                    broken = True
                    self.session.close()  # both connections: reconnect once, together
                if abort_on_stop and self.should_end():
                    if broken:
                        self._give_back_lost(lost_token, lost_count)
                    return None
                self._sleep(delay)  # back-off before trying again, not synchronisation
                delay = min(delay * 2, 2.0)
                continue
            if self._outage_since is not None:
                self.log.info(
                    "Redis {} again after {:.1f} s",
                    self._outage_kind,
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
            return result

    def _episode(self, exc: Exception) -> None:
        """Log the first failure of an episode; the rest of it quietly."""
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        if isinstance(exc, RedisRefusedError):
            self._outage_kind = "accepts the calls"
            self.log.warning("{}; the job keeps its lease, retrying with backoff", exc)
        else:
            self._outage_kind = "is reachable"
            self.log.warning("{}; retrying with backoff", exc)

    def _give_back_lost(self, lost_token: str, count: int = 1) -> None:
        """Stopping during an outage: a lease call that broke may have leased jobs under
        ``lost_token`` (and the tokens after it) on the server; give them back now (one try)
        rather than leave them locked until their locks expire."""
        if not lost_token:
            return
        try:
            for i in range(count):
                self.session.requeue("", token_at(lost_token, i) if i else lost_token)
        except RedisUnavailableError as exc:
            self.log.warning(
                "could not give back a possible lease while stopping ({}); if one was made, "
                "its job returns when its lock expires",
                exc,
            )
