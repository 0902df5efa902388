"""The command lines as someone meets them in their first hour: help, --version, the APP
spellings they try, Redis not running, the demo, and the failed-job commands."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import procflow
from procflow import Flow, QueueSpec, Supervisor
from procflow.cpus import usable_cpus
from procflow.operator.cli import build_parser as procflow_parser
from procflow.operator.cli import demo_flow
from procflow.supervisor.__main__ import build_parser as supervisor_parser
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("no_leaks")

PROCFLOW = "procflow"
SUPERVISOR = "procflow.supervisor"
UNREACHABLE = "redis://127.0.0.1:1/0"


def environment(url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROCFLOW_REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # procflow and tests.process.apps from any directory
    if url:
        env["PROCFLOW_REDIS_URL"] = url
    return env


def run(
    module: str,
    *args: str,
    url: str | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        check=False,
        cwd=cwd,
        env=environment(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def db_99(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/99"


# -- 15: help and --version ---------------------------------------------------------------


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += all_parsers(sub)
    return found


@pytest.mark.parametrize("build", [procflow_parser, supervisor_parser])
def test_every_option_argument_and_subcommand_has_help(build: object) -> None:
    parser = build()  # type: ignore[operator]
    for each in all_parsers(parser):
        for action in each._actions:
            assert action.help and action.help != argparse.SUPPRESS, (each.prog, action.dest)
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                assert helped == set(action.choices), each.prog
        assert each.description, f"{each.prog} has no description"


@pytest.mark.parametrize(
    "argv",
    [
        [PROCFLOW, "--help"],
        [PROCFLOW, "demo", "--help"],
        [PROCFLOW, "status", "--help"],
        [PROCFLOW, "failed", "--help"],
        [SUPERVISOR, "--help"],
    ],
)
def test_help_is_plain_text(argv: list[str]) -> None:
    out = run(*argv)
    assert out.returncode == 0, out.stderr
    assert "``" not in out.stdout and ":mod:" not in out.stdout, out.stdout
    assert "--version" in out.stdout or argv[1:] != ["--help"]
    if argv == [PROCFLOW, "--help"]:
        for text in ("demo", "status", "failed", "python -m procflow.supervisor APP"):
            assert text in out.stdout


@pytest.mark.parametrize("module", [PROCFLOW, SUPERVISOR])
def test_version_prints_procflow_and_its_version(module: str) -> None:
    out = run(module, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"procflow {procflow.__version__}\n"


# -- 16: APP spellings ------------------------------------------------------------------

APP_SOURCE = """\
import os

from procflow import Flow, QueueSpec


def work(job):
    return {"pid": os.getpid(), "doubled": job["n"] * 2}


def check(job):
    raise AssertionError("a worker function must not be called as a factory")


flow = Flow("fileapp", [QueueSpec("work", attributes_to_get=["n"])])
flow.create_workers("work", work, count=2, block_timeout=1)
"""


def project(tmp_path: Path) -> Path:
    """``tmp/proj/myapp.py`` beside an empty ``tmp/elsewhere``."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "proj" / "myapp.py").write_text(APP_SOURCE)
    (tmp_path / "proj" / "broken.py").write_text("x = 1\n\nflow = undefined_name\n")
    (tmp_path / "proj" / "syntax.py").write_text("def broken(:\n    pass\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cwd", "app"),
    [("proj", "myapp.py:flow"), ("proj", "./myapp.py:flow"), (".", "proj/myapp.py:flow")],
)
def test_the_supervisor_runs_an_app_given_as_a_py_file(
    tmp_path: Path, redis_url: str, cwd: str, app: str
) -> None:
    base = project(tmp_path)
    flow = Flow("fileapp", [QueueSpec("work", attributes_to_get=["n"])], redis_url=redis_url)
    ids = flow.create_jobs([{"n": n} for n in range(6)])
    proc = subprocess.Popen(
        [sys.executable, "-m", SUPERVISOR, app, "--log-level", "WARNING"],
        cwd=base / cwd,
        env=environment(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            lambda: all(j.get("done") for j in flow.get_jobs(ids)) or proc.poll() is not None,
            timeout=60,
            what="the file app's jobs done",
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    jobs = flow.get_jobs(ids)
    assert [j["doubled"] for j in jobs] == [2 * n for n in range(6)]
    assert all(j["pid"] != proc.pid for j in jobs)  # done by the worker processes
    flow.disconnect()


@pytest.mark.parametrize("command", [[SUPERVISOR], [PROCFLOW, "status"], [PROCFLOW, "failed"]])
@pytest.mark.parametrize(
    ("cwd", "app", "expected"),
    [
        ("proj", "./nothere.py:flow", ["'./nothere.py' does not exist", "path/to/file.py:attr"]),
        ("elsewhere", "myapp:flow", ["cannot import 'myapp'", "current directory (", "PYTHONPATH"]),
        (
            "proj",
            "broken:flow",
            ["Traceback", 'broken.py", line 3, in <module>', "NameError: name 'undefined_name'"],
        ),
        ("proj", "syntax.py:flow", ['syntax.py", line 1', "SyntaxError"]),
        ("proj", "myapp.py:check", ["check(job) takes arguments, so it is not a factory"]),
    ],
)
def test_an_app_that_cannot_be_loaded_exits_2_with_what_to_do(
    tmp_path: Path, redis_url: str, command: list[str], cwd: str, app: str, expected: list[str]
) -> None:
    base = project(tmp_path)
    queue = ["work"] if command[-1] == "failed" else []
    out = run(*command, app, *queue, url=redis_url, cwd=base / cwd)
    assert out.returncode == 2, out.stdout + out.stderr
    for text in expected:
        assert text in out.stderr, out.stderr
    if cwd == "elsewhere":
        assert str(base / "elsewhere") in out.stderr
    assert "<frozen" not in out.stderr and "procflow/app.py" not in out.stderr
    assert "procflow/operator/cli.py" not in out.stderr and "__main__.py" not in out.stderr


# -- 17: Redis not running, or refusing ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [SUPERVISOR, "tests.process.apps:cli_flow"],
        [PROCFLOW, "status", "tests.process.apps:cli_flow"],
        [PROCFLOW, "failed", "tests.process.apps:cli_flow", "work"],
        [PROCFLOW, "demo", "--jobs", "2"],
    ],
)
def test_unreachable_redis_says_what_to_do(argv: list[str]) -> None:
    out = run(*argv, "--redis-url", UNREACHABLE)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    for text in ("127.0.0.1:1", "start a Redis server", "--redis-url", "$PROCFLOW_REDIS_URL"):
        assert text in out.stderr, out.stderr
    assert ("embedded" in out.stderr) == (argv[1] == "demo")


