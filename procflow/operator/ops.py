"""The operator's view of a procflow deployment, from a Redis URL alone.

``Operator`` finds every registered flow and rebuilds it from its description (no app import),
and answers what the ``procflow`` command line and the dashboard show: per-stage counts and
rates, nodes and their workers, one job in full, a stage's jobs a page at a time, lookup
search; and does what they do: retry, cancel, delete, purge. Every read is bounded.

A stage's cost figures — job wall and CPU time, throughput, backlog in work-seconds, ETA —
come from the live nodes' heartbeats and the stats hashes, combined by the rules of
``procflow/cost.py``: no per-job read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import cost
from ..client.flow import Flow
from ..definition import FlowDefinition, Stage
from ..errors import ConfigurationError, UnknownFlowError, UnknownJobError
from ..ids import created_at
from ..partitions import Partition, Partitioning
from ..settings import RedisSettings
from ..store import jobfields, keys
from ..store.eviction import EvictionPolicy
from ..store.redis import Store
from ..store.registry import CANCELLED_MESSAGE, PAGE_STATES, Registry, StageStats

__all__ = ["PAGE_STATES", "EvictionPolicy", "JobPage", "Operator", "StageStatus", "flow_eta"]


@dataclass
class StageStatus:
    """One stage of a flow as ``procflow status`` shows it."""

    name: str
    parent: str | None
    waiting: int
    processing: int
    delayed: int
    parked: int
    failed: int
    #: completions per minute over the last five whole minutes
    done_per_min: float
    #: seconds the job at the head of the waiting list has waited in this stage (since it
    #: entered it; None: none waits, or it has no time: see ``Registry.oldest_waiting``)
    oldest_waiting_s: float | None
    totals: dict[str, int]
    completed_per_minute: list[int] = field(default_factory=list)
    failed_per_minute: list[int] = field(default_factory=list)
    #: completions per second over the last five whole minutes (the stats hashes)
    throughput_per_s: float = 0.0
    #: worker processes serving the stage on the live nodes (idle, running or starting)
    workers: int = 0
    #: the jobs measured by the live nodes (a decayed count: see ``procflow/cost.py``)
    jobs_measured: float = 0.0
    #: seconds a job ran (wall time), mean, p50 and p95; None until a job of it ran
    job_seconds_mean: float | None = None
    job_seconds_p50: float | None = None
    job_seconds_p95: float | None = None
    #: CPU seconds of the worker process while a job ran, mean and p95
    cpu_seconds_mean: float | None = None
    cpu_seconds_p95: float | None = None
    #: paused (``flow.pause``, ``procflow pause``): its workers lease nothing
    paused: bool = False
    #: (waiting + delayed + processing) times job_seconds_mean; 0 with nothing to run, None
    #: when there is and no job of the stage ran yet
    backlog_seconds: float | None = None
    #: backlog_seconds / workers; 0 with nothing to run, None when unknown or no worker
    eta_seconds: float | None = None

    @property
    def pending(self) -> int:
        """The jobs the stage still has to run: waiting, delayed and processing."""
        return self.waiting + self.delayed + self.processing


@dataclass
class JobPage:
    """A page of one stage's jobs in one state, with the jobs decoded."""

    flow: str
    queue: str
    state: str
    total: int
    start: int
    jobs: list[dict[str, Any]]
    scores: list[float]


