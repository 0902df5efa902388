"""The Redis ACL rules a flow needs: its key patterns, its channel and the commands procflow
sends (directly, and from inside its scripts, which Redis checks too). Nothing more.

``Flow.acl_rules()`` gives them for ``ACL SETUSER name on >password <rules…>``;
docs/configuration.md lists them and a test runs a whole flow as a user with exactly these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from . import keys
from .keys import StageKeys

__all__ = ["COMMANDS", "acl_rules"]

#: every command procflow sends or runs in a script (not CLIENT SETINFO: redis-py sends it
#: on connect where the server has it, and carries on when it is refused)
COMMANDS = (
    # connections
    "ping",
    "select",
    "client|id",
    "client|unblock",
    # scripts
    "evalsha",
    "script|load",
    # job creation (MULTI … EXEC) and reads
    "multi",
    "exec",
    "hset",
    "expire",
    "rpush",
    "hgetall",
    "hmget",
    "exists",
    "lrange",
    "llen",
    "zcard",
    "mget",
    "lrem",
    "zrem",
    "del",
    "set",
    "blmove",
    # inside the scripts
    "get",
    "pexpire",
    "hget",
    "hdel",
    "hexists",
    "hincrby",
    "hsetnx",
    "lmove",
    "lpos",
    "lpush",
    "zadd",
    "zrange",
    "zrangebyscore",
    "publish",
    "time",
    # the flow registry, heartbeats, stats, cancel requests (store/registry.py)
    "sadd",
    "srem",
    "smembers",
    "zremrangebyscore",
    "ltrim",
    "lindex",
    "hkeys",
    # the check of the server's maxmemory-policy where a flow connects (store/eviction.py):
    # INFO is its fallback where CONFIG GET is not allowed (CONFIG is not granted)
    "info",
    # waiting for jobs
    "subscribe",
    "unsubscribe",
)

_GLOB = re.compile(r"([*?\[\]\\])")


def _literal(text: str) -> str:
    """``text`` with glob characters escaped, for an ACL pattern."""
    return _GLOB.sub(r"\\\1", text)


def acl_rules(flow: str, stages: Sequence[StageKeys]) -> list[str]:
    """The ACL rules (``ACL SETUSER`` arguments after the user's name and password) that let
    a user run flow ``flow`` with these stages, and nothing else."""
    prefixes = [keys.job_prefix(flow), keys.own_prefix(flow)]
    for stage in stages:
        prefixes += [stage.job_prefix, keys.queue_prefix(stage.queue), stage.lock_prefix]
    patterns = [f"~{_literal(p)}*" for p in dict.fromkeys(prefixes)]
    patterns.append(f"~{_literal(keys.FLOWS)}")  # the registry's list of flows
    channels = [f"&{_literal(c)}" for c in (keys.done_channel(flow), keys.progress_channel(flow))]
    return [
        "resetkeys",
        *patterns,
        "resetchannels",
        *channels,
        "-@all",
        *(f"+{c}" for c in COMMANDS),
    ]
