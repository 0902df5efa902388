"""procflow's own records for operators' tools, beside the fixed layout: the flow registry,
node heartbeats, per-stage outcome counts, cancel requests and bounded reads of a stage's
lists.

Everything here is read from a Redis URL alone (the CLI, the dashboard): no app import. None
of it changes a key or field of the TypeScript layout. Every read is bounded: a page of a
list, a fixed window of minutes, the members of small sets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DecodeError
from ..ids import created_at
from ..settings import RedisSettings
from . import keys
from .keys import StageKeys
from .redis import Store
from .wire import pack, script

__all__ = ["CANCELLED_MESSAGE", "PAGE_STATES", "JobHash", "Page", "Registry", "StageStats"]

#: the ``failedErrorMsg`` of a cancelled job
CANCELLED_MESSAGE = "cancelled by an operator"

#: what a stage's page can list: its four lists and two sorted sets
PAGE_STATES = ("waiting", "processing", "delayed", "parked", "failed", "finished")
_LISTS = {"waiting", "processing", "failed", "finished"}


@dataclass(frozen=True)
class StageStats:
    """One stage's outcome counts: totals since the stats began, and per minute (oldest
    first) for the window asked for."""

    totals: dict[str, int]
    completed_per_minute: list[int]
    failed_per_minute: list[int]
    #: the server's time (Unix seconds) when they were read; its minute is the last entry's
    now: float = 0.0

    def rate(self, minutes: int = 5) -> float:
        """Completions per minute over the last ``minutes`` minutes, the current one counted
        for the part of it that has passed."""
        done = self.completed_per_minute[-minutes:]
        elapsed = max(1, len(done)) - 1 + max(self.now % 60, 1.0) / 60
        return sum(done) / elapsed


@dataclass(frozen=True)
class Page:
    """A bounded slice of one stage list: ``ids`` from ``start``; ``scores`` (ms) for the
    sorted sets (delayed: due time; parked: since)."""

    state: str
    total: int
    start: int
    ids: list[str]
    scores: list[float] = field(default_factory=list)


#: a job read raw: its key (for the decoder's messages), its id and its fields ({}: gone)
JobHash = tuple[str, str, dict[bytes, bytes]]


def _decode_json(raw: bytes | None, key: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DecodeError(key, "(value)", raw, str(exc)) from exc


def _entered(note: Any, job_id: str) -> float | None:
    """When a job entered its stage's waiting list (Unix seconds): its ``waiting-since:Q``
    note (JSON milliseconds), else its id's creation time."""
    if isinstance(note, bytes):
        try:
            ms = json.loads(note)
        except ValueError:
            ms = None
        if isinstance(ms, int | float) and not isinstance(ms, bool):
            return float(ms) / 1000
    return created_at(job_id)


