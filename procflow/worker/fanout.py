"""Fan-out and fan-in for a stage with children.

A parent worker leases a parent job, creates its child jobs from ``children:Q:params`` and
parks the parent (one atomic script, done once), then is free for other jobs. The last child
to finish puts the parent back on its stage's waiting list; a parent worker leases it again,
finds every child done, and acts on the stage's ``on_child_failure`` policy: with every child
succeeded, or under ``continue``, it passes the parent on; under ``mark`` it passes it on
with ``children:Q:failed`` listing the children that failed; under ``fail`` (the default) a
failed child fails the parent, with the same list. A parent never occupies a worker while
its children run, and nothing polls.

``ParentStep`` is that step for one leased parent job: it makes the fan-out and fan-in calls
and says what the loop does next (``Parked``, ``PassOn``, ``FailParent``); the loop writes
the completion or the failure as for any job. The rest here is pure: planning the children,
reading their state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import DecodeError, EncodeError, ParentError
from ..failures import RetryPolicy
from ..ids import uuid7_batch
from ..store import keys
from ..store.keys import StageKeys
from ..store.records import Lease
from ..store.session import (
    ChildJob,
    child_job,
    children_failure_message,
    children_state,
    decoded,
)

if TYPE_CHECKING:
    from loguru import Logger

    from .partition import ServedPartition

__all__ = [
    "ChildPlan",
    "FailParent",
    "ParentStep",
    "Parked",
    "PassOn",
    "child_keys_of",
    "children_failure_message",
    "children_state",
    "plan_children",
]


@dataclass(frozen=True)
class ChildPlan:
    """The child jobs to create for one parent."""

    children: list[ChildJob]
    jobs_json: str


def plan_children(
    parent_queue: str, params: Any, child_stages: Mapping[str, StageKeys]
) -> ChildPlan:
    """Child jobs for ``params`` (the decoded ``children:Q:params``): each object needs a
    ``childName`` naming one of the stage's child queues; its other fields become the child
    job's fields. Raises ParentError with a message fit for ``failedErrorMsg``."""
    field = keys.children_params_field(parent_queue)
    if params is None:
        params = []
    if not isinstance(params, list):
        raise ParentError(f"{field} must be a list of objects, got {type(params).__name__}")
    ids = uuid7_batch(len(params))
    children: list[ChildJob] = []
    for n, (param, child_id) in enumerate(zip(params, ids, strict=True)):
        if not isinstance(param, dict):
            raise ParentError(f"{field}[{n}] must be an object, got {type(param).__name__}")
        name = param.get("childName")
        if not isinstance(name, str) or name not in child_stages:
            known = ", ".join(child_stages)
            raise ParentError(
                f"{field}[{n}]: childName {name!r} is not a child queue of {parent_queue!r} "
                f"(its children: {known})"
            )
        stage = child_stages[name]
        try:
            fields = codec.encode_fields(
                {k: v for k, v in param.items() if k != "childName"}, "child field"
            )
        except EncodeError as exc:  # pragma: no cover - params were decoded from JSON
            raise ParentError(f"{field}[{n}]: {exc}") from None
        children.append(child_job(stage, child_id, fields))
    return ChildPlan(children, codec.encode([c[1] for c in children]))


def child_keys_of(field: str, value: Any) -> list[str]:
    """A decoded ``children:Q:jobs`` value, checked: a list of job keys."""
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ParentError(f"{field} must be a list of job keys")
    return value


@dataclass(frozen=True)
class Parked:
    """Nothing to write: the parent waits for its children (created now, or still running),
    or its lease was lost."""


@dataclass(frozen=True)
class PassOn:
    """Complete the parent with these result fields: it goes on to its stage's next
    queue."""

    fields: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class FailParent:
    """Fail the attempt (kind ``children``) under ``policy`` (None: the queue's), writing
    ``final_fields`` if it fails for good."""

    message: str
    policy: RetryPolicy | None = None
    final_fields: tuple[tuple[str, str], ...] = ()


#: what a parent job's step leaves the loop to do
ParentVerdict = Parked | PassOn | FailParent
_PARKED = Parked()
#: a parent whose children are done and some failed, under ``fail``: no retry
_FOR_GOOD = RetryPolicy(max_attempts=1, max_stalls=0)


class ParentStep:
    """The step of a parent stage's job: fan out once (create the children, park the
    parent); when the parent comes back with every child done, act on the stage's
    ``on_child_failure`` policy. ``key_ttl``: the children's keys' time to live."""

    def __init__(self, key_ttl: int, log: Logger, debug: bool = False) -> None:
        self.key_ttl = key_ttl
        self.log = log
        self._debug = debug

    def run(self, lease: Lease, where: ServedPartition) -> ParentVerdict:
        """Step parent job ``lease`` of partition ``where`` (its calls through the
        partition's retrier)."""
        call, session = where.retrier.call, where.session
        stage, stage_keys = where.stage, where.keys
        queue = stage.name
        jobs_field = stage_keys.children_jobs_field
        failed_field = stage_keys.children_failed_field.encode()
        policy = stage.spec.on_child_failure
        try:
            raw_params, raw_jobs = lease.values[0], lease.values[1]
            if raw_jobs is None:
                params_field = stage_keys.children_params_field
                params = (
                    None
                    if raw_params is None
                    else decoded(stage_keys, lease.id, params_field, raw_params)
                )
                plan = plan_children(queue, params, where.child_stages)
                if not plan.children:  # children:Q:jobs = [] as the TypeScript library writes
                    empty = [(jobs_field.encode(), b"[]")]
                    if policy != "continue":
                        empty.append((failed_field, b"[]"))
                    return PassOn(empty)
                ttl = self.key_ttl
                status = call(
                    lambda: session.spawn_children(
                        lease.id, lease.token, plan.children, plan.jobs_json, ttl
                    )
                )
                if status in (0, 1):
                    if status == 1 and self._debug:
                        self.log.bind(job=lease.id).debug(
                            "created {} child jobs; parent parked", len(plan.children)
                        )
                    if status == 0:
                        self.log.bind(job=lease.id).warning("lease on parent job {} lost", lease.id)
                    return _PARKED
                raw_jobs = call(lambda: session.children_jobs(lease.id)) or b"[]"
            child_keys = child_keys_of(
                jobs_field, decoded(stage_keys, lease.id, jobs_field, raw_jobs)
            )
        except (DecodeError, ParentError) as exc:
            return FailParent(str(exc))
        replies = call(lambda: session.children_status(child_keys))
        assert replies is not None
        all_done, failed = children_state(child_keys, replies)
        if not all_done:
            call(lambda: session.park(lease.id, lease.token))
            return _PARKED
        if policy == "continue":  # as the TypeScript library's ParentWorker: nothing written
            return PassOn([])
        failed_json = codec.encode(failed)
        if failed and policy == "fail":  # no retry: its children are done, and stay failed
            return FailParent(
                children_failure_message(child_keys, replies, failed),
                _FOR_GOOD,
                ((failed_field.decode(), failed_json),),
            )
        return PassOn([(failed_field, failed_json.encode())])
