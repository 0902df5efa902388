"""Whether the server may evict procflow's keys: its ``maxmemory-policy``.

A server that reaches ``maxmemory`` with any policy but ``noeviction`` deletes keys to make
room, without an error to anyone: job hashes, waiting lists, locks — acknowledged jobs are
lost in silence. ``volatile-*`` policies are no safer: they evict keys with a time to live,
and every job hash and lookup list has one (``key_ttl``). Only ``noeviction`` is safe: a full
server then refuses writes (``RedisFullError``) and nothing already written goes.

The policy is read with ``CONFIG GET maxmemory-policy``; where CONFIG is refused (an ACL user
without ``+config|get``, a managed service that renamed or disabled the command) from the
``maxmemory_policy`` line of ``INFO memory``; where that is refused too, it is ``unknown``.
The I/O-free part lives here; ``Store`` and ``AsyncStore`` send the commands (``ping`` checks
it where a flow connects, and so where a supervisor starts), the operator's tools and the
metrics read it for ``procflow status``, the dashboard's banner and
``procflow_redis_eviction_unsafe``.

``$PROCFLOW_EVICTION_CHECK`` says what a connect does about an evicting policy: ``warn`` (the
default: a WARNING log line and a Python ``EvictionWarning``), ``refuse`` (ConfigurationError:
the flow does not connect, the supervisor does not start) or ``off`` (not read at all).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from ..errors import ConfigurationError

__all__ = [
    "CHECK_ENV",
    "READS",
    "SAFE_POLICY",
    "UNKNOWN",
    "EvictionPolicy",
    "EvictionWarning",
    "check_mode",
    "from_config",
    "from_info",
    "report",
]

#: the one policy under which the server never deletes a key to make room
SAFE_POLICY = "noeviction"
#: the policy when neither CONFIG GET nor INFO may be read
UNKNOWN = "unknown"
#: environment variable: ``warn`` (default), ``refuse`` or ``off``
CHECK_ENV = "PROCFLOW_EVICTION_CHECK"
_MODES = ("warn", "refuse", "off")


class EvictionWarning(UserWarning):
    """The server's ``maxmemory-policy`` lets it evict procflow's keys."""


@dataclass(frozen=True)
class EvictionPolicy:
    """One server's ``maxmemory-policy`` and where it was read (``config``, ``info``, or
    ``""`` when it could not be)."""

    address: str
    policy: str
    source: str

    @property
    def unsafe(self) -> bool:
        """The server may evict keys (a known policy other than ``noeviction``)."""
        return self.policy not in (SAFE_POLICY, UNKNOWN)

    @property
    def known(self) -> bool:
        return self.policy != UNKNOWN

    def message(self) -> str:
        """What it means and what to do, for a log line, ``procflow status`` and the
        dashboard ('' for ``noeviction``)."""
        if not self.known:
            return (
                f"the maxmemory-policy of Redis at {self.address} could not be read (CONFIG GET "
                "and INFO were refused): procflow needs noeviction, or a full server deletes "
                "jobs in silence; check it where the server is configured"
            )
        if not self.unsafe:
            return ""
        why = (
            "it evicts keys that have a time to live, and every job hash and lookup list has one"
            if self.policy.startswith("volatile-")
            else "it evicts keys"
        )
        return (
            f"Redis at {self.address} has maxmemory-policy {self.policy}: when it reaches "
            f"maxmemory {why}, so jobs, waiting lists and locks can vanish without an error "
            "(acknowledged jobs lost). Set it to noeviction: CONFIG SET maxmemory-policy "
            "noeviction (and maxmemory-policy noeviction in redis.conf), so that a full "
            "server refuses writes instead"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "policy": self.policy,
            "source": self.source,
            "unsafe": self.unsafe,
        }


def check_mode() -> str:
    """What a connect does about an evicting policy (``$PROCFLOW_EVICTION_CHECK``)."""
    mode = (os.environ.get(CHECK_ENV) or "warn").strip().lower()
    if mode not in _MODES:
        raise ConfigurationError(f"{CHECK_ENV} must be one of {', '.join(_MODES)}, not {mode!r}")
    return mode


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def from_config(reply: Any) -> str | None:
    """The policy in a ``CONFIG GET maxmemory-policy`` reply (a RESP3 map or a RESP2 flat
    list); None when it is not there."""
    if isinstance(reply, dict):
        pairs = list(reply.items())
    elif isinstance(reply, list):
        pairs = list(zip(reply[::2], reply[1::2], strict=False))
    else:
        return None
    for name, value in pairs:
        if _text(name).lower() == "maxmemory-policy":
            return _text(value).strip().lower() or None
    return None


def from_info(reply: Any) -> str | None:
    """The ``maxmemory_policy`` line of an ``INFO memory`` reply; None when it has none."""
    for line in _text(reply).splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "maxmemory_policy":
            return value.strip().lower() or None
    return None


#: how a server's policy is read, in order: (command, its reply's parser, source name)
READS: tuple[tuple[tuple[str, ...], Callable[[Any], str | None], str], ...] = (
    (("CONFIG", "GET", "maxmemory-policy"), from_config, "config"),
    (("INFO", "memory"), from_info, "info"),
)


def report(found: EvictionPolicy) -> None:
    """At a connect: say loudly what an evicting (or unreadable) policy means, or, under
    ``refuse``, raise ConfigurationError for an evicting one."""
    if not found.unsafe and found.known:
        return
    text = found.message()
    if found.unsafe and check_mode() == "refuse":
        raise ConfigurationError(f"{text} ({CHECK_ENV}=refuse)")
    logger.bind(redis=found.address, policy=found.policy).warning("{}", text)
    warnings.warn(text, EvictionWarning, stacklevel=3)
