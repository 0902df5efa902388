"""Connection settings and the documented defaults.

A ``RedisSettings`` is what travels to worker processes: connection options, never a
client (a client must not cross ``fork``). Every default below is documented in
docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_BLOCK_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_KEY_TTL",
    "DEFAULT_LOCK_TIME",
    "DEFAULT_REDIS_URL",
    "REDIS_URL_ENV",
    "SSL_CERT_REQS",
    "RedisSettings",
    "WorkerKwargs",
    "WorkerOptions",
    "parse_size",
]

#: seconds a job hash and its lookup lists live (the TypeScript library's default)
DEFAULT_KEY_TTL = 86_400
#: seconds a job lock lives without renewal; the supervisor renews it every third of that
DEFAULT_LOCK_TIME = 30.0
#: seconds a worker blocks in BLMOVE before it looks at its stop flag again
DEFAULT_BLOCK_TIMEOUT = 3.0
#: seconds SIGTERM lets in-flight jobs run before they are killed and put back
DEFAULT_DRAIN_TIMEOUT = 30.0
#: environment variable read when no Redis URL is given
REDIS_URL_ENV = "PROCFLOW_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class WorkerKwargs(TypedDict, total=False):
    """The keyword options of ``create_workers`` and its siblings (see WorkerOptions)."""

    lock_time: float
    block_timeout: float
    max_jobs_per_child: int | None
    max_age: float | None
    pin: bool
    threads_per_worker: int


@dataclass(frozen=True)
class WorkerOptions:
    """How each worker process of a group behaves; this one object travels from
    ``create_workers`` to the worker process.

    ``lock_time``: seconds a job's lock lives without renewal (the supervisor renews it every
    third of that). ``block_timeout``: seconds a worker blocks waiting for a job before it
    looks at its stop flag again. ``max_jobs_per_child`` / ``max_age``: the process is
    replaced between jobs after that many jobs or seconds. ``pin``: each process runs on
    one allowed core, round-robin in worker order. ``threads_per_worker``: the thread count
    the native math libraries (OpenMP, OpenBLAS, MKL, …) of each process are set to, unless
    the supervisor's environment sets it (see procflow/cpus.py)."""

    lock_time: float = DEFAULT_LOCK_TIME
    block_timeout: float = DEFAULT_BLOCK_TIMEOUT
    max_jobs_per_child: int | None = None
    max_age: float | None = None
    pin: bool = False
    threads_per_worker: int = 1

    @classmethod
    def build(cls, where: str, **options: Any) -> WorkerOptions:
        """Checked options; ``where`` names the workers in error messages."""
        unknown = set(options) - set(WorkerKwargs.__annotations__)
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown option(s) {', '.join(sorted(unknown))}; the options are "
                f"{', '.join(WorkerKwargs.__annotations__)}"
            )
        made = cls(**options)
        made.check(where)
        return made

    def check(self, where: str) -> None:
        if not _number(self.lock_time) or not self.lock_time >= 1:
            raise ConfigurationError(f"{where}: lock_time must be at least 1 second")
        if not _number(self.block_timeout) or not self.block_timeout > 0:
            raise ConfigurationError(f"{where}: block_timeout must be > 0 seconds")
        jobs = self.max_jobs_per_child
        if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
            raise ConfigurationError(f"{where}: max_jobs_per_child must be an int >= 1")
        if self.max_age is not None and (not _number(self.max_age) or not self.max_age > 0):
            raise ConfigurationError(f"{where}: max_age must be > 0 seconds")
        if not isinstance(self.pin, bool):
            raise ConfigurationError(f"{where}: pin must be True or False")
        threads = self.threads_per_worker
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigurationError(f"{where}: threads_per_worker must be an int >= 1")

    @property
    def lock_ms(self) -> int:
        return int(self.lock_time * 1000)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flag(text: str, name: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"{name} must be 1 or 0, not {text!r}")


