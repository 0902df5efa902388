"""A decoded job's bookkeeping fields, read by what they mean.

The operator's views (``procflow job``, ``jobs``, the dashboard) read a job as a mapping of
decoded fields. Which of those fields are procflow's bookkeeping and how they are named
(``attempts:Q``, ``errors:Q``, ``lease:Q``, ``children:Q:jobs`` …) is the store's knowledge
(``keys``); these functions answer the questions the views ask — how many attempts in stage
Q, its errors, is a lease holding it, which children failed — so no view spells a field name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from . import keys

__all__ = [
    "attempts",
    "errors",
    "errors_anywhere",
    "failed_children",
    "is_bookkeeping",
    "is_leased",
    "own_fields",
    "parent_id",
    "pending_children",
    "stage_of_child",
    "stage_records",
]


def is_bookkeeping(name: str) -> bool:
    """Whether field ``name`` is procflow's (or the TypeScript library's) bookkeeping rather
    than one of the job's own options or results."""
    return keys.is_reserved(name)


def own_fields(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's own fields: its options and results, without the bookkeeping."""
    return {k: v for k, v in job.items() if not keys.is_reserved(k)}


def attempts(job: Mapping[str, Any], queue: str) -> Any:
    """How many times stage ``queue`` leased the job (0 when it never did)."""
    return job.get(keys.attempts_field(queue), 0)


def errors(job: Mapping[str, Any], queue: str) -> list[Any]:
    """The job's failures in stage ``queue``, oldest first ([] when none)."""
    value = job.get(keys.errors_field(queue))
    return value if isinstance(value, list) else []


def errors_anywhere(job: Mapping[str, Any]) -> Iterator[list[Any]]:
    """The job's failure lists of every stage, in field order."""
    for name, value in job.items():
        if name.startswith(keys.ERRORS_PREFIX) and isinstance(value, list):
            yield value


def is_leased(job: Mapping[str, Any], queue: str) -> bool:
    """Whether a lease of stage ``queue`` holds the job (its ``lease:Q`` note is there)."""
    return keys.lease_field(queue) in job


def pending_children(job: Mapping[str, Any], queue: str) -> int:
    """How many children of the job's fan-out in stage ``queue`` are not done yet."""
    value = job.get(keys.children_pending_field(queue))
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def failed_children(job: Mapping[str, Any]) -> list[str]:
    """The keys of the job's failed children, over every stage it fanned out in."""
    return keys.failed_children(job)


def parent_id(job: Mapping[str, Any]) -> str | None:
    """A child job's parent's id (from its ``parentJob`` key); None for any other job."""
    parent = job.get(keys.PARENT_JOB)
    split = keys.split_job_key(parent) if isinstance(parent, str) else None
    return split[1] if split else None


def stage_of_child(child: Mapping[str, Any], parent_queue: str) -> str:
    """The queue of a child job of ``parent_queue``: where it failed or last completed,
    else the child queue it has attempts in, else the parent's queue."""
    for name in (keys.FAILED_QUEUE, keys.COMPLETED_QUEUE):
        if isinstance(child.get(name), str):
            return str(child[name])
    prefix = keys.attempts_field(keys.child_queue(parent_queue, ""))
    for name in child:
        if name.startswith(prefix):
            return name[len(keys.ATTEMPTS_PREFIX) :]
    return parent_queue


def stage_records(name: str) -> tuple[str, str] | None:
    """What a job field records per stage: (``errors`` | ``attempts`` | ``children``, the
    stage's name) for ``errors:Q``, ``attempts:Q`` and a parent's ``children:Q:jobs``;
    None for any other field."""
    if name.startswith(keys.ERRORS_PREFIX):
        return "errors", name[len(keys.ERRORS_PREFIX) :]
    if name.startswith(keys.ATTEMPTS_PREFIX):
        return "attempts", name[len(keys.ATTEMPTS_PREFIX) :]
    if keys.is_children_jobs_field(name):
        return "children", name[len("children:") : -len(":jobs")]
    return None
