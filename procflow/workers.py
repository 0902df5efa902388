"""Worker groups and handles: what ``create_workers`` returns.

A :class:`WorkerGroup` is the definition (stage, function, count, limits); each of its
:class:`WorkerHandle` objects stands for one worker process slot. The supervisor owns the
processes; a handle's connect/start/stop/disconnect ask the flow's supervisor to act on that
one worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, SupervisorStateError

if TYPE_CHECKING:
    from .flow import Flow, Stage
    from .supervisor.core import Supervisor

__all__ = ["WorkerGroup", "WorkerHandle"]


@dataclass(eq=False)
class WorkerGroup:
    """``count`` workers of one kind on one stage."""

    flow: Flow[Any, Any, Any]
    stage: Stage
    kind: str  # "worker" or "parent"
    fn: Callable[[Any], Any] | None
    count: int
    lock_time: float
    block_timeout: float
    max_jobs_per_child: int | None = None
    max_age: float | None = None
    handles: list[WorkerHandle] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = f"workers for {self.stage.name!r}"
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 0:
            raise ConfigurationError(f"{where}: count must be an int >= 0, got {self.count!r}")
        if not self.lock_time >= 1:
            raise ConfigurationError(f"{where}: lock_time must be at least 1 second")
        if not self.block_timeout > 0:
            raise ConfigurationError(f"{where}: block_timeout must be > 0 seconds")
        if self.max_jobs_per_child is not None and self.max_jobs_per_child < 1:
            raise ConfigurationError(f"{where}: max_jobs_per_child must be >= 1")
        if self.max_age is not None and not self.max_age > 0:
            raise ConfigurationError(f"{where}: max_age must be > 0 seconds")
        self.set_count(self.count)

    @property
    def name(self) -> str:
        return self.stage.name

    def set_count(self, count: int) -> None:
        """Change how many processes this group runs (before the supervisor starts)."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigurationError(f"workers for {self.stage.name!r}: count must be >= 0")
        self.count = count
        self.handles = [WorkerHandle(self, i) for i in range(count)]


class WorkerHandle:
    """One worker process slot: ``connect`` spawns and connects it, ``start`` lets it take
    jobs, ``stop`` lets it finish its job and stop, ``disconnect`` ends the process."""

    def __init__(self, group: WorkerGroup, index: int) -> None:
        self.group = group
        self.index = index

    @property
    def name(self) -> str:
        """``queue#index``, as in logs."""
        return f"{self.group.stage.name}#{self.index}"

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} {self.state}>"

    def _supervisor(self) -> Supervisor:
        flow = self.group.flow
        if flow.supervisor is None:
            from .supervisor import Supervisor

            flow.supervisor = Supervisor(flow)
        return flow.supervisor

    @property
    def state(self) -> str:
        sup = self.group.flow.supervisor
        return sup.worker_state(self) if sup is not None else "new"

    @property
    def pid(self) -> int | None:
        sup = self.group.flow.supervisor
        return sup.worker_pid(self) if sup is not None else None

    def connect(self, timeout: float = 30.0) -> None:
        self._supervisor().connect_worker(self, timeout)

    def start(self, timeout: float = 30.0) -> None:
        self._supervisor().start_worker(self, timeout)

    def stop(self, timeout: float | None = None) -> None:
        sup = self.group.flow.supervisor
        if sup is None:
            raise SupervisorStateError(f"worker {self.name} was never started")
        sup.stop_worker(self, timeout)

    def disconnect(self, timeout: float = 30.0) -> None:
        sup = self.group.flow.supervisor
        if sup is None:
            raise SupervisorStateError(f"worker {self.name} was never connected")
        sup.disconnect_worker(self, timeout)
