"""Flow and QueueSpec: a pipeline's definition, job creation and look-up, worker factories."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, overload

from typing_extensions import TypeVar

from . import codec
from .errors import (
    ConfigurationError,
    EncodeError,
    SupervisorStateError,
    UnknownLookupAttributeError,
    UnknownQueueError,
)
from .ids import uuid7, uuid7_batch
from .settings import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_KEY_TTL,
    DEFAULT_LOCK_TIME,
    RedisSettings,
    parse_size,
)
from .store import keys
from .store.keys import StageKeys
from .store.redis import NewJob, Store
from .workers import WorkerGroup, WorkerHandle

if TYPE_CHECKING:
    from loguru import Logger

    from .supervisor import Supervisor

__all__ = ["Backoff", "Flow", "QueueSpec", "Stage"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
ParamsT = TypeVar("ParamsT", bound=Mapping[str, Any], default=dict[str, Any])
ResultT = TypeVar("ResultT", bound=Mapping[str, Any], default=dict[str, Any])
P = TypeVar("P", bound=Mapping[str, Any])
R = TypeVar("R", bound=Mapping[str, Any])

_CHILDREN_JOBS = re.compile(r"^children:.*:jobs$")


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
    ``'512MiB'``) the worker's process tree may use while it runs a job.

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

    def retry_delays_ms(self) -> list[int]:
        return self.spec.retry_backoff.delays_ms(self.spec.max_attempts)


class Flow(Generic[JobT, OptionsT, LookupT]):
    """A named pipeline of stage queues over one Redis.

    ``Flow[Job, Options, Lookup]`` is generic over the union of job shapes that
    :meth:`get_jobs_by_key` returns, the options type :meth:`create_job` accepts, and the
    lookup attribute names (a ``Literal``), so a type checker rejects a lookup key the flow
    does not have."""

    def __init__(
        self,
        name: str,
        queues: Sequence[QueueSpec[Any, Any]],
        lookup_attributes: Sequence[LookupT] = (),
        redis_url: str | None = None,
        *,
        redis: RedisSettings | None = None,
        logger: Logger | None = None,
        key_ttl: int = DEFAULT_KEY_TTL,
    ) -> None:
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
        if redis is not None and redis_url is not None:
            raise ConfigurationError("give either redis_url or redis settings, not both")
        self.name = name
        self.queues: tuple[QueueSpec[Any, Any], ...] = tuple(queues)
        self.lookup_attributes: tuple[LookupT, ...] = tuple(lookup_attributes)
        self.key_ttl = key_ttl
        self.redis = redis if redis is not None else RedisSettings.from_env(redis_url)
        if logger is None:
            from loguru import logger as base_logger

            logger = base_logger
        self.logger: Logger = logger.bind(flow=name)
        self.stages: dict[str, Stage] = _resolve_stages(name, self.queues)
        self.groups: list[WorkerGroup] = []
        self._store: Store | None = None
        self.supervisor: Supervisor | None = None

    def __repr__(self) -> str:
        return (
            f"Flow({self.name!r}, queues={[q.name for q in self.queues]}, redis={self.redis.url!r})"
        )

    # -- connection ----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The flow's own Redis layer (opened on first use)."""
        if self._store is None:
            self._store = Store(self.redis)
        return self._store

    def connect(self) -> None:
        """Open the flow's connection now; RedisUnavailableError names the address."""
        self.store.ping()

    def disconnect(self) -> None:
        if self._store is not None:
            self._store.close()

    def use_redis(self, redis: RedisSettings | str) -> None:
        """Point the flow at another server (before its workers start)."""
        if self.supervisor is not None and self.supervisor.running:
            raise SupervisorStateError("cannot change the Redis of a running flow")
        self.disconnect()
        self.redis = redis if isinstance(redis, RedisSettings) else RedisSettings.from_url(redis)
        self._store = None

    # -- names ---------------------------------------------------------------------------

    def stage(self, queue: str) -> Stage:
        """The stage called ``queue`` (a child queue is ``PARENT:CHILD``)."""
        try:
            return self.stages[queue]
        except KeyError:
            raise UnknownQueueError(queue, list(self.stages)) from None

    @property
    def first_stage(self) -> Stage:
        return self.stages[self.queues[0].name]

    def job_key(self, job_id: str) -> str:
        return keys.job(self.name, job_id)

    # -- jobs ----------------------------------------------------------------------------

    def _prepare(self, options: Mapping[str, Any], job_id: str, first: str) -> NewJob:
        fields = codec.encode_fields(options)
        if not fields:
            raise EncodeError(
                "options", "a job needs at least one field (a Redis hash cannot be empty)"
            )
        lookups = [
            keys.lookup(self.name, attr, text)
            for attr in self.lookup_attributes
            if attr in options
            for text in codec.lookup_texts(options[attr])
        ]
        return NewJob(job_id, keys.job(self.name, job_id), fields, lookups, first)

    def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC) on the first queue and return its id. Options
        that are not JSON-encodable raise EncodeError and write nothing."""
        job = self._prepare(options, uuid7(), self.first_stage.keys.waiting)
        self.store.create_jobs([job], self.key_ttl)
        return job.id

    def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC). Every option is checked
        before anything is written: one bad job raises and writes none of them."""
        items = list(many)
        ids = uuid7_batch(len(items))
        first = self.first_stage.keys.waiting
        jobs = []
        for n, (options, job_id) in enumerate(zip(items, ids, strict=True)):
            try:
                jobs.append(self._prepare(options, job_id, first))
            except EncodeError as exc:
                raise EncodeError(f"job {n}: {exc.where}", exc.problem) from None
        self.store.create_jobs(jobs, self.key_ttl)
        return ids

    def _decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        job: dict[str, Any] = {"id": job_id}
        for f, v in raw.items():
            name = f.decode()
            job[name] = codec.decode_field(key, name, v)
        return job

    def _fetch(self, refs: Sequence[tuple[str, str]], resolve: bool) -> list[dict[str, Any] | None]:
        """Jobs by (key prefix, id), aligned with ``refs``; None where the hash is gone."""
        hash_keys = [prefix + job_id for prefix, job_id in refs]
        raws = self.store.get_hashes(hash_keys)
        jobs = [
            self._decode(k, job_id, raw) if raw else None
            for k, (_, job_id), raw in zip(hash_keys, refs, raws, strict=True)
        ]
        if resolve:
            self._resolve_children([j for j in jobs if j is not None])
        return jobs

    def _resolve_children(self, jobs: list[dict[str, Any]]) -> None:
        """Replace each ``children:Q:jobs`` list of keys by the child jobs (one round trip
        per level of nesting)."""
        wanted: list[tuple[dict[str, Any], str, list[str]]] = []
        for job in jobs:
            for name, value in job.items():
                if _CHILDREN_JOBS.match(name) and isinstance(value, list):
                    child_keys = [v for v in value if isinstance(v, str) and ":" in v]
                    wanted.append((job, name, child_keys))
        if not wanted:
            return
        unique = list(dict.fromkeys(k for _, _, child_keys in wanted for k in child_keys))
        refs = [(k.rsplit(":", 1)[0] + ":", k.rsplit(":", 1)[1]) for k in unique]
        found = self._fetch(refs, resolve=True)
        by_key = {k: child for k, child in zip(unique, found, strict=True) if child is not None}
        for job, name, child_keys in wanted:
            job[name] = [by_key[k] for k in child_keys if k in by_key]

    def get_job(self, job_id: str) -> JobT | None:
        """The decoded job hash with its ``"id"``, or None when there is no such job."""
        return self._fetch([(keys.job_prefix(self.name), job_id)], resolve=False)[0]  # type: ignore[return-value]

    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip), skipping ids whose hash is gone."""
        prefix = keys.job_prefix(self.name)
        jobs = self._fetch([(prefix, i) for i in job_ids], resolve_children)
        return [j for j in jobs if j is not None]  # type: ignore[misc]

    def get_jobs_by_key(
        self, key: LookupT, value: str | int | float | bool | None, resolve_children: bool = False
    ) -> list[JobT]:
        """The jobs whose lookup attribute ``key`` has ``value``, oldest first. With
        ``resolve_children``, every ``children:Q:jobs`` field holds the child jobs."""
        if key not in self.lookup_attributes:
            raise UnknownLookupAttributeError(str(key), list(self.lookup_attributes))
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ConfigurationError(
                f"a lookup value must be a string, number, boolean or None, got a "
                f"{type(value).__name__}"
            )
        ids = self.store.list_range(keys.lookup(self.name, key, codec.lookup_text(value)))
        return self.get_jobs(ids, resolve_children)

    def delete_job(self, job_id: str) -> bool:
        """Remove a job: its hash, its lookup entries, its place in every queue of the flow
        and its child jobs. Returns False when there was no such job."""
        key = self.job_key(job_id)
        raw = self.store.get_hashes([key])[0]
        if not raw:
            return False
        job = self._decode(key, job_id, raw)
        lookups = [
            keys.lookup(self.name, attr, text)
            for attr in self.lookup_attributes
            if attr in job
            for text in codec.lookup_texts(job[attr])
        ]
        for name, value in job.items():
            if _CHILDREN_JOBS.match(name) and isinstance(value, list):
                for child_key in value:
                    if isinstance(child_key, str) and ":" in child_key:
                        prefix, child_id = child_key.rsplit(":", 1)
                        child_stages = [
                            s.keys
                            for s in self.stages.values()
                            if s.keys.job_prefix == prefix + ":"
                        ]
                        self.store.delete_job(child_key, child_id, (), child_stages)
        top = [s.keys for s in self.stages.values() if s.parent is None]
        self.store.delete_job(key, job_id, lookups, top)
        return True

    # -- failed jobs ---------------------------------------------------------------------

    def failed_jobs(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids on ``queue``'s failed list (jobs that used up their attempts there)."""
        return self.store.list_range(self.stage(queue).keys.failed, start, stop)

    def retry_failed(self, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """Put failed jobs (all of ``queue``'s, or the given ids) back on its waiting list
        with a fresh attempt count. Returns the ids moved."""
        stage = self.stage(queue)
        ids = list(job_ids) if job_ids is not None else self.failed_jobs(queue)
        return self.store.revive(stage.keys, ids)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, processing, delayed, parked and failed."""
        stages = list(self.stages.values())
        return {
            s.name: c
            for s, c in zip(stages, self.store.counts([s.keys for s in stages]), strict=True)
        }

    # -- workers -------------------------------------------------------------------------

    def _add_group(
        self,
        stage: Stage,
        kind: str,
        fn: Callable[[Any], Any] | None,
        count: int,
        lock_time: float,
        block_timeout: float,
        max_jobs_per_child: int | None,
        max_age: float | None,
    ) -> list[WorkerHandle]:
        group = WorkerGroup(
            flow=self,
            stage=stage,
            kind=kind,
            fn=fn,
            count=count,
            lock_time=lock_time,
            block_timeout=block_timeout,
            max_jobs_per_child=max_jobs_per_child,
            max_age=max_age,
        )
        self.groups.append(group)
        return group.handles

    @overload
    def create_workers(
        self,
        queue: QueueSpec[P, R],
        fn: Callable[[P], R],
        count: int = ...,
        lock_time: float = ...,
        block_timeout: float = ...,
        *,
        max_jobs_per_child: int | None = ...,
        max_age: float | None = ...,
    ) -> list[WorkerHandle]: ...

    @overload
    def create_workers(
        self,
        queue: str,
        fn: Callable[[Any], Mapping[str, Any]],
        count: int = ...,
        lock_time: float = ...,
        block_timeout: float = ...,
        *,
        max_jobs_per_child: int | None = ...,
        max_age: float | None = ...,
    ) -> list[WorkerHandle]: ...

    def create_workers(
        self,
        queue: QueueSpec[Any, Any] | str,
        fn: Callable[[Any], Any],
        count: int = 1,
        lock_time: float = DEFAULT_LOCK_TIME,
        block_timeout: float = DEFAULT_BLOCK_TIMEOUT,
        *,
        max_jobs_per_child: int | None = None,
        max_age: float | None = None,
    ) -> list[WorkerHandle]:
        """``count`` worker processes for ``queue``, each running ``fn(params) -> result``.
        ``fn`` travels to the processes with cloudpickle (lambdas and closures work). A
        worker is recycled (replaced between jobs) after ``max_jobs_per_child`` jobs or
        ``max_age`` seconds."""
        stage = self.stage(queue if isinstance(queue, str) else queue.name)
        if stage.is_parent:
            raise ConfigurationError(
                f"queue {stage.name!r} has children: use create_parent_workers for it"
            )
        if not callable(fn):
            raise ConfigurationError(f"the worker function for {stage.name!r} is not callable")
        return self._add_group(
            stage, "worker", fn, count, lock_time, block_timeout, max_jobs_per_child, max_age
        )

    def create_parent_workers(
        self,
        queue: QueueSpec[Any, Any] | str,
        count: int = 1,
        lock_time: float = DEFAULT_LOCK_TIME,
        block_timeout: float = DEFAULT_BLOCK_TIMEOUT,
        *,
        max_jobs_per_child: int | None = None,
        max_age: float | None = None,
    ) -> list[WorkerHandle]:
        """Workers for a stage with children: they create the child jobs from
        ``children:Q:params`` and pass the parent on once every child is done."""
        stage = self.stage(queue if isinstance(queue, str) else queue.name)
        if not stage.is_parent:
            raise ConfigurationError(f"queue {stage.name!r} has no children to fan out to")
        return self._add_group(
            stage, "parent", None, count, lock_time, block_timeout, max_jobs_per_child, max_age
        )

    @overload
    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: QueueSpec[P, R],
        fn: Callable[[P], R],
        count: int = ...,
        lock_time: float = ...,
        block_timeout: float = ...,
        *,
        max_jobs_per_child: int | None = ...,
        max_age: float | None = ...,
    ) -> list[WorkerHandle]: ...

    @overload
    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: str,
        fn: Callable[[Any], Mapping[str, Any]],
        count: int = ...,
        lock_time: float = ...,
        block_timeout: float = ...,
        *,
        max_jobs_per_child: int | None = ...,
        max_age: float | None = ...,
    ) -> list[WorkerHandle]: ...

    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: QueueSpec[Any, Any] | str,
        fn: Callable[[Any], Any],
        count: int = 1,
        lock_time: float = DEFAULT_LOCK_TIME,
        block_timeout: float = DEFAULT_BLOCK_TIMEOUT,
        *,
        max_jobs_per_child: int | None = None,
        max_age: float | None = None,
    ) -> list[WorkerHandle]:
        """Workers for the child queue ``PARENT:CHILD``."""
        parent = self.stage(parent_queue if isinstance(parent_queue, str) else parent_queue.name)
        child = child_name if isinstance(child_name, str) else child_name.name
        if child not in parent.children:
            raise UnknownQueueError(
                keys.child_queue(parent.name, child), [*parent.children.values()]
            )
        stage = self.stages[parent.children[child]]
        if not callable(fn):
            raise ConfigurationError(f"the worker function for {stage.name!r} is not callable")
        return self._add_group(
            stage, "worker", fn, count, lock_time, block_timeout, max_jobs_per_child, max_age
        )

    @property
    def handles(self) -> list[WorkerHandle]:
        return [h for g in self.groups for h in g.handles]

    def start_all(self, **supervisor_options: Any) -> Supervisor:
        """The flow connects; every worker process connects; then every worker starts."""
        from .supervisor import Supervisor

        if self.supervisor is None or not self.supervisor.running:
            self.supervisor = Supervisor(self, **supervisor_options)
        self.supervisor.start()
        return self.supervisor

    def stop_all(self) -> None:
        """Every worker stops (finishing its job); then every worker disconnects; the flow's
        connection closes last."""
        if self.supervisor is not None:
            self.supervisor.stop()


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
