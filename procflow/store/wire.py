"""One Redis connection, driven with commands packed and replies parsed here.

redis-py's client object costs about 35 µs of Python per command on top of the round trip;
procflow's per-job path cannot afford that, so it packs RESP itself, reads replies from the
socket into a hiredis reader of its own, and uses a redis-py ``Connection`` only to connect
(handshake, AUTH/ACL, TLS, unix sockets). A Wire is used by one thread at a time.
"""

from __future__ import annotations

import hashlib
import select
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis
import redis.exceptions as rex
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import RedisRefusedError, RedisUnavailableError, refusal
from ..settings import SSL_CERT_REQS, RedisSettings
from .slots import key_slot

__all__ = [
    "Arg",
    "Prepared",
    "Script",
    "Wire",
    "connection_class",
    "connection_kwargs",
    "make_client",
    "pack",
    "script",
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
        #: Cluster: where a MOVED reply sent this connection (used by the next connect)
        self._moved_to: tuple[str, int] | None = None

    def _connection(self, settings: RedisSettings) -> Any:
        kwargs = connection_kwargs(
            settings, socket_timeout=self._socket_timeout, retry=Retry(NoBackoff(), 0)
        )
        return connection_class(settings)(**kwargs)

    def _follow_slot(self) -> None:
        """Under Cluster: connect to the master serving ``cluster_key``'s slot (where a MOVED
        reply pointed, or what the slot map says now)."""
        target, self._moved_to = self._moved_to, None
        self._point_at(*(target or slot_master(self.settings)))

    def _follow_master(self) -> None:
        """Under Sentinel: connect to the master the sentinels name now (after a failover,
        the new one)."""
        self._point_at(*discover_master(self.settings))

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
        """The procflow error for an error reply of this server. Under Sentinel a READONLY
        reply means this server is a replica now: the connection is dropped, and the next
        call asks the sentinels for the master again."""
        error = refusal(self.settings.address, str(reply))
        if self.settings.sentinels and error.code == "READONLY":
            self.close()
        elif self.settings.cluster_nodes and error.code in ("MOVED", "ASK"):
            # "MOVED 3999 127.0.0.1:6381": the slot lives there now; the call is retried there
            host, _, port = str(reply).split()[-1].rpartition(":")
            self.close()
            if port.isdigit():
                self._moved_to = (host, int(port))
        return error

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        self._sock = None
        self._reader = None
        self._conn.disconnect()

    def connect(self) -> None:
        """Connect now (calls connect lazily otherwise)."""
        if self._sock is not None:
            return
        try:
            if self.settings.sentinels:
                self._follow_master()
            elif self.settings.cluster_nodes:
                self._follow_slot()
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
        try:
            self._sock.sendall(packed)
        except OSError as exc:
            raise self._fail(exc) from None

    def read(self) -> Any:
        """One reply; an error reply is returned as a ResponseError, not raised."""
        reader = self._reader
        if reader is None:
            raise self._fail("not connected")
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
        if isinstance(reply, rex.ResponseError):
            text = str(reply)
            if text.startswith("NOSCRIPT"):
                return rex.NoScriptError(text)
            if text.startswith(("LOADING", "MASTERDOWN", "TRYAGAIN")):
                raise self._fail(text)  # not ready yet: like unreachable, try again later
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
            if isinstance(reply, rex.ResponseError):
                text = str(reply)
                if text.startswith("NOSCRIPT"):
                    reply = rex.NoScriptError(text)
                elif text.startswith(("LOADING", "MASTERDOWN", "TRYAGAIN")):
                    raise self._fail(text)
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
        if not commands:
            return []
        if not (writes and self.settings.durable):
            self.send(b"".join(commands))
            return self.read_many(len(commands))
        self.send(b"".join([*commands, self._wait]))
        replies = self.read_many(len(commands) + 1)
        self._replicated(replies.pop())
        return replies

    @property
    def _wait(self) -> bytes:
        return pack("WAIT", 1, self.settings.durable_ms)

    def _replicated(self, reply: Any) -> None:
        """A WAIT's reply: fewer than one replica means the write is not durable yet."""
        if isinstance(reply, rex.ResponseError):
            raise self.refused(reply)
        if int(reply) < 1:
            raise self.refused(
                f"NOREPLICAS no replica acknowledged the write within "
                f"{self.settings.durable_ms} ms (durable=1)"
            )

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
        replies = self.pipeline(packed, writes=True)
        missing = [i for i, r in enumerate(replies) if isinstance(r, rex.NoScriptError)]
        if missing:
            for s in {scripts[i].sha: scripts[i] for i in missing}.values():
                self.load(s)
            again = self.pipeline([packed[i] for i in missing], writes=True)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

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


def _sentinel(settings: RedisSettings) -> redis.sentinel.Sentinel:
    timeout = settings.socket_connect_timeout
    return redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(settings.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout
    )


def slot_master(settings: RedisSettings) -> tuple[str, int]:
    """The master serving the hash slot of ``settings.cluster_key``, from the slot map of the
    first of ``cluster_nodes`` that answers. RedisUnavailableError when none does."""
    slot = key_slot(settings.cluster_key or "")
    timeout = settings.socket_connect_timeout
    problems = []
    for host, port in settings.cluster_nodes:
        kwargs = connection_kwargs(
            settings.with_options(host=host, port=port), socket_timeout=timeout
        )
        client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=connection_class(settings), **kwargs
            )
        )
        try:
            slots = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            for first, last, master, *_ in slots:
                if int(first) <= slot <= int(last):
                    name = master[0].decode() if isinstance(master[0], bytes) else master[0]
                    return name or host, int(master[1])
            problems.append(f"{host}:{port} has no master for slot {slot}")
        except rex.RedisError as exc:
            problems.append(f"{host}:{port}: {exc}")
        finally:
            client.close()
    raise RedisUnavailableError(settings.address, "; ".join(problems))