class Operator:
    """Everything the CLI and the dashboard do, against one Redis. A partitioned flow is one
    flow here, under the name it was given: every read spans its partitions and shows the
    queue names the user wrote."""

    def __init__(self, redis: RedisSettings | str | None = None) -> None:
        settings = redis if isinstance(redis, RedisSettings) else RedisSettings.from_env(redis)
        self.redis = settings
        self.store = Store(settings)
        self.registry = Registry(self.store)
        self._flows: dict[str, Flow] = {}
        self._registries: dict[str, Registry] = {}

    def close(self) -> None:
        for flow in self._flows.values():
            flow.disconnect()
        for registry in self._registries.values():
            registry.store.close()
        self.registry.close()
        self.store.close()

    def registry_of(self, name: str) -> Registry:
        """The registry reads of flow (or partition) ``name``'s keys: on Redis Cluster, on
        its slot's master."""
        if not self.redis.cluster_nodes:
            return self.registry
        registry = self._registries.get(name)
        if registry is None:
            registry = self._registries[name] = Registry.of_flow(self.redis, name)
        return registry

    def _registry(self, part: Partition) -> Registry:
        return self.registry_of(part.name)

    # -- flows -----------------------------------------------------------------------------

    def flows(self) -> list[str]:
        """Every registered flow by its name, a partitioned one once (its partitions'
        records, ``{F#i}``, say whose they are)."""
        out: set[str] = set()
        partitioned: dict[str, bool] = {}  # F → whether {F#0}'s record says it is F's
        for name in self.registry.flows():
            found = keys.partition_of_name(name)
            if found is not None:
                base = found[0]
                if base not in partitioned:
                    first = keys.partition(base, 0)
                    data = self.registry_of(first).describe(first) or {}
                    partitioned[base] = data.get("partitionOf") == base
            out.add(found[0] if found is not None and partitioned[found[0]] else name)
        return sorted(out)

    def description(self, name: str) -> dict[str, Any] | None:
        """Flow ``name``'s registered description (a partitioned flow's: its first
        partition's, which says ``partitionOf``); None when no supervisor registered it."""
        own = self.registry_of(name).describe(name)
        if own is not None and own.get("partitionOf") is None:
            return own
        first = keys.partition(name, 0)
        data = self.registry_of(first).describe(first)
        if data is not None and data.get("partitionOf") == name:
            return data
        return own

    def flow(self, name: str) -> Flow:
        """The registered flow ``name``, rebuilt from its description (cached)."""
        flow = self._flows.get(name)
        if flow is None:
            flow = self._flows[name] = self.rebuild(name)
        return flow

    def rebuild(self, name: str, data: dict[str, Any] | None = None) -> Flow:
        """Flow ``name`` as described (``data``, else its registered description): a
        partitioned flow with its K partitions, under the names the user wrote."""
        data = data if data is not None else self.description(name)
        if data is None:
            raise UnknownFlowError(name, self.flows())
        d = FlowDefinition.from_description(data)
        if data.get("partitionOf") != name:
            return Flow(d.name, d.queues, d.lookup_attributes, redis=self.redis, key_ttl=d.key_ttl)
        count = int(data.get("partitions") or 1)
        queues = Partitioning.build(name, count, None).given(d.queues)
        return Flow(
            name,
            queues,
            d.lookup_attributes,
            redis=self.redis,
            key_ttl=d.key_ttl,
            partitions=count,
        )

    def adopt(self, flow: Flow) -> None:
        """Look at ``flow`` as it is defined in code (an APP given on the command line), even
        before any supervisor registered it."""
        old = self._flows.get(flow.name)
        self._flows[flow.name] = flow
        if old is not None and old is not flow:
            old.disconnect()

    def known(self, name: str) -> None:
        """Raise UnknownFlowError (listing the registered flows) unless ``name`` is a
        registered flow or an adopted one."""
        self.flow(name)

    def describe(self, name: str) -> dict[str, Any]:
        """The flow's description: queues with their next queues and children (a
        partitioned flow's as the user wrote them)."""
        flow = self.flow(name)
        return FlowDefinition.build(
            name, flow.queues, flow.definition.lookup_attributes, flow.key_ttl
        ).describe()

    def stage_order(self, name: str) -> list[str]:
        """Stage names in pipeline order: each top stage followed by its child stages."""
        flow = self.flow(name)
        top = [s for s in flow.stages.values() if s.parent is None]
        order = [n for s in top for n in (s.name, *s.children.values())]
        return [flow.partitioning.short(n) for n in order]

    # -- status ----------------------------------------------------------------------------

    def eviction(self) -> list[EvictionPolicy]:
        """The ``maxmemory-policy`` of every server holding data (each master of a cluster):
        any but ``noeviction`` may delete jobs in silence (see ``store.eviction``)."""
        return self.store.eviction_policies()

    def status(
        self, name: str, minutes: int = 60, nodes: list[dict[str, Any]] | None = None
    ) -> list[StageStatus]:
        """Per stage, in pipeline order: its counts, rate, oldest waiting age and totals
        (summed over the flow's partitions), and its cost figures from the live nodes'
        heartbeats (``nodes``, as ``nodes(name)`` returns them: read when not given)."""
        flow = self.flow(name)
        order = self.stage_order(name)
        stages = _summed([self._status(flow, part, order, minutes) for part in flow.partitions])
        return _costed(stages, self.nodes(name) if nodes is None else nodes)

    def _status(
        self, flow: Flow, part: Partition, order: list[str], minutes: int
    ) -> list[StageStatus]:
        split = flow.partitioning
        stages = [part.definition.stages[split.queue(part.index, n)] for n in order]
        registry = self._registry(part)
        counts = registry.store.counts([s.keys for s in stages])
        stats = registry.stats(part.name, [s.name for s in stages], minutes)
        waited = registry.oldest_waiting([s.keys for s in stages])
        paused = registry.store.paused([s.keys for s in stages])
        return [
            _stage_status(
                split.short(stage.name),
                None if stage.parent is None else split.short(stage.parent),
                c,
                st,
                age,
                stopped,
            )
            for stage, c, st, age, stopped in zip(
                stages, counts, stats, waited, paused, strict=True
            )
        ]

    def nodes(self, name: str) -> list[dict[str, Any]]:
        """The live nodes of flow ``name`` with their workers (their heartbeats; a node beats
        in every partition of a partitioned flow: the first partition's records are shown,
        with the stage names the user wrote)."""
        flow = self.flow(name)
        first = flow.partitions[0]
        found = sorted(self._registry(first).nodes(first.name), key=lambda n: str(n.get("node")))
        short = flow.partitioning.short
        for node in found:
            for worker in node.get("workers", []):
                if isinstance(worker.get("stage"), str):
                    worker["stage"] = short(worker["stage"])
            if isinstance(node.get("stages"), dict):
                node["stages"] = {short(str(k)): v for k, v in node["stages"].items()}
        return found

    def overview(self) -> list[dict[str, Any]]:
        """Every flow with its totals: stages, waiting, failed, done/min, nodes, workers,
        and its ETA (``flow_eta``)."""
        out = []
        for name in self.flows():
            try:
                nodes = self.nodes(name)
                stages = self.status(name, nodes=nodes)
            except ConfigurationError:
                continue  # an unreadable description: listed by `flows`, not summed here
            out.append(
                {
                    "flow": name,
                    "stages": len(stages),
                    "waiting": sum(s.waiting for s in stages),
                    "processing": sum(s.processing for s in stages),
                    "failed": sum(s.failed for s in stages),
                    "done_per_min": round(sum(s.done_per_min for s in stages), 1),
                    "nodes": len(nodes),
                    "workers": sum(len(n.get("workers", [])) for n in nodes),
                    "eta_seconds": flow_eta(stages),
                }
            )
        return out

    # -- jobs ------------------------------------------------------------------------------

    def _find(self, job_id: str, flow: str | None) -> tuple[Flow, Partition, Stage | None]:
        """The flow, partition and child stage (None: a job of the flow's own) of the job
        with this id: looked up in ``flow``, else in every registered flow."""
        names = [flow] if flow is not None else self.flows()
        for name in names:  # one round trip per partition (on a cluster each has its slot)
            f = self.flow(name)
            for part in f.partitions:
                children = [s for s in part.definition.stages.values() if s.parent is not None]
                home = self._registry(part).job_home(part.name, [s.keys for s in children], job_id)
                if home is not None:
                    child = next((s for s in children if s.name == home), None)
                    return f, part, child
        raise UnknownJobError(flow or "any registered flow", [job_id])

    def find_job(self, job_id: str, flow: str | None = None) -> tuple[str, str | None]:
        """(flow, child stage or None) of the job with this id: looked up in ``flow``, else in
        every registered flow (its own jobs and its child queues' jobs)."""
        f, _, child = self._find(job_id, flow)
        return f.name, None if child is None else f.partitioning.short(child.name)

    def job(self, job_id: str, flow: str | None = None) -> dict[str, Any]:
        """One job in full: its fields decoded (children resolved), where it is now, and per
        stage its attempts and error history."""
        f, part, child = self._find(job_id, flow)
        registry = self._registry(part)
        if child is None:
            found = f.jobs_in(part, [job_id], resolve_children=True)
            stages = [s.keys for s in part.definition.top_stages]
        else:
            [(key, _, raw)] = registry.job_hashes(child.keys, [job_id])
            found = [f.decode(key, job_id, raw)] if raw else []
            stages = [child.keys]
        if not found:
            raise UnknownJobError(f.name, [job_id])
        job = found[0]
        short = f.partitioning.short
        places = [(short(q), state) for q, state in registry.locate(stages, job_id)]
        return {
            "flow": f.name,
            "queue": None if child is None else short(child.name),
            "id": job_id,
            "state": _job_state(job, places),
            "places": [{"queue": q, "state": s} for q, s in places],
            "createdAt": created_at(job_id),
            "fields": job,
        }

    def jobs_by(self, name: str, attribute: str, value: str, limit: int = 100) -> list[Any]:
        """Jobs of flow ``name`` whose lookup attribute has ``value`` (as text, the way the
        lookup list is named), newest last, at most ``limit`` (from every partition, ordered
        by the creation time in their ids, to the millisecond)."""
        f = self.flow(name)
        if attribute not in f.lookup_attributes:
            f.get_jobs_by_key(attribute, value)  # raises UnknownLookupAttributeError
        found = [
            job
            for part in f.partitions
            for job in f.jobs_in(
                part, self._registry(part).lookup_ids(part.name, attribute, value, limit)
            )
        ]
        return sorted(found, key=lambda j: created_at(str(j.get(keys.ID))) or 0.0)[-limit:]

    def page(self, name: str, queue: str, state: str, start: int = 0, count: int = 50) -> JobPage:
        """Jobs ``start`` … ``start + count - 1`` of one stage list, decoded (of a
        partitioned flow: its partitions' lists one after the other): a page costs the same
        for a list of ten as for one of millions."""
        f = self.flow(name)
        start, count = max(0, start), max(1, min(count, 500))
        total = 0
        jobs: list[dict[str, Any]] = []
        scores: list[float] = []
        for part, stage in zip(f.partitions, f.stages_of(queue), strict=True):
            registry = self._registry(part)
            want = count - len(jobs)
            page = registry.page(stage.keys, state, max(0, start - total), max(1, want))
            if want > 0 and start < total + page.total:
                hashes = registry.job_hashes(stage.keys, page.ids)
                jobs += [
                    f.decode(key, i, raw) if raw else {"id": i, "gone": True}
                    for key, i, raw in hashes
                ]
                scores += page.scores
            total += page.total
        return JobPage(name, f.partitioning.short(queue), state, total, start, jobs, scores)

    # -- actions ---------------------------------------------------------------------------

    def pause(self, name: str, queue: str, pause: bool = True) -> None:
        """Pause (or resume) stage ``queue`` of flow ``name`` on every node."""
        flow = self.flow(name)
        if pause:
            flow.pause(queue)
        else:
            flow.resume(queue)

    def retry(self, name: str, queue: str, job_ids: Sequence[str] | None = None) -> list[str]:
        """Failed jobs of ``queue`` (all, or these) back on its waiting list."""
        return self.flow(name).retry_failed(queue, job_ids)

    def cancel(self, job_id: str, flow: str | None = None) -> tuple[str, str]:
        """Cancel one job: (outcome, queue). ``cancelled``: it was waiting, delayed or parked
        and is now marked cancelled; ``running``: the node running it was asked to stop it
        (within a heartbeat, about two seconds); ``absent``: it is not pending anywhere (done
        already, say)."""
        f, part, child = self._find(job_id, flow)
        stages = [child.keys] if child is not None else [s.keys for s in part.definition.top_stages]
        outcome, queue = self._registry(part).cancel(stages, job_id, CANCELLED_MESSAGE)
        return outcome, f.partitioning.short(queue)

    def delete(self, job_id: str, flow: str | None = None) -> bool:
        f, _, _ = self._find(job_id, flow)
        return f.delete_job(job_id)

    def purge_failed(self, name: str, queue: str) -> int:
        """Delete every job on ``queue``'s failed list (hash, lookups, children)."""
        f = self.flow(name)
        ids = f.failed_jobs(queue)
        return sum(1 for i in ids if f.delete_job(i))

    def purge_flow(self, name: str) -> int:
        """Delete everything of flow ``name`` (each partition's): its jobs, lookup lists, its
        stages' lists and locks, and procflow's records of it. Returns how many keys went."""
        f = self.flow(name)
        removed = 0
        for part in f.partitions:
            registry = self._registry(part)
            stages = list(part.definition.stages.values())
            removed += registry.purge(part.name, [s.keys for s in stages])
            registry.unregister(part.name, [s.name for s in stages])
        self._flows.pop(name, None)
        f.disconnect()
        return removed


