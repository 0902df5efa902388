"""What the client stores send and how they read the replies: written once, without I/O, for
the sync ``Store`` (``redis.py``, over ``wire.py``) and the ``AsyncStore`` (``aio.py``, over
``link.py``).

An operation is an :data:`Exchange`: a generator that yields a :class:`Request` (packed
commands; whether they write, so that under ``durable`` a WAIT for one replica goes in the
same write; whether they are script calls, so that a NOSCRIPT reply loads the script and
sends that call again; which replies to check) and is sent the replies, checked as asked; it
returns the operation's result. A driver only sends and reads: ``Store.run`` and
``AsyncStore.run`` take the operation and its arguments, and each sends a call refused with
MOVED or ASK again where the reply points (``replies.follow``). The two stores therefore send
the same bytes for every operation here, and read the replies the same way.

Creating jobs is paced (:func:`create_jobs`: chunks of ``CREATE_CHUNK``, the next sent before
the previous one's replies are read, so neither side's buffers fill up): its steps are
:class:`Ahead` writes, and each store has a small driver for them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.exceptions as rex

from ..errors import CreateJobsError, RedisRefusedError, refusal
from .eviction import READS, UNKNOWN, EvictionPolicy, check_mode, report
from .keys import StageKeys
from .records import NewJob
from .replies import Kind, classify
from .wire import Script, pack, replicated, script

__all__ = [
    "COUNTS",
    "CREATE_CHUNK",
    "PRUNE_LIMIT",
    "Ahead",
    "Exchange",
    "Paced",
    "Request",
    "checked",
    "counts",
    "create_jobs",
    "created_from",
    "creation_refused",
    "delete_job",
    "eviction_policy",
    "exists_many",
    "get_hashes",
    "hash_field_many",
    "list_range",
    "pack_create",
    "paused",
    "ping",
    "prune_failed",
    "revive",
    "set_paused",
    "ttl_bulk",
]

T = TypeVar("T")

#: jobs per pipelined chunk of a ``create_jobs`` (at most two chunks in flight)
CREATE_CHUNK = 500
#: ids of a failed list checked per prune (each an EXISTS inside one script call)
PRUNE_LIMIT = 10_000
#: what ``counts`` reports per stage, in the order the commands go
COUNTS = ("waiting", "processing", "delayed", "parked", "failed")

_MULTI = pack("MULTI")
_EXEC = pack("EXEC")
_EXPIRE = b"*3\r\n$6\r\nEXPIRE\r\n"
_RPUSH = b"*3\r\n$5\r\nRPUSH\r\n"


@dataclass(frozen=True, slots=True)
class Request:
    """Commands to send in one write, and how the driver treats their replies.

    ``writes``: under ``durable``, a WAIT for one replica follows in the same write (its
    reply is checked by the driver and not handed on). ``scripts``: the commands are EVALSHA
    calls of these scripts (one per command); a NOSCRIPT reply loads the script and sends
    that call again (it did not run) — script calls always count as writes. ``check``:
    which replies the driver raises the server's refusal for (``all``: every one, also an
    error inside a transaction's reply; ``last``: a transaction's EXEC; ``none``: the
    exchange reads error replies as values)."""

    commands: Sequence[bytes]
    writes: bool = False
    scripts: Sequence[Script] = ()
    check: Literal["all", "last", "none"] = "all"


#: an operation: yields requests, is sent their replies, returns its result
Exchange = Generator[Request, list[Any], T]


def checked(request: Request, replies: list[Any], check: Callable[[Any], Any]) -> list[Any]:
    """The replies of ``request``, those it asks for passed through the driver's ``check``
    (which raises the server's refusal for an error reply). A transaction that EXEC
    discarded because a queued command was redirected (MOVED or ASK under Cluster: the slot
    moved, or is moving, under it) raises that redirect, so the driver sends it again where
    it points: nothing of it ran."""
    if request.check == "all":
        for reply in replies:
            check(reply)
    elif request.check == "last" and replies:
        if isinstance(replies[-1], rex.ResponseError):
            for reply in replies[:-1]:
                if isinstance(reply, rex.ResponseError) and classify(str(reply)).kind in (
                    Kind.MOVED,
                    Kind.ASK,
                ):
                    check(reply)
        check(replies[-1])
    return replies


# -- connection ------------------------------------------------------------------------------


def ping(address: str) -> Exchange[None]:
    """PING, then the check that the server at ``address`` cannot evict procflow's keys
    (``eviction.report``: a warning, or under ``$PROCFLOW_EVICTION_CHECK=refuse`` a
    ConfigurationError)."""
    yield Request([pack("PING")])
    if check_mode() != "off":
        report((yield from eviction_policy(address)))


def eviction_policy(address: str) -> Exchange[EvictionPolicy]:
    """The ``maxmemory-policy`` of the server at ``address``: from CONFIG GET, else from
    INFO memory (CONFIG refused: an ACL user, a managed service), else ``unknown``."""
    for command, parse, source in READS:
        [reply] = yield Request([pack(*command)], check="none")
        if isinstance(reply, rex.ResponseError):
            continue
        policy = parse(reply)
        if policy:
            return EvictionPolicy(address, policy, source)
    return EvictionPolicy(address, UNKNOWN, "")


# -- jobs: create, read, delete --------------------------------------------------------------


def ttl_bulk(ttl: int) -> bytes:
    """A key TTL as the bulk string every EXPIRE of a create carries."""
    return b"$%d\r\n%d\r\n" % (len(str(ttl)), ttl)


def pack_create(job: NewJob, ttl: bytes) -> tuple[bytes, int]:
    """One job's MULTI … EXEC block, packed in one pass, and how many replies it gets."""
    key = job.key.encode()
    ident = job.id.encode()
    key_bulk = b"$%d\r\n%s\r\n" % (len(key), key)
    id_bulk = b"$%d\r\n%s\r\n" % (len(ident), ident)
    parts = [_MULTI, b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(job.fields)), key_bulk]
    for f, v in job.fields:
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(f), f, len(v), v))
    parts += (_EXPIRE, key_bulk, ttl)
    for lookup in job.lookup_keys:
        lk = lookup.encode()
        lk_bulk = b"$%d\r\n%s\r\n" % (len(lk), lk)
        parts += (_RPUSH, lk_bulk, id_bulk, _EXPIRE, lk_bulk, ttl)
    waiting = job.waiting.encode()
    parts += (_RPUSH, b"$%d\r\n%s\r\n" % (len(waiting), waiting), id_bulk, _EXEC)
    return b"".join(parts), 5 + 2 * len(job.lookup_keys)


