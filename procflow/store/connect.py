"""How to reach a server: redis-py connection settings, and where the master is — the one
the sentinels name now (Sentinel), or the one serving a key's hash slot (Cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import redis
import redis.exceptions as rex
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import RedisUnavailableError
from ..settings import SSL_CERT_REQS, RedisSettings
from .slots import key_slot

__all__ = [
    "cluster_masters",
    "connection_class",
    "connection_kwargs",
    "connection_pool",
    "discover_master",
    "find_master",
    "make_client",
    "no_retry",
    "slot_master",
]


def _sentinel(settings: RedisSettings) -> Any:
    """A redis-py ``Sentinel``, typed ``Any``: its methods are annotated in some redis-py
    releases and not in others, and procflow type-checks against the lowest and the newest."""
    timeout = settings.socket_connect_timeout
    sentinel: Any = redis.sentinel.Sentinel
    return sentinel(
        list(settings.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout
    )


SlotMap = list[tuple[int, int, tuple[str, int]]]


def _slot_maps(settings: RedisSettings, problems: list[str]) -> Iterator[SlotMap]:
    """The slot map of each of ``cluster_nodes`` that answers, in turn, from its ``CLUSTER
    SLOTS``: ``(first, last, (master host, port))`` per range, a blank host read as the
    node's; a node that does not answer adds a line to ``problems``."""
    timeout = settings.socket_connect_timeout
    for host, port in settings.cluster_nodes:
        kwargs = connection_kwargs(
            settings.with_options(host=host, port=port), socket_timeout=timeout
        )
        # Any: execute_command is annotated in some redis-py releases and not in others
        client: Any = redis.Redis(connection_pool=connection_pool(settings, kwargs))
        try:
            slots = client.execute_command("CLUSTER SLOTS")
        except rex.RedisError as exc:
            problems.append(f"{host}:{port}: {exc}")
            continue
        finally:
            client.close()
        ranges: SlotMap = []
        for first, last, master, *_ in slots:
            name = master[0].decode() if isinstance(master[0], bytes) else master[0]
            ranges.append((int(first), int(last), (name or host, int(master[1]))))
        yield ranges


def slot_master(settings: RedisSettings) -> tuple[str, int]:
    """The master serving the hash slot of ``settings.cluster_key``, from the slot map of the
    first of ``cluster_nodes`` that answers. RedisUnavailableError when none does."""
    slot = key_slot(settings.cluster_key or "")
    problems: list[str] = []
    for slots in _slot_maps(settings, problems):
        for first, last, master in slots:
            if first <= slot <= last:
                return master
        problems.append(f"the slot map has no master for slot {slot}")
    raise RedisUnavailableError(settings.address, "; ".join(problems))


def cluster_masters(settings: RedisSettings) -> list[tuple[str, int]]:
    """Every master of the cluster (host, port), from the slot map of the first of
    ``cluster_nodes`` that answers, in slot order. RedisUnavailableError when none does."""
    problems: list[str] = []
    for slots in _slot_maps(settings, problems):
        return list(dict.fromkeys(master for _, _, master in sorted(slots)))
    raise RedisUnavailableError(settings.address, "; ".join(problems))


def discover_master(settings: RedisSettings) -> tuple[str, int]:
    """The address of the master the sentinels of ``settings`` name now. Raises
    RedisUnavailableError when none of them answers with a healthy master."""
    assert settings.service_name is not None
    try:
        found = _sentinel(settings).discover_master(settings.service_name)
        host, port = found
    except rex.RedisError as exc:
        raise RedisUnavailableError(settings.address, exc) from None
    return str(host), int(port)


def find_master(settings: RedisSettings) -> tuple[str, int]:
    """The master to connect to now: the one the sentinels name (Sentinel), or the one
    serving ``cluster_key``'s slot (Cluster). Blocking: the async store runs it on a thread."""
    return discover_master(settings) if settings.sentinels else slot_master(settings)


def make_client(settings: RedisSettings, **overrides: Any) -> redis.Redis:
    """A plain redis-py client (pub/sub); under Sentinel, one that follows the master; under
    Cluster, one on the master of the settings' slot (classic pub/sub reaches every node)."""
    if settings.sentinels:
        assert settings.service_name is not None
        kwargs = connection_kwargs(settings, **overrides)
        for name in ("host", "port", "path", "socket_keepalive"):
            kwargs.pop(name, None)
        client: redis.Redis = _sentinel(settings).master_for(settings.service_name, **kwargs)
        return client
    if settings.cluster_nodes:
        host, port = slot_master(settings)
        settings = settings.with_options(host=host, port=port)
    kwargs = connection_kwargs(settings, **overrides)
    plain: redis.Redis = redis.Redis(connection_pool=connection_pool(settings, kwargs))
    return plain


# redis-py annotates these constructors in some releases and not in others (mypy --strict
# refuses an unannotated call, and an unused ``type: ignore`` where they are annotated):
# called through ``Any``, they type-check at both ends of procflow's range.
_ConnectionPool: Any = redis.ConnectionPool
_Retry: Any = Retry
_AsyncRetry: Any = AsyncRetry
_NoBackoff: Any = NoBackoff


def connection_pool(settings: RedisSettings, kwargs: dict[str, Any]) -> redis.ConnectionPool:
    """A redis-py pool of connections of the right class."""
    pool: redis.ConnectionPool = _ConnectionPool(
        connection_class=connection_class(settings), **kwargs
    )
    return pool


def no_retry(asyncio: bool = False) -> Any:
    """A redis-py ``Retry`` that never retries: procflow decides itself what to send again."""
    return (_AsyncRetry if asyncio else _Retry)(_NoBackoff(), 0)


def connection_kwargs(settings: RedisSettings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a redis-py ``Connection`` of the right class."""
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "client_name": None,
        # RESP3, said explicitly: redis-py's default moved from 2 to 3 in 8.0, and the async
        # subscriptions read their messages as RESP3 pushes on a connection of their own
        "protocol": 3,
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


def connection_class(settings: RedisSettings, asyncio: bool = False) -> type[Any]:
    """The redis-py connection class for these settings (``redis.asyncio``'s with
    ``asyncio``)."""
    lib: Any = redis
    if asyncio:
        # only the async API's processes load redis.asyncio
        from redis import asyncio as async_redis  # noqa: PLC0415

        lib = async_redis
    if settings.unix_socket_path:
        return cast(type[Any], lib.UnixDomainSocketConnection)
    if settings.ssl:
        return cast(type[Any], lib.SSLConnection)
    return cast(type[Any], lib.Connection)