def _costed(stages: list[StageStatus], nodes: list[dict[str, Any]]) -> list[StageStatus]:
    """``stages`` with their cost figures: the nodes' decayed job costs added up per stage,
    the workers serving each counted, then backlog and ETA (``procflow/cost.py``)."""
    fleet = cost.by_stage(nodes)
    for s in stages:
        c, s.workers = fleet.get(s.name, (cost.JobCost(), 0))
        s.jobs_measured = round(c.jobs, 3)
        s.job_seconds_mean = _seconds(c.wall_mean)
        s.job_seconds_p50 = _seconds(c.wall_quantile(0.5))
        s.job_seconds_p95 = _seconds(c.wall_quantile(0.95))
        s.cpu_seconds_mean = _seconds(c.cpu_mean)
        s.cpu_seconds_p95 = _seconds(c.cpu_quantile(0.95))
        backlog = cost.backlog_seconds(s.pending, s.job_seconds_mean)
        s.backlog_seconds = None if backlog is None else round(backlog, 3)
        eta = cost.eta_seconds(backlog, s.workers)
        s.eta_seconds = None if eta is None else round(eta, 3)
    return stages


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def flow_eta(stages: Sequence[StageStatus]) -> float | None:
    """Seconds until the flow has run what it holds (``cost.flow_eta``: the stages as a
    pipeline, in order); None when a stage on the way has work and no ETA."""
    found = cost.flow_eta(
        [cost.StageWork(s.name, s.parent, s.pending, s.job_seconds_mean, s.workers) for s in stages]
    )
    return None if found is None else round(found, 3)


