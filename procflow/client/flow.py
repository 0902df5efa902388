"""Flow: a pipeline over one Redis — job creation and look-up, worker factories, start/stop.

The definition (queues, stages, key names) is ``definition.py``; every Redis command is the
store's; the processes are the supervisor's. This is the client a user holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, cast, overload

from loguru import logger as default_logger
from typing_extensions import TypeVar, Unpack

from ..definition import Backoff, FlowDefinition, QueueSpec, Stage
from ..errors import (
    ConfigurationError,
    SupervisorStateError,
    UnknownQueueError,
)
from ..handles import PARENT, WORKER, WorkerGroup, WorkerHandle, WorkerKind
from ..ids import uuid7
from ..partitions import Partition, Partitioning, for_each
from ..settings import DEFAULT_KEY_TTL, RedisSettings, WorkerKwargs, WorkerOptions
from ..store import acl, keys
from ..store.redis import Store
from ..store.registry import Registry
from ..supervisor import Supervisor
from .core import Call, ClientCore, Operation
from .waiting import wait_for_jobs

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Backoff", "Flow", "QueueSpec", "Stage"]

JobT = TypeVar("JobT", bound=Mapping[str, Any], default=dict[str, Any])
OptionsT = TypeVar("OptionsT", bound=Mapping[str, Any], default=dict[str, Any])
LookupT = TypeVar("LookupT", bound=str, default=str)
T = TypeVar("T")
P = TypeVar("P", bound=Mapping[str, Any])
R = TypeVar("R", bound=Mapping[str, Any])


class Flow(Generic[JobT, OptionsT, LookupT]):
    """A named pipeline of stage queues over one Redis.

    ``Flow[Job, Options, Lookup]`` is generic over the union of job shapes that
    ``get_jobs_by_key`` returns, the options type ``create_job`` accepts, and the
    lookup attribute names (a ``Literal``), so a type checker rejects a lookup key the flow
    does not have.

    ``partitions=K`` spreads the flow over K partitions, each a complete flow of the fixed
    layout under its own hash tag (``{NAME#0}`` … ``{NAME#K-1}``, queues ``{NAME#i}.QUEUE``):
    on Redis Cluster each lives in one slot and the partitions spread over the shards. New
    jobs go to them in turn, or by the CRC-32 of the option ``partition_key``; every worker
    serves every partition, in turns; reads, lookups and waits span them. Queues, workers
    and fields keep the names given (docs/configuration.md, "Partitioned flows")."""

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
        partitions: int | None = None,
        partition_key: str | None = None,
    ) -> None:
        self.partitioning = Partitioning.build(name, partitions, partition_key)
        definitions = self.partitioning.definitions(queues, lookup_attributes, key_ttl)
        self._name = name
        self._queues = tuple(queues)
        if redis is not None and redis_url is not None:
            raise ConfigurationError("give either redis_url or redis settings, not both")
        self.logger: Logger = (logger or default_logger).bind(flow=name)
        self.groups: list[WorkerGroup] = []
        #: the flow's own supervisor: the one ``start_all`` made (a ``Supervisor(flow)``
        #: built elsewhere is not recorded here; it adopts the flow's workers instead)
        self.supervisor: Supervisor | None = None
        self._definitions = definitions
        self._pick = self.partitioning.chooser()
        self.partitions: tuple[Partition, ...] = ()
        self._point(redis if redis is not None else RedisSettings.from_env(redis_url))

    def _point(self, settings: RedisSettings) -> None:
        """Each partition's connection settings (on a cluster: its slot's master)."""
        for part in self.partitions:
            part.close()
        split = self.partitioning
        self.partitions = tuple(
            Partition(i, d, d.on_cluster(settings), self.logger, split.renames(d))
            for i, d in enumerate(self._definitions)
        )
        self.redis = self.partitions[0].redis
        self.core = ClientCore(
            self.partitions,
            split,
            self._pick,
            self.redis.max_value_bytes,
            self._definitions[0].key_ttl,
        )

    def __repr__(self) -> str:
        shown = f", partitions={len(self.partitions)}" if self.partitioning.tagged else ""
        return (
            f"Flow({self.name!r}, queues={[q.name for q in self.queues]}{shown}, "
            f"redis={self.redis.url!r})"
        )

    # -- the definition ------------------------------------------------------------------

    @property
    def definition(self) -> FlowDefinition:
        """The flow's definition (of a partitioned flow: partition 0's; ``partitions`` holds
        every partition's)."""
        return self._definitions[0]

    @property
    def name(self) -> str:
        """The flow's name as given (a partition's own name is ``{NAME#i}``)."""
        return self._name

    @property
    def queues(self) -> tuple[QueueSpec[Any, Any], ...]:
        """The queues as given (with the names the user wrote)."""
        return self._queues

    @property
    def key_ttl(self) -> int:
        return self.definition.key_ttl

    @property
    def stages(self) -> Mapping[str, Stage]:
        """Queue name → stage (of a partitioned flow: partition 0's, by full name)."""
        return self.definition.stages

    def stage(self, queue: str) -> Stage:
        """The stage called ``queue`` (a child queue is ``PARENT:CHILD``; of a partitioned
        flow: partition 0's)."""
        return self.stages_of(queue)[0]

    def stages_of(self, queue: str) -> list[Stage]:
        """The stage called ``queue`` in every partition (one for an unpartitioned flow). A
        partitioned flow's queues go by the names given (``check``, ``fan:child``) or by a
        partition's full name."""
        split = self.partitioning
        short = split.short(queue)
        try:
            return [p.definition.stages[split.queue(p.index, short)] for p in self.partitions]
        except KeyError:
            names = [split.short(n) for n in self.definition.stages]
            raise UnknownQueueError(queue, names) from None

    @property
    def first_stage(self) -> Stage:
        return self.definition.first_stage

    def job_key(self, job_id: str) -> str:
        """Job ``job_id``'s key (of a partitioned flow: in partition 0; ``partition_of`` finds
        the partition that holds it)."""
        return keys.job(self.definition.name, job_id)

    # -- connection ----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The flow's own Redis layer, opened on first use (of a partitioned flow:
        partition 0's; every part in ``partitions`` has its own)."""
        return self.partitions[0].store

    def connect(self) -> None:
        """Open the flow's connections now; RedisUnavailableError names the address."""
        for_each(self.partitions, lambda part: part.store.ping())

    def disconnect(self) -> None:
        for part in self.partitions:
            part.close()

    def use_redis(self, redis: RedisSettings | str) -> None:
        """Point the flow at another server (before its workers start)."""
        if self.supervised:
            raise SupervisorStateError("cannot change the Redis of a running flow")
        self._point(redis if isinstance(redis, RedisSettings) else RedisSettings.from_url(redis))

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, options: OptionsT) -> str:
        """Create one job (one MULTI … EXEC) on the first queue and return its id. Options
        that are not JSON-encodable raise EncodeError and write nothing. A partitioned flow
        puts it in the next partition in turn, or the one its ``partition_key`` picks."""
        [job_id] = self.drive(self.core.create([self.core.prepare(options, uuid7())]))
        return job_id

    def create_jobs(self, many: Iterable[OptionsT]) -> list[str]:
        """Create many jobs, pipelined (each its own MULTI … EXEC). Every option is checked
        before anything is written: one bad job raises and writes none of them."""
        return self.drive(self.core.create(self.core.prepare_many(many)))

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
        jobs' own reports (``procflow.progress``). A partitioned flow's jobs are waited for
        in every partition at once (``AsyncFlow.wait`` is the same wait, awaited)."""
        jobs = wait_for_jobs(self, job_ids, timeout, progress, raise_on_failure)
        return jobs  # type: ignore[return-value]

    # -- failed jobs ---------------------------------------------------------------------

    def failed_jobs(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids on ``queue``'s failed list (jobs that used up their attempts there), oldest
        first (of a partitioned flow: partition by partition); ids whose job hash has
        expired are dropped from the list first."""
        return self.drive(self.core.failed_jobs(self.stages_of(queue), start, stop))

    def retry_failed(self, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """Put failed jobs (all of ``queue``'s, or the given ids) back on its waiting list
        with a fresh attempt count. Returns the ids moved."""
        return self.drive(self.core.retry_failed(self.stages_of(queue), job_ids))

    def pause(self, queue: str) -> None:
        """Pause stage ``queue`` across the fleet (every partition): from now on no worker
        leases a job from it — procflow's lease scripts check it, atomically — while the jobs
        it holds run to the end; its waiting jobs stay where they are. Workers blocked on an
        empty stage give back a job that arrives and look again within half a second. The
        TypeScript library's workers do not know of it."""
        self.drive(self.core.set_paused(self.stages_of(queue), True))

    def resume(self, queue: str) -> None:
        """Let stage ``queue``'s workers lease again (each within half a second)."""
        self.drive(self.core.set_paused(self.stages_of(queue), False))

    def paused(self) -> dict[str, bool]:
        """Per queue (by the names given): whether it is paused."""
        return self.drive(self.core.paused())

    def forget(self) -> None:
        """Remove procflow's records of this flow (its registry entry, node heartbeats,
        stats, finished lists and cancel requests); jobs and queues are left alone."""
        for part in self.partitions:
            Registry(part.store).unregister(part.name, list(part.definition.stages))

    def acl_rules(self) -> list[str]:
        """The Redis ACL rules a user needs to run this flow, and nothing more: give them to
        ``ACL SETUSER name on >password …``. See docs/configuration.md."""
        rules = [
            rule
            for part in self.partitions
            for rule in acl.acl_rules(part.name, [s.keys for s in part.definition.stages.values()])
        ]
        return list(dict.fromkeys(rules))

    def counts(self) -> dict[str, dict[str, int]]:
        """Per queue: waiting, processing, delayed, parked and failed (of a partitioned
        flow: summed over the partitions, by the queue names given)."""
        return self.drive(self.core.counts())

    @property
    def lookup_attributes(self) -> tuple[LookupT, ...]:
        return self.core.lookup_attributes  # type: ignore[return-value]

    # -- the sync driver of the core ----------------------------------------------------

    def drive(self, operation: Operation[T]) -> T:
        """Run a ``core`` operation: each round's store calls on the partitions' stores, side by
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
                return getattr(self.partitions[c.partition].store, c.method)(*c.args)
            except Exception as exc:  # with capture: the round's outcome, settled by the core
                if capture:
                    return exc
                raise

        return call

    # -- partitions ----------------------------------------------------------------------

    def locate(self, job_ids: Sequence[str]) -> dict[str, Partition]:
        """Job id → the partition holding it (one EXISTS per id and partition, the
        partitions side by side); ids found nowhere are left out."""
        return self.drive(self.core.locate(job_ids))

    def partition_of(self, job_id: str) -> Partition | None:
        """The partition that holds job ``job_id`` (None when there is no such job)."""
        return self.locate([job_id]).get(job_id)

    def part_of(self, job_id: str) -> Partition | None:
        """Deprecated: ``partition_of``."""
        warnings.warn(
            "Flow.part_of is deprecated; use Flow.partition_of", DeprecationWarning, stacklevel=2
        )
        return self.partition_of(job_id)

    @property
    def parts(self) -> tuple[Partition, ...]:
        """Deprecated: ``partitions``."""
        warnings.warn(
            "Flow.parts is deprecated; use Flow.partitions", DeprecationWarning, stacklevel=2
        )
        return self.partitions

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
        self, part: Partition, job_ids: Sequence[str], resolve_children: bool = False
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

    # -- workers -------------------------------------------------------------------------

    def _add_group(
        self,
        stages: list[Stage],
        kind: WorkerKind,
        fn: Callable[[Any], Any] | None,
        count: int,
        options: WorkerKwargs,
    ) -> list[WorkerHandle]:
        label = self._label(stages[0])
        where = f"workers for {label!r}"
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"the worker function for {label!r} is not callable")
        built = WorkerOptions.build(where, **options)
        group = WorkerGroup(
            self,
            stages[0],
            kind,
            fn,
            count,
            self.partitioning,
            built,
            stages=tuple(stages),
        )
        self.groups.append(group)
        own = self.supervisor
        if own is not None and own.running:  # workers added while the flow's own one runs
            for handle in group.handles:
                handle.adopt(own)
        return group.handles

    def _label(self, stage: Stage) -> str:
        """A stage's name as the user wrote it (without a partition's tag)."""
        return self.partitioning.short(stage.name)

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
        stages = self.stages_of(queue if isinstance(queue, str) else queue.name)
        label = self._label(stages[0])
        if stages[0].is_parent:
            raise ConfigurationError(
                f"queue {label!r} has children: use create_parent_workers for it"
            )
        if not callable(fn):
            raise ConfigurationError(f"the worker function for {label!r} is not callable")
        return self._add_group(stages, WORKER, fn, count, options)

    def create_parent_workers(
        self,
        queue: QueueSpec[Any, Any] | str,
        count: int = 1,
        **options: Unpack[WorkerKwargs],
    ) -> list[WorkerHandle]:
        """Workers for a stage with children: they create the child jobs from
        ``children:Q:params`` and pass the parent on once every child is done."""
        stages = self.stages_of(queue if isinstance(queue, str) else queue.name)
        if not stages[0].is_parent:
            raise ConfigurationError(
                f"queue {self._label(stages[0])!r} has no children to fan out to"
            )
        return self._add_group(stages, PARENT, None, count, options)

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
        parents = self.stages_of(
            parent_queue if isinstance(parent_queue, str) else parent_queue.name
        )
        child = child_name if isinstance(child_name, str) else child_name.name
        if child not in parents[0].children:
            raise UnknownQueueError(
                keys.child_queue(self._label(parents[0]), child),
                [self._label(self.stages[c]) for c in parents[0].children.values()],
            )
        stages = [
            part.definition.stages[parent.children[child]]
            for part, parent in zip(self.partitions, parents, strict=True)
        ]
        if not callable(fn):
            raise ConfigurationError(
                f"the worker function for {self._label(stages[0])!r} is not callable"
            )
        return self._add_group(stages, WORKER, fn, count, options)

    @property
    def handles(self) -> list[WorkerHandle]:
        return [h for g in self.groups for h in g.handles]

    # -- the supervisor ------------------------------------------------------------------

    @property
    def supervised(self) -> bool:
        """Whether a supervisor runs now: the flow's own, or one that adopted its workers."""
        sups = [self.supervisor, *(h.supervisor for h in self.handles)]
        return any(sup is not None and sup.running for sup in sups)

    def ensure_supervisor(self) -> Supervisor:
        """The flow's own supervisor, made with default options when it has none."""
        if self.supervisor is None:
            self.supervisor = Supervisor(self)
        return self.supervisor

    def start_all(self, **supervisor_options: Any) -> Supervisor:
        """The flow connects; every worker process connects; then every worker starts. The
        supervisor doing it (made with ``supervisor_options``) is the flow's own:
        ``flow.supervisor``, stopped by ``stop_all``."""
        if self.supervisor is None or not self.supervisor.running:
            self.supervisor = Supervisor(self, **supervisor_options)
        self.supervisor.start()
        return self.supervisor

    def stop_all(self) -> None:
        """Every worker stops (finishing its job); then every worker disconnects; the flow's
        connection closes last (the flow's own supervisor: the one ``start_all`` made). A
        ``Supervisor(flow)`` built elsewhere and running the flow's workers is stopped too,
        with a DeprecationWarning: stop it with its own ``stop()``."""
        if self.supervisor is not None:
            self.supervisor.stop()
        others = {
            id(sup): sup
            for sup in (h.supervisor for h in self.handles)
            if isinstance(sup, Supervisor) and sup is not self.supervisor and sup.running
        }
        if others:
            warnings.warn(
                "flow.stop_all() stops only the supervisor flow.start_all() made; stop a "
                "Supervisor(flow) you built with its own stop() (or use it as a context manager)",
                DeprecationWarning,
                stacklevel=2,
            )
        for sup in others.values():
            sup.stop()
