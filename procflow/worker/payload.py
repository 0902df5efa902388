"""What a worker process is told once, when it starts (sent with cloudpickle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..definition import Stage
from ..settings import RedisSettings, WorkerOptions
from ..store.keys import StageKeys
from ..store.session import StageSession
from .batch import BatchSize

__all__ = ["PartitionStage", "WorkerKind", "WorkerPayload"]


class WorkerKind(str, Enum):
    """What a worker process does: ``worker`` runs the group's function, ``parent`` fans a
    stage with children out and waits for them."""

    WORKER = "worker"
    PARENT = "parent"

    def __str__(self) -> str:
        return self.value


@dataclass
class PartitionStage:
    """The worker's stage as it is in one partition of the flow (an unpartitioned flow has
    one): the stage, its connection settings, its routes for a result's ``nextQueue`` and,
    for a parent stage, its child stages."""

    stage: Stage
    redis: RedisSettings
    #: every queue name → its waiting list in this partition (a result's ``nextQueue``)
    routes: dict[str, str] = field(default_factory=dict)
    #: a parent stage's child names → their keys in this partition
    child_stages: dict[str, StageKeys] = field(default_factory=dict)
    #: result fields a user writes under the names given → this partition's own
    #: (``children:charge:params`` → ``children:{pay#3}.charge:params``)
    renames: dict[str, str] = field(default_factory=dict)
    #: what the worker function calls each of the stage's fields (empty: their own names)
    names: tuple[str, ...] = ()


@dataclass
class WorkerPayload:
    """Everything a worker process needs. ``kind`` is ``WorkerKind.WORKER`` (runs ``fn``) or
    ``WorkerKind.PARENT`` (fans out to the stage's children); ``holder`` is the supervisor's
    name in lock values; ``partitions`` the stage in every partition the worker serves, in
    order (at least one)."""

    flow: str
    kind: WorkerKind
    fn: Callable[[Any], Any] | None
    options: WorkerOptions
    key_ttl: int
    holder: str
    partitions: list[PartitionStage]
    log_level: str = "INFO"
    #: the worker's name (``queue#index``), set in the process
    worker: str = ""

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ValueError("a worker serves at least one partition")

    def open_sessions(self) -> list[StageSession]:
        """One stage session per partition (not connected yet), as the worker loop takes
        them."""
        return [
            StageSession.open(
                part.redis,
                part.stage.keys,
                fields=part.stage.fields,
                lock_ms=self.options.lock_ms,
                block_timeout=self.options.block_timeout,
                prefetch=BatchSize(part.stage.prefetch).count,
            )
            for part in self.partitions
        ]

    @property
    def is_parent(self) -> bool:
        return self.kind == WorkerKind.PARENT