def _stage_status(
    name: str,
    parent: str | None,
    c: dict[str, int],
    st: StageStats,
    oldest: float | None,
    paused: bool,
) -> StageStatus:
    return StageStatus(
        paused=paused,
        name=name,
        parent=parent,
        waiting=c["waiting"],
        processing=c["processing"],
        delayed=c["delayed"],
        parked=c["parked"],
        failed=c["failed"],
        done_per_min=round(st.rate(5), 1),
        throughput_per_s=round(st.rate(5) / 60, 3),
        oldest_waiting_s=round(oldest, 1) if oldest is not None and c["waiting"] else None,
        totals=st.totals,
        completed_per_minute=st.completed_per_minute,
        failed_per_minute=st.failed_per_minute,
    )


def _summed(partitions: list[list[StageStatus]]) -> list[StageStatus]:
    """The stages of a flow's partitions (the same shape each) as one flow's: counts,
    rates, totals and per-minute counts summed, the oldest waiting age the largest."""

    def added(lists: list[list[int]]) -> list[int]:
        width = max((len(x) for x in lists), default=0)
        return [sum(x[i] for x in lists if i < len(x)) for i in range(width)]

    out = []
    for same in zip(*partitions, strict=True):
        ages = [s.oldest_waiting_s for s in same if s.oldest_waiting_s is not None]
        totals: dict[str, int] = {}
        for s in same:
            for what, n in s.totals.items():
                totals[what] = totals.get(what, 0) + n
        out.append(
            StageStatus(
                name=same[0].name,
                parent=same[0].parent,
                waiting=sum(s.waiting for s in same),
                processing=sum(s.processing for s in same),
                delayed=sum(s.delayed for s in same),
                parked=sum(s.parked for s in same),
                failed=sum(s.failed for s in same),
                done_per_min=round(sum(s.done_per_min for s in same), 1),
                throughput_per_s=round(sum(s.throughput_per_s for s in same), 3),
                oldest_waiting_s=max(ages) if ages else None,
                totals=totals,
                paused=all(s.paused for s in same),
                completed_per_minute=added([s.completed_per_minute for s in same]),
                failed_per_minute=added([s.failed_per_minute for s in same]),
            )
        )
    return out


