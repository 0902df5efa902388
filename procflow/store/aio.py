"""The async store: every Redis command of ``procflow.aio`` is issued here.

An :class:`AsyncStore` multiplexes every request on one connection: a request is written whole
(a job's MULTI … EXEC packed by the sync Store's own ``pack_create``: the same bytes) and the
replies are parsed as they arrive, in order, by a hiredis reader of our own, as ``wire.py``
does. Concurrent callers are pipelined, and a cancelled caller leaves the connection in step
(its replies are read and dropped). redis-py's asyncio ``Connection`` only connects (handshake,
AUTH/ACL, TLS, unix sockets). The errors are the sync Store's: RedisUnavailableError (also a
reply later than ``socket_timeout``; the next request reconnects) and ``refusal(address, text)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import CreateJobsError, RedisRefusedError, RedisUnavailableError, refusal
from ..settings import RedisSettings
from . import keys
from .connect import connection_kwargs, discover_master, slot_master
from .keys import StageKeys
from .records import NewJob
from .redis import CREATE_CHUNK, PRUNE_LIMIT, Store, created_from
from .wire import Arg, Script, pack, script

__all__ = ["AsyncStore", "AsyncSubscription", "Link", "open_streams"]

_NOT_READY = ("LOADING", "MASTERDOWN", "TRYAGAIN")
_PUSH: Any = getattr(hiredis, "PushNotification", None)
_MORE = object()  # hiredis: not enough data yet (False is a RESP3 value)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Push = Callable[[list[Any] | None], None]


def _connection_class(settings: RedisSettings) -> type[Any]:
    """The redis-py asyncio connection class for these settings (as ``wire.connection_class``)."""
    if settings.unix_socket_path:
        return aredis.UnixDomainSocketConnection
    if settings.ssl:
        return aredis.SSLConnection
    return aredis.Connection


def _release(conn: Any) -> Streams | None:
    """Take the streams of a redis-py connection: it forgets them (and never warns)."""
    reader, writer = conn._reader, conn._writer
    conn._reader = conn._writer = None
    return None if reader is None or writer is None else (reader, writer)


async def open_streams(settings: RedisSettings) -> Streams:
    """Connect and shake hands (with every option of ``settings``), then hand over the
    streams. RedisUnavailableError names the address; a refusal during the handshake (a
    database out of range, say) is the server's error. Under Sentinel, the master the
    sentinels name now (asked on a thread: the sentinel client is blocking)."""
    if settings.sentinels or settings.cluster_nodes:
        find = discover_master if settings.sentinels else slot_master
        host, port = await asyncio.to_thread(find, settings)
        settings = settings.with_options(host=host, port=port)
    kwargs = connection_kwargs(
        settings, socket_timeout=settings.socket_timeout, retry=Retry(NoBackoff(), 0)
    )
    conn = _connection_class(settings)(**kwargs)
    try:
        await conn.connect()
    except BaseException as exc:  # cancelled while connecting, too: nothing is left open
        if (released := _release(conn)) is not None:
            released[1].close()
        if isinstance(exc, rex.ResponseError):  # refused during the handshake (SELECT …)
            raise refusal(settings.address, str(exc)) from None
        if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError):
            raise RedisUnavailableError(settings.address, exc) from None
        raise
    streams = _release(conn)
    if streams is None:
        raise RedisUnavailableError(settings.address, "no connection after the handshake")
    return streams


class _Lost(Exception):
    """Inside a Link: the connection is lost (the text says why)."""


class _Call:
    __slots__ = ("count", "future", "replies", "sent")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.sent = time.monotonic()


class Link(asyncio.Protocol):
    """One connection as an asyncio protocol (taken over after redis-py's handshake).
    :meth:`submit` queues a request whole (the writes of one loop iteration go in one send)
    and returns the future of its replies, error replies as values. Once broken (the server
    gone, or silent for ``socket_timeout`` while replies are owed) every owed and later
    request fails with RedisUnavailableError. With ``on_push`` it is a subscriber's: the
    pushes go there, and ``on_push(None)`` says it broke."""

    def __init__(
        self, settings: RedisSettings, streams: Streams, on_push: Push | None = None
    ) -> None:
        self.address = settings.address
        self._on_push = on_push
        self.timeout = settings.socket_timeout
        self.loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=rex.ResponseError, notEnoughData=_MORE)
        self._calls: deque[_Call] = deque()
        self._out: list[bytes] = []
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._writable: list[asyncio.Future[None]] | None = None  # while writing is paused
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self.broken: str | None = None
        self._streams = streams  # held: a StreamWriter closes its transport when collected
        self._transport: Any = cast(Any, streams[1].transport)
        self._transport.set_protocol(self)
        self._transport.resume_reading()
        self._guard = self.loop.create_task(self._hold())

    async def _hold(self) -> None:
        """As long as the connection: when the loop ends (``asyncio.run`` cancels what is
        left), the connection is closed with it."""
        try:
            await self._closed
        except asyncio.CancelledError:
            self._break("the event loop is closing")
            raise

    def gone(self) -> RedisUnavailableError:
        return RedisUnavailableError(self.address, self.broken or "connection closed")

    def submit(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Send ``packed`` (``count`` commands); the future gets their replies."""
        if self.broken is not None:
            raise self.gone()
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        self._calls.append(_Call(future, count))
        if not self._out:
            self.loop.call_soon(self._send)
        self._out.append(packed)
        if self._timer is None:
            self._timer = self.loop.call_later(self.timeout, self._watch)
        return future

    def _send(self) -> None:
        out, self._out = self._out, []
        if self.broken is None:
            self._transport.write(b"".join(out))

    async def request(self, packed: bytes, count: int) -> list[Any]:
        future = self.submit(packed, count)
        await self.flush()
        return await future

    async def flush(self) -> None:
        """Wait while the socket's send buffer is over its limit."""
        while self._writable is not None and self.broken is None:
            waiter = self.loop.create_future()
            self._writable.append(waiter)
            await waiter

    def _watch(self) -> None:
        """Replies owed, nothing received for ``socket_timeout``: a (half-open) outage."""
        self._timer = None
        if self._calls and self.broken is None:
            left = max(self._last, self._calls[0].sent) + self.timeout - time.monotonic()
            if left <= 0:
                self._break(f"no reply in {self.timeout:g} s")
            else:
                self._timer = self.loop.call_later(left, self._watch)

    def data_received(self, data: bytes) -> None:
        self._last = time.monotonic()
        self._parser.feed(data)
        try:
            self._dispatch()
        except _Lost as exc:
            self._break(str(exc))
        except Exception as exc:  # a protocol error: the connection cannot be trusted
            self._break(f"{type(exc).__name__}: {exc}")

    def eof_received(self) -> bool:
        self._break("connection closed by server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(str(exc) if exc else "connection closed")
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable = []

    def resume_writing(self) -> None:
        waiters, self._writable = self._writable or [], None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _dispatch(self) -> None:
        gets = self._parser.gets
        calls = self._calls
        while (reply := gets()) is not _MORE:
            if self._on_push is not None and isinstance(reply, list):
                self._on_push(reply)  # a subscriber's only list replies are pushes
                continue
            if type(reply) is _PUSH:
                continue  # a RESP3 push (none expected) is no reply to a request
            if isinstance(reply, rex.ResponseError):
                text = str(reply)
                if text.startswith("NOSCRIPT"):
                    reply = rex.NoScriptError(text)
                elif text.startswith(_NOT_READY):  # not ready yet: like unreachable
                    raise _Lost(text)
            if not calls:
                raise _Lost("a reply to no request: out of step")
            call = calls[0]
            call.replies.append(reply)
            if len(call.replies) == call.count:
                calls.popleft()
                if not call.future.done():  # its caller may have been cancelled
                    call.future.set_result(call.replies)

    def _break(self, cause: str) -> None:
        if self.broken is None:
            self.broken = cause
            if self._on_push is not None:
                self._on_push(None)
        calls, self._calls = self._calls, deque()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(self.gone())
                call.future.exception()  # retrieved: a caller that gave up logs nothing
        self.resume_writing()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._transport.close()

    def close(self) -> None:
        self._break("connection closed")

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), 1.0)


