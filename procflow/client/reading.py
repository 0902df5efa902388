"""Reading a flow's jobs: by id, by lookup attribute, with their children; deleting them — and
the sync driver of the client core.

What each operation sends and how it reads the replies is ``core.ClientCore``'s (shared with
``AsyncFlow``); :meth:`JobReads.drive` runs an operation's rounds on the parts' sync stores, a
round's partitions side by side (on a cluster each partition is its own shard). ``Flow``
inherits these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, cast

from typing_extensions import TypeVar

from ..partitions import Part, Partitioning, for_each
from .core import Call, ClientCore, Operation

__all__ = ["JobReads"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
T = TypeVar("T")


class JobReads(Generic[JobT, LookupT]):
    """The reading half of a Flow, and its driver of ``core`` operations."""

    parts: tuple[Part, ...]
    partitioning: Partitioning | None
    #: the flow's job operations without I/O (made again when the flow changes servers)
    core: ClientCore

    @property
    def lookup_attributes(self) -> tuple[LookupT, ...]:
        return self.core.lookup_attributes  # type: ignore[return-value]

    # -- the driver ----------------------------------------------------------------------

    def drive(self, operation: Operation[T]) -> T:
        """Run a ``core`` operation: each round's store calls on the parts' stores, side by
        side, their results sent back; the operation's result returned."""
        try:
            step = next(operation)
            while True:
                step = operation.send(for_each(step.calls, self._caller(step.capture)))
        except StopIteration as stop:
            return cast(T, stop.value)

    def _caller(self, capture: bool) -> Callable[[Call], Any]:
        def call(c: Call) -> Any:
            try:
                return getattr(self.parts[c.part].store, c.method)(*c.args)
            except Exception as exc:  # with capture: the round's outcome, settled by the core
                if capture:
                    return exc
                raise

        return call

    # -- partitions ----------------------------------------------------------------------

    def locate(self, job_ids: Sequence[str]) -> dict[str, Part]:
        """Job id → the partition holding it (one EXISTS per id and partition, the
        partitions side by side); ids found nowhere are left out."""
        return self.drive(self.core.locate(job_ids))

    def part_of(self, job_id: str) -> Part | None:
        """The partition that holds job ``job_id`` (None when there is no such job)."""
        return self.locate([job_id]).get(job_id)

    # -- reading ---------------------------------------------------------------------------

    def decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        """A raw job hash (HGETALL) decoded, with its ``"id"``."""
        return self.core.decode(key, job_id, raw)

    def get_job(self, job_id: str) -> JobT | None:
        """The decoded job hash with its ``"id"``, or None when there is no such job."""
        found = self.get_jobs([job_id])
        return found[0] if found else None

    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip; a partitioned flow's partitions side by
        side), skipping ids whose hash is gone."""
        return self.drive(self.core.get_jobs(job_ids, resolve_children))  # type: ignore[arg-type]

    def jobs_in(
        self, part: Part, job_ids: Sequence[str], resolve_children: bool = False
    ) -> list[JobT]:
        """``get_jobs`` of the jobs of one partition (one round trip)."""
        return self.drive(self.core.jobs_in(part, job_ids, resolve_children))  # type: ignore[arg-type]

    def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first (of a
        partitioned flow: every partition's, read side by side, partition by partition).
        With ``resolve_children``, every ``children:Q:jobs`` field holds the child jobs."""
        operation = self.core.get_jobs_by_key(key, value, resolve_children)
        return self.drive(operation)  # type: ignore[arg-type]

    def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        return self.drive(self.core.delete_job(job_id))
