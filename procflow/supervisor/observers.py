"""What a running supervisor shows the outside: its heartbeat (with the flow registry) and,
when asked for, its Prometheus endpoint. Started once the workers run, stopped before the
flow's connection closes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..definition import FlowDefinition
from ..store.redis import Store
from ..store.registry import Registry
from .heartbeat import Heartbeat
from .manager import Manager
from .process import SupervisorState, WorkerTable

if TYPE_CHECKING:
    from collections.abc import Callable

    from loguru import Logger

    from .metrics import MetricsServer

__all__ = ["Observers"]


class Observers:
    """The heartbeat (unless ``heartbeat`` is False) and the metrics endpoint (when
    ``metrics_port`` is given; 0 picks a free port) of one supervisor."""

    def __init__(
        self,
        definition: FlowDefinition,
        manager: Manager,
        table: WorkerTable,
        *,
        node: str,
        state: Callable[[], SupervisorState],
        log: Logger,
        heartbeat: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        self.definition = definition
        self.manager = manager
        self.table = table
        self.node = node
        self.state = state
        self.log = log
        self.want_heartbeat = heartbeat
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.heartbeat: Heartbeat | None = None
        self.metrics: MetricsServer | None = None

    def start(self, store: Store) -> None:
        if self.want_heartbeat:
            self.heartbeat = Heartbeat(
                Registry(store),
                self.definition,
                self.table,
                node=self.node,
                state=self.state,
                tally=self.manager.tallies,
                cancel=lambda ids: self.manager.call(lambda: self.manager.cancel(ids)),
                log=self.log,
            )
            self.heartbeat.start()
        if self.metrics_port is not None:
            # prometheus_client (7 MiB) is loaded only by a supervisor that serves metrics
            from .metrics import MetricsServer, NodeCollector  # noqa: PLC0415

            collector = NodeCollector(
                self.definition, self.node, self.table, store, self.manager.tallies, self.state
            )
            self.metrics = MetricsServer(collector, self.metrics_port, self.metrics_host)
            port = self.metrics.start()
            self.log.info("metrics on http://{}:{}/metrics", self.metrics_host, port)

    @property
    def port(self) -> int | None:
        """The metrics endpoint's port, once it listens."""
        return self.metrics.port if self.metrics is not None else None

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
