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

from . import codec
from .errors import (
    ConfigurationError,
    JobFailedError,
    RedisRefusedError,
    RedisUnavailableError,
    UnknownJobError,
    UnknownLookupAttributeError,
    WaitTimeoutError,
)
from .flow import Flow
from .ids import uuid7
from .store import keys
from .store.aio import AsyncStore

__all__ = ["AsyncFlow"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
T = TypeVar("T")

#: seconds between re-reads of the jobs still pending (as the sync wait)
_RECHECK = 2.0
#: seconds between re-reads while Redis is away, and the hub's longest reconnect back-off
_OUTAGE_RECHECK = 0.2
_MAX_BACKOFF = 2.0


class _Waiter:
    """One ``wait`` call's share of the hub: the ids it waits for, those announced since it
    last looked, and what the hub has to tell it."""

    __slots__ = ("arrived", "event", "ids", "problem", "ready", "recheck")

    def __init__(self, ids: set[str], loop: asyncio.AbstractEventLoop) -> None:
        self.ids = ids
        self.arrived: set[str] = set()
        self.event = asyncio.Event()
        #: resolved once the hub is subscribed (or fails with the error of its first try)
        self.ready: asyncio.Future[None] = loop.create_future()
        #: the subscription was lost (re-read now: announcements are missed meanwhile)
        self.problem: BaseException | None = None
        #: subscribed again after an outage (re-read now)
        self.recheck = False


class _DoneHub:
    """One subscription to ``procflow:F:done`` shared by every ``wait`` of an AsyncFlow: a
    web app with a thousand requests waiting holds one subscriber connection, and each id
    announced goes to the waits that want it. The hub runs while some wait is waiting;
    after an outage it subscribes again with back-off and tells the waits to re-read."""

    def __init__(self, store: AsyncStore, flow: str) -> None:
        self._store = store
        self._flow = flow
        self._waiters: set[_Waiter] = set()
        self._by_id: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False

    def join(self, ids: set[str]) -> _Waiter:
        waiter = _Waiter(ids, self._store.loop)
        self._waiters.add(waiter)
        for job_id in ids:
            self._by_id.setdefault(job_id, []).append(waiter)
        if self._subscribed:
            waiter.ready.set_result(None)
        if self._task is None or self._task.done():
            self._task = self._store.loop.create_task(self._run())
        return waiter

    def leave(self, waiter: _Waiter) -> None:
        self._waiters.discard(waiter)
        for job_id in waiter.ids:
            waiting = self._by_id.get(job_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self._by_id[job_id]
        if not self._waiters:
            self.close()

    def close(self) -> None:
        """Stop the subscription (the next ``join`` starts it again)."""
        task, self._task = self._task, None
        self._subscribed = False
        if task is not None and self._store.loop.is_running():
            task.cancel()

    def _tell(self, problem: BaseException) -> None:
        for waiter in self._waiters:
            if not waiter.ready.done():
                waiter.ready.set_exception(problem)  # a wait that has not begun: it raises
            else:
                waiter.problem = problem
                waiter.event.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:  # until close() cancels it
            subscription = self._store.subscribe_done(self._flow)
            try:
                await subscription.open()
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self._tell(exc)
                await asyncio.sleep(delay)
                delay = min(_MAX_BACKOFF, delay * 2)
                continue
            delay = 0.1
            self._subscribed = True
            for waiter in self._waiters:
                if waiter.ready.done():
                    waiter.recheck = True
                    waiter.event.set()
                else:
                    waiter.ready.set_result(None)
            try:
                while True:
                    for job_id in await subscription.messages():
                        for waiter in self._by_id.get(job_id, ()):
                            waiter.arrived.add(job_id)
                            waiter.event.set()
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self._subscribed = False
                self._tell(exc)
            finally:
                subscription.close()


class AsyncFlow(Generic[JobT, OptionsT, LookupT]):
    """The asyncio client of a :class:`procflow.Flow`: the same jobs, the same checks, the
    same bytes in Redis, awaited. Make one per application (at startup) and share it: its
    requests go on one connection, pipelined, and every ``wait`` shares one subscription.
    Connections open on first use and belong to the event loop that opened them (used from
    another loop, the AsyncFlow starts afresh there). Close it with :meth:`aclose` or use
    ``async with AsyncFlow(flow) as af:``."""

    def __init__(self, flow: Flow[JobT, OptionsT, LookupT]) -> None:
        if not isinstance(flow, Flow):
            raise ConfigurationError(
                f"AsyncFlow wraps a procflow.Flow, not a {type(flow).__name__}"
            )
        if flow.partitioning is not None:
            raise ConfigurationError(
                f"AsyncFlow does not serve partitioned flows yet (flow {flow.name!r} has "
                f"{len(flow.parts)} partitions); use the Flow's own methods, from a thread"
            )
        self.flow = flow
        self._store: AsyncStore | None = None
        self._hub: _DoneHub | None = None

    def __repr__(self) -> str:
        return f"AsyncFlow({self.flow!r})"

    @property
    def name(self) -> str:
        return self.flow.name

    # -- connection ----------------------------------------------------------------------

    @property
    def store(self) -> AsyncStore:
        """The async Redis layer, made on first use in the running loop (and made again in
        another loop, or after ``flow.use_redis``)."""
        loop = asyncio.get_running_loop()
        store = self._store
        if store is None or store.loop is not loop or store.settings is not self.flow.redis:
            if store is not None:
                self._drop()
            store = self._store = AsyncStore(self.flow.redis)
        return store

    def _done_hub(self) -> _DoneHub:
        store = self.store
        if self._hub is None:
            self._hub = _DoneHub(store, self.name)
        return self._hub

    def _drop(self) -> None:
        store, self._store = self._store, None
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()
        if store is not None:
            store.abandon()

    async def connect(self) -> None:
        """Connect now and PING (at an app's startup, say); RedisUnavailableError names the
        address."""
        await self.store.ping()

    async def aclose(self) -> None:
        """Close the connections (the AsyncFlow opens them again if used afterwards)."""
        store = self._store
        running = store is not None and store.loop is asyncio.get_running_loop()
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()
        self._store = None
        if store is not None:
            if running:
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

    async def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC, the same commands and bytes as
        ``Flow.create_job``) on the first queue and return its id. Options that cannot be
        stored raise EncodeError before anything is sent."""
        flow = self.flow
        job = flow._prepare(options, uuid7())
        await self.store.create_jobs([job], flow.key_ttl)
        return job.id

    async def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC). Every option is checked
        before anything is sent: one bad job raises EncodeError and writes none. A refusal
        part way raises CreateJobsError (``.created``, ``.not_created``)."""
        jobs = self.flow._prepare_many(many)
        if not jobs:
            return []
        await self.store.create_jobs(jobs, self.flow.key_ttl)
        return [job.id for job in jobs]

    async def _fetch(
        self, refs: Sequence[tuple[str, str]], resolve: bool
    ) -> list[dict[str, Any] | None]:
        """Jobs by (key, id), aligned with ``refs``; None where the hash is gone."""
        if not refs:
            return []
        raws = await self.store.get_hashes([key for key, _ in refs])
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
        job = (await self._fetch([(self.flow.job_key(job_id), job_id)], resolve=False))[0]
        return cast("JobT | None", job)

    async def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip), skipping ids whose hash is gone."""
        refs = [(self.flow.job_key(i), i) for i in job_ids]
        jobs = await self._fetch(refs, resolve_children)
        return [cast("JobT", j) for j in jobs if j is not None]

    async def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first. With
        ``resolve_children``, every ``children:Q:jobs`` field holds the child jobs."""
        flow = self.flow
        if key not in flow.lookup_attributes:
            raise UnknownLookupAttributeError(str(key), list(flow.lookup_attributes))
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ConfigurationError(
                f"a lookup value must be a string, number, boolean or None, got a "
                f"{type(value).__name__}"
            )
        ids = await self.store.list_range(keys.lookup(flow.name, key, codec.lookup_text(value)))
        return await self.get_jobs(ids, resolve_children)

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        flow = self.flow
        key = flow.job_key(job_id)
        raw = (await self.store.get_hashes([key]))[0]
        if not raw:
            return False
        job = flow._decode(key, job_id, raw)
        for _, refs in Flow._child_refs(job):
            for child_key, child_id in refs:
                child_stages = flow.definition.stages_of_job(child_key)
                await self.store.delete_job(child_key, child_id, (), child_stages)
        top = [s.keys for s in flow.definition.top_stages]
        await self.store.delete_job(key, job_id, flow._lookup_keys(flow.parts[0], job), top)
        return True

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, processing, delayed, parked and failed."""
        stages = list(self.flow.stages.values())
        counted = await self.store.counts([s.keys for s in stages])
        return {s.name: c for s, c in zip(stages, counted, strict=True)}

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
        out Redis outages, as ``Flow.wait`` does."""
        ids = list(job_ids)
        if not ids:
            return []
        jobs = await self._wait(ids, timeout)
        if raise_on_failure and any(j.get(keys.FAILED) is True for j in jobs):
            raise JobFailedError(jobs)
        return [cast("JobT", j) for j in jobs]

    async def _still_pending(self, pending: set[str]) -> set[str]:
        ids = list(pending)
        replies = await self.store.hash_field_many([self.flow.job_key(i) for i in ids], [keys.DONE])
        return {i for i, reply in zip(ids, replies, strict=True) if not keys.is_true(reply[0])}

    async def _wait(self, ids: list[str], timeout: float | None) -> list[dict[str, Any]]:
        """The sync ``wait_for_jobs``, awaited: subscribed first (the hub), then the done
        flags read, then announcements taken as they come and the rest re-read every 2 s.
        Every step is held to the deadline, a silent server's too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = set(ids)
        hub = self._done_hub()
        waiter = hub.join(set(ids))
        try:
            await _within(waiter.ready, deadline)  # subscribed: nothing slips past the read
            pending = await _within(self._still_pending(pending), deadline)
            listed = sorted(pending)
            keys_ = [self.flow.job_key(i) for i in listed]
            there = await _within(self.store.exists_many(keys_), deadline)
            unknown = [i for i, ok in zip(listed, there, strict=True) if not ok]
            if unknown:
                raise UnknownJobError(self.name, unknown)
            await self._take(waiter, pending, deadline)
        except asyncio.TimeoutError:
            raise WaitTimeoutError(sorted(pending), timeout or 0.0) from None
        finally:
            hub.leave(waiter)
        while True:  # the final read rides out an outage too, until the deadline
            try:
                jobs = await self._fetch([(self.flow.job_key(i), i) for i in ids], resolve=False)
                return [j for j in jobs if j is not None]
            except (RedisUnavailableError, RedisRefusedError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(_OUTAGE_RECHECK)

    async def _take(self, waiter: _Waiter, pending: set[str], deadline: float | None) -> None:
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
                    still = await _within(self._still_pending(pending), deadline)
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
