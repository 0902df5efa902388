"""Worker groups and handles: what ``create_workers`` returns.

A ``WorkerGroup`` is the definition (stage, function, how many, their options); each of
its ``WorkerHandle`` objects stands for one worker process. The supervisor owns the
processes; a handle's connect/start/stop/disconnect ask its owner's supervisor (a
``WorkerController``) to act on that one worker. This module knows the controller only
as a Protocol, so it sits below the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .definition import FlowDefinition, Stage
from .errors import ConfigurationError, SupervisorStateError
from .settings import RedisSettings, WorkerOptions
from .worker.payload import WorkerPayload

__all__ = ["ControllerSource", "WorkerController", "WorkerGroup", "WorkerHandle"]

WORKER = "worker"
PARENT = "parent"


class WorkerController(Protocol):
    """What a handle needs from a supervisor."""

    def worker_state(self, handle: WorkerHandle) -> str: ...
    def worker_pid(self, handle: WorkerHandle) -> int | None: ...
    def connect_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...
    def start_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...
    def stop_worker(self, handle: WorkerHandle, timeout: float | None = ...) -> None: ...
    def disconnect_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...


class ControllerSource(Protocol):
    """Where a group finds its supervisor: the Flow."""

    @property
    def supervisor(self) -> WorkerController | None: ...

    def ensure_supervisor(self) -> WorkerController: ...


def _check_count(where: str, count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigurationError(f"{where}: count must be an int >= 0, got {count!r}")
    return count


@dataclass(eq=False)
class WorkerGroup:
    """``count`` workers of one kind (``worker`` or ``parent``) on one stage."""

    owner: ControllerSource
    stage: Stage
    kind: str
    fn: Callable[[Any], Any] | None
    count: int
    options: WorkerOptions = field(default_factory=WorkerOptions)
    handles: list[WorkerHandle] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.options.check(self.where)
        self.set_count(self.count)

    @property
    def where(self) -> str:
        return f"workers for {self.stage.name!r}"

    @property
    def name(self) -> str:
        return self.stage.name

    def payload(
        self, definition: FlowDefinition, redis: RedisSettings, holder: str, log_level: str
    ) -> WorkerPayload:
        """What each worker process of this group is told (the supervisor sends it; inline
        test runs build their loops from it too)."""
        stage = self.stage
        return WorkerPayload(
            flow=definition.name,
            redis=redis,
            stage=stage,
            kind=self.kind,
            fn=self.fn,
            options=self.options,
            key_ttl=definition.key_ttl,
            holder=holder,
            routes=definition.routes(),
            child_stages=definition.child_keys(stage) if self.kind == PARENT else {},
            log_level=log_level,
        )

    def set_count(self, count: int) -> None:
        """Change how many processes this group runs (before the supervisor starts)."""
        self.count = _check_count(self.where, count)
        self.handles = [WorkerHandle(self, i) for i in range(count)]


class WorkerHandle:
    """One worker process: ``connect`` spawns and connects it, ``start`` lets it take jobs,
    ``stop`` lets it finish its job and stop, ``disconnect`` ends the process."""

    def __init__(self, group: WorkerGroup, index: int) -> None:
        self.group = group
        self.index = index

    @property
    def name(self) -> str:
        """``queue#index``, as in logs."""
        return f"{self.group.stage.name}#{self.index}"

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} {self.state}>"

    @property
    def state(self) -> str:
        sup = self.group.owner.supervisor
        return sup.worker_state(self) if sup is not None else "new"

    @property
    def pid(self) -> int | None:
        sup = self.group.owner.supervisor
        return sup.worker_pid(self) if sup is not None else None

    def connect(self, timeout: float = 30.0) -> None:
        self.group.owner.ensure_supervisor().connect_worker(self, timeout)

    def start(self, timeout: float = 30.0) -> None:
        self.group.owner.ensure_supervisor().start_worker(self, timeout)

    def stop(self, timeout: float | None = None) -> None:
        sup = self.group.owner.supervisor
        if sup is None:
            raise SupervisorStateError(f"worker {self.name} was never started")
        sup.stop_worker(self, timeout)

    def disconnect(self, timeout: float = 30.0) -> None:
        sup = self.group.owner.supervisor
        if sup is None:
            raise SupervisorStateError(f"worker {self.name} was never connected")
        sup.disconnect_worker(self, timeout)