@dataclass(frozen=True, slots=True)
class Ahead:
    """A write sent before the replies of the write before it are read: the driver sends
    ``data`` (nothing when empty), then reads the replies of the previous ``Ahead`` and
    hands them back (``[]`` after the first); ``replies`` is how many ``data`` will get."""

    data: bytes
    replies: int


#: a paced operation: yields writes ahead of their replies, is sent the previous one's
Paced = Generator[Ahead, list[Any], None]


def create_jobs(
    jobs: Sequence[NewJob],
    ttl: int,
    address: str,
    check: Callable[[Any], Any],
    durable_ms: int | None,
) -> Paced:
    """Write jobs, each in its own MULTI … EXEC (``pack_create``), pipelined in chunks with
    at most two in flight. A refusal (the server full, say) stops the sending; then
    CreateJobsError says exactly which jobs were written (a single job's refusal raises the
    refusal itself: nothing was written). With ``durable_ms``, the jobs are acknowledged once
    one replica has them all (a WAIT after the last chunk)."""
    if not jobs:
        return
    bulk = ttl_bulk(ttl)
    created: list[str] = []
    refused: RedisRefusedError | None = None
    in_flight: list[tuple[NewJob, int]] = []
    start = 0
    while start < len(jobs) and refused is None:
        chunk = jobs[start : start + CREATE_CHUNK]
        blocks = [pack_create(j, bulk) for j in chunk]
        replies = yield Ahead(b"".join(b for b, _ in blocks), sum(n for _, n in blocks))
        refused = created_from(address, replies, in_flight, created)
        in_flight = [(j, n) for j, (_, n) in zip(chunk, blocks, strict=True)]
        start += len(chunk)
    replies = yield Ahead(b"", 0)
    refused = created_from(address, replies, in_flight, created) or refused
    if refused is None and durable_ms is not None:
        yield Ahead(pack("WAIT", 1, durable_ms), 1)
        [waited] = yield Ahead(b"", 0)
        replicated(waited, check, durable_ms)
    if refused is not None:
        raise creation_refused(jobs, created, refused)


def created_from(
    address: str, replies: Sequence[Any], blocks: Sequence[tuple[NewJob, int]], created: list[str]
) -> RedisRefusedError | None:
    """From the replies of create blocks (job, reply count), the ids of the jobs written go
    to ``created``; returns the first refusal among them (a command refused when queued
    makes EXEC abort: that job was not written)."""
    first: RedisRefusedError | None = None
    at = 0
    for job, n in blocks:
        block, at = replies[at : at + n], at + n
        errors = [r for r in block if isinstance(r, Exception)]
        exec_reply = block[-1]
        if isinstance(exec_reply, list):
            errors += [r for r in exec_reply if isinstance(r, Exception)]
            if not isinstance(exec_reply[-1], Exception):  # the id reached the waiting list
                created.append(job.id)
        if errors and first is None:
            first = refusal(address, str(errors[0]))
    return first


def creation_refused(
    jobs: Sequence[NewJob], created: Sequence[str], refused: RedisRefusedError
) -> RedisRefusedError:
    """What a refused ``create_jobs`` raises: a single job's refusal itself (nothing was
    written), else CreateJobsError saying exactly which jobs were written."""
    if len(jobs) == 1:
        return refused
    done = set(created)
    return CreateJobsError(refused, list(created), [j.id for j in jobs if j.id not in done])


