"""``procflow.aio``: a flow's client side for asyncio.

:class:`AsyncFlow` wraps a :class:`procflow.Flow` and creates, reads, deletes and waits for
its jobs without blocking the event loop (a FastAPI or Starlette app, an aiohttp service)::

    from procflow.aio import AsyncFlow

    async with AsyncFlow(flow) as af:
        job_id = await af.create_job({"userId": 62})
        [job] = await af.wait([job_id], timeout=60)

The definition, the checks and the encoding are the Flow's own (its methods that touch no
Redis); every command is the async store's (``store/aio.py``) and goes on the wire byte for
byte as the sync Store sends it. Workers and the supervisor stay as they are: they run in
processes of their own, and a job created here is the same job a sync ``create_job`` makes.
See docs/async.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, cast

from typing_extensions import Self, TypeVar

from .aio_hub import DoneHub, Waiter
from .errors import (
    ConfigurationError,
    JobFailedError,
    RedisRefusedError,
    RedisUnavailableError,
    UnknownJobError,
    WaitTimeoutError,
)
from .flow import Flow
from .ids import uuid7
from .partitions import settle_creates, summed_counts
from .store import keys
from .store.aio import AsyncStore
from .store.records import NewJob

__all__ = ["AsyncFlow"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
T = TypeVar("T")

#: seconds between re-reads of the jobs still pending (as the sync wait)
_RECHECK = 2.0
#: seconds between re-reads while Redis is away
_OUTAGE_RECHECK = 0.2


class AsyncFlow(Generic[JobT, OptionsT, LookupT]):
    """The asyncio client of a :class:`procflow.Flow`: the same jobs, the same checks, the
    same bytes in Redis, awaited. Make one per application (at startup) and share it: its
    requests go on one connection (one per partition of a partitioned flow), pipelined, and
    every ``wait`` shares one subscription (per partition). Connections open on first use
    and belong to the event loop that opened them (used from another loop, the AsyncFlow
    starts afresh there). Close it with :meth:`aclose` or use
    ``async with AsyncFlow(flow) as af:``."""

    def __init__(self, flow: Flow[JobT, OptionsT, LookupT]) -> None:
        if not isinstance(flow, Flow):
            raise ConfigurationError(
                f"AsyncFlow wraps a procflow.Flow, not a {type(flow).__name__}"
            )
        self.flow = flow
        #: per partition (one for an unpartitioned flow): its store and its done hub
        self._stores: dict[int, AsyncStore] = {}
        self._hubs: dict[int, DoneHub] = {}

    def __repr__(self) -> str:
        return f"AsyncFlow({self.flow!r})"

    @property
    def name(self) -> str:
        return self.flow.name

    # -- connection ----------------------------------------------------------------------

    @property
    def store(self) -> AsyncStore:
        """The async Redis layer (of a partitioned flow: partition 0's), made on first use in
        the running loop (and made again in another loop, or after ``flow.use_redis``)."""
        return self._store(0)

    def _store(self, part: int) -> AsyncStore:
        loop = asyncio.get_running_loop()
        settings = self.flow.parts[part].redis
        store = self._stores.get(part)
        if store is None or store.loop is not loop or store.settings is not settings:
            if store is not None:
                self._drop()
            store = self._stores[part] = AsyncStore(settings)
        return store

    def _done_hub(self, part: int) -> DoneHub:
        store = self._store(part)
        hub = self._hubs.get(part)
        if hub is None:
            hub = self._hubs[part] = DoneHub(store, self.flow.parts[part].name)
        return hub

    def _drop(self) -> None:
        stores, self._stores = self._stores, {}
        hubs, self._hubs = self._hubs, {}
        for hub in hubs.values():
            hub.close()
        for store in stores.values():
            store.abandon()

    async def connect(self) -> None:
        """Connect now and PING (at an app's startup, say); RedisUnavailableError names the
        address."""
        await asyncio.gather(*(self._store(i).ping() for i in range(len(self.flow.parts))))

    async def aclose(self) -> None:
        """Close the connections (the AsyncFlow opens them again if used afterwards)."""
        stores, self._stores = self._stores, {}
        hubs, self._hubs = self._hubs, {}
        for hub in hubs.values():
            hub.close()
        loop = asyncio.get_running_loop()
        for store in stores.values():
            if store.loop is loop:
                await store.aclose()
            else:
                store.abandon()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- jobs ----------------------------------------------------------------------------

    def _part_of(self, key: str) -> int:
        return self.flow._part_of_key(key).index

    async def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC, the same commands and bytes as
        ``Flow.create_job``) on the first queue and return its id. Options that cannot be
        stored raise EncodeError before anything is sent."""
        flow = self.flow
        job = flow._prepare(options, uuid7())
        await self._store(self._part_of(job.key)).create_jobs([job], flow.key_ttl)
        return job.id

    async def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC; a partitioned flow's
        partitions side by side). Every option is checked before anything is sent: one bad
        job raises EncodeError and writes none. A refusal part way raises CreateJobsError
        (``.created``, ``.not_created``)."""
        jobs = self.flow._prepare_many(many)
        if not jobs:
            return []
        groups: dict[int, list[NewJob]] = {}
        for job in jobs:
            groups.setdefault(self._part_of(job.key), []).append(job)
        ttl = self.flow.key_ttl
        if len(groups) == 1:
            ((part, group),) = groups.items()
            await self._store(part).create_jobs(group, ttl)
            return [job.id for job in jobs]
        results = await asyncio.gather(
            *(self._store(part).create_jobs(group, ttl) for part, group in groups.items()),
            return_exceptions=True,
        )
        settle_creates(
            jobs,
            list(groups.values()),
            [r if isinstance(r, Exception) else None for r in results],
        )
        return [job.id for job in jobs]

    async def _fetch(
        self, refs: Sequence[tuple[str, str]], resolve: bool
    ) -> list[dict[str, Any] | None]:
        """Jobs by (key, id), aligned with ``refs``; None where the hash is gone (each key
        read from its partition, the partitions side by side)."""
        if not refs:
            return []
        by_part: dict[int, list[int]] = {}
        for n, (key, _) in enumerate(refs):
            by_part.setdefault(self._part_of(key), []).append(n)
        raws: list[dict[bytes, bytes]] = [{} for _ in refs]
        groups = list(by_part.items())
        replies = await asyncio.gather(
            *(self._store(part).get_hashes([refs[n][0] for n in ns]) for part, ns in groups)
        )
        for (_, ns), got in zip(groups, replies, strict=True):
            for n, raw in zip(ns, got, strict=True):
                raws[n] = raw
        jobs = [
            self.flow._decode(key, job_id, raw) if raw else None
            for (key, job_id), raw in zip(refs, raws, strict=True)
        ]
        if resolve:
            await self._resolve_children([j for j in jobs if j is not None])
        return jobs

    async def _resolve_children(self, jobs: list[dict[str, Any]]) -> None:
        """Each ``children:Q:jobs`` list of keys becomes the child jobs (one round trip per
        level of nesting), as ``Flow.get_jobs(..., resolve_children=True)``."""
        wanted = [(job, name, refs) for job in jobs for name, refs in Flow._child_refs(job)]
        if not wanted:
            return
        unique = list(dict.fromkeys(ref for _, _, refs in wanted for ref in refs))
        found = await self._fetch(unique, resolve=True)
        by_ref = {ref: child for ref, child in zip(unique, found, strict=True) if child is not None}
        for job, name, refs in wanted:
            job[name] = [by_ref[r] for r in refs if r in by_ref]

    async def get_job(self, job_id: str) -> JobT | None:
        """The decoded job hash with its ``"id"``, or None when there is no such job."""
        found = await self.get_jobs([job_id])
        return found[0] if found else None

    async def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip; a partitioned flow's partitions side by
        side), skipping ids whose hash is gone."""
        flow = self.flow
        jobs = await self._fetch(flow._refs_everywhere(job_ids), resolve_children)
        return [cast("JobT", j) for j in flow._found(jobs)]

    async def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first (of a
        partitioned flow: partition by partition). With ``resolve_children``, every
        ``children:Q:jobs`` field holds the child jobs."""
        flow = self.flow
        text = flow._lookup_text(key, value)
        listed = await asyncio.gather(
            *(
                self._store(n).list_range(keys.lookup(part.name, key, text))
                for n, part in enumerate(flow.parts)
            )
        )
        pairs = zip(flow.parts, listed, strict=True)
        refs = [(keys.job(part.name, i), i) for part, ids in pairs for i in ids]
        jobs = await self._fetch(refs, resolve_children)
        return [cast("JobT", j) for j in jobs if j is not None]

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        flow = self.flow
        parts = flow.parts
        refs = [(keys.job(p.name, job_id), job_id) for p in parts]
        raws = await asyncio.gather(
            *(self._store(n).get_hashes([k]) for n, (k, _) in enumerate(refs))
        )
        found = next((n for n, got in enumerate(raws) if got[0]), None)
        if found is None:
            return False
        part, store, (key, _) = parts[found], self._store(found), refs[found]
        job = flow._decode(key, job_id, raws[found][0])
        for _, child_refs in Flow._child_refs(job):
            for child_key, child_id in child_refs:
                child_stages = part.definition.stages_of_job(child_key)
                await store.delete_job(child_key, child_id, (), child_stages)
        top = [s.keys for s in part.definition.top_stages]
        await store.delete_job(key, job_id, flow._lookup_keys(part, job), top)
        return True

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, processing, delayed, parked and failed (of a partitioned
        flow: summed over the partitions, by the queue names given)."""
        parts = self.flow.parts
        stages = [list(p.definition.stages.values()) for p in parts]
        counted = await asyncio.gather(
            *(self._store(n).counts([s.keys for s in ss]) for n, ss in enumerate(stages))
        )
        named = [
            (s.name, c)
            for ss, cs in zip(stages, counted, strict=True)
            for s, c in zip(ss, cs, strict=True)
        ]
        return summed_counts(named, self.flow.partitioning)

    # -- waiting -------------------------------------------------------------------------

    async def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        raise_on_failure: bool = False,
    ) -> list[JobT]:
        """Wait until every job is done (finished or failed) and return their final hashes
        in the order given (a job whose hash is gone by then is left out). A failed job
        comes back with ``failed`` true; with ``raise_on_failure``, JobFailedError (which
        holds every job) is raised instead once all are done. WaitTimeoutError lists the ids
        not done after ``timeout`` seconds; UnknownJobError the ids that are no job. Rides
        out Redis outages, as ``Flow.wait`` does. A partitioned flow's jobs are waited for
        in every partition at once, each on its partition's subscription."""
        ids = list(job_ids)
        if not ids:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(self.flow.parts) == 1:
            jobs = await self._wait(0, ids, deadline, timeout)
        else:
            groups = await self._locate(ids, deadline, timeout)
            waited = await asyncio.gather(
                *(self._wait(part, group, deadline, timeout) for part, group in groups.items())
            )
            by_id = {j[keys.ID]: j for jobs in waited for j in jobs}
            jobs = [by_id[i] for i in ids if i in by_id]
        if raise_on_failure and any(j.get(keys.FAILED) is True for j in jobs):
            raise JobFailedError(jobs)
        return [cast("JobT", j) for j in jobs]

    async def _locate(
        self, ids: list[str], deadline: float | None, timeout: float | None
    ) -> dict[int, list[str]]:
        """The ids by partition (those found nowhere: partition 0's, whose wait reports
        them unknown), riding out an outage until the deadline."""
        parts = self.flow.parts
        while True:
            try:
                found = await _within(
                    asyncio.gather(
                        *(
                            self._store(n).exists_many([keys.job(p.name, i) for i in ids])
                            for n, p in enumerate(parts)
                        )
                    ),
                    deadline,
                )
                break
            except asyncio.TimeoutError:
                raise WaitTimeoutError(sorted(ids), timeout or 0.0) from None
            except (RedisUnavailableError, RedisRefusedError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(_OUTAGE_RECHECK)
        groups: dict[int, list[str]] = {}
        for n, job_id in enumerate(ids):
            part = next((p for p in range(len(parts)) if found[p][n]), 0)
            groups.setdefault(part, []).append(job_id)
        return groups

    def _job_key(self, part: int, job_id: str) -> str:
        return keys.job(self.flow.parts[part].name, job_id)

    async def _still_pending(self, part: int, pending: set[str]) -> set[str]:
        ids = list(pending)
        replies = await self._store(part).hash_field_many(
            [self._job_key(part, i) for i in ids], [keys.DONE]
        )
        return {i for i, reply in zip(ids, replies, strict=True) if not keys.is_true(reply[0])}

    async def _wait(
        self, part: int, ids: list[str], deadline: float | None, timeout: float | None
    ) -> list[dict[str, Any]]:
        """The sync ``wait_for_jobs``, awaited, in one partition: subscribed first (the hub),
        then the done flags read, then announcements taken as they come and the rest re-read
        every 2 s. Every step is held to the deadline, a silent server's too."""
        pending = set(ids)
        hub = self._done_hub(part)
        waiter = hub.join(set(ids))
        try:
            await _within(waiter.ready, deadline)  # subscribed: nothing slips past the read
            pending = await _within(self._still_pending(part, pending), deadline)
            listed = sorted(pending)
            keys_ = [self._job_key(part, i) for i in listed]
            there = await _within(self._store(part).exists_many(keys_), deadline)
            unknown = [i for i, ok in zip(listed, there, strict=True) if not ok]
            if unknown:
                raise UnknownJobError(self.name, unknown)
            await self._take(part, waiter, pending, deadline)
        except asyncio.TimeoutError:
            raise WaitTimeoutError(sorted(pending), timeout or 0.0) from None
        finally:
            hub.leave(waiter)
        while True:  # the final read rides out an outage too, until the deadline
            try:
                refs = [(self._job_key(part, i), i) for i in ids]
                jobs = await self._fetch(refs, resolve=False)
                return [j for j in jobs if j is not None]
            except (RedisUnavailableError, RedisRefusedError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(_OUTAGE_RECHECK)

    async def _take(
        self, part: int, waiter: Waiter, pending: set[str], deadline: float | None
    ) -> None:
        """Empty ``pending`` (in place) as its jobs are announced or found done; asyncio's
        TimeoutError at the deadline."""
        logger = self.flow.logger
        next_check = time.monotonic() + _RECHECK
        outage = False
        while pending:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise asyncio.TimeoutError
            left = 1.0 if deadline is None else min(1.0, deadline - now)
            pause = min(left, next_check - now)
            if pause > 0 and not waiter.event.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), pause)
            waiter.event.clear()
            pending.difference_update(waiter.arrived)
            waiter.arrived.clear()
            if waiter.problem is not None or waiter.recheck:
                # the subscription was lost, or is back: what was announced meanwhile is
                # found by reading the flags now
                waiter.problem = None
                waiter.recheck = False
                next_check = now
            if pending and time.monotonic() >= next_check:
                try:
                    still = await _within(self._still_pending(part, pending), deadline)
                    pending.intersection_update(still)
                    if outage:
                        outage = False
                        logger.info("wait: Redis is reachable again")
                except (RedisUnavailableError, RedisRefusedError) as exc:
                    if not outage:
                        outage = True
                        logger.warning("wait: {}; still waiting", exc)
                next_check = time.monotonic() + (_OUTAGE_RECHECK if outage else _RECHECK)


async def _within(aw: Awaitable[T], deadline: float | None) -> T:
    """``aw``, or asyncio's TimeoutError at ``deadline`` (cancelling a request is safe: its
    replies are read and dropped)."""
    if deadline is None:
        return await aw
    return await asyncio.wait_for(aw, max(0.0, deadline - time.monotonic()))
