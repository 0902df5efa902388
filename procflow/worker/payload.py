"""What a worker process is told once, when it starts (sent with cloudpickle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..definition import Stage
from ..settings import RedisSettings, WorkerOptions
from ..store.keys import StageKeys

__all__ = ["WorkerPayload"]


@dataclass
class WorkerPayload:
    """Everything a worker process needs. ``kind`` is ``worker`` (runs ``fn``) or ``parent``
    (fans out to the stage's children); ``holder`` is the supervisor's name in lock values;
    ``routes`` maps every queue name to its waiting list (a result's ``nextQueue``);
    ``child_stages`` the child name to its keys (a parent stage)."""

    flow: str
    redis: RedisSettings
    stage: Stage
    kind: str
    fn: Callable[[Any], Any] | None
    options: WorkerOptions
    key_ttl: int
    holder: str
    routes: dict[str, str] = field(default_factory=dict)
    child_stages: dict[str, StageKeys] = field(default_factory=dict)
    log_level: str = "INFO"
    #: the worker's name (``queue#index``), set in the process
    worker: str = ""

    @property
    def is_parent(self) -> bool:
        return self.kind == "parent"
