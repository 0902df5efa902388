"""Reading a flow's jobs: by id, by lookup attribute, with their children; deleting them.

A partitioned flow's jobs are read from every partition side by side (on a cluster each
partition is its own shard), each key from the partition its hash tag names. ``Flow``
inherits these; they touch Redis only through the parts' stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic

from typing_extensions import TypeVar

from . import codec
from .errors import ConfigurationError, UnknownLookupAttributeError
from .partitions import Part, Partitioning, for_each
from .store import keys
from .store.slots import hash_tag

__all__ = ["JobReads"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)


class JobReads(Generic[JobT, LookupT]):
    """The reading half of a Flow."""

    parts: tuple[Part, ...]
    partitioning: Partitioning | None

    @property
    def lookup_attributes(self) -> tuple[LookupT, ...]:
        return self.parts[0].definition.lookup_attributes  # type: ignore[return-value]

    # -- partitions ----------------------------------------------------------------------

    def _part_of_key(self, key: str) -> Part:
        """The partition a key belongs to, by its hash tag."""
        if self.partitioning is None:
            return self.parts[0]
        base, _, index = hash_tag(key).rpartition("#")
        if base == self.partitioning.base and index.isdigit() and int(index) < len(self.parts):
            return self.parts[int(index)]
        return self.parts[0]

    def locate(self, job_ids: Sequence[str]) -> dict[str, Part]:
        """Job id → the partition holding it (one EXISTS per id and partition, the
        partitions side by side); ids found nowhere are left out."""

        def probe(part: Part) -> list[bool]:
            return part.store.exists_many([keys.job(part.name, i) for i in job_ids])

        found: dict[str, Part] = {}
        for part, flags in zip(self.parts, for_each(self.parts, probe), strict=True):
            for job_id, flag in zip(job_ids, flags, strict=True):
                if flag:
                    found.setdefault(job_id, part)
        return found

    def part_of(self, job_id: str) -> Part | None:
        """The partition that holds job ``job_id`` (None when there is no such job)."""
        return self.locate([job_id]).get(job_id)

    # -- reading ---------------------------------------------------------------------------

    def _lookup_keys(self, part: Part, values: Mapping[str, Any]) -> list[str]:
        return [
            keys.lookup(part.name, attr, text)
            for attr in self.lookup_attributes
            if attr in values
            for text in codec.lookup_texts(values[attr])
        ]

    def decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        """A raw job hash (HGETALL) decoded, with its ``"id"``."""
        return self._decode(key, job_id, raw)

    def _decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        job: dict[str, Any] = {keys.ID: job_id}
        shown = self.partitioning.shown if self.partitioning is not None else None
        for f, v in raw.items():
            name = f.decode() if shown is None else shown(f.decode())
            if name != keys.ID:  # written by another library: the real id wins
                job[name] = codec.decode_field(key, name, v)
        return job

    def _hashes(self, hash_keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL of every key, each from its partition (the partitions side by side)."""
        if len(self.parts) == 1:
            return self.parts[0].store.get_hashes(hash_keys)
        by_part: dict[int, list[int]] = {}
        for n, key in enumerate(hash_keys):
            by_part.setdefault(self._part_of_key(key).index, []).append(n)
        out: list[dict[bytes, bytes]] = [{} for _ in hash_keys]

        def read(group: tuple[int, list[int]]) -> list[dict[bytes, bytes]]:
            return self.parts[group[0]].store.get_hashes([hash_keys[n] for n in group[1]])

        groups = list(by_part.items())
        for (_, ns), raws in zip(groups, for_each(groups, read), strict=True):
            for n, raw in zip(ns, raws, strict=True):
                out[n] = raw
        return out

    def _fetch(self, refs: Sequence[tuple[str, str]], resolve: bool) -> list[dict[str, Any] | None]:
        """Jobs by (key, id), aligned with ``refs``; None where the hash is gone."""
        raws = self._hashes([key for key, _ in refs])
        jobs = [
            self._decode(key, job_id, raw) if raw else None
            for (key, job_id), raw in zip(refs, raws, strict=True)
        ]
        if resolve:
            self._resolve_children([j for j in jobs if j is not None])
        return jobs

    @staticmethod
    def _child_refs(job: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
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

    def _resolve_children(self, jobs: list[dict[str, Any]]) -> None:
        """Replace each ``children:Q:jobs`` list of keys by the child jobs (one round trip
        per level of nesting)."""
        wanted = [(job, name, refs) for job in jobs for name, refs in self._child_refs(job)]
        if not wanted:
            return
        unique = list(dict.fromkeys(ref for _, _, refs in wanted for ref in refs))
        found = self._fetch(unique, resolve=True)
        by_ref = {ref: child for ref, child in zip(unique, found, strict=True) if child is not None}
        for job, name, refs in wanted:
            job[name] = [by_ref[r] for r in refs if r in by_ref]

    def get_job(self, job_id: str) -> JobT | None:
        """The decoded job hash with its ``"id"``, or None when there is no such job."""
        found = self.get_jobs([job_id])
        return found[0] if found else None

    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip; a partitioned flow's partitions side by
        side), skipping ids whose hash is gone."""
        jobs = self._fetch(self._refs_everywhere(job_ids), resolve_children)
        return self._found(jobs)  # type: ignore[return-value]

    def _refs_everywhere(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(key, id) of each id in every partition, partition after partition per id."""
        return [(keys.job(p.name, i), i) for i in job_ids for p in self.parts]

    def _found(self, jobs: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
        """From reads made by ``_refs_everywhere``: each id's job where it was found."""
        k = len(self.parts)
        out = [next((j for j in jobs[n : n + k] if j), None) for n in range(0, len(jobs), k)]
        return [j for j in out if j is not None]

    def _lookup_text(self, key: str, value: object) -> str:
        """The lookup list's text for ``value`` of attribute ``key``, both checked."""
        if key not in self.lookup_attributes:
            raise UnknownLookupAttributeError(str(key), list(self.lookup_attributes))
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ConfigurationError(
                f"a lookup value must be a string, number, boolean or None, got a "
                f"{type(value).__name__}"
            )
        return codec.lookup_text(value)

    def jobs_in(
        self, part: Part, job_ids: Sequence[str], resolve_children: bool = False
    ) -> list[JobT]:
        """``get_jobs`` of the jobs of one partition (one round trip)."""
        jobs = self._fetch([(keys.job(part.name, i), i) for i in job_ids], resolve_children)
        return [j for j in jobs if j is not None]  # type: ignore[misc]

    def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first (of a
        partitioned flow: every partition's, read side by side, partition by partition).
        With ``resolve_children``, every ``children:Q:jobs`` field holds the child jobs."""
        text = self._lookup_text(key, value)

        def listed(part: Part) -> list[tuple[str, str]]:
            ids = part.store.list_range(keys.lookup(part.name, key, text))
            return [(keys.job(part.name, i), i) for i in ids]

        refs = [ref for refs in for_each(self.parts, listed) for ref in refs]
        jobs = self._fetch(refs, resolve_children)
        return [j for j in jobs if j is not None]  # type: ignore[misc]

    def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        part = self.parts[0] if len(self.parts) == 1 else self.part_of(job_id)
        if part is None:
            return False
        key = keys.job(part.name, job_id)
        raw = part.store.get_hashes([key])[0]
        if not raw:
            return False
        job = self._decode(key, job_id, raw)
        for _, refs in self._child_refs(job):
            for child_key, child_id in refs:
                child_stages = part.definition.stages_of_job(child_key)
                part.store.delete_job(child_key, child_id, (), child_stages)
        top = [s.keys for s in part.definition.top_stages]
        part.store.delete_job(key, job_id, self._lookup_keys(part, job), top)
        return True