@pytest.mark.parametrize(
    "argv",
    [
        [SUPERVISOR, "tests.process.apps:cli_flow"],
        [PROCFLOW, "status", "tests.process.apps:cli_flow"],
        [PROCFLOW, "failed", "tests.process.apps:cli_flow", "work"],
        [PROCFLOW, "demo", "--jobs", "2"],
    ],
)
def test_a_database_beyond_the_servers_is_one_error_line(redis_url: str, argv: list[str]) -> None:
    out = run(*argv, "--redis-url", db_99(redis_url))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: Redis at 127.0.0.1:"), lines
    assert "DB index is out of range" in lines[0] and "'databases' setting" in lines[0]


BAD_URL = "redis://127.0.0.1:notaport/0"


@pytest.mark.parametrize("how", ["--redis-url", "$PROCFLOW_REDIS_URL"])
@pytest.mark.parametrize("command", [[SUPERVISOR], [PROCFLOW, "status"], [PROCFLOW, "failed"]])
def test_a_bad_redis_url_is_one_error_line_before_the_app_is_imported(
    tmp_path: Path, command: list[str], how: str
) -> None:
    base = project(tmp_path)
    queue = ["work"] if command[-1] == "failed" else []
    argv = [*command, "myapp.py:flow", *queue]
    env = environment()
    if how == "--redis-url":
        argv += ["--redis-url", BAD_URL]
    else:
        env["PROCFLOW_REDIS_URL"] = BAD_URL
    out = subprocess.run(
        [sys.executable, "-m", *argv],
        check=False,
        cwd=base / "proj",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: cannot parse Redis URL {BAD_URL!r}"), lines


# -- 18: the demo --------------------------------------------------------------------------


def table(out: str) -> dict[str, tuple[int, int]]:
    """The demo's per-stage table: stage → (completed, failed)."""
    rows = {}
    for line in out.splitlines():
        match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s+(\d+)\s*", line)
        if match:
            rows[match[1]] = (int(match[2]), int(match[3]))
    return rows


def test_the_demo_prints_a_table_per_stage_and_removes_its_keys(
    redis_url: str, r: redis.Redis
) -> None:
    out = run(PROCFLOW, "demo", "--jobs", "6", "--redis-url", redis_url)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"using Redis at {redis_url} (from --redis-url)", lines
    assert table(out.stdout) == {
        "prepare": (6, 0),
        "analyze": (6, 0),
        "analyze:primes": (6, 0),
        "analyze:collatz": (6, 0),
        "report": (6, 0),
    }
    assert re.search(r"child jobs\s+12\b", out.stdout), out.stdout
    assert "jobs/s = jobs / wall time from the first create to the last done" in out.stdout
    cores = usable_cpus() or 1
    assert f"{2 * cores + 3} worker processes" in out.stdout
    assert "one per core" in out.stdout
    assert "lease" not in out.stdout and "{" not in out.stdout
    assert len(lines) < 30, out.stdout
    assert "removed" in out.stdout
    assert r.keys() == []


def test_the_demo_says_it_uses_procflow_redis_url_and_keep_keeps_the_keys(
    redis_url: str, r: redis.Redis
) -> None:
    out = run(PROCFLOW, "demo", "--jobs", "3", "--keep", url=redis_url)
    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.splitlines()[0]
    assert first == f"using Redis at {redis_url} (from $PROCFLOW_REDIS_URL)", first
    batch = re.search(r"batch ([\w-]+)", out.stdout)
    assert batch, out.stdout
    assert r.llen(f"job:demo:batch:{batch[1]}") == 3
    assert len(r.keys("job:demo:*")) == 4  # 3 jobs and their lookup list
    assert len(r.keys("job:analyze:*")) == 6


def test_the_demo_with_no_jobs(redis_url: str, r: redis.Redis) -> None:
    out = run(PROCFLOW, "demo", "--jobs", "0", "--redis-url", redis_url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert table(out.stdout)["prepare"] == (0, 0)
    assert r.keys() == []


def test_the_demo_removes_only_its_own_jobs(redis_url: str, r: redis.Redis) -> None:
    other = demo_flow(redis_url)
    foreign = other.create_job({"size": 30, "batch": "another-run"})
    out = run(PROCFLOW, "demo", "--jobs", "4", "--redis-url", redis_url)
    assert out.returncode == 0, out.stdout + out.stderr
    job = other.get_job(foreign)
    assert job is not None, "another run's job was removed"
    children = {k.encode() for k in job.get("children:analyze:jobs", [])}
    child_ids = {k.rsplit(b":", 1)[1] for k in children}
    left = set(r.keys())
    assert left - children - {b"job:demo:" + foreign.encode()} - {
        b"job:demo:batch:another-run"
    } <= {k for k in left if k.startswith(b"queue:")}
    for key in (k for k in left if k.startswith(b"queue:")):
        kind = r.type(key)
        members = r.lrange(key, 0, -1) if kind == b"list" else r.zrange(key, 0, -1)
        assert set(members) <= {foreign.encode(), *child_ids}, (key, members)
    parents = {json.loads(r.hget(k, "parentJob") or b"null") for k in children}
    assert parents <= {f"job:demo:{foreign}"}
    other.disconnect()


def test_the_demo_on_the_embedded_server_needs_no_cleanup() -> None:
    out = run(PROCFLOW, "demo", "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("embedded server: "), out.stdout
    assert "removed" not in out.stdout and "kept" not in out.stdout


# -- 19: failed jobs --------------------------------------------------------------------


def cli_flow(url: str) -> Flow:
    return Flow("cli", [QueueSpec("work", attributes_to_get=["sleep"])], redis_url=url)


def fail(job: dict[str, object]) -> dict[str, object]:
    raise RuntimeError("boom")


def failed_jobs(redis_url: str, count: int) -> list[str]:
    """``count`` jobs failed in the CLI app's queue ``work`` (by a real worker)."""
    flow = cli_flow(redis_url)
    flow.create_workers("work", fail, block_timeout=1)
    with Supervisor(flow, log_level="ERROR") as sup:
        ids = flow.create_jobs([{"sleep": 0} for _ in range(count)])
        sup.wait(ids, timeout=60)
    assert sorted(flow.failed_jobs("work")) == sorted(ids)
    return ids


def test_failed_with_nothing_failed_says_so(redis_url: str) -> None:
    out = run(PROCFLOW, "failed", "tests.process.apps:cli_flow", "work", url=redis_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "no failed jobs in work\n"
    out = run(PROCFLOW, "failed", "tests.process.apps:cli_flow", "work", "--retry", url=redis_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "no failed jobs in work\n"


@pytest.mark.parametrize("form", ["after --retry", "before --retry"])
def test_retry_names_the_unknown_ids_and_still_retries_the_known(
    redis_url: str, r: redis.Redis, form: str
) -> None:
    ids = failed_jobs(redis_url, 3)
    wanted = [ids[0], "no-such-id", ids[2], "other-id"]
    args = ["--retry", *wanted] if form == "after --retry" else [*wanted, "--retry"]
    out = run(PROCFLOW, "failed", "tests.process.apps:cli_flow", "work", *args, url=redis_url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "put 2 job(s) back on 'work'" in out.stdout
    assert "not on the failed list of 'work': no-such-id, other-id" in out.stderr
    assert sorted(i.decode() for i in r.lrange("queue:work:waiting", 0, -1)) == sorted(
        [ids[0], ids[2]]
    )
    assert [i.decode() for i in r.lrange("queue:work:failed", 0, -1)] == [ids[1]]


def test_failed_lists_the_failed_jobs_with_their_messages(redis_url: str) -> None:
    ids = failed_jobs(redis_url, 2)
    out = run(PROCFLOW, "failed", "tests.process.apps:cli_flow", "work", url=redis_url)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.splitlines()
    assert sorted(line.split()[0] for line in listed) == sorted(ids)
    assert all("boom" in line for line in listed)