def _created(
    address: str, replies: list[Any], blocks: Sequence[tuple[NewJob, int]], created: list[str]
) -> RedisRefusedError | None:
    """The sync store's reading of create replies, on replies read here."""
    return created_from(address, replies, blocks, created)


class AsyncStore:
    """The async twin of :class:`procflow.store.redis.Store` (the calls ``procflow.aio``
    needs), on one multiplexed connection. It belongs to the event loop it was made in."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self._link: Link | None = None
        self._connecting = asyncio.Lock()

    async def link(self) -> Link:
        """The live connection, opened (again) when there is none."""
        link = self._link
        if link is not None and link.broken is None:
            return link
        async with self._connecting:
            link = self._link
            if link is None or link.broken is not None:
                link = self._link = Link(self.settings, await open_streams(self.settings))
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
        self._check(reply)
        if int(reply) < 1:
            raise refusal(
                self.settings.address,
                f"NOREPLICAS no replica acknowledged the write within "
                f"{self.settings.durable_ms} ms (durable=1)",
            )

    def _check(self, reply: Any) -> Any:
        """Raise the refusal for an error reply, also inside a transaction's reply."""
        for item in reply if isinstance(reply, list) else [reply]:
            if isinstance(item, rex.ResponseError):
                raise refusal(self.settings.address, str(item))
        return reply

    async def _pipeline(self, commands: Sequence[bytes]) -> list[Any]:
        if not commands:
            return []
        return await (await self.link()).request(b"".join(commands), len(commands))

    async def call(self, *args: Arg) -> Any:
        return self._check((await self._pipeline([pack(*args)]))[0])

    async def _run_scripts(self, scripts: Sequence[Script], packed: Sequence[bytes]) -> list[Any]:
        """Pipelined EVALSHA calls; scripts the server does not know are loaded and those
        calls sent again (NOSCRIPT: the call did not run). Error replies are values."""
        replies = await self._pipeline(packed)
        missing = [i for i, r in enumerate(replies) if isinstance(r, rex.NoScriptError)]
        if missing:
            wanted = {scripts[i].sha: scripts[i] for i in missing}.values()
            for reply in await self._pipeline([pack("SCRIPT", "LOAD", s.source) for s in wanted]):
                self._check(reply)
            again = await self._pipeline([packed[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def ping(self) -> None:
        await self.call("PING")

    async def create_jobs(self, jobs: Sequence[NewJob], ttl: int) -> None:
        """As ``Store.create_jobs``, byte for byte: each job its own MULTI … EXEC, chunks of
        500 pipelined with at most two in flight on one connection. CreateJobsError says
        which jobs were written when the server refused part way (a single job's refusal
        raises the refusal itself)."""
        if not jobs:
            return
        ttl_bulk = b"$%d\r\n%d\r\n" % (len(str(ttl)), ttl)
        created: list[str] = []
        refused: RedisRefusedError | None = None
        address = self.settings.address
        link = await self.link()  # one connection for the batch, as the sync Store
        in_flight: tuple[asyncio.Future[list[Any]], list[tuple[NewJob, int]]] | None = None
        start = 0
        while start < len(jobs) and refused is None:
            chunk = jobs[start : start + CREATE_CHUNK]
            blocks = [Store.pack_create(j, ttl_bulk) for j in chunk]
            future = link.submit(b"".join(b for b, _ in blocks), sum(n for _, n in blocks))
            await link.flush()
            if in_flight is not None:
                refused = _created(address, await in_flight[0], in_flight[1], created)
            in_flight = (future, [(j, n) for j, (_, n) in zip(chunk, blocks, strict=True)])
            start += len(chunk)
        if in_flight is not None:
            refused = _created(address, await in_flight[0], in_flight[1], created) or refused
        if refused is None and self.settings.durable:  # acknowledged once a replica has all
            [waited] = await link.request(pack("WAIT", 1, self.settings.durable_ms), 1)
            self._replicated(waited)
        if refused is not None:
            if len(jobs) == 1:
                raise refused
            done = set(created)
            raise CreateJobsError(refused, created, [j.id for j in jobs if j.id not in done])

    async def get_hashes(self, hash_keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL of every key in one round trip (an absent key gives ``{}``)."""
        out: list[dict[bytes, bytes]] = []
        for reply in await self._pipeline([pack("HGETALL", k) for k in hash_keys]):
            self._check(reply)
            if isinstance(reply, list):  # RESP2 gives a flat list
                out.append(dict(zip(reply[::2], reply[1::2], strict=True)))
            else:
                out.append(reply)
        return out

    async def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        return [v.decode() for v in await self.call("LRANGE", key, start, stop)]

    async def hash_field_many(
        self, hash_keys: Sequence[str], fields: Sequence[str]
    ) -> list[list[Any]]:
        """HMGET the same fields from many hashes in one round trip."""
        replies = await self._pipeline([pack("HMGET", k, *fields) for k in hash_keys])
        return [self._check(r) for r in replies]

    async def exists_many(self, hash_keys: Sequence[str]) -> list[bool]:
        replies = await self._pipeline([pack("EXISTS", k) for k in hash_keys])
        return [self._check(r) == 1 for r in replies]

    async def delete_job(
        self, job_key: str, job_id: str, lookup_keys: Sequence[str], stages: Sequence[StageKeys]
    ) -> int:
        """As ``Store.delete_job``: one MULTI removing the hash, the id from its lookup lists
        and every list and set of the stages, its locks. Returns how many keys DEL removed."""
        commands = [pack("MULTI"), *(pack("LREM", k, 0, job_id) for k in lookup_keys)]
        for st in stages:
            commands += [pack("LREM", k, 0, job_id) for k in (st.waiting, st.processing, st.failed)]
            commands += [pack("ZREM", k, job_id) for k in (st.delayed, st.parked)]
            commands.append(pack("DEL", st.lock(job_id)))
        commands += [pack("DEL", job_key), pack("EXEC")]
        if self.settings.durable:  # a WAIT for one replica in the same write
            commands.append(pack("WAIT", 1, self.settings.durable_ms))
        replies = await self._pipeline(commands)
        if self.settings.durable:
            self._replicated(replies.pop())
        return int([self._check(r) for r in replies][-1][-1])

    async def prune_failed(self, stages: Sequence[StageKeys], limit: int = PRUNE_LIMIT) -> int:
        """As ``Store.prune_failed``: drop expired jobs' ids from the failed lists."""
        if not stages:
            return 0
        s = script("prune")
        packed = [pack("EVALSHA", s.sha, 1, st.failed, st.job_prefix, limit) for st in stages]
        replies = await self._run_scripts([s] * len(packed), packed)
        return sum(int(self._check(r)) for r in replies)

    async def counts(self, stages: Sequence[StageKeys]) -> list[dict[str, int]]:
        """As ``Store.counts``: waiting, processing, delayed, parked and failed per stage."""
        await self.prune_failed(stages)
        names = ("waiting", "processing", "delayed", "parked", "failed")
        commands = [
            pack("ZCARD" if n in ("delayed", "parked") else "LLEN", getattr(st, n))
            for st in stages
            for n in names
        ]
        got = [int(self._check(r)) for r in await self._pipeline(commands)]
        return [dict(zip(names, got[i : i + 5], strict=True)) for i in range(0, len(got), 5)]

    def subscribe_done(self, flow: str) -> AsyncSubscription:
        """A subscription (not yet open) to the ids of flow ``flow``'s jobs as they become
        done, on a connection of its own."""
        return AsyncSubscription(self.settings, keys.done_channel(flow))


class AsyncSubscription:
    """SUBSCRIBE to one channel on a :class:`Link` of its own (the messages are RESP3
    pushes). After ``max(1, socket_timeout / 2)`` s of silence it PINGs, and the Link allows
    ``socket_timeout`` for the answer. A lost connection raises RedisUnavailableError: open
    a new subscription (what was published meanwhile is lost)."""

    def __init__(self, settings: RedisSettings, channel: str) -> None:
        self.settings = settings
        self.channel = channel
        self._channel = channel.encode()
        self._link: Link | None = None
        self._ids: list[str] = []
        self._confirmed = False
        self._event = asyncio.Event()

    def _pushed(self, reply: list[Any] | None) -> None:
        if reply is not None and len(reply) == 3 and reply[0] == b"message":
            self._ids.append(reply[2].decode())
        elif reply is not None and reply[:2] == [b"subscribe", self._channel]:
            self._confirmed = True
        self._event.set()  # a message, or the connection broke (None)

    async def open(self) -> None:
        """Connect and subscribe; returns once the server confirmed the subscription."""
        link = self._link = Link(self.settings, await open_streams(self.settings), self._pushed)
        try:  # the PONG comes after the confirmation, or after the refusal
            [reply] = await link.request(pack("SUBSCRIBE", self.channel) + pack("PING"), 1)
            if isinstance(reply, rex.ResponseError):
                raise refusal(self.settings.address, str(reply))
            if not self._confirmed:
                raise RedisUnavailableError(self.settings.address, "no subscription confirmed")
        except BaseException:
            self.close()
            raise

    async def messages(self) -> list[str]:
        """The messages published on the channel, as text: waits for one, then takes every
        one already received."""
        interval = max(1.0, self.settings.socket_timeout / 2)
        while not self._ids:
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
