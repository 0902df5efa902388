"""A flow's definition: its stages, their names and policies. Pure data, no Redis.

``QueueSpec`` is what a user writes; ``Stage`` is a queue of a flow resolved
(full name, key names, the fields a lease reads, its retry policy); ``FlowDefinition``
is the whole set, checked once. Everything a worker process needs to know about its stage
comes from here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, get_args

from typing_extensions import TypeVar

from .errors import ConfigurationError, UnknownQueueError
from .failures import RetryPolicy
from .settings import DEFAULT_KEY_TTL, RedisSettings, parse_size
from .store import keys
from .store.keys import StageKeys
from .store.slots import hash_tag, key_slot

__all__ = [
    "DEFAULT_MAX_STALLS",
    "MAX_PREFETCH",
    "Backoff",
    "ChildFailurePolicy",
    "FlowDefinition",
    "QueueSpec",
    "Stage",
]

#: the most jobs one lease call may take (``QueueSpec.prefetch``)
MAX_PREFETCH = 64
#: ``QueueSpec.prefetch``: a fixed number of jobs per lease call, or ``"auto"`` (sized by each
#: worker from the stage's measured job time: ``worker/batch.py``'s ``BatchSize``)
Prefetch = int | Literal["auto"]
#: how many times a job may lose its worker to a dead node or supervisor before it fails
DEFAULT_MAX_STALLS = 3

#: What a parent stage does when every child job is done and some failed: ``fail`` the parent
#: (the default), pass it on and ``mark`` it (``children:Q:failed`` lists the failed
#: children; ``wait`` and the operator views report it), or ``continue`` as if nothing
#: failed (what the TypeScript library's ParentWorker does; nothing is written).
ChildFailurePolicy = Literal["fail", "mark", "continue"]

ParamsT = TypeVar("ParamsT", bound=Mapping[str, Any], default=dict[str, Any])
ResultT = TypeVar("ResultT", bound=Mapping[str, Any], default=dict[str, Any])


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n: ``min(max, base * factor ** (n - 1))``, then drawn uniformly from
    ``[delay * (1 - jitter), delay]`` so that retries of many jobs do not arrive together."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base < 0 or self.max < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                f"Backoff needs base >= 0, max >= 0, factor >= 1 and 0 <= jitter <= 1, got {self}"
            )

    def delays_ms(self, max_attempts: int) -> list[int]:
        """One drawn delay (ms) for each retry that ``max_attempts`` allows."""
        out = []
        for n in range(1, max_attempts):
            delay = min(self.max, self.base * self.factor ** (n - 1))
            delay *= 1 - self.jitter * random.random()
            out.append(round(delay * 1000))
        return out


@dataclass(frozen=True)
class QueueSpec(Generic[ParamsT, ResultT]):
    """One stage of a flow.

    ``name``: the queue's name. ``next_queue``: the stage a completed job goes to (a result's
    ``nextQueue`` overrides it; with neither, the job is done). ``attributes_to_get``: the job
    fields handed to the worker function. ``children``: child queues for fan-out (their
    ``name`` is the child name; the queue is ``PARENT:CHILD``). ``max_attempts`` and
    ``retry_backoff``: the retry policy for every kind of failure. ``timeout``: seconds after
    which the supervisor kills the worker running a job. ``memory_limit``: bytes (or text like
    ``'512MiB'``) the worker's process tree may use while it runs a job. ``prefetch``: how
    many waiting jobs one lease call takes: ``"auto"`` (the default: each worker sizes its
    batches from the stage's measured job time, so that a batch holds at most 20 ms of
    work — tiny jobs are leased many at a time, CPU-heavy ones one by one) or a fixed 1 to 64.
    A batch's jobs run in order, each under its own lock, and the last one's completion
    leases the next batch; a parent stage always takes one.

    Type it as ``QueueSpec[Params, Result](...)`` to have a type checker match its worker
    functions."""

    name: str
    next_queue: str | None = None
    attributes_to_get: Sequence[str] = ()
    children: Sequence[QueueSpec[Any, Any]] = ()
    max_attempts: int = 1
    retry_backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    memory_limit: int | str | None = None
    prefetch: Prefetch = "auto"
    on_child_failure: ChildFailurePolicy = "fail"
    max_stalls: int = DEFAULT_MAX_STALLS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"a queue name must be a non-empty string, got {self.name!r}")
        if isinstance(self.attributes_to_get, str):
            raise ConfigurationError(
                f"queue {self.name!r}: attributes_to_get must be a list of field names, "
                "not a string"
            )
        for attr in self.attributes_to_get:
            if not isinstance(attr, str) or not attr:
                raise ConfigurationError(
                    f"queue {self.name!r}: attribute {attr!r} must be a non-empty string"
                )
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"queue {self.name!r}: max_attempts must be an int >= 1, got {self.max_attempts!r}"
            )
        if self.prefetch != "auto" and (
            not isinstance(self.prefetch, int)
            or isinstance(self.prefetch, bool)
            or not 1 <= self.prefetch <= MAX_PREFETCH
        ):
            raise ConfigurationError(
                f"queue {self.name!r}: prefetch must be 'auto' or an int from 1 to "
                f"{MAX_PREFETCH}, got {self.prefetch!r}"
            )
        if self.on_child_failure not in get_args(ChildFailurePolicy):
            raise ConfigurationError(
                f"queue {self.name!r}: on_child_failure must be one of "
                f"{', '.join(map(repr, get_args(ChildFailurePolicy)))}, "
                f"got {self.on_child_failure!r}"
            )
        if self.on_child_failure != "fail" and not self.children:
            raise ConfigurationError(
                f"queue {self.name!r}: on_child_failure applies to a stage with children; "
                "this one has none"
            )
        if (
            not isinstance(self.max_stalls, int)
            or isinstance(self.max_stalls, bool)
            or self.max_stalls < 0
        ):
            raise ConfigurationError(
                f"queue {self.name!r}: max_stalls must be an int >= 0, got {self.max_stalls!r}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigurationError(f"queue {self.name!r}: timeout must be > 0 seconds")
        if self.memory_limit is not None:
            parse_size(self.memory_limit, f"queue {self.name!r}: memory_limit")


@dataclass(frozen=True)
class Stage:
    """A queue of a flow, resolved: its spec, full name, key names and the fields a worker
    reads at lease time."""

    spec: QueueSpec[Any, Any]
    name: str
    keys: StageKeys
    fields: tuple[str, ...]
    parent: str | None = None
    #: for a parent stage: child name -> full child queue name
    children: Mapping[str, str] = field(default_factory=dict)
    memory_limit: int | None = None

    @property
    def is_parent(self) -> bool:
        return bool(self.children)

    @property
    def prefetch(self) -> Prefetch:
        """How many jobs one lease call of this stage takes: a number, or ``"auto"`` (a
        parent stage: one)."""
        return 1 if self.children else self.spec.prefetch

    @property
    def next_waiting(self) -> str:
        """The waiting list a completed job goes to by default ('' when it leaves the flow)."""
        return keys.waiting(self.spec.next_queue) if self.spec.next_queue else ""

    def retry_policy(self) -> RetryPolicy:
        """The stage's attempts, with freshly drawn delays before each retry."""
        spec = self.spec
        return RetryPolicy(
            spec.max_attempts, spec.retry_backoff.delays_ms(spec.max_attempts), spec.max_stalls
        )


