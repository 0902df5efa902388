"""Waiting for jobs to finish, for batch pipelines (``Supervisor.wait``).

Every job that leaves its flow is announced on ``procflow:F:done`` (pub/sub) by the script
that marks it done. ``wait_for_jobs`` subscribes first, then reads which ids are done already,
then takes announcements as they come, and re-reads the rest every couple of seconds (jobs
finished by another library, or an announcement lost in a reconnect).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import RedisRefusedError, RedisUnavailableError, UnknownJobError, WaitTimeoutError
from .partitions import Part
from .store import keys
from .store.redis import Store

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["PartitionedFlow", "WaitableFlow", "wait_for_jobs", "wait_in_parts"]

_RECHECK = 2.0
T = TypeVar("T")


class WaitableFlow(Protocol):
    """What waiting needs of a flow (a ``procflow.Flow``)."""

    @property
    def name(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def logger(self) -> Logger: ...
    def job_key(self, job_id: str) -> str: ...
    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[Any]: ...


class PartitionedFlow(WaitableFlow, Protocol):
    """What waiting needs of a partitioned flow."""

    @property
    def parts(self) -> tuple[Part, ...]: ...
    def locate(self, job_ids: Sequence[str]) -> dict[str, Part]: ...
    def jobs_in(
        self, part: Part, job_ids: Sequence[str], resolve_children: bool = False
    ) -> list[Any]: ...


class _InPart:
    """One partition of a flow, as waiting sees it."""

    def __init__(self, flow: PartitionedFlow, part: Part) -> None:
        self.flow = flow
        self.part = part

    @property
    def name(self) -> str:
        return self.part.name

    @property
    def store(self) -> Store:
        return self.part.store

    @property
    def logger(self) -> Logger:
        return self.flow.logger

    def job_key(self, job_id: str) -> str:
        return keys.job(self.part.name, job_id)

    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[Any]:
        return self.flow.jobs_in(self.part, job_ids, resolve_children)


def wait_in_parts(
    flow: PartitionedFlow,
    job_ids: Sequence[str],
    timeout: float | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``wait_for_jobs`` for a partitioned flow: each id's partition found first, then each
    partition's jobs waited for in turn, under one deadline (ids found nowhere are reported
    as unknown by partition 0's wait)."""
    ids = list(job_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    located = _ride_out(lambda: flow.locate(ids), deadline, flow.logger)
    groups: dict[int, list[str]] = {}
    for job_id in ids:
        groups.setdefault(located[job_id].index if job_id in located else 0, []).append(job_id)
    done: dict[str, dict[str, Any]] = {}
    for index, group in sorted(groups.items()):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        for job in wait_for_jobs(_InPart(flow, flow.parts[index]), group, left, progress):
            done[job[keys.ID]] = job
    return [done[i] for i in ids if i in done]


def _still_pending(flow: WaitableFlow, pending: set[str]) -> set[str]:
    ids = list(pending)
    replies = flow.store.hash_field_many([flow.job_key(i) for i in ids], [keys.DONE])
    return {i for i, reply in zip(ids, replies, strict=True) if not keys.is_true(reply[0])}


def _first_read(
    flow: WaitableFlow, ids: list[str], deadline: float | None
) -> tuple[set[str], list[bool], list[str]]:
    """The jobs not done yet, whether each exists, in the order checked — riding out an
    outage (a failover, say) until the deadline."""

    def read() -> tuple[set[str], list[bool], list[str]]:
        pending = _still_pending(flow, set(ids))
        listed = sorted(pending)
        return pending, flow.store.exists_many([flow.job_key(i) for i in listed]), listed

    return _ride_out(read, deadline, flow.logger)


def _ride_out(read: Callable[[], T], deadline: float | None, logger: Logger | None) -> T:
    """``read()``, tried again every 0.2 s while Redis is away or refusing, until the
    deadline (then its error is raised); with ``logger``, the first failure is logged."""
    while True:
        try:
            return read()
        except (RedisUnavailableError, RedisRefusedError) as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            if logger is not None:
                logger.warning("wait: {}; still waiting", exc)
                logger = None
            time.sleep(0.2)  # back-off while the server is away


def wait_for_jobs(
    flow: WaitableFlow,
    job_ids: Sequence[str],
    timeout: float | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """See ``procflow.Flow.wait``."""
    ids = list(job_ids)
    if not ids:
        return []
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    with flow.store.subscribe_done(flow.name, progress=progress) as subscription:
        pending, there, listed = _first_read(flow, ids, deadline)
        unknown = [i for i, ok in zip(listed, there, strict=True) if not ok]
        if unknown:
            raise UnknownJobError(flow.name, unknown)
        next_check = time.monotonic() + _RECHECK
        last_shown = 0.0
        outage = False
        while pending:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeoutError(sorted(pending), timeout or 0.0)
            left = 1.0 if deadline is None else min(1.0, deadline - now)
            try:
                pending.difference_update(subscription.take(min(left, next_check - now)))
            except RedisUnavailableError:
                # the next take reconnects and subscribes again; whatever was announced
                # meanwhile is found by the re-read below
                next_check = now
                time.sleep(min(0.2, left))  # back-off while the server is away
            if time.monotonic() >= next_check:
                try:
                    pending = _still_pending(flow, pending)
                    if outage:
                        outage = False
                        flow.logger.info("wait: Redis is reachable again")
                except (RedisUnavailableError, RedisRefusedError) as exc:
                    if not outage:
                        outage = True
                        flow.logger.warning("wait: {}; still waiting", exc)
                next_check = time.monotonic() + (0.2 if outage else _RECHECK)
            every = 0.2 if sys.stderr.isatty() else 5.0
            if progress and time.monotonic() - last_shown > every:
                last_shown = time.monotonic()
                _show(
                    len(ids) - len(pending),
                    len(ids),
                    last_shown - start,
                    subscription.progress,
                    pending,
                )
        if progress:
            _show(len(ids), len(ids), time.monotonic() - start, final=True)
        return _ride_out(lambda: flow.get_jobs(ids), deadline, None)  # the final read too


def _show(
    done: int,
    total: int,
    elapsed: float,
    reported: dict[str, float] | None = None,
    pending: set[str] | None = None,
    final: bool = False,
) -> None:
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"procflow: {done}/{total} jobs done ({rate:,.0f}/s)"
    running = [f for i, f in (reported or {}).items() if pending is not None and i in pending]
    if running and not final:
        mean = 100 * sum(running) / len(running)
        line += f"; {len(running)} reporting progress, {mean:.0f}% on average"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if final else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