def discover_master(settings: RedisSettings) -> tuple[str, int]:
    """The address of the master the sentinels of ``settings`` name now. Raises
    RedisUnavailableError when none of them answers with a healthy master."""
    assert settings.service_name is not None
    try:
        found = _sentinel(settings).discover_master(  # type: ignore[no-untyped-call]
            settings.service_name
        )
        host, port = found
    except rex.RedisError as exc:
        raise RedisUnavailableError(settings.address, exc) from None
    return str(host), int(port)


def make_client(settings: RedisSettings, **overrides: Any) -> redis.Redis:
    """A plain redis-py client (pub/sub); under Sentinel, one that follows the master; under
    Cluster, one on the master of the settings' slot (classic pub/sub reaches every node)."""
    if settings.sentinels:
        assert settings.service_name is not None
        kwargs = connection_kwargs(settings, **overrides)
        for name in ("host", "port", "path", "socket_keepalive"):
            kwargs.pop(name, None)
        client: redis.Redis = _sentinel(settings).master_for(  # type: ignore[no-untyped-call]
            settings.service_name, **kwargs
        )
        return client
    if settings.cluster_nodes:
        host, port = slot_master(settings)
        settings = settings.with_options(host=host, port=port)
    kwargs = connection_kwargs(settings, **overrides)
    pool = redis.ConnectionPool(connection_class=connection_class(settings), **kwargs)
    return redis.Redis(connection_pool=pool)


def connection_kwargs(settings: RedisSettings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a redis-py ``Connection`` of the right class."""
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "client_name": None,
    }
    if settings.unix_socket_path:
        kwargs["path"] = settings.unix_socket_path
    else:
        kwargs["host"] = settings.host
        kwargs["port"] = settings.port
        kwargs["socket_keepalive"] = True
    if settings.ssl:
        kwargs.update(
            ssl_cert_reqs=SSL_CERT_REQS[settings.ssl_cert_reqs],
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_check_hostname=settings.ssl_check_hostname and settings.ssl_cert_reqs == "required",
        )
    kwargs.update(overrides)
    return kwargs


def connection_class(settings: RedisSettings) -> type[Any]:
    """The redis-py connection class for these settings."""
    if settings.unix_socket_path:
        return redis.UnixDomainSocketConnection
    if settings.ssl:
        return redis.SSLConnection
    return redis.Connection
