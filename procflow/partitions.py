"""Partitioned flows: one flow spread over K hash tags, for a flow beyond one Redis shard.

Every flow has K >= 1 partitions. ``Flow("pay", queues, partitions=K)`` is K complete flows —
``{pay#0}`` … ``{pay#K-1}``, each with every queue named ``{pay#i}.QUEUE`` — so that on Redis
Cluster each partition's keys live in one slot and the partitions spread over the shards. Each
is an ordinary flow of the fixed layout (a TypeScript worker can serve one by its full names).
A ``Partition`` is one of them: its definition, its connection settings (pinned to its slot on
a cluster) and its store. A flow made without ``partitions=`` is one partition under its own
names (``Partitioning.tagged`` false). The names themselves are written in ``store.keys``.
Nothing here sends a command.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from .definition import FlowDefinition, QueueSpec, Stage
from .errors import ConfigurationError, CreateJobsError, EncodeError, RedisRefusedError
from .settings import RedisSettings
from .store import keys
from .store.records import NewJob
from .store.redis import Store

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "MAX_PARTITIONS",
    "Partition",
    "Partitioning",
    "StoreMap",
    "for_each",
    "settle_creates",
    "summed_counts",
]

#: the most partitions one flow may have
MAX_PARTITIONS = 1024
#: a parent job's fields about its children (``children:Q:…``)
_CHILD_FIELDS = ("params", "jobs", "failed", "pending")
T = TypeVar("T")
P = TypeVar("P")


@dataclasses.dataclass(frozen=True)
class Partitioning:
    """How a flow's jobs spread over its partitions: ``count`` tags of ``base``, a job going
    to the next one in turn, or — with ``key`` — to the one its option ``key``'s value
    hashes to (CRC-32 of the value's JSON text, the same in every process and language).

    Every flow has one. A flow made without ``partitions=`` is one partition that is not
    ``tagged``: its names are the ones the user wrote (the layout a TypeScript worker reads),
    and every renaming below is the identity."""

    base: str
    count: int
    key: str | None = None
    tagged: bool = True

    @classmethod
    def build(cls, name: str, count: object, key: object) -> Partitioning:
        """Checked: ``count`` None is a flow of one untagged partition."""
        if count is None:
            if key is not None:
                raise ConfigurationError("partition_key needs partitions=K")
            return cls(name, 1, None, tagged=False)
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not 1 <= count <= MAX_PARTITIONS
        ):
            raise ConfigurationError(
                f"flow {name!r}: partitions must be an int from 1 to {MAX_PARTITIONS}, "
                f"got {count!r}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(
                f"flow {name!r}: partition_key must be an option name, got {key!r}"
            )
        if "{" in name or "}" in name:
            raise ConfigurationError(
                f"flow {name!r}: a partitioned flow tags its names itself ({{NAME#i}}); "
                f"give it a name without braces, e.g. {name.strip('{}')!r}"
            )
        return cls(name, count, key)

    def tag(self, index: int) -> str:
        """Partition ``index``'s flow name (and hash tag): ``{pay#3}``."""
        return keys.partition(self.base, index) if self.tagged else self.base

    def queue(self, index: int, name: str) -> str:
        """The full name of queue ``name`` in partition ``index``: ``{pay#3}.check``."""
        return keys.partition_queue(self.base, index, name) if self.tagged else name

    def index_of(self, key: str) -> int:
        """The partition a key belongs to, by its tag (0 for a key of no partition)."""
        found = keys.partition_index(self.base, key, self.count) if self.tagged else None
        return found or 0

    def short(self, full: str) -> str:
        """A queue's name without its partition's tag (names without one come back as
        they are)."""
        return keys.queue_as_given(self.base, full) if self.tagged else full

    def shown(self, field: str) -> str:
        """A job field as the user sees it: a partition's ``children:{pay#3}.charge:jobs``
        is ``children:charge:jobs``."""
        return keys.field_as_given(self.base, field) if self.tagged else field

    def renames(self, definition: FlowDefinition) -> dict[str, str]:
        """In a partition: the fields a user writes under the queue names given
        (``children:charge:params``, in options or a worker's result) → the partition's
        own (``children:{pay#3}.charge:params``); none in an untagged flow."""
        pairs = (
            (keys.children_params_field(self.short(s.name)), keys.children_params_field(s.name))
            for s in definition.stages.values()
            if s.is_parent
        )
        return {given: own for given, own in pairs if given != own}

    def field(self, index: int, name: str, parents: set[str]) -> str:
        """A job field named by the queue names given (``children:fanout:jobs``, read by a
        later stage) → partition ``index``'s (``children:{pay#3}.fanout:jobs``)."""
        queue, _, suffix = name.removeprefix("children:").rpartition(":")
        if name.startswith("children:") and queue in parents and suffix in _CHILD_FIELDS:
            return f"children:{self.queue(index, queue)}:{suffix}"
        return name

    def given(self, queues: Sequence[QueueSpec[Any, Any]]) -> list[QueueSpec[Any, Any]]:
        """A partition's queues (read back from its description) as the user wrote them:
        ``definitions`` undone."""

        def back(spec: QueueSpec[Any, Any]) -> QueueSpec[Any, Any]:
            nxt = spec.next_queue
            return dataclasses.replace(
                spec,
                name=self.short(spec.name),
                next_queue=None if nxt is None else self.short(nxt),
                attributes_to_get=tuple(map(self.shown, spec.attributes_to_get)),
                children=tuple(back(c) for c in spec.children),
            )

        return [back(q) for q in queues]

    def definitions(
        self, queues: Sequence[QueueSpec[Any, Any]], lookup: Sequence[str], key_ttl: int
    ) -> tuple[FlowDefinition, ...]:
        """The K flows, each checked like any flow (an untagged flow: the one as written)."""
        if not self.tagged:
            return (FlowDefinition.build(self.base, queues, lookup, key_ttl),)
        for spec in queues:
            if isinstance(spec, QueueSpec) and ("{" in spec.name or "}" in spec.name):
                raise ConfigurationError(
                    f"flow {self.base!r}: queue {spec.name!r}: a partitioned flow tags its "
                    "queue names itself; write them without braces"
                )
        FlowDefinition.build(self.base, queues, lookup, key_ttl)  # the user's names checked
        parents = {q.name for q in queues if q.children}

        def fields(index: int, spec: QueueSpec[Any, Any]) -> tuple[str, ...]:
            return tuple(self.field(index, f, parents) for f in spec.attributes_to_get)

        def renamed(index: int, spec: QueueSpec[Any, Any]) -> QueueSpec[Any, Any]:
            nxt = spec.next_queue
            return dataclasses.replace(
                spec,
                name=self.queue(index, spec.name),
                next_queue=None if nxt is None else self.queue(index, nxt),
                attributes_to_get=fields(index, spec),
                children=tuple(
                    dataclasses.replace(c, attributes_to_get=fields(index, c))
                    for c in spec.children
                ),
            )

        return tuple(
            FlowDefinition.build(self.tag(i), [renamed(i, q) for q in queues], lookup, key_ttl)
            for i in range(self.count)
        )

    def chooser(self) -> Callable[[Mapping[str, Any]], int]:
        """A function picking the partition of a new job from its options."""
        count, key = self.count, self.key
        if count == 1:
            return lambda options: 0
        if key is None:
            turn = itertools.count()
            lock = threading.Lock()

            def next_in_turn(options: Mapping[str, Any]) -> int:
                with lock:
                    return next(turn) % count

            return next_in_turn

        def by_key(options: Mapping[str, Any]) -> int:
            if key not in options:
                raise EncodeError(
                    f"option {key!r}",
                    "is missing: it is this flow's partition_key, which picks the partition "
                    "a job goes to",
                )
            text = codec.encode(options[key])
            return zlib.crc32(text.encode()) % count

        return by_key


class Partition:
    """One partition of a flow (the whole of a flow made without ``partitions=``): its
    definition, its connection settings and its store, opened on first use."""

    def __init__(
        self,
        index: int,
        definition: FlowDefinition,
        redis: RedisSettings,
        logger: Logger,
        renames: Mapping[str, str] | None = None,
    ) -> None:
        self.index = index
        self.definition = definition
        self.redis = redis
        self.logger = logger
        #: option and result fields named as given → this partition's (``Partitioning.renames``)
        self.renames = dict(renames or {})
        self._store: Store | None = None

    def __repr__(self) -> str:
        return f"<Partition {self.definition.name!r}>"

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.redis)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class StoreMap:
    """A supervisor's connections: one store per partition (one for all where their
    settings are the same, as off a cluster), and which stage's keys each serves."""

    def __init__(self, partitions: Sequence[tuple[FlowDefinition, RedisSettings]]) -> None:
        self.settings = tuple(redis for _, redis in partitions)
        by_settings: dict[RedisSettings, Store] = {}
        self._of: dict[str, Store] = {}
        for definition, redis in partitions:
            store = by_settings.get(redis)
            if store is None:
                store = by_settings[redis] = Store(redis)
            for name in definition.stages:
                self._of[name] = store
        self.stores = list(by_settings.values())
        #: partition 0's store (the registry, cancel requests, unblocking)
        self.first = self.stores[0]

    @classmethod
    def of_partitions(cls, partitions: Sequence[Partition], socket_timeout: float) -> StoreMap:
        """Stores for ``partitions`` whose replies may take at most ``socket_timeout`` seconds
        (a supervisor's: a silent server must not hold up respawns and stops for long)."""
        return cls(
            [
                (
                    part.definition,
                    dataclasses.replace(
                        part.redis, socket_timeout=min(part.redis.socket_timeout, socket_timeout)
                    ),
                )
                for part in partitions
            ]
        )

    def of(self, stage: Stage) -> Store:
        """The store that serves ``stage``'s keys."""
        return self._of.get(stage.name, self.first)

    def of_flow(self, definition: FlowDefinition) -> Store:
        """The store that serves a partition's keys."""
        return self._of.get(next(iter(definition.stages)), self.first)

    def grouped(self, stages: Sequence[Stage]) -> list[tuple[Store, list[Stage]]]:
        """``stages`` by the store that serves them (each group one round trip)."""
        groups: dict[int, tuple[Store, list[Stage]]] = {}
        for stage in stages:
            store = self.of(stage)
            groups.setdefault(id(store), (store, []))[1].append(stage)
        return list(groups.values())

    def waiting_counts(self, stages: Sequence[Stage]) -> list[int]:
        """How many jobs wait in each stage (one round trip per store)."""
        counts = dict.fromkeys(range(len(stages)), 0)
        at = {id(stage): n for n, stage in enumerate(stages)}
        for store, group in self.grouped(stages):
            for stage, n in zip(group, store.waiting_counts([s.keys for s in group]), strict=True):
                counts[at[id(stage)]] = n
        return [counts[n] for n in range(len(stages))]

    def close(self) -> None:
        for store in self.stores:
            store.close()


