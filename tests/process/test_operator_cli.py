"""``procflow`` for operators: every command from a Redis URL alone, no app import."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow.operator.ops import Operator
from tests.conftest import wait_until
from tests.process.test_cli import Output
from tests.process.test_cli_first_hour import PROCFLOW, ROOT, environment, run
from tests.process.test_operate import job_options, shop, with_workers

pytestmark = pytest.mark.usefixtures("no_leaks")


def cli_json(url: str, *args: str) -> Any:
    out = run(PROCFLOW, *args, "--json", url=url)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_the_operator_commands_need_only_a_redis_url(redis_url: str, r: redis.Redis) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    with flow.start_all(node_id="node-a") as sup:
        ids = flow.create_jobs([job_options(a) for a in (2, 13, 4)])
        sup.wait(ids, timeout=60)

        (row,) = cli_json(redis_url, "flows")
        assert row["flow"] == "shop" and row["stages"] == 3 and row["failed"] == 1
        assert row["nodes"] == 1 and row["workers"] == 3
        assert row["eta_seconds"] == 0.0  # every job left the flow: nothing to run

        (status,) = cli_json(redis_url, "status", "shop")
        stages = {s["name"]: s for s in status["stages"]}
        assert list(stages) == ["check", "charge", "charge:card"]
        assert stages["check"]["failed"] == 1 and stages["check"]["totals"]["completed"] == 2
        assert stages["charge:card"]["parent"] == "charge"
        assert [n["node"] for n in status["nodes"]] == ["node-a"]
        assert status["eta_seconds"] == 0.0 and stages["check"]["backlog_seconds"] == 0.0

        human = run(PROCFLOW, "status", "shop", url=redis_url)
        assert human.returncode == 0, human.stderr
        for text in ("flow shop", "charge:card", "node-a", "check#0", "oldest waiting"):
            assert text in human.stdout, human.stdout

        detail = cli_json(redis_url, "job", ids[1])
        assert detail["state"] == "failed" and detail["fields"]["amount"] == 13
        shown = run(PROCFLOW, "job", ids[1], url=redis_url)
        assert "thirteen is refused" in shown.stdout and "attempts and errors" in shown.stdout

        found = cli_json(redis_url, "jobs", "shop", "--by", "user=1")
        assert [j["id"] for j in found] == [ids[1], ids[2]]
        page = cli_json(redis_url, "jobs", "shop", "--queue", "check", "--state", "failed")
        assert page["total"] == 1 and [j["id"] for j in page["jobs"]] == [ids[1]]

        out = run(PROCFLOW, "retry", "shop", "check", url=redis_url)
        assert out.returncode == 0 and "put 1 job(s) back" in out.stdout, out.stdout
        wait_until(
            lambda: (
                r.llen("queue:check:failed") == 1
                and r.hget(flow.job_key(ids[1]), "attempts:check") == b"2"
            ),
            timeout=30,
            what="the retried job to fail again",
        )

    refused = run(PROCFLOW, "purge", "shop", url=redis_url)  # no terminal, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert r.exists(flow.job_key(ids[0])) == 1
    out = run(PROCFLOW, "purge", "shop", "--failed", "check", "--yes", url=redis_url)
    assert out.returncode == 0 and "deleted 1 failed job(s)" in out.stdout, out.stdout
    out = run(PROCFLOW, "purge", "shop", "--yes", url=redis_url)
    assert out.returncode == 0, out.stderr
    assert r.keys("*") == []


def test_unknown_flows_and_jobs_are_one_error_line(redis_url: str) -> None:
    op = Operator(redis_url)  # registered by hand: no supervisor needed for these errors
    op.registry.register("shop", shop(redis_url).definition.describe())
    op.close()
    out = run(PROCFLOW, "status", "nope", url=redis_url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines() == [
        "error: no flow 'nope' is registered in this Redis; registered flows: shop"
    ]
    out = run(PROCFLOW, "job", "01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b", url=redis_url)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "no such job" in out.stderr
    out = run(PROCFLOW, "jobs", "shop", "--by", "nobody=1", url=redis_url)
    assert out.returncode == 2 and "nobody" in out.stderr, out.stderr
    out = run(PROCFLOW, "cancel", "01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b", url=redis_url)
    assert out.returncode == 1, out.stderr


def test_status_watch_redraws_until_ctrl_c(redis_url: str) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    with flow.start_all():
        proc = subprocess.Popen(
            [sys.executable, "-m", PROCFLOW, "status", "shop", "--watch", "--interval", "0.2"],
            cwd=ROOT,
            env=environment(redis_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = Output(proc)
        flow.create_job(job_options(2))
        wait_until(lambda: output.has("completed"), timeout=20, what="the live view")
        views = lambda: sum(line.startswith("-- ") for line in output.lines)  # noqa: E731
        wait_until(lambda: views() >= 3, timeout=20, what="the view redrawn")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            masks = [
                line
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith(("State", "Sig", "Shd"))
            ]
            proc.kill()
            proc.wait()
            raise AssertionError(f"no exit after SIGINT: {masks}\n{output.text()}") from None
        assert code == 0, output.text()
    assert "charge:card" in output.text()
