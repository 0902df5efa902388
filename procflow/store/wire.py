"""One Redis connection, driven with commands packed and replies parsed here.

redis-py's client object costs about 35 µs of Python per command on top of the round trip;
procflow's per-job path cannot afford that, so it packs RESP itself, reads replies from the
socket into a hiredis reader of its own, and uses a redis-py ``Connection`` only to connect
(handshake, AUTH/ACL, TLS, unix sockets). A Wire is used by one thread at a time.
"""

from __future__ import annotations

import collections
import hashlib
import select
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis.exceptions as rex

from ..errors import RedisRefusedError, RedisUnavailableError, refusal
from ..settings import RedisSettings
from .connect import connection_class, connection_kwargs, find_master, no_retry
from .replies import Kind, Route, classify, with_asking

__all__ = [
    "Arg",
    "Prepared",
    "Script",
    "Transmission",
    "Wire",
    "Write",
    "pack",
    "replicated",
    "script",
    "transmit",
]

Arg = bytes | str | int | float

_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError, OSError)


def _data(arg: Arg) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    raise TypeError(f"cannot send a {type(arg).__name__} to Redis")


def pack(*args: Arg) -> bytes:
    """One command in RESP: ``*N`` then ``$len``-prefixed arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if type(arg) is str else _data(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _bulk(arg: Arg) -> bytes:
    data = _data(arg)
    return b"$%d\r\n%s\r\n" % (len(data), data)


class Prepared:
    """An EVALSHA whose keys and leading arguments never change, packed once; only the
    trailing arguments are packed per call (the per-job hot path)."""

    __slots__ = ("count", "head", "script")

    def __init__(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> None:
        self.script = script
        fixed: list[Arg] = ["EVALSHA", script.sha, len(keys), *keys, *args]
        self.count = len(fixed)
        self.head = b"".join(_bulk(a) for a in fixed)

    def pack(self, tail: Sequence[str | bytes]) -> bytes:
        """The full command with ``tail`` (text or bytes) appended."""
        parts = [b"*%d\r\n" % (self.count + len(tail)), self.head]
        for arg in tail:
            data = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)


class Script:
    """A Lua script from ``procflow/store/lua``, with ``_lib.lua`` in front; called by SHA."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"


