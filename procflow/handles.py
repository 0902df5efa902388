"""Worker groups and handles: what ``create_workers`` returns.

A ``WorkerGroup`` is the definition (stage, function, how many, their options); each of
its ``WorkerHandle`` objects stands for one worker process. The supervisor owns the
processes; a handle's connect/start/stop/disconnect ask its supervisor (a
``WorkerController``) to act on that one worker. A handle is told its supervisor when one
adopts it (``Supervisor(flow)`` adopts the flow's workers, ``flow.start_all`` makes one that
does), or is given one (``handle.connect(supervisor=sup)``); it never makes one. This module
knows the controller only as a Protocol, so it sits below the supervisor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .definition import FlowDefinition, Stage
from .errors import ConfigurationError, SupervisorStateError
from .partitions import Partitioning
from .settings import RedisSettings, WorkerOptions
from .worker.payload import PartitionStage, WorkerKind, WorkerPayload

__all__ = ["ControllerSource", "WorkerController", "WorkerGroup", "WorkerHandle", "WorkerKind"]

WORKER = WorkerKind.WORKER
PARENT = WorkerKind.PARENT


class WorkerController(Protocol):
    """What a handle needs from a supervisor."""

    @property
    def running(self) -> bool: ...
    def worker_state(self, handle: WorkerHandle) -> str: ...
    def worker_pid(self, handle: WorkerHandle) -> int | None: ...
    def connect_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...
    def start_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...
    def stop_worker(self, handle: WorkerHandle, timeout: float | None = ...) -> None: ...
    def disconnect_worker(self, handle: WorkerHandle, timeout: float = ...) -> None: ...


class ControllerSource(Protocol):
    """The group's owner (the Flow), asked for its own supervisor only by the deprecated
    ``handle.connect()`` of a worker no supervisor adopted."""

    def ensure_supervisor(self) -> WorkerController: ...


def _check_count(where: str, count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigurationError(f"{where}: count must be an int >= 0, got {count!r}")
    return count


@dataclass(eq=False)
class WorkerGroup:
    """``count`` workers of one kind (``WORKER`` or ``PARENT``) on one stage."""

    owner: ControllerSource
    stage: Stage
    kind: WorkerKind
    fn: Callable[[Any], Any] | None
    count: int
    #: how the flow names its partitions (a flow made without ``partitions=``: as given)
    partitioning: Partitioning
    options: WorkerOptions = field(default_factory=WorkerOptions)
    handles: list[WorkerHandle] = field(default_factory=list)
    #: the stage in each partition of the flow, in order (``stage`` is the first); empty:
    #: the flow has one, ``stage``
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            self.stages = (self.stage,)
        self.options.check(self.where)
        self.set_count(self.count)

    @property
    def where(self) -> str:
        return f"workers for {self.name!r}"

    @property
    def name(self) -> str:
        """The stage's name as the user wrote it (a partitioned flow's, without the tag)."""
        return self.partitioning.short(self.stage.name)

    def stage_in_partition(self, index: int) -> Stage:
        """The stage in partition ``index`` (a worker's status record says which it is
        in)."""
        return self.stages[index] if 0 <= index < len(self.stages) else self.stage

    def payload(
        self,
        flow: str,
        partitions: Sequence[tuple[FlowDefinition, RedisSettings]],
        holder: str,
        log_level: str,
    ) -> WorkerPayload:
        """What each worker process of this group is told (the supervisor sends it; inline
        test runs build their loops from it too): per partition, its stage, connection,
        routes and child stages."""
        naming = self.partitioning
        served = []
        for stage, (definition, redis) in zip(self.stages, partitions, strict=True):
            routes = definition.routes()
            # a result's nextQueue by the names the user wrote too
            routes.update({naming.short(name): w for name, w in list(routes.items())})
            served.append(
                PartitionStage(
                    stage=stage,
                    redis=redis,
                    routes=routes,
                    child_stages=definition.child_keys(stage) if self.kind == PARENT else {},
                    renames=naming.renames(definition),
                    names=tuple(map(naming.shown, stage.fields)),
                )
            )
        return WorkerPayload(
            flow=flow,
            kind=self.kind,
            fn=self.fn,
            options=self.options,
            key_ttl=partitions[0][0].key_ttl,
            holder=holder,
            partitions=served,
            log_level=log_level,
        )

    def set_count(self, count: int) -> None:
        """Change how many processes this group runs (before the supervisor starts)."""
        self.count = _check_count(self.where, count)
        self.handles = [WorkerHandle(self, i) for i in range(count)]


class WorkerHandle:
    """One worker process: ``connect`` spawns and connects it, ``start`` lets it take jobs,
    ``stop`` lets it finish its job and stop, ``disconnect`` ends the process. Each asks
    ``supervisor``: the one that adopted the worker, or the one given to ``connect``."""

    def __init__(self, group: WorkerGroup, index: int) -> None:
        self.group = group
        self.index = index
        #: the supervisor running this worker (None: none has adopted it yet)
        self.supervisor: WorkerController | None = None

    def adopt(self, supervisor: WorkerController) -> None:
        """``supervisor`` runs this worker from now on (the supervisor calls this). Raises
        SupervisorStateError while another supervisor runs it."""
        held = self.supervisor
        if held is not None and held is not supervisor and held.running:
            raise SupervisorStateError(
                f"worker {self.name} already runs under another supervisor; stop that one "
                "first (flow.stop_all() or its stop())"
            )
        self.supervisor = supervisor

    @property
    def name(self) -> str:
        """``queue#index``, as in logs."""
        return f"{self.group.name}#{self.index}"

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} {self.state}>"

    @property
    def state(self) -> str:
        sup = self.supervisor
        return sup.worker_state(self) if sup is not None else "new"

    @property
    def pid(self) -> int | None:
        sup = self.supervisor
        return sup.worker_pid(self) if sup is not None else None

    def connect(self, timeout: float = 30.0, *, supervisor: WorkerController | None = None) -> None:
        """Spawn and connect this worker under ``supervisor`` (which adopts it), else under
        the supervisor that adopted it. Without either (deprecated) the flow's own supervisor
        is made for it, as before, with a DeprecationWarning."""
        sup = supervisor or self.supervisor
        if sup is None:
            warnings.warn(
                f"worker {self.name} has no supervisor: handle.connect() made the flow's own "
                "one for it; give it one (handle.connect(supervisor=Supervisor(flow))), or "
                "make one first (Supervisor(flow) adopts the flow's workers)",
                DeprecationWarning,
                stacklevel=2,
            )
            sup = self.group.owner.ensure_supervisor()
        sup.connect_worker(self, timeout)

    def _supervisor(self, step: str) -> WorkerController:
        if self.supervisor is None:
            raise SupervisorStateError(
                f"worker {self.name} must be connected before it can {step}: it has no "
                "supervisor (handle.connect(supervisor=…), or flow.start_all())"
            )
        return self.supervisor

    def start(self, timeout: float = 30.0) -> None:
        self._supervisor("start").start_worker(self, timeout)

    def stop(self, timeout: float | None = None) -> None:
        self._supervisor("stop").stop_worker(self, timeout)

    def disconnect(self, timeout: float = 30.0) -> None:
        self._supervisor("disconnect").disconnect_worker(self, timeout)
