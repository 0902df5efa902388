"""Waiting for jobs to finish: ``Flow.wait`` (blocking) and ``AsyncFlow.wait`` (awaited).

Every job that leaves its flow is announced on ``procflow:F:done`` (pub/sub) by the script
that marks it done. A wait subscribes first (to every partition's channel), then reads in
every partition, side by side, which ids are done and which exist, then takes announcements
as they come and re-reads the rest every couple of seconds (jobs finished by another
library, or an announcement lost in a reconnect) — in all partitions at once.

:class:`Waiting` holds what is I/O-free: a wait's ids, deadline, where each job lives,
what is still pending, when to re-read and what (its reads are client core operations,
``core.Operation``, as the flow's final read is), what to log and what to show; the two
drivers here (:func:`wait_for_jobs`) and in ``aio.py`` (``AsyncFlow.wait``) only run those
reads, take announcements and sleep.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..cost import seconds_text
from ..errors import (
    JobFailedError,
    RedisRefusedError,
    RedisUnavailableError,
    UnknownJobError,
    WaitTimeoutError,
)
from ..partitions import Partition
from ..store import keys
from ..store.redis import Store
from .core import Call, ClientCore, Operation, Round

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["RECHECK", "WaitableFlow", "Waiting", "wait_for_jobs"]

#: seconds between re-reads of the jobs still pending
RECHECK = 2.0
#: seconds between tries while Redis is away or refusing
OUTAGE_RECHECK = 0.2
T = TypeVar("T")

#: a partition's first read: HMGET done of every id, the ids not done (sorted), EXISTS of those
FirstRead = tuple[Sequence[Sequence[Any]], list[str], Sequence[bool]]


class Waiting:
    """One wait, without I/O. The driver reads ``first_keys`` in every partition and gives
    the replies to ``place``; then, while ``pending``, it takes announcements for at most
    ``pause()`` seconds (``arrived``; ``lost`` when the subscription broke), re-reads
    ``recheck_groups()`` when ``recheck_due()`` (``rechecked`` or ``unreachable``) and calls
    ``show``; at the end it reads ``final_refs()`` and returns ``result(jobs)``. An outage
    during a read is ridden out until the deadline (``retry_after``)."""

    def __init__(
        self,
        name: str,
        partition_names: Sequence[str],
        job_ids: Sequence[str],
        timeout: float | None,
        progress: bool,
        logger: Logger,
    ) -> None:
        self.name = name
        self.partition_names = tuple(partition_names)
        self.ids = list(job_ids)
        self.timeout = timeout
        self.progress = progress
        self.logger = logger
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + timeout
        #: job id → the partition that holds it
        self.where: dict[str, int] = {}
        self.pending: set[str] = set(self.ids)
        #: the last fraction each job reported (``progress``)
        self.reports: dict[str, float] = {}
        self.next_check = 0.0
        self.outage = False
        self._warned = False
        self._shown = 0.0
        #: when the first read placed the jobs, and how many were done by then (the batch's
        #: ETA counts only the jobs that finished during the wait)
        self.placed_at = self.start
        self.placed_done = 0

    # -- reads ---------------------------------------------------------------------------

    def job_keys(self, partition: int, ids: Sequence[str]) -> list[str]:
        return [keys.job(self.partition_names[partition], i) for i in ids]

    @staticmethod
    def not_done(ids: Sequence[str], replies: Sequence[Sequence[Any]]) -> list[str]:
        """From HMGET done replies of ``ids``: the ids not done, sorted."""
        return sorted(i for i, r in zip(ids, replies, strict=True) if not keys.is_true(r[0]))

    def first_read(self) -> Operation[list[FirstRead]]:
        """Every partition's first read (side by side): HMGET done of every id, then EXISTS
        of the ids not done there — for ``place``."""
        partitions = range(len(self.partition_names))
        done = [
            Call(p, "hash_field_many", (self.job_keys(p, self.ids), [keys.DONE]))
            for p in partitions
        ]
        replies = yield Round(done)
        rests = [self.not_done(self.ids, r) for r in replies]
        there = yield Round(
            [Call(p, "exists_many", (self.job_keys(p, rests[p]),)) for p in partitions]
        )
        return list(zip(replies, rests, there, strict=True))

    def recheck(self) -> Operation[list[list[str]]]:
        """The done flags of the ids still pending re-read, in their partitions (side by
        side): per group of ``recheck_groups``, the ids still not done — for ``rechecked``."""
        groups = self.recheck_groups()
        replies = yield Round(
            [Call(p, "hash_field_many", (self.job_keys(p, ids), [keys.DONE])) for p, ids in groups]
        )
        return [self.not_done(ids, r) for (_, ids), r in zip(groups, replies, strict=True)]

    def place(self, reads: Sequence[FirstRead]) -> None:
        """The first read of every partition: where each job lives and which are pending.
        UnknownJobError lists the ids found in none."""
        for part, (replies, rest, there) in enumerate(reads):
            existing = {i for i, ok in zip(rest, there, strict=True) if ok}
            for job_id, reply in zip(self.ids, replies, strict=True):
                if job_id in self.where:
                    continue
                if keys.is_true(reply[0]):
                    self.where[job_id] = part
                    self.pending.discard(job_id)
                elif job_id in existing:
                    self.where[job_id] = part
        unknown = sorted(i for i in set(self.ids) if i not in self.where)
        if unknown:
            raise UnknownJobError(self.name, unknown)
        self.next_check = time.monotonic() + RECHECK
        self.placed_at = time.monotonic()
        self.placed_done = len(self.ids) - len(self.pending)

    def recheck_groups(self) -> list[tuple[int, list[str]]]:
        """The pending ids by partition, to re-read their done flags."""
        groups: dict[int, list[str]] = {}
        for job_id in sorted(self.pending):
            groups.setdefault(self.where[job_id], []).append(job_id)
        return sorted(groups.items())

    def final_refs(self) -> list[tuple[str, str]]:
        """(key, id) of every job, in the order given, for the final read."""
        return [(keys.job(self.partition_names[self.where[i]], i), i) for i in self.ids]

    def result(
        self, jobs: Sequence[dict[str, Any] | None], raise_on_failure: bool
    ) -> list[dict[str, Any]]:
        """The jobs still there, in the order given; JobFailedError with
        ``raise_on_failure`` when one failed or was passed on with failed children."""
        found = [j for j in jobs if j is not None]
        failed = sum(j.get(keys.FAILED) is True for j in found)
        children = {
            j["id"]: kids
            for j in found
            if j.get(keys.FAILED) is not True and (kids := keys.failed_children(j))
        }
        incomplete = len(children)
        if raise_on_failure and (failed or incomplete):
            raise JobFailedError(found, children)
        if incomplete:
            self.logger.warning(
                "wait: {} of {} job(s) went on with failed children (their children:P:failed "
                "fields list them)",
                incomplete,
                len(found),
            )
        return found

    # -- the loop ------------------------------------------------------------------------

    def timed_out(self) -> WaitTimeoutError:
        return WaitTimeoutError(sorted(self.pending), self.timeout or 0.0)

    def pause(self) -> float:
        """How long to wait for announcements now; WaitTimeoutError at the deadline."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise self.timed_out()
        left = 1.0 if self.deadline is None else min(1.0, self.deadline - now)
        return max(0.0, min(left, self.next_check - now))

    def arrived(self, ids: Sequence[str] | set[str]) -> None:
        self.pending.difference_update(ids)

    def lost(self) -> None:
        """The subscription broke (or is back): what was announced meanwhile is found by
        reading the flags now."""
        self.next_check = time.monotonic()

    def recheck_due(self) -> bool:
        return bool(self.pending) and time.monotonic() >= self.next_check

    def rechecked(self, still: Sequence[list[str]]) -> None:
        """The ids each group of ``recheck_groups`` still has pending."""
        self.pending = {i for group in still for i in group}
        if self.outage:
            self.outage = False
            self.logger.info("wait: Redis is reachable again")
        self.next_check = time.monotonic() + RECHECK

    def unreachable(self, exc: BaseException) -> None:
        """A re-read failed: logged once per outage, tried again soon."""
        if not self.outage:
            self.outage = True
            self.logger.warning("wait: {}; still waiting", exc)
        self.next_check = time.monotonic() + OUTAGE_RECHECK

    def retry_after(self, exc: RedisUnavailableError | RedisRefusedError, log: bool) -> float:
        """A read failed: raise at the deadline, else say how long to back off (the first
        failure logged, with ``log``)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise exc
        if log and not self._warned:
            self._warned = True
            self.logger.warning("wait: {}; still waiting", exc)
        return OUTAGE_RECHECK

    def rate(self, now: float | None = None) -> float:
        """Jobs of the batch finished per second during this wait (since its first read:
        the ones done before do not count)."""
        now = time.monotonic() if now is None else now
        finished = len(self.ids) - len(self.pending) - self.placed_done
        elapsed = now - self.placed_at
        return finished / elapsed if finished > 0 and elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the batch is done: the jobs pending over ``rate``. None until one
        finished during the wait; 0 when none is pending. No Redis read: the announcements
        and re-reads the wait makes anyway."""
        if not self.pending:
            return 0.0
        rate = self.rate(now)
        return len(self.pending) / rate if rate > 0 else None

    def show(self, final: bool = False) -> None:
        """With ``progress``: the progress line on stderr (every 0.2 s on a terminal, else
        every 5 s, and once at the end), with the batch's ETA (``eta``)."""
        if not self.progress:
            return
        now = time.monotonic()
        total = len(self.ids)
        if final:
            _show(total, total, now - self.start, rate=self.rate(now), final=True)
            return
        if now - self._shown > (0.2 if sys.stderr.isatty() else 5.0):
            self._shown = now
            done = total - len(self.pending)
            eta, rate = self.eta(now), self.rate(now)
            _show(done, total, now - self.start, self.reports, self.pending, eta, rate)


