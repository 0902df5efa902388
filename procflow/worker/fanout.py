"""Fan-out and fan-in for a stage with children.

A parent worker leases a parent job, creates its child jobs from ``children:Q:params`` and
parks the parent (one atomic script, done once), then is free for other jobs. The last child
to finish puts the parent back on its stage's waiting list; a parent worker leases it again,
finds every child done, and acts on the stage's ``on_child_failure`` policy: with every child
succeeded, or under ``continue``, it passes the parent on; under ``mark`` it passes it on
with ``children:Q:failed`` listing the children that failed; under ``fail`` (the default) a
failed child fails the parent, with the same list. A parent never occupies a worker while
its children run, and nothing polls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..errors import EncodeError, ParentError
from ..ids import uuid7_batch
from ..store import keys
from ..store.keys import StageKeys
from ..store.session import ChildJob, child_job, children_failure_message, children_state

__all__ = [
    "ChildPlan",
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
