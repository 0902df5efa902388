"""What a running supervisor shows the outside: its heartbeat (with the flow registry) and,
when asked for, its Prometheus endpoint. Started once the workers run, stopped before the
flow's connection closes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..definition import FlowDefinition
from ..partitions import Partitioning, StoreMap
from ..store.registry import Registry
from .heartbeat import Heartbeat
from .manager import Manager
from .process import SupervisorState, WorkerTable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from loguru import Logger

    from .metrics import MetricsServer

__all__ = ["Observers"]


class Observers:
    """The heartbeat (unless ``heartbeat`` is False) and the metrics endpoint (when
    ``metrics_port`` is given; 0 picks a free port) of one supervisor."""

    def __init__(
        self,
        flow: str,
        partitioning: Partitioning,
        definitions: Sequence[FlowDefinition],
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
        self.flow = flow
        self.partitioning = partitioning
        #: one per partition (an unpartitioned flow has one): each registers and beats
        self.definitions = list(definitions)
        self.manager = manager
        self.table = table
        self.node = node
        self.state = state
        self.log = log
        self.want_heartbeat = heartbeat
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.heartbeats: list[Heartbeat] = []
        #: every partition's heartbeat beats on one thread
        self._beating = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics: MetricsServer | None = None

    @property
    def heartbeat(self) -> Heartbeat | None:
        """The (first partition's) heartbeat, while it runs."""
        return self.heartbeats[0] if self.heartbeats else None

    def start(self, stores: StoreMap) -> None:
        if self.want_heartbeat:
            count = len(self.definitions)
            for index, definition in enumerate(self.definitions):
                whose = {"partitionOf": self.flow, "partition": index, "partitions": count}
                beat = Heartbeat(
                    Registry(stores.of_flow(definition)),
                    definition,
                    self.table,
                    node=self.node,
                    state=self.state,
                    tally=self.manager.tallies,
                    cancel=lambda ids: self.manager.call(lambda: self.manager.cancel(ids)),
                    log=self.log,
                    partition=index,
                    described=whose if self.partitioning.tagged else None,
                )
                beat.start()
                self.heartbeats.append(beat)
            self._beating.clear()
            self._thread = threading.Thread(
                target=self._beat_all, name="procflow-heartbeat", daemon=True
            )
            self._thread.start()
        if self.metrics_port is not None:
            # prometheus_client (7 MiB) is loaded only by a supervisor that serves metrics
            from .metrics import MetricsServer, NodeCollector  # noqa: PLC0415

            collector = NodeCollector(
                self.flow,
                self.partitioning,
                [(d, stores.of_flow(d)) for d in self.definitions],
                self.node,
                self.table,
                self.manager.tallies,
                self.state,
                lambda: None if self.manager.budget is None else self.manager.budget.moves,
            )
            self.metrics = MetricsServer(collector, self.metrics_port, self.metrics_host)
            port = self.metrics.start()
            self.log.info("metrics on http://{}:{}/metrics", self.metrics_host, port)

    @property
    def port(self) -> int | None:
        """The metrics endpoint's port, once it listens."""
        return self.metrics.port if self.metrics is not None else None

    def _beat_all(self) -> None:
        interval = self.heartbeats[0].interval
        while not self._beating.wait(interval):
            for beat in self.heartbeats:
                beat.beat_safely()

    def stop(self) -> None:
        self._beating.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for beat in self.heartbeats:
            beat.stop()
        self.heartbeats = []
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