class WaitableFlow(Protocol):
    """What waiting needs of a flow (a ``procflow.Flow``)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> tuple[Partition, ...]: ...
    @property
    def store(self) -> Store: ...
    @property
    def logger(self) -> Logger: ...
    @property
    def core(self) -> ClientCore: ...
    def drive(self, operation: Operation[T]) -> T: ...


def _ride_out(state: Waiting, read: Callable[[], T], log: bool) -> T:
    while True:
        try:
            return read()
        except (RedisUnavailableError, RedisRefusedError) as exc:
            time.sleep(state.retry_after(exc, log))  # back-off while the server is away


def wait_for_jobs(
    flow: WaitableFlow,
    job_ids: Sequence[str],
    timeout: float | None = None,
    progress: bool = False,
    raise_on_failure: bool = False,
) -> list[dict[str, Any]]:
    """See ``procflow.Flow.wait``: the blocking driver of :class:`Waiting` (one subscription
    to every partition's channels; the partitions read side by side)."""
    names = [p.name for p in flow.partitions]
    state = Waiting(flow.name, names, job_ids, timeout, progress, flow.logger)
    if not state.ids:
        return []
    with flow.store.subscribe_done(names, progress=progress) as subscription:
        state.place(_ride_out(state, lambda: flow.drive(state.first_read()), log=True))
        while state.pending:
            pause = state.pause()
            try:
                state.arrived(subscription.take(pause))
            except RedisUnavailableError:
                # the next take reconnects and subscribes again
                state.lost()
                time.sleep(min(OUTAGE_RECHECK, pause))  # back-off while the server is away
            if state.recheck_due():
                try:
                    state.rechecked(flow.drive(state.recheck()))
                except (RedisUnavailableError, RedisRefusedError) as exc:
                    state.unreachable(exc)
            state.reports = subscription.progress
            state.show()
    state.show(final=True)
    jobs = _ride_out(
        state, lambda: flow.drive(flow.core.fetch(state.final_refs(), False)), log=False
    )
    return state.result(jobs, raise_on_failure)


def _show(
    done: int,
    total: int,
    elapsed: float,
    reported: Mapping[str, float] | None = None,
    pending: set[str] | None = None,
    eta: float | None = None,
    rate: float | None = None,
    final: bool = False,
) -> None:
    """The line: jobs done, the rate (``rate``, else ``done`` over ``elapsed``; left out
    while 0), the ETA."""
    if rate is None:
        rate = done / elapsed if elapsed > 0 else 0.0
    places = 0 if rate >= 10 else 1 if rate >= 1 else 2
    line = f"procflow: {done}/{total} jobs done" + (f" ({rate:,.{places}f}/s)" if rate else "")
    if not final:
        line += f", ETA {seconds_text(eta)}"
    running = [f for i, f in (reported or {}).items() if pending is not None and i in pending]
    if running and not final:
        mean = 100 * sum(running) / len(running)
        line += f"; {len(running)} reporting progress, {mean:.0f}% on average"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if final else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
