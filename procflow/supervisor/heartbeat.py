"""The supervisor's heartbeat thread: what this node is doing, written to Redis for operators.

Every ``interval`` seconds it writes the node's record (``procflow:F:node:NODE``, with a time
to live of a few intervals: a dead node's record expires by itself), looks at the flow's
cancel requests and stops the workers of this node that run a cancelled job, and once a
minute trims per-minute counts older than a day. Redis being away only skips a beat.

Per stage the record carries what its jobs cost on this node (``cost``: jobs measured, wall
and CPU sums and histograms), decayed so that it follows the work (``cost.Decayed``: a
job's weight halves every minute); the operator adds up the live nodes' figures.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from ..cost import Decayed
from ..definition import FlowDefinition
from ..errors import RedisRefusedError, RedisUnavailableError
from ..store.registry import Registry
from ..version import __version__
from ..worker.status import Activity, read_status
from .process import SupervisorState, WorkerProcess, WorkerState, WorkerTable
from .tally import StageTally

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["HEARTBEAT_INTERVAL", "Heartbeat", "worker_record", "worker_state"]

#: seconds between heartbeats; a record lives for ``HEARTBEAT_TTL_BEATS`` of them
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TTL_BEATS = 5
_TRIM_EVERY = 60.0


def worker_state(w: WorkerProcess, activity: Activity, stopping: bool) -> str:
    """idle, running, paused, starting, draining, stopping, restarting or stopped."""
    if w.gone:
        return "restarting" if w.respawn_at is not None else "stopped"
    if w.state in (WorkerState.NEW, WorkerState.SPAWNED, WorkerState.CONNECTED):
        return "starting"
    busy = activity.holds_job
    if stopping or w.status.stop or w.state.ended:
        return "draining" if busy else "stopping"
    if activity is Activity.PAUSED:
        return "paused"
    return "running" if busy else "idle"


def worker_record(
    w: WorkerProcess, stopping: bool, restarts: int, partition: int = 0
) -> dict[str, Any]:
    """One worker as its node's heartbeat shows it (in partition ``partition``'s record, under
    that partition's stage name)."""
    view = read_status(w.status)
    state = worker_state(w, view.activity, stopping)
    running = state in ("running", "draining") and view.job
    rss = cpu = None
    if w.ps is not None and not w.gone:
        with contextlib.suppress(psutil.Error):
            rss = int(w.ps.memory_info().rss)
            cpu = round(float(w.ps.cpu_percent(None)), 1)  # since the previous beat
    since = time.time() - (time.monotonic() - view.started) if running else None
    return {
        "name": w.name,
        "stage": w.handle.group.stage_in_partition(partition).name,
        "pid": None if w.gone else w.pid,
        "state": state,
        "job": view.job if running else None,
        "since": round(since, 3) if since is not None else None,
        "rss": rss,
        "cpu": cpu,
        "jobs": view.jobs,
        "restarts": restarts,
    }


class Heartbeat:
    """Beats for one supervisor. ``tally`` gives the node's sums per stage; ``cancel`` stops
    the workers holding any of the given job ids (run on the manager thread)."""

    def __init__(
        self,
        registry: Registry,
        definition: FlowDefinition,
        table: WorkerTable,
        *,
        node: str,
        state: Callable[[], SupervisorState],
        tally: Callable[[], dict[str, StageTally]],
        cancel: Callable[[set[str]], list[str]],
        log: Logger,
        extra: Callable[[], dict[str, Any]] = dict,
        interval: float = HEARTBEAT_INTERVAL,
        partition: int = 0,
        described: dict[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.definition = definition
        #: which partition of a partitioned flow this heartbeat speaks for
        self.partition = partition
        #: added to the flow's description (a partition says whose it is)
        self.described = dict(described or {})
        self.table = table
        self.node = node
        self.state = state
        self.tally = tally
        self.cancel = cancel
        self.log = log
        self.extra = extra
        self.interval = interval
        self.started = time.time()
        self.host = socket.gethostname()
        self._next_trim = 0.0
        self._failing = False
        #: per stage (its group's name), what its jobs cost here, decayed
        self._costs: dict[str, Decayed] = {}

    def start(self) -> None:
        """Register the flow and beat once; the caller (``observers.Observers``, one thread
        for every partition's heartbeat) calls ``beat_safely`` every ``interval``."""
        description = {**self.definition.describe(), **self.described, "version": __version__}
        with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
            self.registry.register(self.definition.name, description)
        self.beat()

    def stop(self) -> None:
        """Remove this node's record (it would expire anyway); the caller stopped beating."""
        with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
            self.registry.forget_node(self.definition.name, self.node)

    def beat_safely(self) -> None:
        try:
            self.beat()
        except Exception:  # a beat is news: never let one bad beat end the thread
            self.log.exception("heartbeat failed; going on")

    def record(self) -> dict[str, Any]:
        """This node's record: who and where, then every worker."""
        stopping = self.state() is SupervisorState.STOPPING
        tallies = self.tally()
        now = time.monotonic()
        costs = {
            name: self._costs.setdefault(name, Decayed()).update(t.cost(), now)
            for name, t in tallies.items()
        }
        restarts = {name: t.restarts for name, t in tallies.items()}
        workers = [
            worker_record(w, stopping, restarts.get(w.handle.group.name, 0), self.partition)
            for w in self.table
        ]
        named = {
            w.handle.group.name: w.handle.group.stage_in_partition(self.partition).name
            for w in self.table
        }
        return {
            "node": self.node,
            "host": self.host,
            "pid": psutil.Process().pid,
            "startedAt": round(self.started, 3),
            "at": round(time.time(), 3),
            "version": __version__,
            "state": self.state().value,
            "workers": workers,
            "stages": {
                named.get(name, name): {
                    "jobs": t.jobs,
                    "restarts": t.restarts,
                    "ended": dict(t.ended),
                    # what its jobs cost here (none yet: no entry)
                    **({"cost": costs[name].as_record()} if costs[name].jobs > 0 else {}),
                }
                for name, t in tallies.items()
            },
            **self.extra(),
        }

    def beat(self) -> None:
        name = self.definition.name
        try:
            ttl = int(self.interval * HEARTBEAT_TTL_BEATS * 1000)
            wanted = self.registry.beat(name, self.node, self.record(), ttl)
            if wanted:
                self.cancel(wanted)
            if time.monotonic() >= self._next_trim:
                self._next_trim = time.monotonic() + _TRIM_EVERY
                self.registry.trim_stats(name, list(self.definition.stages))
            if self._failing:
                self._failing = False
                self.log.info("heartbeat written again")
        except (RedisUnavailableError, RedisRefusedError) as exc:
            if not self._failing:
                self._failing = True
                self.log.warning("heartbeat not written: {}", exc)