@dataclass(frozen=True)
class FlowDefinition:
    """A flow's name, queues, stages and lookup attributes, checked."""

    name: str
    queues: tuple[QueueSpec[Any, Any], ...]
    lookup_attributes: tuple[str, ...]
    key_ttl: int
    stages: Mapping[str, Stage]

    @classmethod
    def build(
        cls,
        name: str,
        queues: Sequence[QueueSpec[Any, Any]],
        lookup_attributes: Sequence[str],
        key_ttl: int,
    ) -> FlowDefinition:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a flow name must be a non-empty string, got {name!r}")
        if isinstance(lookup_attributes, str):
            raise ConfigurationError("lookup_attributes must be a list of names, not a string")
        for attr in lookup_attributes:
            if not isinstance(attr, str) or not attr:
                raise ConfigurationError(f"lookup attribute {attr!r} must be a non-empty string")
        if not isinstance(key_ttl, int) or isinstance(key_ttl, bool) or key_ttl <= 0:
            raise ConfigurationError(
                f"key_ttl must be a positive number of seconds, got {key_ttl!r}"
            )
        stages = _resolve_stages(name, queues)
        return cls(name, tuple(queues), tuple(lookup_attributes), key_ttl, stages)

    def stage(self, queue: str) -> Stage:
        """The stage called ``queue`` (a child queue is ``PARENT:CHILD``)."""
        try:
            return self.stages[queue]
        except KeyError:
            raise UnknownQueueError(queue, list(self.stages)) from None

    @property
    def first_stage(self) -> Stage:
        return self.stages[self.queues[0].name]

    @property
    def top_stages(self) -> list[Stage]:
        return [s for s in self.stages.values() if s.parent is None]

    def routes(self) -> dict[str, str]:
        """Queue name → waiting list, for a result's ``nextQueue``."""
        return {q.name: keys.waiting(q.name) for q in self.queues}

    def child_keys(self, stage: Stage) -> dict[str, StageKeys]:
        """For a parent stage: child name → the child stage's keys."""
        return {n: self.stages[full].keys for n, full in stage.children.items()}

    def describe(self) -> dict[str, Any]:
        """The definition as JSON-ready data (what the flow registry stores): names, next
        queues, children, fields read, lookup attributes and limits — no code."""

        def queue(spec: QueueSpec[Any, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {
                "name": spec.name,
                "nextQueue": spec.next_queue,
                "attributesToGet": list(spec.attributes_to_get),
                "maxAttempts": spec.max_attempts,
                "timeout": spec.timeout,
                "memoryLimit": _limit(spec),
                "prefetch": spec.prefetch,
            }
            if spec.children:
                out["children"] = [queue(c) for c in spec.children]
            return out

        return {
            "name": self.name,
            "queues": [queue(q) for q in self.queues],
            "lookupAttributes": list(self.lookup_attributes),
            "keyTtl": self.key_ttl,
        }

    @classmethod
    def from_description(cls, data: Any) -> FlowDefinition:
        """The definition back from ``describe``'s data (retry delays take the default
        backoff: a description is for looking at a flow, not for running its workers)."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a flow description must be a JSON object, got {data!r}")

        def spec(q: Any) -> QueueSpec[Any, Any]:
            if not isinstance(q, Mapping) or not isinstance(q.get("name"), str):
                raise ConfigurationError(f"a queue description needs a name, got {q!r}")
            return QueueSpec(
                q["name"],
                next_queue=q.get("nextQueue"),
                attributes_to_get=tuple(q.get("attributesToGet") or ()),
                children=tuple(spec(c) for c in q.get("children") or ()),
                max_attempts=int(q.get("maxAttempts") or 1),
                timeout=q.get("timeout"),
                memory_limit=q.get("memoryLimit"),
                prefetch=_prefetch(q.get("prefetch")),
            )

        try:
            return cls.build(
                str(data.get("name", "")),
                [spec(q) for q in data.get("queues") or ()],
                list(data.get("lookupAttributes") or ()),
                int(data.get("keyTtl") or DEFAULT_KEY_TTL),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"unreadable flow description: {exc}") from exc

    def on_cluster(self, settings: RedisSettings) -> RedisSettings:
        """``settings`` for this flow: on Redis Cluster (``cluster_nodes``), every key of the
        flow must hash to one slot — else ConfigurationError names the keys and shows the
        tagged spelling — and the connections serve that slot."""
        if not settings.cluster_nodes:
            return settings
        names = [keys.job_prefix(self.name) + "ID", keys.own_prefix(self.name) + "x"]
        for stage in self.stages.values():
            k = stage.keys
            names += [k.waiting, k.lock_prefix + "ID", k.job_prefix + "ID"]
        slots = {name: key_slot(name) for name in dict.fromkeys(names)}
        if len(set(slots.values())) > 1:
            tag = hash_tag(self.name) if "{" in self.name else self.name
            shown = ", ".join(f"{n} (slot {slot})" for n, slot in list(slots.items())[:6])
            spelled = ", ".join(
                f"QueueSpec('{{{tag}}}.{q.name.split('}')[-1].lstrip('.')}')" for q in self.queues
            )
            raise ConfigurationError(
                f"on Redis Cluster every key of flow {self.name!r} must hash to one slot, and "
                f"these do not: {shown}; give the flow and every queue the same hash tag: "
                f"Flow('{{{tag}}}', [{spelled}]) (child queues inherit their parent's name)"
            )
        return settings.with_options(cluster_key=names[0])

    def stages_of_job(self, job_key: str) -> list[StageKeys]:
        """The stages whose jobs live where ``job_key`` does (a child queue's jobs)."""
        split = keys.split_job_key(job_key)
        prefix = split[0] if split else None
        return [s.keys for s in self.stages.values() if s.keys.job_prefix == prefix]


def _resolve_stages(flow: str, queues: Sequence[QueueSpec[Any, Any]]) -> dict[str, Stage]:
    if isinstance(queues, QueueSpec) or not isinstance(queues, Sequence) or not queues:
        raise ConfigurationError(f"flow {flow!r} needs a non-empty list of QueueSpec")
    stages: dict[str, Stage] = {}
    top = set()
    for spec in queues:
        if not isinstance(spec, QueueSpec):
            raise ConfigurationError(f"flow {flow!r}: {spec!r} is not a QueueSpec")
        if spec.name in top:
            raise ConfigurationError(f"flow {flow!r}: queue name {spec.name!r} is used twice")
        top.add(spec.name)
    for spec in queues:
        if spec.next_queue is not None and spec.next_queue not in top:
            raise ConfigurationError(
                f"flow {flow!r}: queue {spec.name!r} has next_queue {spec.next_queue!r}, "
                f"which is not one of its queues ({', '.join(q.name for q in queues)})"
            )
        children: dict[str, str] = {}
        for child in spec.children:
            if not isinstance(child, QueueSpec):
                raise ConfigurationError(f"queue {spec.name!r}: child {child!r} is not a QueueSpec")
            full = keys.child_queue(spec.name, child.name)
            if child.name in children:
                raise ConfigurationError(f"queue {spec.name!r}: child {child.name!r} is used twice")
            if full in top:
                raise ConfigurationError(f"child queue {full!r} has the name of a top-level queue")
            if child.children or child.next_queue:
                raise ConfigurationError(
                    f"child queue {full!r}: a child queue ends its job; it cannot have children "
                    "or a next_queue"
                )
            children[child.name] = full
            stages[full] = Stage(
                spec=child,
                name=full,
                keys=StageKeys.build(flow, full, parent_queue=spec.name),
                fields=tuple(child.attributes_to_get),
                parent=spec.name,
                memory_limit=_limit(child),
            )
        fields = tuple(spec.attributes_to_get)
        if children:
            extra = (keys.children_params_field(spec.name), keys.children_jobs_field(spec.name))
            fields = tuple(dict.fromkeys(extra + fields))
        stages[spec.name] = Stage(
            spec=spec,
            name=spec.name,
            keys=StageKeys.build(flow, spec.name),
            fields=fields,
            children=children,
            memory_limit=_limit(spec),
        )
    return stages


def _limit(spec: QueueSpec[Any, Any]) -> int | None:
    return None if spec.memory_limit is None else parse_size(spec.memory_limit)


def _prefetch(described: Any) -> Prefetch:
    """A description's ``prefetch``: ``"auto"``, or a number (1 when it says none)."""
    return "auto" if described == "auto" else int(described or 1)