def get_hashes(hash_keys: Sequence[str]) -> Exchange[list[dict[bytes, bytes]]]:
    """HGETALL of every key in one round trip (an absent key gives ``{}``)."""
    if not hash_keys:
        return []
    replies = yield Request([pack("HGETALL", k) for k in hash_keys])
    return [
        dict(zip(r[::2], r[1::2], strict=True)) if isinstance(r, list) else r  # RESP2: flat
        for r in replies
    ]


def list_range(key: str, start: int = 0, stop: int = -1) -> Exchange[list[str]]:
    [reply] = yield Request([pack("LRANGE", key, start, stop)])
    return [v.decode() for v in reply]


def hash_field_many(hash_keys: Sequence[str], fields: Sequence[str]) -> Exchange[list[list[Any]]]:
    """HMGET the same fields from many hashes in one round trip."""
    if not hash_keys:
        return []
    return (yield Request([pack("HMGET", k, *fields) for k in hash_keys]))


def exists_many(hash_keys: Sequence[str]) -> Exchange[list[bool]]:
    """Whether each key exists (one round trip)."""
    if not hash_keys:
        return []
    replies = yield Request([pack("EXISTS", k) for k in hash_keys])
    return [r == 1 for r in replies]


def delete_job(
    job_key: str,
    job_id: str,
    lookup_keys: Iterable[str],
    stages: Iterable[StageKeys],
    extra_keys: Iterable[str] = (),
) -> Exchange[int]:
    """Remove a job in one MULTI: its hash, its id from its lookup lists and from every
    list and set of the given stages, its locks. Returns how many keys DEL removed."""
    commands = [_MULTI, *(pack("LREM", lookup, 0, job_id) for lookup in lookup_keys)]
    for stage in stages:
        for list_key in (stage.waiting, stage.processing, stage.failed):
            commands.append(pack("LREM", list_key, 0, job_id))
        for zset_key in (stage.delayed, stage.parked):
            commands.append(pack("ZREM", zset_key, job_id))
        commands.append(pack("DEL", stage.lock(job_id)))
    commands += [pack("DEL", job_key, *extra_keys), _EXEC]
    replies = yield Request(commands, writes=True, check="last")
    return int(replies[-1][-1])


# -- pausing a stage --------------------------------------------------------------------------


def set_paused(stages: Sequence[StageKeys], note: str | None) -> Exchange[None]:
    """Pause the stages (``note``: the JSON their ``queue:Q:paused`` holds) or, with None,
    resume them: one write."""
    if note is None:
        commands = [pack("DEL", *(stage.paused for stage in stages))] if stages else []
    else:
        commands = [pack("SET", stage.paused, note) for stage in stages]
    if commands:
        yield Request(commands, writes=True)


def paused(stages: Sequence[StageKeys]) -> Exchange[list[bool]]:
    """Whether each stage is paused (one round trip)."""
    if not stages:
        return []
    replies = yield Request([pack("EXISTS", stage.paused) for stage in stages])
    return [bool(reply) for reply in replies]


# -- failed jobs, counts ---------------------------------------------------------------------


def revive(stage: StageKeys, job_ids: Sequence[str]) -> Exchange[list[str]]:
    """Failed jobs back onto their stage's waiting list with a fresh attempt count."""
    if not job_ids:
        return []
    s = script("revive")
    packed = pack(
        "EVALSHA",
        s.sha,
        2,
        stage.failed,
        stage.waiting,
        stage.job_prefix,
        stage.attempts_field,
        stage.stalls_field,
        *job_ids,
    )
    [moved] = yield Request([packed], scripts=[s])
    return [m.decode() for m in moved]


def prune_failed(stages: Sequence[StageKeys], limit: int = PRUNE_LIMIT) -> Exchange[int]:
    """Drop from each stage's failed list the ids whose job hash has expired, scanning at
    most ``limit`` ids per list (the oldest). Returns how many were dropped."""
    if not stages:
        return 0
    s = script("prune")
    packed = [pack("EVALSHA", s.sha, 1, st.failed, st.job_prefix, limit) for st in stages]
    replies = yield Request(packed, scripts=[s] * len(packed))
    return sum(int(r) for r in replies)


def counts(stages: Sequence[StageKeys]) -> Exchange[list[dict[str, int]]]:
    """Waiting, processing, delayed, parked and failed counts per stage (one round trip);
    failed lists are pruned of expired jobs first, so the count matches the jobs."""
    yield from prune_failed(stages)
    if not stages:
        return []
    commands = []
    for st in stages:
        commands += [
            pack("LLEN", st.waiting),
            pack("LLEN", st.processing),
            pack("ZCARD", st.delayed),
            pack("ZCARD", st.parked),
            pack("LLEN", st.failed),
        ]
    got = [int(r) for r in (yield Request(commands))]
    return [dict(zip(COUNTS, got[i : i + 5], strict=True)) for i in range(0, len(got), 5)]