def _job_state(job: dict[str, Any], places: list[tuple[str, str]]) -> str:
    if job.get(keys.CANCELLED) is True:
        return "cancelled"
    if job.get(keys.DONE) is True:
        return "failed" if job.get(keys.FAILED) is True else _done_state(job)
    for queue, state in places:
        if state != "failed":
            return f"{state} in {queue}"
    return "unknown (in no list: being moved, or its lists expired)"


def as_json(value: Any) -> Any:
    """Dataclasses of this module as plain data (for ``--json``)."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def _done_state(job: dict[str, Any]) -> str:
    """A job that left its flow without failing: ``done``, or, when a parent stage passed it
    on though some children failed (``on_child_failure="mark"``), says how many."""
    failed = jobfields.failed_children(job)
    if failed:
        return f"done, with {len(failed)} failed child job{'s' if len(failed) > 1 else ''}"
    return "done"


def where_now(flow: Flow, job: dict[str, Any], start: str | None = None) -> str:
    """Where ``job`` of ``flow`` is now, from its fields alone (no list is walked, so a
    page of jobs costs nothing more): ``done``, ``failed in Q``, ``cancelled in Q``,
    ``processing in Q`` (a lease holds it), ``parked in Q (N children pending)``, ``to retry
    in Q (N failed attempts)`` (waiting or delayed before its next attempt), ``waiting in Q``.
    Q is the stage after its ``completed-queue`` (the QueueSpec's next queue; a result's
    ``nextQueue`` is not stored, so such a job shows as ``sent on from Q`` until a stage
    leases it), else ``start`` (a child job's queue), else the flow's first stage. Stage
    names are shown as the user wrote them (a partition's prefix left out)."""
    split = flow.partitioning

    def short(name: Any) -> Any:
        return split.short(name) if isinstance(name, str) else name

    stages = {short(name): stage for name, stage in flow.stages.items()}
    if job.get("gone"):
        return "gone (its hash expired or was deleted)"
    if job.get(keys.FAILED) is True or job.get(keys.CANCELLED) is True:
        what = "cancelled" if job.get(keys.CANCELLED) is True else "failed"
        return f"{what} in {short(job.get(keys.FAILED_QUEUE))}"
    if job.get(keys.DONE) is True:
        return _done_state(job)
    fields = {_field_as_given(split, f): v for f, v in job.items()}
    for name in stages:
        if jobfields.is_leased(fields, name):
            return f"processing in {name}"
    completed = short(job.get(keys.COMPLETED_QUEUE))
    if completed:
        after = stages.get(completed)
        if after is None or not after.spec.next_queue:
            return f"sent on from {completed}"
        here = short(after.spec.next_queue)
    else:
        here = short(start) if start else short(flow.definition.top_stages[0].name)
    pending = jobfields.pending_children(fields, here)
    if pending > 0:
        return f"parked in {here} ({pending} children pending)"
    errors = jobfields.errors(fields, here)
    if errors:
        return f"to retry in {here} ({len(errors)} failed attempt{'s' if len(errors) > 1 else ''})"
    return f"waiting in {here}"


def _field_as_given(split: Partitioning, name: str) -> str:
    """A job field named after a partition's stage (``lease:{pay#3}.check``) as the user
    wrote it (``lease:check``)."""
    prefix, sep, rest = name.partition(":")
    return f"{prefix}{sep}{split.short(rest)}" if sep else name
