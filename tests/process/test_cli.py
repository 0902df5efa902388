"""``python -m procflow.supervisor`` as operators run it: a subprocess and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import redis

from procflow import Flow, QueueSpec
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("no_leaks")


def run_cli(*args: str, url: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if url:
        env["PROCFLOW_REDIS_URL"] = url
    return subprocess.Popen(
        [sys.executable, "-m", "procflow.supervisor", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Output:
    """Collects a subprocess's output lines in a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        self.thread.join(30)
        return "".join(self.lines)

    def has(self, marker: str) -> bool:
        return any(marker in line for line in self.lines)


def cli_flow(url: str) -> Flow:
    return Flow("cli", [QueueSpec("work", attributes_to_get=["sleep"])], redis_url=url)


def tree(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def test_help_explains_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "procflow.supervisor", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for text in (
        "APP",
        "path/to/file.py:attribute",
        "--version",
        "--redis-url",
        "--workers",
        "QUEUE=N",
        "auto",
        "--log-level",
        "SIGTERM",
        "second SIGINT",
        "--drain-timeout",
    ):
        assert text in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nomodule_xyz:flow"], "cannot import 'nomodule_xyz'"),
        (["tests.process.apps"], "module:attribute"),
        (["tests.process.apps:nothing"], "has no attribute"),
        (["tests.process.apps:prepare"], "not a Flow: prepare(job) takes arguments"),
        (["tests/process/apps.py:plain_flow"], "has no workers"),
        (["tests/process/nothere.py:flow"], "does not exist"),
        (["tests.process.apps:cli_flow", "--workers", "nope=2"], "unknown queue 'nope'"),
        (["tests.process.apps:cli_flow", "--workers", "work=many"], "must be a number or 'auto'"),
        (["tests.process.apps:plain_flow"], "has no workers"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    redis_url: str, args: list[str], message: str
) -> None:
    proc = run_cli(*args, url=redis_url)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert message in out


def test_unreachable_redis_exits_1_naming_the_address() -> None:
    proc = run_cli("tests.process.apps:cli_flow", "--redis-url", "redis://127.0.0.1:1/0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "127.0.0.1:1" in out


def test_sigterm_mid_run_finishes_in_flight_jobs_and_loses_nothing(
    redis_url: str, r: redis.Redis
) -> None:
    flow = cli_flow(redis_url)
    ids = flow.create_jobs([{"sleep": 0.2} for _ in range(40)])
    proc = run_cli("tests.process.apps:cli_flow", "--workers", "work=3", url=redis_url)
    try:
        wait_until(
            lambda: sum(1 for j in flow.get_jobs(ids) if j.get("done")) >= 4,
            timeout=30,
            what="a few jobs done",
        )
        workers = tree(proc.pid)
        assert len(workers) == 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out and "supervisor stopped" in out
    jobs = {j["id"]: j for j in flow.get_jobs(ids)}
    waiting = {i.decode() for i in r.lrange("queue:work:waiting", 0, -1)}
    assert r.llen("queue:work:processing") == 0
    assert r.keys("lock:*") == []
    for job_id in ids:
        assert jobs[job_id].get("done") is True or job_id in waiting, jobs[job_id]
        assert "failed" not in jobs[job_id]
    assert waiting, "the run was stopped mid-way, some jobs should still wait"
    assert not [
        p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    ]


def test_second_sigint_puts_running_jobs_back_at_once(redis_url: str, r: redis.Redis) -> None:
    flow = cli_flow(redis_url)
    ids = flow.create_jobs([{"sleep": 30} for _ in range(4)])
    proc = run_cli("tests.process.apps:cli_flow", "--workers", "work=2", url=redis_url)
    output = Output(proc)
    try:
        wait_until(lambda: r.llen("queue:work:processing") == 2, timeout=30, what="2 jobs running")
        wait_until(lambda: len(r.keys("lock:work:*")) == 2, timeout=10, what="2 locks")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: output.has("SIGINT received"), timeout=10, what="the first SIGINT")
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        out = output.text()
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "second signal" in out
    assert r.llen("queue:work:processing") == 0
    assert sorted(i.decode() for i in r.lrange("queue:work:waiting", 0, -1)) == sorted(ids)
    for job in flow.get_jobs(ids):
        assert "failed" not in job and "done" not in job
        assert job.get("attempts:work", 0) == 0  # a job put back is not a failed attempt