@cache
def script(name: str) -> Script:
    """The script ``name`` (without ``.lua``), loaded from the package once per process."""
    folder = resources.files("procflow.store") / "lua"
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, lib + "\n" + body)


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes sent in one write, and how many replies to read back (errors as values)."""

    data: bytes
    replies: int


#: what pipelined commands cost on the wire: yields writes, is sent each one's replies,
#: returns the commands' replies (``transmit``; driven by ``Wire.drive`` and the async store)
Transmission = Generator[Write, list[Any], list[Any]]


def transmit(
    commands: Sequence[bytes],
    check: Callable[[Any], Any],
    durable_ms: int | None = None,
    *,
    writes: bool = False,
    scripts: Sequence[Script] = (),
) -> Transmission:
    """Packed commands in one write; their replies, errors as values. Written once for the
    sync and the async driver. With ``durable_ms`` (``durable=1``) writes get a WAIT for one
    replica in the same write, whose reply ``check`` raises for when no replica acknowledged
    in time. ``scripts``: the commands are EVALSHA calls of these (one per command; they
    write); a NOSCRIPT reply loads the script and sends that call again (it did not run)."""
    wait = durable_ms if writes or scripts else None
    replies = yield from _written(commands, check, wait)
    if not scripts:
        return replies
    missing = [i for i, r in enumerate(replies) if isinstance(r, rex.NoScriptError)]
    if missing:
        wanted = list({scripts[i].sha: scripts[i] for i in missing}.values())
        loads = [pack("SCRIPT", "LOAD", s.source) for s in wanted]
        for reply in (yield Write(b"".join(loads), len(loads))):
            check(reply)
        again = yield from _written([commands[i] for i in missing], check, wait)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


def _written(
    commands: Sequence[bytes], check: Callable[[Any], Any], durable_ms: int | None
) -> Transmission:
    if not commands:
        return []
    if durable_ms is None:
        return (yield Write(b"".join(commands), len(commands)))
    replies = yield Write(b"".join([*commands, pack("WAIT", 1, durable_ms)]), len(commands) + 1)
    replicated(replies.pop(), check, durable_ms)
    return replies


def replicated(reply: Any, check: Callable[[Any], Any], durable_ms: int) -> None:
    """A WAIT's reply (``durable=1``): fewer than one replica means the write is not durable
    yet — ``check`` raises the refusal."""
    check(reply)
    if int(reply) < 1:
        check(
            rex.ResponseError(
                f"NOREPLICAS no replica acknowledged the write within {durable_ms} ms (durable=1)"
            )
        )


class Wire:
    """A single connection. Every failure to reach the server becomes RedisUnavailableError;
    the connection is then dropped and the next call reconnects. A reply that takes longer
    than ``socket_timeout`` (default: the settings') counts as such a failure, so a half-open
    connection (the server gone silent, the TCP connection still open) is noticed and
    replaced."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        socket_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        if socket_timeout is None:
            socket_timeout = settings.socket_timeout
        self._socket_timeout = socket_timeout
        self._conn: Any = self._connection(settings)
        self._sock: Any = None
        self._reader: Any = None
        #: where the next connect goes after a MOVED, an ASK (its commands then sent after
        #: an ASKING for a while) or a READONLY from a demoted Sentinel master
        self.route = Route(settings)
        #: while asking: per reply still to be read, whether an ASKING reply comes first
        self._skips: collections.deque[bool] = collections.deque()
        #: a redirect (MOVED, ASK) was read: the connection is dropped before its next use
        self.redirected = False

    def _connection(self, settings: RedisSettings) -> Any:
        kwargs = connection_kwargs(settings, socket_timeout=self._socket_timeout, retry=no_retry())
        return connection_class(settings)(**kwargs)

    def _follow(self) -> None:
        """Under Sentinel or Cluster: connect where a redirect pointed, else to the master
        the directory names now (the sentinels' master, the slot map's owner)."""
        self._point_at(*(self.route.next_hop(time.monotonic()) or find_master(self.settings)))

    def _point_at(self, host: str, port: int) -> None:
        """Connect to ``host:port`` from now on (Sentinel's master, Cluster's slot owner)."""
        if (self._conn.host, self._conn.port) != (host, port):
            self._conn.disconnect()
            self._conn = self._connection(self.settings.with_options(host=host, port=port))

    # -- plumbing ------------------------------------------------------------------------

    def _fail(self, exc: BaseException | str) -> RedisUnavailableError:
        self.close()
        return RedisUnavailableError(self.settings.address, exc)

    def refused(self, reply: BaseException | str) -> RedisRefusedError:
        """The procflow error for an error reply of this server. A reply that sends the
        connection elsewhere (a MOVED or ASK under Cluster, a READONLY from a demoted
        Sentinel master) drops it: the next call connects where the route says."""
        text = str(reply)
        if self.route.note(classify(text)):
            self.close()
        return refusal(self.settings.address, text)

    def _error(self, reply: rex.ResponseError) -> Any:
        """An error reply read as a value: NOSCRIPT becomes NoScriptError, a server not
        ready raises RedisUnavailableError, a redirect is noted (``redirected``)."""
        error = classify(str(reply))
        if error.kind is Kind.SCRIPT_MISSING:
            return rex.NoScriptError(error.text)
        if error.kind is Kind.NOT_READY:  # not ready yet: like unreachable, try again later
            raise self._fail(error.text)
        if error.kind in (Kind.MOVED, Kind.ASK) and self.route.note(error):
            self.redirected = True
        return reply

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        self._sock = None
        self._reader = None
        self._skips.clear()
        self.route.left()
        self.redirected = False
        self._conn.disconnect()

    def connect(self) -> None:
        """Connect now (calls connect lazily otherwise)."""
        if self._sock is not None:
            return
        try:
            if self.route.finds_master:
                self._follow()
            self._conn.connect()
        except _CONNECTION_ERRORS as exc:
            raise self._fail(exc) from None
        except rex.ResponseError as exc:  # refused during the handshake (SELECT, HELLO …)
            self.close()
            raise self.refused(exc) from None
        self._sock = self._conn._sock
        self._reader = hiredis.Reader(replyError=rex.ResponseError)

    def stale(self) -> bool:
        """True if an idle connection has something to read: the server closed it (a
        restart) or it is out of step. Checked before a pooled connection is reused."""
        if self._sock is None:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def send(self, packed: bytes) -> None:
        if self._sock is None:
            self.connect()
        if self.route.asking:  # sent to a slot's importing node by an ASK
            if not self._skips and self.route.window_over(time.monotonic()):
                self.close()  # long enough: the slot map says where it is now
                self.connect()
            else:
                packed, flags = with_asking(packed)
                self._skips.extend(flags)
        try:
            self._sock.sendall(packed)
        except OSError as exc:
            raise self._fail(exc) from None

    def read(self) -> Any:
        """One reply; an error reply is returned as a ResponseError, not raised."""
        reader = self._reader
        if reader is None:
            raise self._fail("not connected")
        while True:
            reply = reader.gets()
            while reply is False:
                try:
                    data = self._sock.recv(65536)
                except OSError as exc:  # includes socket timeouts
                    raise self._fail(exc) from None
                if not data:
                    raise self._fail("connection closed by server")
                reader.feed(data)
                reply = reader.gets()
            if not self._skips:
                break
            if self._skips[0]:  # the reply to an ASKING
                self._skips[0] = False
                continue
            self._skips.popleft()
            break
        if isinstance(reply, rex.ResponseError):
            return self._error(reply)
        return reply

    def read_many(self, count: int) -> list[Any]:
        """``count`` replies, read in one tight loop (errors as ResponseError values)."""
        reader = self._reader
        if reader is None:
            raise self._fail("not connected")
        out: list[Any] = []
        append = out.append
        gets = reader.gets
        while len(out) < count:
            reply = gets()
            if reply is False:
                try:
                    data = self._sock.recv(1 << 18)
                except OSError as exc:
                    raise self._fail(exc) from None
                if not data:
                    raise self._fail("connection closed by server")
                reader.feed(data)
                continue
            skips = self._skips
            if skips:
                if skips[0]:  # the reply to an ASKING
                    skips[0] = False
                    continue
                skips.popleft()
            if isinstance(reply, rex.ResponseError):
                reply = self._error(reply)
            append(reply)
        return out

    # -- commands ------------------------------------------------------------------------

    def call(self, *args: Arg) -> Any:
        """One command; an error reply raises RedisRefusedError."""
        self.send(pack(*args))
        reply = self.read()
        if isinstance(reply, rex.ResponseError):
            raise self.refused(reply)
        return reply

    def pipeline(self, commands: Sequence[bytes], writes: bool = False) -> list[Any]:
        """Send packed commands in one write, read every reply (errors as values). Commands
        that ``writes`` under ``durable`` get a WAIT for one replica in the same write."""
        return self.drive(transmit(commands, self.check, self._durable_ms, writes=writes))

    def drive(self, transmission: Transmission) -> list[Any]:
        """Run a ``transmit``: each write sent, its replies read and handed back."""
        try:
            write = next(transmission)
            while True:
                self.send(write.data)
                write = transmission.send(self.read_many(write.replies))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    @property
    def _durable_ms(self) -> int | None:
        return self.settings.durable_ms if self.settings.durable else None

    @property
    def _wait(self) -> bytes:
        return pack("WAIT", 1, self.settings.durable_ms)

    def _replicated(self, reply: Any) -> None:
        """A WAIT's reply: fewer than one replica means the write is not durable yet."""
        replicated(reply, self.check, self.settings.durable_ms)

    def wait_replicas(self) -> None:
        """With ``durable``: wait until one replica has every write sent on this connection
        so far (after a pipelined batch of writes)."""
        if self.settings.durable:
            self._replicated(self.call("WAIT", 1, self.settings.durable_ms))

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a script by SHA; load it first if the server does not know it (a restart or
        SCRIPT FLUSH). An error raised by the script raises."""
        return self._script_call(script, pack("EVALSHA", script.sha, len(keys), *keys, *args))

    def _script_call(self, script: Script, packed: bytes) -> Any:
        """Send a packed EVALSHA (with ``durable``, a WAIT in the same write) and read it;
        NOSCRIPT loads the script and sends it again."""
        durable = self.settings.durable
        self.send(packed + self._wait if durable else packed)
        reply = self.read()
        if durable:
            waited = self.read()
            if isinstance(reply, rex.NoScriptError):
                self.load(script)
                return self._script_call(script, packed)
            if not isinstance(reply, rex.ResponseError):
                self._replicated(waited)
        elif isinstance(reply, rex.NoScriptError):
            self.load(script)
            self.send(packed)
            reply = self.read()
        if isinstance(reply, rex.ResponseError):
            raise self.refused(reply)
        return reply

    def run(self, prepared: Prepared, tail: Sequence[str | bytes]) -> Any:
        """Run a prepared script call with its per-call arguments."""
        return self._script_call(prepared.script, prepared.pack(tail))

    def pack_evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        """A packed EVALSHA, for ``run_scripts``."""
        return pack("EVALSHA", script.sha, len(keys), *keys, *args)

    def run_scripts(self, scripts: Sequence[Script], packed: Sequence[bytes]) -> list[Any]:
        """Pipeline several EVALSHA calls; those the server did not know are loaded and sent
        again (a NOSCRIPT reply means that call did not run). Error replies are values."""
        return self.drive(transmit(packed, self.check, self._durable_ms, scripts=scripts))

    def load(self, script: Script) -> None:
        self.call("SCRIPT", "LOAD", script.source)

    def client_id(self) -> int:
        return int(self.call("CLIENT", "ID"))

    def check(self, reply: Any) -> Any:
        """A reply read as a value (pipelines): raise RedisRefusedError if it is an error,
        also inside a transaction's reply."""
        if isinstance(reply, rex.ResponseError):
            raise self.refused(reply)
        if isinstance(reply, list):
            for item in reply:
                if isinstance(item, rex.ResponseError):
                    raise self.refused(item)
        return reply
