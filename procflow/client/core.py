"""The client's core: every job operation of ``Flow`` and ``AsyncFlow`` written once, without I/O.

A ``ClientCore`` knows a flow's partitions (their names and definitions, not their
connections) and turns each operation — create, read by id or by lookup attribute (with the
children), delete, counts, the failed lists — into :data:`Operation`: a generator that
yields :class:`Round` s of store calls (each on one partition's store, the calls of a round
run side by side) and is sent their results; it returns the operation's result. The checks
and the encoding (``prepare``), the decoding of a job hash and the walk through its children
are here too.

The drivers only run rounds: ``Flow`` (``reading.JobReads.drive``) on the partitions' sync
Stores, a round's partitions on threads (``partitions.for_each``); ``AsyncFlow``
(``aio.AsyncFlow.drive``) on its AsyncStores with ``asyncio.gather``. A store call names a
method that ``store.redis.Store`` and ``store.aio.AsyncStore`` both have (and that sends the
same bytes in both: ``store/plans.py``), so the two clients send the same commands for every
operation by construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import codec
from ..definition import Stage
from ..errors import ConfigurationError, EncodeError, UnknownLookupAttributeError
from ..ids import uuid7_batch
from ..partitions import Partition, Partitioning, settle_creates, summed_counts
from ..store import keys
from ..store.records import NewJob

__all__ = ["Call", "ClientCore", "Operation", "Round", "child_refs"]

T = TypeVar("T")

#: a job as a read returns it (None: its hash is gone)
Found = dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Call:
    """One store call: ``method(*args)`` on partition ``part``'s store (a method the sync
    and the async store both have)."""

    partition: int
    method: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Round:
    """Store calls run side by side; their results come back in order. With ``capture``,
    a call that raised gives its exception as its result (the round's others still run).
    ``inline``: a lone call is run in the caller's own task by the async driver, so that
    its request is sent whole before the caller can be cancelled (writes); else it runs as
    a task of its own, as a round of several does."""

    calls: Sequence[Call]
    capture: bool = False
    inline: bool = False


#: a client operation: yields rounds, is sent their results, returns its result
Operation = Generator[Round, list[Any], T]


def child_refs(job: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each ``children:Q:jobs`` field of a job, with its child jobs as (key, id)."""
    out = []
    for name, value in job.items():
        if keys.is_children_jobs_field(name) and isinstance(value, list):
            refs = []
            for key in value:
                split = keys.split_job_key(key) if isinstance(key, str) else None
                if split is not None:
                    refs.append((key, split[1]))
            out.append((name, refs))
    return out


class ClientCore:
    """A flow's job operations without I/O, over its partitions (one for an unpartitioned
    flow). Made by the Flow for its partitions (again when it is pointed at another server)."""

    def __init__(
        self,
        partitions: tuple[Partition, ...],
        partitioning: Partitioning,
        pick: Callable[[Mapping[str, Any]], int],
        max_value_bytes: int,
        key_ttl: int,
    ) -> None:
        self.partitions = partitions
        self.partitioning = partitioning
        self._pick = pick
        self._max_value_bytes = max_value_bytes
        self.key_ttl = key_ttl

    @property
    def lookup_attributes(self) -> tuple[str, ...]:
        return self.partitions[0].definition.lookup_attributes

    # -- partitions ----------------------------------------------------------------------

    def partition_of_key(self, key: str) -> Partition:
        """The partition a key belongs to, by its hash tag."""
        return self.partitions[self.partitioning.index_of(key)]

    def locate(self, job_ids: Sequence[str]) -> Operation[dict[str, Partition]]:
        """Job id → the partition holding it (one EXISTS per id and partition, the
        partitions side by side); ids found nowhere are left out."""
        probes = [[keys.job(p.name, i) for i in job_ids] for p in self.partitions]
        flags = yield Round([Call(n, "exists_many", (ks,)) for n, ks in enumerate(probes)])
        found: dict[str, Partition] = {}
        for part, there in zip(self.partitions, flags, strict=True):
            for job_id, flag in zip(job_ids, there, strict=True):
                if flag:
                    found.setdefault(job_id, part)
        return found

    # -- creating ------------------------------------------------------------------------

    def prepare(self, options: Mapping[str, Any], job_id: str) -> NewJob:
        """One job checked and encoded (EncodeError says what cannot be stored), in the
        partition it goes to."""
        part = self.partitions[self._pick(options)]
        if part.renames:  # children:Q:params under the partition's name
            options = {part.renames.get(k, k): v for k, v in options.items()}
        fields = codec.encode_fields(options, max_bytes=self._max_value_bytes)
        reserved = [k for k in options if keys.is_reserved(k)]
        if reserved:
            raise EncodeError(
                f"option {reserved[0]!r}",
                "is a field procflow keeps itself (the job's id, done, the fail fields and "
                "the stage bookkeeping); name it differently",
            )
        if not fields:
            raise EncodeError(
                "options", "a job needs at least one field (a Redis hash cannot be empty)"
            )
        waiting = part.definition.first_stage.keys.waiting
        key = keys.job(part.name, job_id)
        return NewJob(job_id, key, fields, self.lookup_keys(part, options), waiting)

    def prepare_many(self, many: Iterable[Mapping[str, Any]]) -> list[NewJob]:
        """Every job checked and encoded, before anything is written: one bad job raises
        EncodeError naming it."""
        items = list(many)
        jobs = []
        for n, (options, job_id) in enumerate(zip(items, uuid7_batch(len(items)), strict=True)):
            try:
                jobs.append(self.prepare(options, job_id))
            except EncodeError as exc:
                raise EncodeError(f"job {n}: {exc.where}", exc.problem) from None
        return jobs

    def create(self, jobs: list[NewJob]) -> Operation[list[str]]:
        """Write prepared jobs, each partition's in one pipeline, side by side; a refusal
        part way raises CreateJobsError (``partitions.settle_creates``)."""
        if not jobs:
            return []
        groups: dict[int, list[NewJob]] = {}
        for job in jobs:
            groups.setdefault(self.partition_of_key(job.key).index, []).append(job)
        calls = [Call(n, "create_jobs", (group, self.key_ttl)) for n, group in groups.items()]
        if len(calls) == 1:
            yield Round(calls, inline=True)
        else:
            results = yield Round(calls, capture=True)
            settle_creates(
                jobs,
                list(groups.values()),
                [r if isinstance(r, Exception) else None for r in results],
            )
        return [job.id for job in jobs]

    # -- reading -------------------------------------------------------------------------

    def lookup_keys(self, part: Partition, values: Mapping[str, Any]) -> list[str]:
        return [
            keys.lookup(part.name, attr, text)
            for attr in self.lookup_attributes
            if attr in values
            for text in codec.lookup_texts(values[attr])
        ]

    def lookup_text(self, key: str, value: object) -> str:
        """The lookup list's text for ``value`` of attribute ``key``, both checked."""
        if key not in self.lookup_attributes:
            raise UnknownLookupAttributeError(str(key), list(self.lookup_attributes))
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ConfigurationError(
                f"a lookup value must be a string, number, boolean or None, got a "
                f"{type(value).__name__}"
            )
        return codec.lookup_text(value)

    def decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        """A raw job hash (HGETALL) decoded, with its ``"id"``."""
        job: dict[str, Any] = {keys.ID: job_id}
        shown = self.partitioning.shown
        for f, v in raw.items():
            name = shown(f.decode())
            if name != keys.ID:  # written by another library: the real id wins
                job[name] = codec.decode_field(key, name, v)
        return job

    def fetch(self, refs: Sequence[tuple[str, str]], resolve: bool) -> Operation[list[Found]]:
        """Jobs by (key, id), aligned with ``refs``; None where the hash is gone. HGETALL
        of every key, each from its partition (the partitions side by side); with
        ``resolve``, the children too (one round per level of nesting)."""
        if not refs:
            return []
        hash_keys = [key for key, _ in refs]
        by_partition: dict[int, list[int]] = {}
        for n, key in enumerate(hash_keys):
            by_partition.setdefault(self.partition_of_key(key).index, []).append(n)
        groups = list(by_partition.items())
        got = yield Round(
            [Call(index, "get_hashes", ([hash_keys[n] for n in ns],)) for index, ns in groups]
        )
        raws: list[Mapping[bytes, bytes]] = [{} for _ in hash_keys]
        for (_, ns), replies in zip(groups, got, strict=True):
            for n, raw in zip(ns, replies, strict=True):
                raws[n] = raw
        jobs = [
            self.decode(key, job_id, raw) if raw else None
            for (key, job_id), raw in zip(refs, raws, strict=True)
        ]
        if resolve:
            yield from self.resolve_children([j for j in jobs if j is not None])
        return jobs

    def resolve_children(self, jobs: list[dict[str, Any]]) -> Operation[None]:
        """Replace each ``children:Q:jobs`` list of keys by the child jobs."""
        wanted = [(job, name, refs) for job in jobs for name, refs in child_refs(job)]
        if not wanted:
            return
        unique = list(dict.fromkeys(ref for _, _, refs in wanted for ref in refs))
        found = yield from self.fetch(unique, resolve=True)
        by_ref = {ref: child for ref, child in zip(unique, found, strict=True) if child is not None}
        for job, name, refs in wanted:
            job[name] = [by_ref[r] for r in refs if r in by_ref]

    def get_jobs(self, job_ids: Sequence[str], resolve: bool) -> Operation[list[dict[str, Any]]]:
        """Each id's job, read in every partition at once, where it was found; ids whose
        hash is gone are skipped."""
        k = len(self.partitions)
        refs = [(keys.job(p.name, i), i) for i in job_ids for p in self.partitions]
        jobs = yield from self.fetch(refs, resolve)
        out = [next((j for j in jobs[n : n + k] if j), None) for n in range(0, len(jobs), k)]
        return [j for j in out if j is not None]

    def jobs_in(
        self, part: Partition, job_ids: Sequence[str], resolve: bool
    ) -> Operation[list[dict[str, Any]]]:
        """``get_jobs`` of the jobs of one partition."""
        jobs = yield from self.fetch([(keys.job(part.name, i), i) for i in job_ids], resolve)
        return [j for j in jobs if j is not None]

    def get_jobs_by_key(
        self, key: str, value: object, resolve: bool
    ) -> Operation[list[dict[str, Any]]]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first (partition by
        partition, the lists read side by side)."""
        text = self.lookup_text(key, value)
        lists = [keys.lookup(p.name, key, text) for p in self.partitions]
        listed = yield Round([Call(n, "list_range", (k,)) for n, k in enumerate(lists)])
        refs = [
            (keys.job(p.name, i), i)
            for p, ids in zip(self.partitions, listed, strict=True)
            for i in ids
        ]
        jobs = yield from self.fetch(refs, resolve)
        return [j for j in jobs if j is not None]

    # -- deleting, counting, the failed lists --------------------------------------------

    def delete_job(self, job_id: str) -> Operation[bool]:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. False when there was no such job."""
        if len(self.partitions) == 1:
            part: Partition | None = self.partitions[0]
        else:
            part = (yield from self.locate([job_id])).get(job_id)
        if part is None:
            return False
        key = keys.job(part.name, job_id)
        [[raw]] = yield Round([Call(part.index, "get_hashes", ([key],))], inline=True)
        if not raw:
            return False
        job = self.decode(key, job_id, raw)
        for _, refs in child_refs(job):
            for child_key, child_id in refs:
                stages = part.definition.stages_of_job(child_key)
                call = Call(part.index, "delete_job", (child_key, child_id, (), stages))
                yield Round([call], inline=True)
        top = [s.keys for s in part.definition.top_stages]
        lookups = self.lookup_keys(part, job)
        yield Round([Call(part.index, "delete_job", (key, job_id, lookups, top))], inline=True)
        return True

    def counts(self) -> Operation[dict[str, dict[str, int]]]:
        """Per queue: waiting, processing, delayed, parked and failed (summed over the
        partitions, by the queue names given)."""
        stages = [list(p.definition.stages.values()) for p in self.partitions]
        counted = yield Round(
            [Call(n, "counts", ([s.keys for s in ss],)) for n, ss in enumerate(stages)]
        )
        named = [
            (s.name, c)
            for ss, cs in zip(stages, counted, strict=True)
            for s, c in zip(ss, cs, strict=True)
        ]
        return summed_counts(named, self.partitioning)

    def set_paused(self, stages: Sequence[Stage], pause: bool) -> Operation[None]:
        """Pause (or resume) a stage in every partition (``stages``: the queue in each):
        ``queue:Q:paused`` written (or deleted), one write per partition, side by side."""
        note = json.dumps({"at": int(time.time() * 1000)}) if pause else None
        yield Round([Call(n, "set_paused", ([st.keys], note)) for n, st in enumerate(stages)])

    def paused(self) -> Operation[dict[str, bool]]:
        """Per queue (by the names given): whether it is paused (in every partition)."""
        stages = [list(p.definition.stages.values()) for p in self.partitions]
        found = yield Round(
            [Call(n, "paused", ([s.keys for s in ss],)) for n, ss in enumerate(stages)]
        )
        out: dict[str, bool] = {}
        for ss, flags in zip(stages, found, strict=True):
            for stage, flag in zip(ss, flags, strict=True):
                name = self.partitioning.short(stage.name)
                out[name] = out.get(name, True) and flag
        return out

    def failed_jobs(self, stages: Sequence[Stage], start: int, stop: int) -> Operation[list[str]]:
        """Ids on a queue's failed lists (``stages``: the queue in every partition), oldest
        first, partition by partition; ids whose job hash has expired are dropped from the
        lists first."""
        single = len(stages) == 1
        yield Round([Call(n, "prune_failed", ([st.keys],)) for n, st in enumerate(stages)])
        window = (start, stop) if single else (0, -1)
        found = yield Round(
            [Call(n, "list_range", (st.keys.failed, *window)) for n, st in enumerate(stages)]
        )
        ids = [i for got in found for i in got]
        return ids if single else ids[start : None if stop == -1 else stop + 1]

    def retry_failed(
        self, stages: Sequence[Stage], job_ids: Sequence[str] | None
    ) -> Operation[list[str]]:
        """Failed jobs (all of the queue's, or the given ids) back on its waiting lists with
        a fresh attempt count; the ids moved."""
        ids = list(job_ids) if job_ids is not None else (yield from self.failed_jobs(stages, 0, -1))
        moved = yield Round([Call(n, "revive", (st.keys, ids)) for n, st in enumerate(stages)])
        return [i for got in moved for i in got]
