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

__all__ = ["Lane", "WorkerKind", "WorkerPayload"]


class WorkerKind(str, Enum):
    """What a worker process does: ``worker`` runs the group's function, ``parent`` fans a
    stage with children out and waits for them."""

    WORKER = "worker"
    PARENT = "parent"

    def __str__(self) -> str:
        return self.value


@dataclass
class Lane:
    """One partition a worker serves (an unpartitioned flow has one): its stage, its
    connection settings, its routes for a result's ``nextQueue`` and its child stages."""

    stage: Stage
    redis: RedisSettings
    routes: dict[str, str] = field(default_factory=dict)
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
    name in lock values; ``routes`` maps every queue name to its waiting list (a result's
    ``nextQueue``); ``child_stages`` the child name to its keys (a parent stage)."""

    flow: str
    redis: RedisSettings
    stage: Stage
    kind: WorkerKind
    fn: Callable[[Any], Any] | None
    options: WorkerOptions
    key_ttl: int
    holder: str
    routes: dict[str, str] = field(default_factory=dict)
    child_stages: dict[str, StageKeys] = field(default_factory=dict)
    log_level: str = "INFO"
    #: the worker's name (``queue#index``), set in the process
    worker: str = ""
    #: every partition the worker serves, in order (empty: the one above)
    lanes: list[Lane] = field(default_factory=list)

    def all_lanes(self) -> list[Lane]:
        """The lanes, the first being the stage, routes and children above."""
        return self.lanes or [Lane(self.stage, self.redis, self.routes, self.child_stages)]

    def open_sessions(self) -> list[StageSession]:
        """One stage session per lane (not connected yet), as the worker loop takes them."""
        return [
            StageSession.open(
                lane.redis,
                lane.stage.keys,
                fields=lane.stage.fields,
                lock_ms=self.options.lock_ms,
                block_timeout=self.options.block_timeout,
                prefetch=lane.stage.prefetch,
            )
            for lane in self.all_lanes()
        ]

    @property
    def is_parent(self) -> bool:
        return self.kind == WorkerKind.PARENT