_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
SSL_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True)
class RedisSettings:
    """How to reach one Redis (or Valkey) server. Build it with ``from_url``."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    unix_socket_path: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True
    socket_connect_timeout: float = 5.0
    #: seconds a reply may take before the connection counts as dead (a half-open TCP
    #: connection otherwise blocks for ever); blocking reads get their own, longer timeout
    socket_timeout: float = 10.0
    #: the largest value a field may hold: the server's ``proto-max-bulk-len`` (512 MiB)
    max_value_bytes: int = 512 * 1024 * 1024
    #: Sentinel: the sentinels' addresses and the name of the master they watch; every
    #: connection asks them for the current master (``host``/``port`` are then unused)
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    #: Redis Cluster: some of its nodes (asked for the slot map), and a key whose hash slot
    #: these connections serve (a flow sets it: every key of a flow shares one slot)
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    cluster_key: str | None = None
    #: every write waits until one replica has it (``WAIT 1 durable_ms``); a write no replica
    #: acknowledged in time is a ``NOREPLICAS`` refusal (retried like any refusal)
    durable: bool = False
    durable_ms: int = 1000

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
        ``unix:///path/to/socket[?db=N]``. Query options: ``db``, ``ssl_cert_reqs``
        (none/optional/required), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
        ``ssl_check_hostname`` (true/false), ``socket_connect_timeout`` (seconds)."""
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError(f"Redis URL must be a non-empty string, got {url!r}")
        try:
            parts = urlsplit(url.strip())
            scheme = parts.scheme.lower()
            if scheme not in _SCHEMES:
                raise ValueError(f"scheme must be one of {', '.join(_SCHEMES)}, not {scheme!r}")
            query = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=False).items()}
            if scheme.endswith("+sentinel"):
                return cls._from_sentinel_url(url.strip(), scheme, query)
            if scheme.endswith("+cluster"):
                return cls._from_cluster_url(url.strip(), scheme, query)
            unknown = set(query) - {
                "db",
                "ssl_cert_reqs",
                "ssl_ca_certs",
                "ssl_certfile",
                "ssl_keyfile",
                "ssl_check_hostname",
                "socket_connect_timeout",
                "socket_timeout",
                "max_value_bytes",
                "durable",
            }
            if unknown:
                raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
            options: dict[str, Any] = {
                "username": unquote(parts.username) if parts.username else None,
                "password": unquote(parts.password) if parts.password is not None else None,
            }
            if scheme == "unix":
                if not parts.path:
                    raise ValueError("a unix URL needs a socket path: unix:///path/to/redis.sock")
                options["unix_socket_path"] = unquote(parts.path)
                db_text = query.get("db", "0")
            else:
                if not parts.hostname:
                    raise ValueError("no host")
                options["host"] = parts.hostname
                options["port"] = parts.port if parts.port is not None else 6379
                path = parts.path.lstrip("/")
                db_text = query.get("db", path or "0")
                options["ssl"] = scheme == "rediss"
            if not re.fullmatch(r"\d+", db_text):
                raise ValueError(f"database must be a number, not {db_text!r}")
            options["db"] = int(db_text)
            if "ssl_cert_reqs" in query:
                reqs = query["ssl_cert_reqs"].lower()
                if reqs not in SSL_CERT_REQS:
                    raise ValueError("ssl_cert_reqs must be none, optional or required")
                options["ssl_cert_reqs"] = reqs
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if name in query:
                    options[name] = query[name]
            if "ssl_check_hostname" in query:
                options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in (
                    "1",
                    "true",
                    "yes",
                )
            for name in ("socket_connect_timeout", "socket_timeout"):
                if name in query:
                    options[name] = float(query[name])
                    if not options[name] > 0:
                        raise ValueError(f"{name} must be > 0 seconds")
            if "max_value_bytes" in query:
                options["max_value_bytes"] = parse_size(query["max_value_bytes"], "max_value_bytes")
            if "durable" in query:
                options["durable"] = _flag(query["durable"], "durable")
        except ValueError as exc:  # urlsplit's port parsing raises ValueError too
            raise ConfigurationError(
                f"cannot parse Redis URL {_redact(url)!r}: {exc}; expected "
                "redis://[user:password@]host[:port][/db], rediss://…, unix:///path or "
                "redis+sentinel://host:port[,host:port…]/master-name[/db] or "
                "redis+cluster://host:port[,host:port…]"
            ) from None
        return cls(**options)

    @staticmethod
    def _nodes(
        netloc: str, default_port: int
    ) -> tuple[tuple[str | None, str | None], list[tuple[str, int]]]:
        """(user, password) and the ``host:port`` list of a multi-host network location."""
        user = password = None
        if "@" in netloc:
            auth, netloc = netloc.rsplit("@", 1)
            name, sep, secret = auth.partition(":")
            user = unquote(name) or None
            password = unquote(secret) if sep else None
        nodes = []
        for item in netloc.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep:
                host, port = item.strip(), str(default_port)
            if not host or not port.isdigit():
                raise ValueError(f"address {item!r} is not host:port")
            nodes.append((host.strip("[]"), int(port)))
        return (user, password), nodes

    @classmethod
    def _multi_host(
        cls, url: str, scheme: str, query: dict[str, str], default_port: int, allowed: set[str]
    ) -> tuple[dict[str, Any], list[tuple[str, int]], str]:
        """What Sentinel and Cluster URLs share: the options of the network location and the
        query (credentials, TLS, timeouts, ``durable``), its hosts, and the path."""
        rest = url.split("://", 1)[1].split("?", 1)[0]
        netloc, _, path = rest.partition("/")
        (user, password), nodes = cls._nodes(netloc, default_port)
        unknown = set(query) - {"socket_connect_timeout", "socket_timeout", "durable", *allowed}
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
        options: dict[str, Any] = {
            "durable": _flag(query.get("durable", "0"), "durable"),
            "username": user,
            "password": password,
            "ssl": scheme.startswith("rediss"),
        }
        for name in ("socket_connect_timeout", "socket_timeout"):
            if name in query:
                options[name] = float(query[name])
                if not options[name] > 0:
                    raise ValueError(f"{name} must be > 0 seconds")
        return options, nodes, path.strip("/")

    @classmethod
    def _from_cluster_url(cls, url: str, scheme: str, query: dict[str, str]) -> RedisSettings:
        """``redis+cluster://[user:password@]h1:7000,h2:7001[/0]``: a few of the cluster's
        nodes; the others are found from them."""
        options, nodes, path = cls._multi_host(url, scheme, query, 6379, set())
        if path not in ("", "0"):
            raise ValueError("a cluster has database 0 only")
        options.update(host=nodes[0][0], port=nodes[0][1], cluster_nodes=tuple(nodes))
        return cls(**options)

    @classmethod
    def _from_sentinel_url(cls, url: str, scheme: str, query: dict[str, str]) -> RedisSettings:
        """``redis+sentinel://[user:password@]h1:26379,h2:26379/SERVICE[/DB]``: the
        password is the master's (the sentinels are asked without one)."""
        options, sentinels, path = cls._multi_host(url, scheme, query, 26379, {"db"})
        service, _, db_text = path.partition("/")
        if not service:
            raise ValueError("a sentinel URL needs the master's name: …/mymaster[/db]")
        db_text = query.get("db", db_text or "0")
        if not re.fullmatch(r"\d+", db_text):
            raise ValueError(f"database must be a number, not {db_text!r}")
        options.update(db=int(db_text), sentinels=tuple(sentinels), service_name=unquote(service))
        return cls(**options)

    @classmethod
    def from_env(cls, url: str | None = None) -> RedisSettings:
        """From ``url``, else ``$PROCFLOW_REDIS_URL``, else ``redis://127.0.0.1:6379/0``."""
        return cls.from_url(url or os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL)

    def with_options(self, **changes: Any) -> RedisSettings:
        """A copy with some fields changed (``socket_timeout=2.0``, …)."""
        return dataclasses.replace(self, **changes)

    @property
    def address(self) -> str:
        """Where the server is, for messages: ``host:port``, ``unix:/path`` or ``sentinel
        master NAME at h1:p1,h2:p2``."""
        if self.sentinels:
            watched = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.service_name} at {watched}"
        if self.cluster_nodes:
            return "cluster " + ",".join(f"{h}:{p}" for h, p in self.cluster_nodes)
        if self.unix_socket_path:
            return f"unix:{self.unix_socket_path}"
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """A URL for these settings with the password left out."""
        user = f"{self.username}@" if self.username else ""
        if self.cluster_nodes:
            scheme = "rediss+cluster" if self.ssl else "redis+cluster"
            return f"{scheme}://{user}" + ",".join(f"{h}:{p}" for h, p in self.cluster_nodes)
        if self.sentinels:
            scheme = "rediss+sentinel" if self.ssl else "redis+sentinel"
            watched = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"{scheme}://{user}{watched}/{self.service_name}/{self.db}"
        if self.unix_socket_path:
            return f"unix://{user}{self.unix_socket_path}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


def _redact(url: str) -> str:
    """``url`` for an error message with the whole password replaced by ``***``.

    The password is everything between the first ``:`` after ``scheme://`` and the *last*
    ``@`` of the network location (the text up to the first ``/``, ``?`` or ``#`` after
    ``://``), so a password holding a raw ``@`` or ``:`` is hidden whole. Without ``://``
    the text from the start is taken as the network location, which can only hide more."""
    marker = url.find("://")
    start = marker + 3 if marker >= 0 else 0
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if 0 <= found < end:
            end = found
    at = url.rfind("@", start, end)
    if at < 0:
        return url  # no user information at all
    colon = url.find(":", start, at)
    if colon < 0:
        return url  # a user name only
    return f"{url[: colon + 1]}***{url[at:]}"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a text like ``512MiB``, ``1.5GB``, ``200m``."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a number of bytes or a size like '512MiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigurationError(f"{what} must be positive, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and match.group(2).lower() in _UNITS:
            size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
            if size > 0:
                return size
    raise ConfigurationError(
        f"{what} must be a positive size like 536870912 or '512MiB', got {value!r}"
    )
