"""``procflow.aio`` (this module, re-exported there): a flow's client side for asyncio.

:class:`AsyncFlow` wraps a :class:`procflow.Flow` and creates, reads, deletes and waits for
its jobs without blocking the event loop (a FastAPI or Starlette app, an aiohttp service)::

    from procflow.aio import AsyncFlow

    async with AsyncFlow(flow) as af:
        job_id = await af.create_job({"userId": 62})
        [job] = await af.wait([job_id], timeout=60)

Every operation is the Flow's client core's (``core.ClientCore``: the checks, the encoding,
what to read and write in which partition, the decoding), driven here on the async stores
(``store/aio.py``, whose commands are ``store/plans.py``'s, as the sync Store's are): the same
commands, byte for byte, as ``Flow`` sends. Workers and the supervisor stay as they are:
they run in processes of their own, and a job created here is the same job a sync
``create_job`` makes. See docs/async.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, cast

from typing_extensions import Self, TypeVar

from ..errors import ConfigurationError, RedisRefusedError, RedisUnavailableError
from ..ids import uuid7
from ..store.aio import AsyncStore
from .aio_hub import DoneHub
from .core import Operation, Round
from .flow import Flow
from .waiting import Waiting

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

    def _store(self, partition: int) -> AsyncStore:
        loop = asyncio.get_running_loop()
        settings = self.flow.partitions[partition].redis
        store = self._stores.get(partition)
        if store is None or store.loop is not loop or store.settings is not settings:
            if store is not None:
                self._drop()
            store = self._stores[partition] = AsyncStore(settings)
        return store

    def _done_hub(self, partition: int, progress: bool = False) -> DoneHub:
        """Partition ``partition``'s hub (the waits that show progress share another, whose
        subscription has the progress channel too)."""
        store = self._store(partition)
        hub = self._hubs.get((partition, progress))
        if hub is None:
            hub = self._hubs[(partition, progress)] = DoneHub(
                store, self.flow.partitions[partition].name, progress
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
        await asyncio.gather(*(self._store(i).ping() for i in range(len(self.flow.partitions))))

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

    async def drive(self, operation: Operation[T]) -> T:
        """Run a ``core`` operation of the flow (as ``Flow.drive`` does, awaited): each
        round's store calls on this AsyncFlow's stores, side by side, their results sent
        back; the operation's result returned."""
        try:
            step = next(operation)
            while True:
                step = operation.send(await self._run_round(step))
        except StopIteration as stop:
            return cast(T, stop.value)

    async def _run_round(self, step: Round) -> list[Any]:
        calls = [getattr(self._store(c.partition), c.method)(*c.args) for c in step.calls]
        if len(calls) != 1 or not step.inline:
            return list(await asyncio.gather(*calls, return_exceptions=step.capture))
        try:  # awaited in this task: its request is sent before the task yields
            return [await calls[0]]
        except Exception as exc:  # with capture: the round's outcome, settled by the core
            if not step.capture:
                raise
            return [exc]

    async def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC, the same commands and bytes as
        ``Flow.create_job``) on the first queue and return its id. Options that cannot be
        stored raise EncodeError before anything is sent."""
        core = self.flow.core
        [job_id] = await self.drive(core.create([core.prepare(options, uuid7())]))
        return job_id

    async def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC; a partitioned flow's
        partitions side by side). Every option is checked before anything is sent: one bad
        job raises EncodeError and writes none. A refusal part way raises CreateJobsError
        (``.created``, ``.not_created``)."""
        core = self.flow.core
        return await self.drive(core.create(core.prepare_many(many)))

    async def get_job(self, job_id: str) -> JobT | None:
        """The decoded job hash with its ``"id"``, or None when there is no such job."""
        found = await self.get_jobs([job_id])
        return found[0] if found else None

    async def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip; a partitioned flow's partitions side by
        side), skipping ids whose hash is gone."""
        jobs = await self.drive(self.flow.core.get_jobs(job_ids, resolve_children))
        return cast("list[JobT]", jobs)

    async def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first (of a
        partitioned flow: partition by partition). With ``resolve_children``, every
        ``children:Q:jobs`` field holds the child jobs."""
        jobs = await self.drive(self.flow.core.get_jobs_by_key(key, value, resolve_children))
        return cast("list[JobT]", jobs)

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        return await self.drive(self.flow.core.delete_job(job_id))

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, processing, delayed, parked and failed (of a partitioned
        flow: summed over the partitions, by the queue names given)."""
        return await self.drive(self.flow.core.counts())

    # -- pausing a stage -----------------------------------------------------------------

    async def pause(self, queue: str) -> None:
        """As ``Flow.pause``: no worker leases from stage ``queue`` until it is resumed."""
        await self.drive(self.flow.core.set_paused(self.flow.stages_of(queue), True))

    async def resume(self, queue: str) -> None:
        """As ``Flow.resume``."""
        await self.drive(self.flow.core.set_paused(self.flow.stages_of(queue), False))

    async def paused(self) -> dict[str, bool]:
        """As ``Flow.paused``: per queue, whether it is paused."""
        return await self.drive(self.flow.core.paused())

    # -- failed jobs ---------------------------------------------------------------------

    async def failed_jobs(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        """As ``Flow.failed_jobs``: ids on ``queue``'s failed list, oldest first (of a
        partitioned flow: partition by partition), expired jobs' ids dropped first."""
        flow = self.flow
        return await self.drive(flow.core.failed_jobs(flow.stages_of(queue), start, stop))

    async def retry_failed(self, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """As ``Flow.retry_failed``: failed jobs (all of ``queue``'s, or the given ids) back
        on its waiting list with a fresh attempt count. Returns the ids moved."""
        flow = self.flow
        return await self.drive(flow.core.retry_failed(flow.stages_of(queue), job_ids))

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
        partitions = flow.partitions
        state = Waiting(
            flow.name, [p.name for p in partitions], job_ids, timeout, progress, flow.logger
        )
        if not state.ids:
            return []
        event = asyncio.Event()
        hubs = [self._done_hub(n, progress) for n in range(len(partitions))]
        waiters = [hub.join(set(state.ids), event) for hub in hubs]

        try:
            for waiter in waiters:  # subscribed first: nothing slips past the first read
                with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
                    await _within(waiter.ready, state.deadline)  # else: the reads ride it out
            reads = await self._ride_out(state, lambda: self.drive(state.first_read()), log=True)
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
                    try:
                        state.rechecked(await _within(self.drive(state.recheck()), state.deadline))
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
            final = flow.core.fetch
            jobs = await self._ride_out(
                state, lambda: self.drive(final(state.final_refs(), resolve=False)), log=False
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
