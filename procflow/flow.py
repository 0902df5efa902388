"""Flow: a pipeline over one Redis — job creation and look-up, worker factories, start/stop.

The definition (queues, stages, key names) is ``definition.py``; every Redis command is the
store's; the processes are the supervisor's. This is the client a user holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, overload

from loguru import logger as default_logger
from typing_extensions import TypeVar, Unpack

from . import codec
from .definition import Backoff, FlowDefinition, QueueSpec, Stage
from .errors import (
    ConfigurationError,
    EncodeError,
    JobFailedError,
    SupervisorStateError,
    UnknownLookupAttributeError,
    UnknownQueueError,
)
from .handles import PARENT, WORKER, WorkerGroup, WorkerHandle
from .ids import uuid7, uuid7_batch
from .settings import DEFAULT_KEY_TTL, RedisSettings, WorkerKwargs, WorkerOptions
from .store import acl, keys
from .store.records import NewJob
from .store.redis import Store
from .store.registry import Registry
from .supervisor import Supervisor
from .waiting import wait_for_jobs

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Backoff", "Flow", "QueueSpec", "Stage"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
P = TypeVar("P", bound=Mapping[str, Any])
R = TypeVar("R", bound=Mapping[str, Any])


class Flow(Generic[JobT, OptionsT, LookupT]):
    """A named pipeline of stage queues over one Redis.

    ``Flow[Job, Options, Lookup]`` is generic over the union of job shapes that
    ``get_jobs_by_key`` returns, the options type ``create_job`` accepts, and the
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
        self.definition = FlowDefinition.build(name, queues, lookup_attributes, key_ttl)
        if redis is not None and redis_url is not None:
            raise ConfigurationError("give either redis_url or redis settings, not both")
        settings = redis if redis is not None else RedisSettings.from_env(redis_url)
        self.redis = self.definition.on_cluster(settings)
        self.logger: Logger = (logger or default_logger).bind(flow=name)
        self.groups: list[WorkerGroup] = []
        self._store: Store | None = None
        self.supervisor: Supervisor | None = None

    def __repr__(self) -> str:
        return (
            f"Flow({self.name!r}, queues={[q.name for q in self.queues]}, redis={self.redis.url!r})"
        )

    # -- the definition ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def queues(self) -> tuple[QueueSpec[Any, Any], ...]:
        return self.definition.queues

    @property
    def lookup_attributes(self) -> tuple[LookupT, ...]:
        return self.definition.lookup_attributes  # type: ignore[return-value]

    @property
    def key_ttl(self) -> int:
        return self.definition.key_ttl

    @property
    def stages(self) -> Mapping[str, Stage]:
        return self.definition.stages

    def stage(self, queue: str) -> Stage:
        """The stage called ``queue`` (a child queue is ``PARENT:CHILD``)."""
        return self.definition.stage(queue)

    @property
    def first_stage(self) -> Stage:
        return self.definition.first_stage

    def job_key(self, job_id: str) -> str:
        return keys.job(self.name, job_id)

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
        settings = redis if isinstance(redis, RedisSettings) else RedisSettings.from_url(redis)
        self.redis = self.definition.on_cluster(settings)
        self._store = None

    # -- jobs ----------------------------------------------------------------------------

    def _lookup_keys(self, values: Mapping[str, Any]) -> list[str]:
        return [
            keys.lookup(self.name, attr, text)
            for attr in self.lookup_attributes
            if attr in values
            for text in codec.lookup_texts(values[attr])
        ]

    def _prepare(self, options: Mapping[str, Any], job_id: str, first: str) -> NewJob:
        fields = codec.encode_fields(options, max_bytes=self.redis.max_value_bytes)
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
        return NewJob(job_id, self.job_key(job_id), fields, self._lookup_keys(options), first)

    def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC) on the first queue and return its id. Options
        that are not JSON-encodable raise EncodeError and write nothing."""
        job = self._prepare(options, uuid7(), self.first_stage.keys.waiting)
        self.store.create_jobs([job], self.key_ttl)
        return job.id

    def _prepare_many(self, many: Iterable[Mapping[str, Any]]) -> list[NewJob]:
        """Every job checked and encoded, before anything is written (the sync and async
        ``create_jobs``): one bad job raises EncodeError naming it."""
        items = list(many)
        first = self.first_stage.keys.waiting
        jobs = []
        for n, (options, job_id) in enumerate(zip(items, uuid7_batch(len(items)), strict=True)):
            try:
                jobs.append(self._prepare(options, job_id, first))
            except EncodeError as exc:
                raise EncodeError(f"job {n}: {exc.where}", exc.problem) from None
        return jobs

    def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC). Every option is checked
        before anything is written: one bad job raises and writes none of them."""
        jobs = self._prepare_many(many)
        self.store.create_jobs(jobs, self.key_ttl)
        return [job.id for job in jobs]

    def decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        """A raw job hash (HGETALL) decoded, with its ``"id"``."""
        return self._decode(key, job_id, raw)

    def _decode(self, key: str, job_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        job: dict[str, Any] = {keys.ID: job_id}
        for f, v in raw.items():
            name = f.decode()
            if name != keys.ID:  # written by another library: the real id wins
                job[name] = codec.decode_field(key, name, v)
        return job

    def _fetch(self, refs: Sequence[tuple[str, str]], resolve: bool) -> list[dict[str, Any] | None]:
        """Jobs by (key, id), aligned with ``refs``; None where the hash is gone."""
        raws = self.store.get_hashes([key for key, _ in refs])
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
        return self._fetch([(self.job_key(job_id), job_id)], resolve=False)[0]  # type: ignore[return-value]

    def get_jobs(self, job_ids: Sequence[str], resolve_children: bool = False) -> list[JobT]:
        """Decoded job hashes (one round trip), skipping ids whose hash is gone."""
        jobs = self._fetch([(self.job_key(i), i) for i in job_ids], resolve_children)
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
        for _, refs in self._child_refs(job):
            for child_key, child_id in refs:
                child_stages = self.definition.stages_of_job(child_key)
                self.store.delete_job(child_key, child_id, (), child_stages)
        top = [s.keys for s in self.definition.top_stages]
        self.store.delete_job(key, job_id, self._lookup_keys(job), top)
        return True

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        progress: bool = False,
        raise_on_failure: bool = False,
    ) -> list[JobT]:
        """Block until every job is done (finished or failed) and return their final hashes
        in the order given — from any process, not only the one running the workers. A job
        that failed comes back with ``failed`` true (``raise_on_failure`` raises
        JobFailedError instead). Rides out Redis outages; WaitTimeoutError lists the ids not
        done after ``timeout`` seconds. ``progress`` shows a progress line on stderr, with the
        jobs' own reports (``procflow.progress``)."""
        jobs = wait_for_jobs(self, job_ids, timeout, progress)
        if raise_on_failure and any(j.get(keys.FAILED) is True for j in jobs):
            raise JobFailedError(jobs)
        return jobs  # type: ignore[return-value]

    # -- failed jobs ---------------------------------------------------------------------

    def failed_jobs(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids on ``queue``'s failed list (jobs that used up their attempts there), oldest
        first; ids whose job hash has expired are dropped from the list first."""
        keys_ = self.stage(queue).keys
        self.store.prune_failed([keys_])
        return self.store.list_range(keys_.failed, start, stop)

    def retry_failed(self, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """Put failed jobs (all of ``queue``'s, or the given ids) back on its waiting list
        with a fresh attempt count. Returns the ids moved."""
        stage = self.stage(queue)
        ids = list(job_ids) if job_ids is not None else self.failed_jobs(queue)
        return self.store.revive(stage.keys, ids)

    def forget(self) -> None:
        """Remove procflow's records of this flow (its registry entry, node heartbeats,
        stats, finished lists and cancel requests); jobs and queues are left alone."""
        Registry(self.store).unregister(self.name, list(self.stages))

    def acl_rules(self) -> list[str]:
        """The Redis ACL rules a user needs to run this flow, and nothing more: give them to
        ``ACL SETUSER name on >password …``. See docs/configuration.md."""
        return acl.acl_rules(self.name, [s.keys for s in self.stages.values()])

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
        options: WorkerKwargs,
    ) -> list[WorkerHandle]:
        where = f"workers for {stage.name!r}"
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"the worker function for {stage.name!r} is not callable")
        built = WorkerOptions.build(where, **options)
        group = WorkerGroup(self, stage, kind, fn, count, built)
        self.groups.append(group)
        return group.handles

    @overload
    def create_workers(
        self,
        queue: QueueSpec[P, R],
        fn: Callable[[P], R],
        count: int = ...,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]: ...

    @overload
    def create_workers(
        self,
        queue: str,
        fn: Callable[[Any], Mapping[str, Any]],
        count: int = ...,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]: ...

    def create_workers(
        self,
        queue: QueueSpec[Any, Any] | str,
        fn: Callable[[Any], Any],
        count: int = 1,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]:
        """``count`` worker processes for ``queue``, each running ``fn(params) -> result``.
        ``fn`` travels to the processes with cloudpickle (lambdas and closures work). The
        options (``lock_time``, ``block_timeout``, ``max_jobs_per_child``, ``max_age``) are
        ``procflow.WorkerOptions``'s."""
        stage = self.stage(queue if isinstance(queue, str) else queue.name)
        if stage.is_parent:
            raise ConfigurationError(
                f"queue {stage.name!r} has children: use create_parent_workers for it"
            )
        if not callable(fn):
            raise ConfigurationError(f"the worker function for {stage.name!r} is not callable")
        return self._add_group(stage, WORKER, fn, count, options)

    def create_parent_workers(
        self,
        queue: QueueSpec[Any, Any] | str,
        count: int = 1,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]:
        """Workers for a stage with children: they create the child jobs from
        ``children:Q:params`` and pass the parent on once every child is done."""
        stage = self.stage(queue if isinstance(queue, str) else queue.name)
        if not stage.is_parent:
            raise ConfigurationError(f"queue {stage.name!r} has no children to fan out to")
        return self._add_group(stage, PARENT, None, count, options)

    @overload
    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: QueueSpec[P, R],
        fn: Callable[[P], R],
        count: int = ...,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]: ...

    @overload
    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: str,
        fn: Callable[[Any], Mapping[str, Any]],
        count: int = ...,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]: ...

    def create_child_workers(
        self,
        parent_queue: QueueSpec[Any, Any] | str,
        child_name: QueueSpec[Any, Any] | str,
        fn: Callable[[Any], Any],
        count: int = 1,
        **options: Unpack[WorkerKwargs],
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
        return self._add_group(stage, WORKER, fn, count, options)

    @property
    def handles(self) -> list[WorkerHandle]:
        return [h for g in self.groups for h in g.handles]

    # -- the supervisor ------------------------------------------------------------------

    def ensure_supervisor(self) -> Supervisor:
        """The flow's supervisor, made with default options when it has none."""
        if self.supervisor is None:
            self.supervisor = Supervisor(self)
        return self.supervisor

    def start_all(self, **supervisor_options: Any) -> Supervisor:
        """The flow connects; every worker process connects; then every worker starts."""
        if self.supervisor is None or not self.supervisor.running:
            self.supervisor = Supervisor(self, **supervisor_options)
        self.supervisor.start()
        return self.supervisor

    def stop_all(self) -> None:
        """Every worker stops (finishing its job); then every worker disconnects; the flow's
        connection closes last."""
        if self.supervisor is not None:
            self.supervisor.stop()
