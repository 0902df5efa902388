"""The one class that talks to Redis.

Every command procflow sends is issued here; the flow, the worker loop, the supervisor and the
monitor call these methods and never build a key or a command themselves. State changes that
must be atomic are the Lua scripts in ``lua/``, called by SHA. The operations the async store
has too are written once in ``plans.py`` (what to send, how to read the replies); here they
are driven on a pooled connection (:meth:`Store.run`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast

from ..errors import RedisRefusedError
from ..settings import RedisSettings
from . import keys, plans
from .connect import cluster_masters
from .eviction import EvictionPolicy
from .keys import StageKeys
from .plans import PRUNE_LIMIT, Exchange, Request
from .records import NewJob
from .replies import REDIRECTS, follow
from .session import StageSession, children_status
from .subscription import DoneSubscription
from .wire import Wire, pack, script

__all__ = ["Store"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
P = ParamSpec("P")


def follows_redirects(method: F) -> F:
    """Under Cluster, a call refused with MOVED (the slot moved) or ASK (the slot is being
    migrated and the keys are on the importing node already) did not run: it is sent again
    where the reply points, up to ``REDIRECTS`` times. Every such call touches one slot."""

    @functools.wraps(method)
    def call(self: Store, *args: Any, **kwargs: Any) -> Any:
        for _ in range(REDIRECTS):
            try:
                return method(self, *args, **kwargs)
            except RedisRefusedError as exc:
                if not follow(exc, self.settings):
                    raise
        return method(self, *args, **kwargs)

    return cast(F, call)


class Store:
    """Redis commands for one flow. Thread-safe: each call borrows a connection from a small
    pool. A worker process builds its own sessions; a Store never crosses ``fork``."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._idle: list[Wire] = []
        self._lock = threading.Lock()

    # -- connections ---------------------------------------------------------------------

    @contextmanager
    def wire(self) -> Iterator[Wire]:
        """Borrow a connection (a broken one reconnects on its next use)."""
        with self._lock:
            w = self._idle.pop() if self._idle else Wire(self.settings)
        if w.redirected or w.stale():
            w.close()  # reconnects on first use (where a redirect pointed, if one did)
        try:
            yield w
        finally:
            with self._lock:
                self._idle.append(w)

    @contextmanager
    def session(
        self, stage: StageKeys, fields: Sequence[str] = (), lock_ms: int = 0
    ) -> Iterator[StageSession]:
        """Stage ``stage``'s protocol on a borrowed connection (the supervisor settling a
        dead worker's job, the monitor, tests)."""
        with self.wire() as w:
            yield StageSession(w, stage, fields=fields, lock_ms=lock_ms)

    def subscribe_done(self, flows: Sequence[str], progress: bool = False) -> DoneSubscription:
        """A subscription to the ids of the jobs of ``flows`` (a flow's partitions) as they
        become done (and, with ``progress``, to their progress reports), on one connection:
        on a cluster, classic pub/sub reaches every node."""
        return DoneSubscription(
            self.settings,
            [keys.done_channel(f) for f in flows],
            [keys.progress_channel(f) for f in flows] if progress else [],
        )

    def close(self) -> None:
        with self._lock:
            for w in self._idle:
                w.close()
            self._idle.clear()

    # -- the operations of ``plans`` -------------------------------------------------------

    @follows_redirects
    def run(self, op: Callable[P, Exchange[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Operation ``op(*args)`` of ``plans`` on one borrowed connection: each request
        sent, its replies read (checked as it asks) and handed back; its result returned."""
        exchange = op(*args, **kwargs)
        with self.wire() as w:
            try:
                request = next(exchange)
                while True:
                    request = exchange.send(self._send(w, request))
            except StopIteration as stop:
                return cast(T, stop.value)

    @staticmethod
    def _send(w: Wire, request: Request) -> list[Any]:
        if request.scripts:
            replies = w.run_scripts(request.scripts, request.commands)
        else:
            replies = w.pipeline(request.commands, writes=request.writes)
        return plans.checked(request, replies, w.check)

    def flush_db(self) -> None:
        """Remove every key of this database (FLUSHDB) — for test servers only
        (``procflow.testing``); nothing in the library calls it."""
        with self.wire() as w:
            w.call("FLUSHDB")

    def ping(self) -> None:
        """Connect and PING (RedisUnavailableError names the address when that fails), then
        check that the server cannot evict procflow's keys (``plans.ping``)."""
        self.run(plans.ping, self.settings.address)

    def eviction_policy(self) -> EvictionPolicy:
        """The server's ``maxmemory-policy`` (``plans.eviction_policy``)."""
        return self.run(plans.eviction_policy, self.settings.address)

    def eviction_policies(self) -> list[EvictionPolicy]:
        """``eviction_policy`` of every server that holds data: on Redis Cluster each master
        (from the slot map), else this store's server (under Sentinel, the master now)."""
        if not self.settings.cluster_nodes:
            return [self.eviction_policy()]
        out = []
        for host, port in cluster_masters(self.settings):
            node = Store(
                self.settings.with_options(host=host, port=port, cluster_nodes=(), cluster_key=None)
            )
            try:
                out.append(node.eviction_policy())
            finally:
                node.close()
        return out

    # -- jobs: create, read, delete ------------------------------------------------------

    @follows_redirects
    def create_jobs(self, jobs: Sequence[NewJob], ttl: int) -> None:
        """Write jobs, each in its own MULTI … EXEC: the job hash and its EXPIRE, each lookup
        list and its EXPIRE, then the id onto the first waiting list (``plans.create_jobs``,
        paced on one connection). CreateJobsError says which jobs were written when the
        server refused part way (a single job's refusal raises the refusal itself)."""
        with self.wire() as w:
            durable_ms = w.settings.durable_ms if w.settings.durable else None
            paced = plans.create_jobs(jobs, ttl, w.settings.address, w.check, durable_ms)
            pending = 0
            try:
                step = next(paced)
                while True:
                    if step.data:
                        w.send(step.data)
                    replies = w.read_many(pending) if pending else []
                    pending = step.replies
                    step = paced.send(replies)
            except StopIteration:
                return

    def get_hashes(self, hash_keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL of every key in one round trip (an absent key gives ``{}``)."""
        return self.run(plans.get_hashes, hash_keys)

    def list_range(self, key: str, start: int = 0, stop: int = -1) -> list[str]:
        return self.run(plans.list_range, key, start, stop)

    @follows_redirects
    def hash_fields(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        if not fields:
            return []
        with self.wire() as w:
            return list(w.call("HMGET", key, *fields))

    def hash_field_many(self, hash_keys: Sequence[str], fields: Sequence[str]) -> list[list[Any]]:
        """HMGET the same fields from many hashes in one round trip."""
        return self.run(plans.hash_field_many, hash_keys, fields)

    def exists_many(self, hash_keys: Sequence[str]) -> list[bool]:
        """Whether each key exists (one round trip)."""
        return self.run(plans.exists_many, hash_keys)

    @follows_redirects
    def children_status(self, child_keys: Sequence[str]) -> list[Any]:
        """Per child: EXISTS, then HMGET done failed — pipelined in one round trip."""
        with self.wire() as w:
            return children_status(w, child_keys)

    def delete_job(
        self,
        job_key: str,
        job_id: str,
        lookup_keys: Iterable[str],
        stages: Iterable[StageKeys],
        extra_keys: Iterable[str] = (),
    ) -> int:
        """Remove a job in one MULTI (``plans.delete_job``). Returns how many keys DEL
        removed."""
        return self.run(plans.delete_job, job_key, job_id, lookup_keys, stages, extra_keys)

    @follows_redirects
    def renew(self, locks: Sequence[tuple[str, str, int]]) -> list[bool]:
        """Extend every (lock key, token, ttl ms) whose lock still holds its token, in one
        round trip."""
        if not locks:
            return []
        s = script("renew")
        with self.wire() as w:
            packed = [w.pack_evalsha(s, (key,), (token, ttl)) for key, token, ttl in locks]
            replies = w.run_scripts([s] * len(packed), packed)
        return [reply == 1 for reply in replies]

    # -- fan-out / fan-in ----------------------------------------------------------------

    @follows_redirects
    def unpark(self, stage: StageKeys, job_id: str) -> bool:
        with self.wire() as w:
            reply = w.evalsha(
                script("unpark"), (stage.parked, stage.waiting), (job_id, stage.job_prefix)
            )
        return bool(reply == 1)

    @follows_redirects
    def parked_for(self, stage: StageKeys, age_ms: int, limit: int = 1000) -> list[str]:
        """Parents parked for at least ``age_ms`` by the server's clock."""
        with self.wire() as w:
            ids = w.evalsha(script("parked"), (stage.parked,), (age_ms, limit))
        return [i.decode() for i in ids]

    # -- retries, failed jobs, monitoring ------------------------------------------------

    @follows_redirects
    def promote(self, stages: Sequence[StageKeys], limit: int = 1000) -> list[tuple[int, int]]:
        """Move due retries to waiting for every stage: (moved, ms until next due or -1)."""
        if not stages:
            return []
        s = script("promote")
        with self.wire() as w:
            packed = [
                w.pack_evalsha(s, (st.delayed, st.waiting), (limit, st.job_prefix)) for st in stages
            ]
            replies = w.run_scripts([s] * len(packed), packed)
            for reply in replies:
                w.check(reply)
        return [(int(reply[0]), int(reply[1])) for reply in replies]

    @follows_redirects
    def processing_snapshot(
        self, stages: Sequence[StageKeys]
    ) -> list[list[tuple[str, str | None]]]:
        """For every stage, its processing ids with their lock values (None: no lock).
        Two round trips; cost proportional to the number of jobs in processing."""
        if not stages:
            return []
        with self.wire() as w:
            lists = [
                w.check(r)
                for r in w.pipeline([pack("LRANGE", st.processing, 0, -1) for st in stages])
            ]
            ids = [[i.decode() for i in ids] for ids in lists]
            flat = [(st, i) for st, group in zip(stages, ids, strict=True) for i in group]
            values = w.call("MGET", *[st.lock(i) for st, i in flat]) if flat else []
        out: list[list[tuple[str, str | None]]] = [[] for _ in stages]
        index = {id(st): n for n, st in enumerate(stages)}
        for (st, job_id), value in zip(flat, values, strict=True):
            out[index[id(st)]].append((job_id, value.decode() if value is not None else None))
        return out

    @follows_redirects
    def acquire_or_renew(self, key: str, holder: str, ttl_ms: int) -> bool:
        """Take ``key`` if free, or extend it if ``holder`` has it: leader election, one
        round trip (``lead.lua``)."""
        with self.wire() as w:
            return bool(w.evalsha(script("lead"), (key,), (holder, ttl_ms)) == 1)

    @follows_redirects
    def release_if_holder(self, key: str, holder: str) -> bool:
        """Delete ``key`` if ``holder`` holds it, atomically."""
        with self.wire() as w:
            return bool(w.evalsha(script("release"), (key,), (holder,)) == 1)

    def revive(self, stage: StageKeys, job_ids: Sequence[str]) -> list[str]:
        """Failed jobs back onto their stage's waiting list with a fresh attempt count."""
        return self.run(plans.revive, stage, job_ids)

    def prune_failed(self, stages: Sequence[StageKeys], limit: int = PRUNE_LIMIT) -> int:
        """Drop from each stage's failed list the ids whose job hash has expired, scanning at
        most ``limit`` ids per list (the oldest). Returns how many were dropped."""
        return self.run(plans.prune_failed, stages, limit)

    def set_paused(self, stages: Sequence[StageKeys], note: str | None) -> None:
        """Pause the stages (``note``: what ``queue:Q:paused`` holds) or, None, resume them."""
        self.run(plans.set_paused, stages, note)

    def paused(self, stages: Sequence[StageKeys]) -> list[bool]:
        """Whether each stage is paused."""
        return self.run(plans.paused, stages)

    @follows_redirects
    def waiting_counts(self, stages: Sequence[StageKeys]) -> list[int]:
        """How many jobs wait in each stage (one round trip): the core budget's view."""
        if not stages:
            return []
        with self.wire() as w:
            return [int(w.check(r)) for r in w.pipeline([pack("LLEN", s.waiting) for s in stages])]

    def counts(self, stages: Sequence[StageKeys]) -> list[dict[str, int]]:
        """Waiting, processing, delayed, parked and failed counts per stage (one round trip);
        failed lists are pruned of expired jobs first, so the count matches the jobs."""
        return self.run(plans.counts, stages)

    def unblock(self, client_ids: Iterable[int]) -> None:
        """CLIENT UNBLOCK each id: a worker blocked in BLMOVE returns at once (stop)."""
        ids = list(client_ids)
        if not ids:
            return
        with self.wire() as w:
            w.pipeline([pack("CLIENT", "UNBLOCK", i) for i in ids])
