"""The async store: every Redis command of ``procflow.client.aio`` is issued here.

An :class:`AsyncStore` multiplexes every request on one connection (a ``link.Link``): a
request is written whole and the replies are parsed as they arrive, in order. What it sends
and how it reads the replies is ``plans.py``'s, shared with the sync Store (:meth:`run`
drives an operation of it; ``create_jobs`` paces ``plans.pack_create``'s blocks as the sync
Store does): the same bytes.
Concurrent callers are pipelined, and a cancelled caller leaves the connection in step (its
replies are read and dropped). The errors are the sync Store's: RedisUnavailableError (also a
reply later than ``socket_timeout``; the next request reconnects) and
``refusal(address, text)``.

Under Cluster and Sentinel it goes where the sync Store goes, by the same rules
(``replies.py``): a call refused with MOVED or ASK is sent again where the reply points (up to
``REDIRECTS`` times; the link the redirect came on is retired), a link opened on an ASK's
importing node asks there for ``ASKING_FOR`` seconds and then reads the slot map again, and
a demoted Sentinel master's READONLY, like an outage, sends the next link to the master the
sentinels name then.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import redis.exceptions as rex

from ..errors import RedisRefusedError, RedisUnavailableError, refusal
from ..settings import RedisSettings
from . import keys, plans
from .eviction import EvictionPolicy
from .keys import StageKeys
from .link import Link, open_streams
from .plans import PRUNE_LIMIT, Exchange, Request
from .records import NewJob
from .replies import REDIRECTS, Route, follow
from .subscription import note_progress
from .wire import Arg, Script, Transmission, pack, replicated, transmit

__all__ = ["AsyncStore", "AsyncSubscription"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")
P = ParamSpec("P")


def follows_redirects(method: F) -> F:
    """The sync ``redis.follows_redirects``, awaited: a call refused with MOVED or ASK is
    sent again where the reply points (``replies.follow`` decides), up to ``REDIRECTS``
    times."""

    @functools.wraps(method)
    async def call(self: AsyncStore, *args: Any, **kwargs: Any) -> Any:
        for _ in range(REDIRECTS):
            try:
                return await method(self, *args, **kwargs)
            except RedisRefusedError as exc:
                if not follow(exc, self.settings):
                    raise
        return await method(self, *args, **kwargs)

    return cast(F, call)


class AsyncStore:
    """The async twin of :class:`procflow.store.redis.Store` (the calls ``procflow.client.aio``
    needs), on one multiplexed connection. It belongs to the event loop it was made in."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self._link: Link | None = None
        self._connecting = asyncio.Lock()
        #: where the next link goes (a redirect's target, or the directory's master)
        self.route = Route(settings)

    def _usable(self, link: Link | None) -> bool:
        if link is None or link.broken is not None or link.retired:
            return False
        if link.stale():  # closed by the server while idle (a restart, a failover)
            link.close()
            return False
        if link.asking and self.route.window_over(time.monotonic()):
            link.retire()  # asked there long enough: the slot map says where it is now
            return False
        return True

    async def link(self) -> Link:
        """The live connection, opened (again) when there is none, or where the route
        points after a redirect."""
        link = self._link
        if self._usable(link):
            assert link is not None
            return link
        async with self._connecting:
            link = self._link
            if not self._usable(link):
                if link is not None and link.broken is not None:
                    self.route.left()
                hop = self.route.next_hop(time.monotonic())
                streams = await open_streams(self.settings, hop)
                link = self._link = Link(
                    self.settings, streams, route=self.route, asking=self.route.asking
                )
        assert link is not None
        return link

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()

    def abandon(self) -> None:
        """Drop the connection without awaiting (its loop is gone or not the running one)."""
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _replicated(self, reply: Any) -> None:
        """A WAIT's reply (``durable``): fewer than one replica means not durable yet."""
        replicated(reply, self._check, self.settings.durable_ms)

    def _check(self, reply: Any) -> Any:
        """Raise the refusal for an error reply, also inside a transaction's reply."""
        for item in reply if isinstance(reply, list) else [reply]:
            if isinstance(item, rex.ResponseError):
                raise refusal(self.settings.address, str(item))
        return reply

    async def _pipeline(self, commands: Sequence[bytes], writes: bool = False) -> list[Any]:
        """As ``Wire.pipeline``: packed commands in one write, every reply (errors as
        values); under ``durable``, writes get a WAIT in the same write."""
        return await self._drive(transmit(commands, self._check, self._durable_ms, writes=writes))

    async def _drive(self, transmission: Transmission) -> list[Any]:
        """Run a ``wire.transmit`` on this store's connection."""
        link = await self.link()
        try:
            write = next(transmission)
            while True:
                write = transmission.send(await link.request(write.data, write.replies))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    @property
    def _durable_ms(self) -> int | None:
        return self.settings.durable_ms if self.settings.durable else None

    async def call(self, *args: Arg) -> Any:
        return self._check((await self._pipeline([pack(*args)]))[0])

    async def _run_scripts(self, scripts: Sequence[Script], packed: Sequence[bytes]) -> list[Any]:
        """As ``Wire.run_scripts``: pipelined EVALSHA calls, NOSCRIPT ones loaded and sent
        again. Error replies are values."""
        return await self._drive(transmit(packed, self._check, self._durable_ms, scripts=scripts))

    # -- the operations of ``plans`` -------------------------------------------------------

    @follows_redirects
    async def run(self, op: Callable[P, Exchange[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Operation ``op(*args)`` of ``plans``, as ``Store.run`` drives it: each request
        sent, its replies read (checked as it asks) and handed back; its result returned."""
        exchange = op(*args, **kwargs)
        try:
            request = next(exchange)
            while True:
                request = exchange.send(await self._send(request))
        except StopIteration as stop:
            return cast(T, stop.value)

    async def _send(self, request: Request) -> list[Any]:
        if request.scripts:
            replies = await self._run_scripts(request.scripts, request.commands)
        else:
            replies = await self._pipeline(request.commands, writes=request.writes)
        return plans.checked(request, replies, self._check)

    async def ping(self) -> None:
        """As ``Store.ping``: PING, then the check of the server's maxmemory-policy."""
        await self.run(plans.ping, self.settings.address)

    async def eviction_policy(self) -> EvictionPolicy:
        """As ``Store.eviction_policy``: CONFIG GET, else INFO memory, else unknown."""
        return await self.run(plans.eviction_policy, self.settings.address)

    @follows_redirects
    async def create_jobs(self, jobs: Sequence[NewJob], ttl: int) -> None:
        """As ``Store.create_jobs``, byte for byte (``plans.create_jobs``, paced on one
        connection)."""
        link = await self.link()
        paced = plans.create_jobs(jobs, ttl, self.settings.address, self._check, self._durable_ms)
        pending: asyncio.Future[list[Any]] | None = None
        try:
            step = next(paced)
            while True:
                sent = link.submit(step.data, step.replies) if step.data else None
                await link.flush()
                replies = await pending if pending is not None else []
                pending = sent
                step = paced.send(replies)
        except StopIteration:
            return

    async def get_hashes(self, hash_keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL of every key in one round trip (an absent key gives ``{}``)."""
        return await self.run(plans.get_hashes, hash_keys)

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        return await self.run(plans.list_range, key, start, stop)

    async def hash_field_many(
        self, hash_keys: Sequence[str], fields: Sequence[str]
    ) -> list[list[Any]]:
        """HMGET the same fields from many hashes in one round trip."""
        return await self.run(plans.hash_field_many, hash_keys, fields)

    async def exists_many(self, hash_keys: Sequence[str]) -> list[bool]:
        return await self.run(plans.exists_many, hash_keys)

    async def delete_job(
        self, job_key: str, job_id: str, lookup_keys: Sequence[str], stages: Sequence[StageKeys]
    ) -> int:
        """As ``Store.delete_job`` (``plans.delete_job``)."""
        return await self.run(plans.delete_job, job_key, job_id, lookup_keys, stages)

    async def prune_failed(self, stages: Sequence[StageKeys], limit: int = PRUNE_LIMIT) -> int:
        """As ``Store.prune_failed``: drop expired jobs' ids from the failed lists."""
        return await self.run(plans.prune_failed, stages, limit)

    async def set_paused(self, stages: Sequence[StageKeys], note: str | None) -> None:
        """As ``Store.set_paused``."""
        await self.run(plans.set_paused, stages, note)

    async def paused(self, stages: Sequence[StageKeys]) -> list[bool]:
        """As ``Store.paused``."""
        return await self.run(plans.paused, stages)

    async def counts(self, stages: Sequence[StageKeys]) -> list[dict[str, int]]:
        """As ``Store.counts``: waiting, processing, delayed, parked and failed per stage."""
        return await self.run(plans.counts, stages)

    async def revive(self, stage: StageKeys, job_ids: Sequence[str]) -> list[str]:
        """As ``Store.revive``: failed jobs back onto their stage's waiting list with a fresh
        attempt count."""
        return await self.run(plans.revive, stage, job_ids)

    def subscribe_done(self, flow: str, progress: bool = False) -> AsyncSubscription:
        """A subscription (not yet open) to the ids of flow ``flow``'s jobs as they become
        done (and, with ``progress``, to their progress reports), on a connection of its
        own."""
        channel = keys.progress_channel(flow) if progress else None
        return AsyncSubscription(self.settings, keys.done_channel(flow), channel)


class AsyncSubscription:
    """SUBSCRIBE to one channel (and a progress channel) on a :class:`Link` of its own (the
    messages are RESP3 pushes). After ``max(1, socket_timeout / 2)`` s of silence it PINGs,
    and the Link allows ``socket_timeout`` for the answer. A lost connection raises
    RedisUnavailableError: open a new subscription (what was published meanwhile is lost).
    ``reports`` holds the progress reports received (job id → fraction) until taken."""

    def __init__(
        self, settings: RedisSettings, channel: str, progress_channel: str | None = None
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.progress_channel = progress_channel
        self._channel = channel.encode()
        self._link: Link | None = None
        self._ids: list[str] = []
        self.reports: dict[str, float] = {}
        self._confirmed = False
        self._event = asyncio.Event()

    def _pushed(self, reply: list[Any] | None) -> None:
        if reply is not None and len(reply) == 3 and reply[0] == b"message":
            if reply[1] == self._channel:
                self._ids.append(reply[2].decode())
            else:
                note_progress(self.reports, reply[2])
        elif reply is not None and reply[:2] == [b"subscribe", self._channel]:
            self._confirmed = True
        self._event.set()  # a message, or the connection broke (None)

    async def open(self) -> None:
        """Connect and subscribe; returns once the server confirmed the subscription."""
        link = self._link = Link(self.settings, await open_streams(self.settings), self._pushed)
        try:  # the PONG comes after the confirmation, or after the refusal
            channels = [self.channel, *([self.progress_channel] if self.progress_channel else [])]
            [reply] = await link.request(pack("SUBSCRIBE", *channels) + pack("PING"), 1)
            if isinstance(reply, rex.ResponseError):
                raise refusal(self.settings.address, str(reply))
            if not self._confirmed:
                raise RedisUnavailableError(self.settings.address, "no subscription confirmed")
        except BaseException:
            self.close()
            raise

    async def messages(self) -> list[str]:
        """The messages published on the channel, as text: waits for one (or a progress
        report), then takes every one already received."""
        interval = max(1.0, self.settings.socket_timeout / 2)
        while not self._ids and not self.reports:
            link = self._link
            if link is None or link.broken is not None:
                raise (
                    link.gone() if link else RedisUnavailableError(self.settings.address, "closed")
                )
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), interval)
            except asyncio.TimeoutError:
                await link.request(pack("PING"), 1)  # a half-open connection stays silent
        ids, self._ids = self._ids, []
        return ids

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
