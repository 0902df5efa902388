"""Prometheus metrics of one supervisor (``--metrics-port``), with ``prometheus_client``.

No multiprocess mode: the supervisor already sees every outcome of its children (their status
records and their exits), so it sums them itself at scrape time. Names have the ``procflow_``
prefix, durations are in seconds, labels are flow, queue, outcome / state / kind and node —
never a job id. Queue depths are read from Redis at scrape time: a fixed number of commands
per stage, whatever the queues hold. The cost figures (``procflow_stage_*``: backlog in
work-seconds, ETA, job wall and CPU time) are the fleet's, from the live nodes' heartbeats
(two more commands per scrape) combined as ``procflow status`` does (``procflow/cost.py``):
every node of a flow exports the same values.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import cost
from ..cost import DURATION_BUCKETS
from ..definition import FlowDefinition
from ..errors import RedisRefusedError, RedisUnavailableError
from ..partitions import Partitioning
from ..store.redis import Store
from ..store.registry import Registry
from ..version import __version__
from ..worker.status import Outcome, read_status
from .heartbeat import worker_state
from .process import SupervisorState, WorkerTable
from .tally import StageTally

__all__ = ["MetricsServer", "NodeCollector"]


class NodeCollector(Collector):
    """Every metric of one node's supervisor, computed when Prometheus scrapes."""

    def __init__(
        self,
        flow: str,
        partitioning: Partitioning,
        partitions: Sequence[tuple[FlowDefinition, Store]],
        node: str,
        table: WorkerTable,
        tally: Callable[[], dict[str, StageTally]],
        state: Callable[[], SupervisorState],
        budget_moves: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.flow = flow
        #: queue names as the user wrote them (a partitioned flow's queue depths are summed
        #: over its partitions under them)
        self.partitioning = partitioning
        #: each partition's definition and the store serving it
        self.partitions = list(partitions)
        self.node = node
        self.table = table
        self.tally = tally
        self.state = state
        #: processes the core budget moved between stages (None: no budget)
        self.budget_moves = budget_moves

    def collect(self) -> Iterator[Metric]:
        flow, node = self.flow, self.node
        tallies = self.tally()
        yield from self._outcomes(flow, node, tallies)
        yield from self._workers(flow, node)
        yield from self._queues(flow)
        yield from self._eviction(flow)
        moved = self.budget_moves()
        if moved is not None:
            moves = CounterMetricFamily(
                "procflow_budget_moves",
                "Worker processes the core budget moved from one stage to another.",
                labels=["flow", "node"],
            )
            moves.add_metric([flow, node], moved)
            yield moves
        info = GaugeMetricFamily(
            "procflow_node_info", "This supervisor (value 1).", labels=["flow", "node", "version"]
        )
        info.add_metric([flow, node, __version__], 1)
        yield info

    def _outcomes(self, flow: str, node: str, tallies: dict[str, StageTally]) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "procflow_jobs",
            "Job attempts that ran on this node, by how they ended (completed, retried, "
            "failed for good, lost: the lease moved on before the result was written).",
            labels=["flow", "queue", "outcome", "node"],
        )
        exits = CounterMetricFamily(
            "procflow_worker_exits",
            "Worker processes that ended unplanned, by kind (crash, timeout, memory, cancel).",
            labels=["flow", "queue", "kind", "node"],
        )
        restarts = CounterMetricFamily(
            "procflow_worker_restarts",
            "Worker processes replaced.",
            labels=["flow", "queue", "node"],
        )
        renewals = CounterMetricFamily(
            "procflow_lease_renewals",
            "Lock renewals of running jobs, by result (held, lost).",
            labels=["flow", "queue", "result", "node"],
        )
        errors = CounterMetricFamily(
            "procflow_redis_errors",
            "Redis calls of the workers that failed (server away or refusing) and were retried.",
            labels=["flow", "queue", "node"],
        )
        durations = HistogramMetricFamily(
            "procflow_job_duration_seconds",
            "How long job attempts ran in the worker function.",
            labels=["flow", "queue", "node"],
        )
        cpu = HistogramMetricFamily(
            "procflow_job_cpu_seconds",
            "CPU time of the worker process (all its threads) while job attempts ran.",
            labels=["flow", "queue", "node"],
        )
        for queue, t in sorted(tallies.items()):
            for outcome in Outcome:
                jobs.add_metric([flow, queue, outcome.label, node], t.outcomes[outcome])
            for kind, n in sorted(t.ended.items()):
                exits.add_metric([flow, queue, kind, node], n)
            restarts.add_metric([flow, queue, node], t.restarts)
            renewals.add_metric([flow, queue, "held", node], t.renewals - t.renewals_lost)
            renewals.add_metric([flow, queue, "lost", node], t.renewals_lost)
            errors.add_metric([flow, queue, node], t.redis_errors)
            durations.add_metric([flow, queue, node], _buckets(t.durations), t.duration_sum)
            cpu.add_metric([flow, queue, node], _buckets(t.cpu), t.cpu_sum)
        yield from (jobs, exits, restarts, renewals, errors, durations, cpu)

    def _workers(self, flow: str, node: str) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "procflow_workers",
            "Worker processes by state.",
            labels=["flow", "queue", "state", "node"],
        )
        rss = GaugeMetricFamily(
            "procflow_worker_rss_bytes",
            "Resident memory of each worker process and what its job started.",
            labels=["flow", "queue", "worker", "node"],
        )
        stopping = self.state() is SupervisorState.STOPPING
        count: Counter[tuple[str, str]] = Counter()
        for w in self.table:
            queue = w.handle.group.name
            count[(queue, worker_state(w, read_status(w.status).activity, stopping))] += 1
            if w.ps is not None and not w.gone:
                with contextlib.suppress(psutil.Error):
                    rss.add_metric([flow, queue, w.name, node], w.ps.memory_info().rss)
        for (queue, state), n in sorted(count.items()):
            states.add_metric([flow, queue, state, node], n)
        yield from (states, rss)

    def _queues(self, flow: str) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "procflow_queue_jobs",
            "Jobs in each stage's lists, by state (read from Redis at scrape time).",
            labels=["flow", "queue", "state"],
        )
        age = GaugeMetricFamily(
            "procflow_queue_oldest_waiting_seconds",
            "How long the job at the head of each stage's waiting list has waited in that "
            "stage, since it entered it (0 when none waits).",
            labels=["flow", "queue"],
        )
        up = GaugeMetricFamily(
            "procflow_redis_up", "Whether the last scrape could read Redis.", labels=["flow"]
        )
        paused = GaugeMetricFamily(
            "procflow_stage_paused",
            "1 while the stage is paused (flow.pause, procflow pause): its workers lease nothing.",
            labels=["flow", "queue"],
        )
        depths: dict[str, Counter[str]] = {}
        ages: dict[str, float] = {}
        stopped: dict[str, bool] = {}
        first, first_store = self.partitions[0]
        try:  # a node beats in every partition: the first one's records are the fleet's
            nodes = Registry(first_store).nodes(first.name)
        except (RedisUnavailableError, RedisRefusedError):
            up.add_metric([flow], 0)
            yield up
            return
        for definition, store in self.partitions:
            stages = list(definition.stages.values())
            try:
                counts = store.counts([s.keys for s in stages])
                waited = Registry(store).oldest_waiting([s.keys for s in stages])
                flags = store.paused([s.keys for s in stages])
            except (RedisUnavailableError, RedisRefusedError):
                up.add_metric([flow], 0)
                yield up
                return
            for stage, numbers, seconds, flag in zip(stages, counts, waited, flags, strict=True):
                name = self.partitioning.short(stage.name)
                depths.setdefault(name, Counter()).update(numbers)
                ages[name] = max(ages.get(name, 0.0), seconds or 0.0)
                stopped[name] = stopped.get(name, True) and flag
        for name, numbers in depths.items():
            for state, n in numbers.items():
                depth.add_metric([flow, name, state], n)
            age.add_metric([flow, name], ages[name])
            paused.add_metric([flow, name], int(stopped[name]))
        up.add_metric([flow], 1)
        yield from (depth, age, up, paused)
        yield from self._costs(flow, depths, cost.by_stage(nodes, self.partitioning.short))

    def _costs(
        self,
        flow: str,
        depths: dict[str, Counter[str]],
        fleet: dict[str, tuple[cost.JobCost, int]],
    ) -> Iterator[Metric]:
        """Per stage, the fleet's cost figures: backlog in work-seconds and ETA (absent
        while unknown: jobs to run and none of the stage ran yet, or no worker for the ETA),
        job wall and CPU time (mean, p95)."""
        backlog = GaugeMetricFamily(
            "procflow_stage_backlog_seconds",
            "Work-seconds a stage has to run: (waiting + delayed + processing) jobs times "
            "the mean job wall time the live nodes measured (decayed, half-life 60 s); 0 "
            "when none is pending; absent while no job of the stage ran.",
            labels=["flow", "queue"],
        )
        eta = GaugeMetricFamily(
            "procflow_stage_eta_seconds",
            "The stage's backlog seconds over the worker processes serving it.",
            labels=["flow", "queue"],
        )
        job = GaugeMetricFamily(
            "procflow_stage_job_seconds",
            "A stage's job time on the live nodes (decayed): wall or cpu, mean or p95.",
            labels=["flow", "queue", "time", "stat"],
        )
        for name, numbers in sorted(depths.items()):
            c, workers = fleet.get(name, (cost.JobCost(), 0))
            pending = numbers["waiting"] + numbers["delayed"] + numbers["processing"]
            seconds = cost.backlog_seconds(pending, c.wall_mean)
            if seconds is not None:
                backlog.add_metric([flow, name], seconds)
            until = cost.eta_seconds(seconds, workers)
            if until is not None:
                eta.add_metric([flow, name], until)
            figures = (
                ("wall", "mean", c.wall_mean),
                ("wall", "p95", c.wall_quantile(0.95)),
                ("cpu", "mean", c.cpu_mean),
                ("cpu", "p95", c.cpu_quantile(0.95)),
            )
            for time_, stat, value in figures:
                if value is not None:
                    job.add_metric([flow, name, time_, stat], value)
        yield from (backlog, eta, job)

    def _eviction(self, flow: str) -> Iterator[Metric]:
        """Whether the server may evict keys: 1 per policy seen on the servers of the flow's
        partitions other than ``noeviction`` (``unknown``: unreadable, reads 0)."""
        unsafe = GaugeMetricFamily(
            "procflow_redis_eviction_unsafe",
            "1 when the server's maxmemory-policy may evict keys (jobs lost in silence at "
            "maxmemory): any policy but noeviction; the policy is a label (unknown: CONFIG GET "
            "and INFO refused).",
            labels=["flow", "policy"],
        )
        seen: dict[str, int] = {}
        for _definition, store in self.partitions:
            try:
                found = store.eviction_policy()
            except (RedisUnavailableError, RedisRefusedError):
                return  # procflow_redis_up says so
            seen[found.policy] = max(seen.get(found.policy, 0), int(found.unsafe))
        for policy, value in sorted(seen.items()):
            unsafe.add_metric([flow, policy], value)
        yield unsafe


def _buckets(counts: Sequence[int]) -> list[tuple[str, float]]:
    """A histogram over ``DURATION_BUCKETS`` as prometheus_client wants it: cumulative."""
    out, running = [], 0
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out


class MetricsServer:
    """The HTTP endpoint (``/metrics``) serving one collector, on a thread of its own."""

    def __init__(self, collector: NodeCollector, port: int, host: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self.port = port
        self.host = host
        self._server: Any = None

    def start(self) -> int:
        """Listen; returns the port (useful when ``port`` was 0)."""
        server, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
