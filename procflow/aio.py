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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, cast

from typing_extensions import Self, TypeVar

from .aio_hub import DoneHub
from .errors import ConfigurationError, RedisRefusedError, RedisUnavailableError
from .flow import Flow
from .ids import uuid7
from .partitions import settle_creates, summed_counts
from .store import keys
from .store.aio import AsyncStore
from .store.records import NewJob
from .waiting import FirstRead, Waiting

__all__ = ["AsyncFlow"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
T = TypeVar("T")


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
        self._hubs: dict[tuple[int, bool], DoneHub] = {}

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

    def _done_hub(self, part: int, progress: bool = False) -> DoneHub:
        """Partition ``part``'s hub (the waits that show progress share another, whose
        subscription has the progress channel too)."""
        store = self._store(part)
        hub = self._hubs.get((part, progress))
        if hub is None:
            hub = self._hubs[(part, progress)] = DoneHub(
                store, self.flow.parts[part].name, progress
            )
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
        found = 0
        if len(parts) > 1:  # as Flow.part_of: which partition holds it
            there = await asyncio.gather(
                *(
                    self._store(n).exists_many([keys.job(p.name, job_id)])
                    for n, p in enumerate(parts)
                )
            )
            found = next((n for n, [ok] in enumerate(there) if ok), -1)
            if found < 0:
                return False
        part, store = parts[found], self._store(found)
        key = keys.job(part.name, job_id)
        [raw] = await store.get_hashes([key])
        if not raw:
            return False
        job = flow._decode(key, job_id, raw)
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

    # -- failed jobs ---------------------------------------------------------------------

    async def failed_jobs(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        """As ``Flow.failed_jobs``: ids on ``queue``'s failed list, oldest first (of a
        partitioned flow: partition by partition), expired jobs' ids dropped first."""
        flow = self.flow
        stages = flow.stages_of(queue)
        single = len(stages) == 1

        async def listed(n: int) -> list[str]:
            store, failed = self._store(n), stages[n].keys
            await store.prune_failed([failed])
            if single:
                return await store.list_range(failed.failed, start, stop)
            return await store.list_range(failed.failed)

        found = await asyncio.gather(*(listed(n) for n in range(len(stages))))
        ids = [i for got in found for i in got]
        return ids if single else ids[start : None if stop == -1 else stop + 1]

    async def retry_failed(self, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """As ``Flow.retry_failed``: failed jobs (all of ``queue``'s, or the given ids) back
        on its waiting list with a fresh attempt count. Returns the ids moved."""
        ids = list(job_ids) if job_ids is not None else await self.failed_jobs(queue)
        stages = self.flow.stages_of(queue)
        moved = await asyncio.gather(
            *(self._store(n).revive(st.keys, ids) for n, st in enumerate(stages))
        )
        return [i for got in moved for i in got]

    # -- waiting -------------------------------------------------------------------------

    async def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        progress: bool = False,
        raise_on_failure: bool = False,
    ) -> list[JobT]:
        """``Flow.wait``, awaited: the same arguments, reads, errors and outcome (the
        I/O-free part is ``waiting.Waiting``, shared). Returns once every job is done
        (finished or failed) their final hashes in the order given; a failed job comes back
        with ``failed`` true (``raise_on_failure`` raises JobFailedError instead);
        WaitTimeoutError lists the ids not done after ``timeout`` seconds (every step, a
        silent server's too, is held to it); UnknownJobError the ids that are no job.
        Rides out Redis outages. ``progress`` shows the progress line on stderr. Every
        partition of a partitioned flow is waited on at once, each on its subscription
        (shared by every wait of this AsyncFlow)."""
        flow = self.flow
        parts = flow.parts
        state = Waiting(flow.name, [p.name for p in parts], job_ids, timeout, progress, flow.logger)
        if not state.ids:
            return []
        event = asyncio.Event()
        hubs = [self._done_hub(n, progress) for n in range(len(parts))]
        waiters = [hub.join(set(state.ids), event) for hub in hubs]

        async def first(n: int) -> FirstRead:
            store = self._store(n)
            replies = await store.hash_field_many(state.job_keys(n, state.ids), [keys.DONE])
            rest = state.not_done(state.ids, replies)
            return replies, rest, await store.exists_many(state.job_keys(n, rest))

        async def still(n: int, ids: list[str]) -> list[str]:
            replies = await self._store(n).hash_field_many(state.job_keys(n, ids), [keys.DONE])
            return state.not_done(ids, replies)

        try:
            for waiter in waiters:  # subscribed first: nothing slips past the first read
                with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
                    await _within(waiter.ready, state.deadline)  # else: the reads ride it out
            reads = await self._ride_out(
                state, lambda: asyncio.gather(*(first(n) for n in range(len(parts)))), log=True
            )
            state.place(reads)
            while state.pending:
                pause = state.pause()
                if pause > 0 and not event.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(event.wait(), pause)
                event.clear()
                for waiter in waiters:
                    state.arrived(waiter.arrived)
                    waiter.arrived.clear()
                    state.reports.update(waiter.reports)
                    if waiter.problem is not None or waiter.recheck:
                        waiter.problem = None  # lost, or back: read the flags now
                        waiter.recheck = False
                        state.lost()
                if state.recheck_due():
                    groups = state.recheck_groups()
                    try:
                        state.rechecked(
                            await _within(
                                asyncio.gather(*(still(n, ids) for n, ids in groups)),
                                state.deadline,
                            )
                        )
                    except (RedisUnavailableError, RedisRefusedError) as exc:
                        state.unreachable(exc)
                state.show()
        except asyncio.TimeoutError:
            raise state.timed_out() from None
        finally:
            for hub, waiter in zip(hubs, waiters, strict=True):
                hub.leave(waiter)
        state.show(final=True)
        try:
            jobs = await self._ride_out(
                state, lambda: self._fetch(state.final_refs(), resolve=False), log=False
            )
        except asyncio.TimeoutError:
            raise state.timed_out() from None
        return [cast("JobT", j) for j in state.result(jobs, raise_on_failure)]

    @staticmethod
    async def _ride_out(state: Waiting, read: Callable[[], Awaitable[T]], log: bool) -> T:
        """``read()`` held to the deadline, tried again while Redis is away or refusing
        (at the deadline, that outage is raised, as the sync wait raises it)."""
        last: RedisUnavailableError | RedisRefusedError | None = None
        while True:
            try:
                return await _within(read(), state.deadline)
            except (RedisUnavailableError, RedisRefusedError) as exc:
                last = exc
                await asyncio.sleep(state.retry_after(exc, log))
            except asyncio.TimeoutError:
                if last is not None:
                    raise last from None
                raise


async def _within(aw: Awaitable[T], deadline: float | None) -> T:
    """``aw``, or asyncio's TimeoutError at ``deadline`` (cancelling a request is safe: its
    replies are read and dropped)."""
    if deadline is None:
        return await aw
    return await asyncio.wait_for(aw, max(0.0, deadline - time.monotonic()))