class Registry:
    """The operator's records, through ``store``'s connections."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._global: Store | None = None

    @property
    def global_store(self) -> Store:
        """Where ``procflow:flows`` lives: on Redis Cluster its own slot's master, else the
        same server."""
        settings = self.store.settings
        if not settings.cluster_nodes:
            return self.store
        if self._global is None:
            self._global = Store(settings.with_options(cluster_key=keys.FLOWS))
        return self._global

    @classmethod
    def of_flow(cls, settings: RedisSettings, flow: str) -> Registry:
        """The registry reads of flow ``flow`` on a store of its own: on Redis Cluster its
        connections serve the slot of the flow's keys."""
        return cls(Store(settings.with_options(cluster_key=keys.flow_record(flow))))

    def close(self) -> None:
        if self._global is not None:
            self._global.close()

    # -- flows -----------------------------------------------------------------------------

    def register(self, flow: str, description: dict[str, Any]) -> None:
        """Describe flow ``flow`` (a supervisor starting it): listed in ``procflow:flows``,
        described in ``procflow:F:flow``."""
        text = json.dumps(description, separators=(",", ":"), ensure_ascii=False)
        with self.store.wire() as w:
            w.call("SET", keys.flow_record(flow), text)
        with self.global_store.wire() as w:  # listed once described
            w.call("SADD", keys.FLOWS, flow)

    def flows(self) -> list[str]:
        """The names of every registered flow, sorted."""
        with self.global_store.wire() as w:
            return sorted(m.decode() for m in w.call("SMEMBERS", keys.FLOWS))

    def describe(self, flow: str) -> dict[str, Any] | None:
        """Flow ``flow``'s description, or None when no supervisor ever registered it."""
        with self.store.wire() as w:
            raw = w.call("GET", keys.flow_record(flow))
        value = _decode_json(raw, keys.flow_record(flow))
        return value if isinstance(value, dict) else None

    def unregister(self, flow: str, queues: Sequence[str]) -> None:
        """Forget flow ``flow``: its description, node records, stats and cancel requests."""
        own = [keys.flow_record(flow), keys.nodes(flow), keys.cancel_requests(flow)]
        own += [keys.stats(flow, q) for q in queues] + [keys.finished(flow, q) for q in queues]
        with self.store.wire() as w:
            nodes = [n.decode() for n in w.call("ZRANGE", keys.nodes(flow), 0, -1)]
            own += [keys.node(flow, n) for n in nodes]
            w.check(w.call("DEL", *own))
        with self.global_store.wire() as w:
            w.call("SREM", keys.FLOWS, flow)

    # -- the monitor's leadership -------------------------------------------------------------

    def lead_monitor(self, flow: str, holder: str, ttl_ms: int) -> bool:
        """Take or keep the leadership of flow ``flow``'s monitors (``procflow:F:monitor``)
        for ``ttl_ms``: True when ``holder`` has it now."""
        return self.store.acquire_or_renew(keys.monitor_leader(flow), holder, ttl_ms)

    def resign_monitor(self, flow: str, holder: str) -> bool:
        """Give up the leadership of flow ``flow``'s monitors, if ``holder`` has it."""
        return self.store.release_if_holder(keys.monitor_leader(flow), holder)

    # -- jobs, by id -------------------------------------------------------------------------

    def job_home(self, flow: str, child_stages: Sequence[StageKeys], job_id: str) -> str | None:
        """Where job ``job_id`` of flow ``flow`` lives (one round trip): ``""`` for the flow's
        own jobs (``job:F:ID``), a child stage's name for its jobs (``job:PARENT:CHILD:ID``),
        None when no such hash exists."""
        homes = [("", keys.job(flow, job_id))]
        homes += [(stage.queue, stage.job(job_id)) for stage in child_stages]
        found = self.store.exists_many([key for _, key in homes])
        return next((name for (name, _), there in zip(homes, found, strict=True) if there), None)

    def job_hashes(self, stage: StageKeys, job_ids: Sequence[str]) -> list[JobHash]:
        """The raw hashes of jobs of stage ``stage`` (one round trip), each with its key."""
        hash_keys = [stage.job(i) for i in job_ids]
        raws = self.store.get_hashes(hash_keys)
        return list(zip(hash_keys, job_ids, raws, strict=True))

    def lookup_ids(self, flow: str, attribute: str, text: str, limit: int) -> list[str]:
        """The ids of the last ``limit`` jobs of flow ``flow`` whose lookup attribute
        ``attribute`` has the value written ``text`` (oldest first)."""
        return self.store.list_range(keys.lookup(flow, attribute, text), -limit, -1)

    def purge(self, flow: str, stages: Sequence[StageKeys]) -> int:
        """Delete every key of flow ``flow``: its jobs and lookup lists, its stages' lists,
        sets and locks, procflow's records of it (SCAN, then UNLINK). Returns how many went."""
        patterns = [f"{keys.job_prefix(flow)}*", f"{keys.own_prefix(flow)}*"]
        for stage in stages:
            patterns += [f"{stage.job_prefix}*", f"{keys.queue_prefix(stage.queue)}*"]
            patterns.append(f"{stage.lock_prefix}*")
        return self.delete_matching(list(dict.fromkeys(patterns)))

    # -- node heartbeats -------------------------------------------------------------------

    def beat(self, flow: str, node: str, record: dict[str, Any], ttl_ms: int) -> set[str]:
        """Write node ``node``'s heartbeat, expiring after ``ttl_ms``; drop node entries
        whose heartbeat expired a minute ago or more (by this machine's clock). Returns the
        ids of running jobs an operator asked to cancel (read in the same round trip)."""
        now = int(time.time() * 1000)
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self.store.wire() as w:
            replies = w.pipeline(
                [
                    pack("MULTI"),
                    pack("SET", keys.node(flow, node), text, "PX", ttl_ms),
                    pack("ZADD", keys.nodes(flow), now + ttl_ms, node),
                    pack("ZREMRANGEBYSCORE", keys.nodes(flow), "-inf", now - 60_000),
                    pack("EXEC"),
                    pack("SMEMBERS", keys.cancel_requests(flow)),
                ]
            )
            w.check(replies[-2])
        return {m.decode() for m in w.check(replies[-1])}

    def forget_node(self, flow: str, node: str) -> None:
        """A node that stops cleanly removes its heartbeat at once."""
        with self.store.wire() as w:
            w.pipeline([pack("ZREM", keys.nodes(flow), node), pack("DEL", keys.node(flow, node))])

    def nodes(self, flow: str) -> list[dict[str, Any]]:
        """The live nodes' last heartbeats (an expired one is gone with its key)."""
        with self.store.wire() as w:
            names = [n.decode() for n in w.call("ZRANGE", keys.nodes(flow), 0, -1)]
            raws = w.call("MGET", *[keys.node(flow, n) for n in names]) if names else []
        out = []
        for name, raw in zip(names, raws, strict=True):
            value = _decode_json(raw, keys.node(flow, name))
            if isinstance(value, dict):
                out.append(value)
        return out

    # -- outcome counts --------------------------------------------------------------------

    def server_time(self) -> float:
        """The server's clock (Unix seconds)."""
        with self.store.wire() as w:
            seconds, micros = w.call("TIME")
        return int(seconds) + int(micros) / 1e6

    def stats(self, flow: str, queues: Sequence[str], minutes: int = 60) -> list[StageStats]:
        """Each stage's totals and its last ``minutes`` minutes (one round trip: the server's
        clock, then one HGETALL per stage of a hash holding at most two fields per minute of a
        day). A total is what was folded
        from old minutes plus the minutes still kept."""
        if not queues:
            return []
        with self.store.wire() as w:  # the server's clock and every hash: one round trip
            time_reply, *replies = [
                w.check(r)
                for r in w.pipeline(
                    [pack("TIME"), *(pack("HGETALL", keys.stats(flow, q)) for q in queues)]
                )
            ]
        clock = int(time_reply[0]) + int(time_reply[1]) / 1e6
        now = int(clock) // 60
        out = []
        for reply in replies:
            flat = reply if isinstance(reply, list) else [x for kv in reply.items() for x in kv]
            totals = dict.fromkeys(keys.STATS_TOTALS, 0)
            per_minute: dict[str, dict[int, int]] = {"c": {}, "f": {}}
            for raw_name, raw_value in zip(flat[::2], flat[1::2], strict=True):
                name, value = raw_name.decode(), int(raw_value)
                kind, _, minute = name.partition(":")
                if kind in per_minute and minute.isdigit():
                    per_minute[kind][int(minute)] = value
                    totals["completed" if kind == "c" else "failed"] += value
                elif name in totals:
                    totals[name] += value
            span = range(now - minutes + 1, now + 1)
            out.append(
                StageStats(
                    totals,
                    [per_minute["c"].get(m, 0) for m in span],
                    [per_minute["f"].get(m, 0) for m in span],
                    clock,
                )
            )
        return out

    def trim_stats(self, flow: str, queues: Sequence[str]) -> int:
        """Fold per-minute counts older than ``keys.STATS_MINUTES`` into the totals (one
        script per stage); returns how many minute fields went."""
        if not queues:
            return 0
        oldest = int(self.server_time()) // 60 - keys.STATS_MINUTES
        s = script("trimstats")
        with self.store.wire() as w:
            packed = [w.pack_evalsha(s, (keys.stats(flow, q),), (oldest,)) for q in queues]
            replies = [w.check(r) for r in w.run_scripts([s] * len(packed), packed)]
        return sum(int(r) for r in replies)

    # -- a stage's lists, a page at a time ----------------------------------------------------

    def page(self, stage: StageKeys, state: str, start: int = 0, count: int = 50) -> Page:
        """Ids ``start`` … ``start + count - 1`` of one of the stage's lists and its length:
        two commands however long it is."""
        if state not in PAGE_STATES:
            raise ValueError(f"unknown state {state!r}; choose from {', '.join(PAGE_STATES)}")
        key = {
            "waiting": stage.waiting,
            "processing": stage.processing,
            "failed": stage.failed,
            "finished": stage.finished,
            "delayed": stage.delayed,
            "parked": stage.parked,
        }[state]
        stop = start + max(1, count) - 1
        with self.store.wire() as w:
            if state in _LISTS:
                total, ids = (
                    w.check(r)
                    for r in w.pipeline([pack("LLEN", key), pack("LRANGE", key, start, stop)])
                )
                return Page(state, int(total), start, [i.decode() for i in ids])
            total, flat = (
                w.check(r)
                for r in w.pipeline(
                    [pack("ZCARD", key), pack("ZRANGE", key, start, stop, "WITHSCORES")]
                )
            )
        if flat and isinstance(flat[0], list):  # RESP3 pairs
            flat = [x for pair in flat for x in pair]
        ids = [i.decode() for i in flat[::2]]
        return Page(state, int(total), start, ids, [float(s) for s in flat[1::2]])

    def oldest_waiting(self, stages: Sequence[StageKeys]) -> list[float | None]:
        """Per stage, how long (seconds, by the server's clock) the job at the head of its
        waiting list has waited in that stage: since its ``waiting-since:Q`` note, or, for a
        job with none (created on this stage, or pushed by the TypeScript library), since its
        UUIDv7 id's creation time. None when nothing waits, or the head has neither (a
        version 4 id). Two round trips whatever the lists hold."""
        if not stages:
            return []
        with self.store.wire() as w:
            clock, *heads = (
                w.check(r)
                for r in w.pipeline([pack("TIME"), *(pack("LINDEX", s.waiting, 0) for s in stages)])
            )
            found = [
                (stage, head.decode())
                for stage, head in zip(stages, heads, strict=True)
                if isinstance(head, bytes)
            ]
            notes = (
                w.pipeline([pack("HGET", st.job(i), st.waiting_since_field) for st, i in found])
                if found
                else []
            )
        now = int(clock[0]) + int(clock[1]) / 1e6
        entered: dict[str, float | None] = {}
        for (stage, job_id), note in zip(found, notes, strict=True):
            entered[stage.waiting] = _entered(w.check(note), job_id)
        out: list[float | None] = []
        for stage in stages:
            since = entered.get(stage.waiting)
            out.append(None if since is None else max(0.0, now - since))
        return out

    def locate(self, stages: Sequence[StageKeys], job_id: str) -> list[tuple[str, str]]:
        """Where job ``job_id`` is among the stages' lists: (stage, state) pairs, in stage
        order (one round trip; LPOS walks a list, so this is for one job, not for pages)."""
        commands = []
        for st in stages:
            commands += [
                pack("LPOS", st.waiting, job_id),
                pack("LPOS", st.processing, job_id),
                pack("ZSCORE", st.delayed, job_id),
                pack("ZSCORE", st.parked, job_id),
                pack("LPOS", st.failed, job_id),
            ]
        with self.store.wire() as w:
            replies = [w.check(r) for r in w.pipeline(commands)] if commands else []
        names = ("waiting", "processing", "delayed", "parked", "failed")
        found = []
        for i, st in enumerate(stages):
            for name, reply in zip(names, replies[i * 5 : i * 5 + 5], strict=True):
                if reply is not None:
                    found.append((st.queue, name))
        return found

    def delete_matching(self, patterns: Sequence[str], batch: int = 500) -> int:
        """Delete every key matching any of the glob ``patterns`` (SCAN, then UNLINK in
        batches): for purging a whole flow. Returns how many keys went."""
        removed = 0
        with self.store.wire() as w:
            for pattern in patterns:
                cursor = b"0"
                while True:
                    cursor, found = w.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                    for i in range(0, len(found), batch):
                        removed += int(w.call("UNLINK", *found[i : i + batch]))
                    if cursor in (b"0", 0, "0"):
                        break
        return removed

    # -- cancelling ------------------------------------------------------------------------

    @staticmethod
    def _cancel_call(stage: StageKeys, job_id: str, token: str, message: str) -> tuple[Any, Any]:
        script_keys = [
            stage.waiting,
            stage.delayed,
            stage.processing,
            stage.parked,
            keys.cancel_requests(stage.flow),
            stage.stats,
        ]
        if stage.parent_pending_field:
            script_keys += [stage.parent_waiting, stage.parent_parked]
        args = [
            job_id,
            token,
            stage.job_prefix,
            stage.lock_prefix,
            stage.queue_json,
            json.dumps(message, ensure_ascii=False),
            stage.done_channel,
            stage.parent_pending_field,
            stage.lease_field,
        ]
        return script_keys, args

    def cancel(self, stages: Sequence[StageKeys], job_id: str, message: str) -> tuple[str, str]:
        """Cancel job ``job_id`` wherever it is among ``stages`` (one round trip): returns
        (outcome, stage name) — outcome ``cancelled`` (it was waiting, delayed or parked),
        ``running`` (its node is asked to stop it) or ``absent``."""
        s = script("cancel")
        with self.store.wire() as w:
            packed = [
                w.pack_evalsha(s, *self._cancel_call(st, job_id, "", message)) for st in stages
            ]
            replies = [w.check(r) for r in w.run_scripts([s] * len(packed), packed)]
        for stage, reply in zip(stages, replies, strict=True):
            outcome = reply.decode() if isinstance(reply, bytes) else str(reply)
            if outcome != "absent":
                return outcome, stage.queue
        return "absent", ""

    def cancel_held(self, stage: StageKeys, job_id: str, token: str, message: str) -> str:
        """Finish the cancel of a running job whose worker was stopped: ``cancelled``, or
        ``lost`` when the lease ``token`` no longer holds it."""
        with self.store.wire() as w:
            reply = w.evalsha(script("cancel"), *self._cancel_call(stage, job_id, token, message))
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def cancel_requests(self, flow: str) -> set[str]:
        """Ids of running jobs an operator asked to cancel."""
        with self.store.wire() as w:
            return {m.decode() for m in w.call("SMEMBERS", keys.cancel_requests(flow))}
