"""One asyncio connection to Redis: a redis-py asyncio ``Connection`` shakes hands (AUTH/ACL,
TLS, unix sockets), then a :class:`Link` takes its transport over. Requests are written whole
and their replies parsed as they arrive, in order, by a hiredis reader of our own, as
``wire.py`` does; a cancelled caller leaves the connection in step (its replies are read and
dropped). A reply later than ``socket_timeout`` breaks the link (RedisUnavailableError).
Error replies are read as ``replies.classify`` says, as the sync wire reads them: a redirect
(MOVED, ASK, a demoted Sentinel master's READONLY) noted on the store's ``Route`` retires
the link (its owed replies are still read; the next request opens a new link where the
route points), and a link opened on an ASK's importing node sends each request after an
ASKING (``replies.with_asking``)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis.exceptions as rex

from ..errors import RedisUnavailableError, refusal
from ..settings import RedisSettings
from .connect import connection_class, connection_kwargs, find_master, no_retry
from .replies import Kind, Route, classify, with_asking

__all__ = ["Link", "Push", "Streams", "open_streams"]

_PUSH: Any = getattr(hiredis, "PushNotification", None)
_MORE = object()  # hiredis: not enough data yet (False is a RESP3 value)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Push = Callable[[list[Any] | None], None]


def _release(conn: Any) -> Streams | None:
    """Take the streams of a redis-py connection: it forgets them (and never warns)."""
    reader, writer = conn._reader, conn._writer
    conn._reader = conn._writer = None
    return None if reader is None or writer is None else (reader, writer)


async def open_streams(settings: RedisSettings, hop: tuple[str, int] | None = None) -> Streams:
    """Connect and shake hands (with every option of ``settings``), then hand over the
    streams. RedisUnavailableError names the address; a refusal during the handshake (a
    database out of range, say) is the server's error. Under Sentinel or Cluster: to
    ``hop`` when a redirect named it, else to the master the sentinels or the slot map name
    now (asked on a thread: those clients are blocking)."""
    if hop is None and (settings.sentinels or settings.cluster_nodes):
        hop = await asyncio.to_thread(find_master, settings)
    if hop is not None:
        settings = settings.with_options(host=hop[0], port=hop[1])
    kwargs = connection_kwargs(
        settings, socket_timeout=settings.socket_timeout, retry=no_retry(asyncio=True)
    )
    conn = connection_class(settings, asyncio=True)(**kwargs)
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
    __slots__ = ("count", "future", "replies", "sent", "skip")

    def __init__(
        self, future: asyncio.Future[list[Any]], count: int, skip: list[bool] | None = None
    ) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.sent = time.monotonic()
        #: in an ASK window: per reply read, whether it is an ASKING's (dropped)
        self.skip = skip

    def result(self) -> list[Any]:
        if self.skip is None:
            return self.replies
        return [r for r, skip in zip(self.replies, self.skip, strict=True) if not skip]


class Link(asyncio.Protocol):
    """One connection as an asyncio protocol (taken over after redis-py's handshake).
    :meth:`submit` queues a request whole (the writes of one loop iteration go in one send)
    and returns the future of its replies, error replies as values. Once broken (the server
    gone, or silent for ``socket_timeout`` while replies are owed) every owed and later
    request fails with RedisUnavailableError. With ``on_push`` it is a subscriber's: the
    pushes go there, and ``on_push(None)`` says it broke. With a ``route`` (the store's), a
    redirect read retires it: ``retired`` is set, no new request should be sent on it, and it
    closes once its owed replies are read. ``asking``: opened on an ASK's importing node."""

    def __init__(
        self,
        settings: RedisSettings,
        streams: Streams,
        on_push: Push | None = None,
        *,
        route: Route | None = None,
        asking: bool = False,
    ) -> None:
        self.address = settings.address
        self._on_push = on_push
        self._route = route
        self.asking = asking
        self.retired = False
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
        skip = None
        if self.asking:  # each command (each transaction) after an ASKING
            packed, flags = with_asking(packed)
            skip = [s for asked in flags for s in ((True, False) if asked else (False,))]
            count = len(skip)
        self._calls.append(_Call(future, count, skip))
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
                reply = self._error(reply)
            if not calls:
                raise _Lost("a reply to no request: out of step")
            call = calls[0]
            call.replies.append(reply)
            if len(call.replies) == call.count:
                calls.popleft()
                if not call.future.done():  # its caller may have been cancelled
                    call.future.set_result(call.result())
        if self.retired and not calls:
            self.close()

    def _error(self, reply: rex.ResponseError) -> Any:
        """An error reply, as ``replies.classify`` says (the sync ``Wire._error``'s rules)."""
        error = classify(str(reply))
        if error.kind is Kind.SCRIPT_MISSING:
            return rex.NoScriptError(error.text)
        if error.kind is Kind.NOT_READY:  # not ready yet: like unreachable
            raise _Lost(error.text)
        if self._route is not None and self._route.note(error):
            self.retire()
        return reply

    def stale(self) -> bool:
        """As ``Wire.stale``: an idle connection with something to read (the server closed
        it while the loop was not looking, or it is out of step). Checked before an idle
        link is reused."""
        if self.broken is not None or self._calls:
            return False
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def retire(self) -> None:
        """Take no new request: closed once the replies owed are read."""
        self.retired = True
        if not self._calls:
            self.loop.call_soon(self.close)

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