def summed_counts(
    named: Sequence[tuple[str, Mapping[str, int]]], split: Partitioning
) -> dict[str, dict[str, int]]:
    """Per queue name as given, its counts summed over the partitions."""
    out: dict[str, dict[str, int]] = {}
    for name, counts in named:
        into = out.setdefault(split.short(name), {})
        for what, n in counts.items():
            into[what] = into.get(what, 0) + n
    return out


def settle_creates(
    jobs: Sequence[NewJob], groups: Sequence[Sequence[NewJob]], results: Sequence[Exception | None]
) -> None:
    """After each partition's share of a ``create_jobs`` was written (None) or not (the
    exception): an outage is raised as it is; refusals become one CreateJobsError that says
    which jobs were written, as one partition's would."""
    problems = [r for r in results if r is not None]
    if not problems:
        return
    for problem in problems:
        if not isinstance(problem, RedisRefusedError):
            raise problem
    created: set[str] = set()
    for group, result in zip(groups, results, strict=True):
        if result is None:
            created.update(job.id for job in group)
        elif isinstance(result, CreateJobsError):
            created.update(result.created)
    first = problems[0]
    refused = first.refused if isinstance(first, CreateJobsError) else first
    assert isinstance(refused, RedisRefusedError)
    raise CreateJobsError(
        refused,
        [job.id for job in jobs if job.id in created],
        [job.id for job in jobs if job.id not in created],
    )


def for_each(items: Sequence[P], fn: Callable[[P], T]) -> list[T]:
    """``fn`` of every item, run side by side when there are several (the partitions of a
    flow are read in parallel: on a cluster each is a round trip to its own shard)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), 16)) as pool:
        return list(pool.map(fn, items))
