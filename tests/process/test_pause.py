"""Pausing a stage fleet-wide (``flow.pause``): its workers lease nothing — the lease scripts
check ``queue:Q:paused`` — while what they hold runs to the end; its waiting jobs stay; a
resume lets them go on. Real workers on a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec, Supervisor
from procflow.aio import AsyncFlow
from tests.conftest import wait_until
from tests.helpers import metric, scrape

pytestmark = pytest.mark.usefixtures("no_leaks")


def procflow(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m procflow ARGS --redis-url URL``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "procflow", *args, "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def two_stages(redis_url: str, **options: Any) -> Flow:
    return Flow(
        "pp",
        [QueueSpec("a", next_queue="b", attributes_to_get=["n"]), QueueSpec("b")],
        redis_url=redis_url,
        **options,
    )


def test_a_paused_stage_leases_nothing_and_goes_on_when_resumed(
    redis_url: str, r: redis.Redis
) -> None:
    flow = two_stages(redis_url)
    flow.create_workers("a", lambda job: {"seen": job["n"]}, count=1, block_timeout=1)
    flow.create_workers("b", lambda job: {"after": True}, count=2, block_timeout=1)
    with Supervisor(flow, monitor=False) as sup:
        flow.pause("b")
        assert flow.paused() == {"a": False, "b": True}
        assert r.exists("queue:b:paused")
        ids = flow.create_jobs([{"n": n} for n in range(30)])
        wait_until(lambda: flow.counts()["b"]["waiting"] == 30, what="every job waiting in b")
        counts = flow.counts()
        assert counts["a"]["waiting"] == counts["a"]["processing"] == 0
        assert counts["b"]["processing"] == 0  # b's workers leased nothing
        assert not any(j.get("done") for j in flow.get_jobs(ids))
        flow.resume("b")
        assert flow.paused()["b"] is False
        jobs = sup.wait(ids, timeout=30)
    assert all(j["after"] is True and j["seen"] == n for n, j in enumerate(jobs))


def test_a_job_running_when_its_stage_is_paused_runs_to_the_end(
    redis_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "go"

    def held(job: dict[str, Any]) -> dict[str, Any]:
        while not gate.exists():  # the first job runs until the test lets it finish
            time.sleep(0.01)
        return {"ran": True}

    flow = Flow("hold", [QueueSpec("h", prefetch=1)], redis_url=redis_url)
    flow.create_workers("h", held, count=1, block_timeout=1)
    with Supervisor(flow, monitor=False) as sup:
        first = flow.create_job({"n": 0})
        wait_until(lambda: flow.counts()["h"]["processing"] == 1, what="the first job running")
        held_on = procflow(redis_url, "pause", "hold", "h", "--drain", "0.3")
        assert held_on.returncode == 1 and "1 job(s) of 'h' still running" in held_on.stderr
        assert flow.paused()["h"] is True
        rest = flow.create_jobs([{"n": n} for n in range(1, 4)])
        gate.touch()
        drained = procflow(redis_url, "pause", "hold", "h", "--drain", "30")
        assert drained.returncode == 0, drained.stderr
        assert "paused and drained 'h' of hold" in drained.stdout
        (done,) = sup.wait([first], timeout=30)
        assert done["ran"] is True
        counts = flow.counts()["h"]
        assert (counts["waiting"], counts["processing"]) == (3, 0)  # nothing leased after it
        flow.resume("h")
        assert all(j["ran"] for j in sup.wait(rest, timeout=30))


def test_a_worker_blocked_on_an_empty_stage_gives_back_what_arrives_once_paused(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("idle", [QueueSpec("i")], redis_url=redis_url)
    flow.create_workers("i", lambda job: {"ran": True}, count=1, block_timeout=5)
    with Supervisor(flow, monitor=False) as sup:
        sup.wait([flow.create_job({"n": 0})], timeout=30)  # now blocked in BLMOVE on i
        flow.pause("i")
        job = flow.create_job({"n": 1})
        # BLMOVE may take it; the claim finds the stage paused and puts it back at the head
        wait_until(
            lambda: (
                r.lrange("queue:i:waiting", 0, -1) == [job.encode()]
                and r.llen("queue:i:processing") == 0
            ),
            what="the job back on the waiting list",
        )
        assert flow.get_job(job).get("done") is None
        flow.resume("i")
        (done,) = sup.wait([job], timeout=30)
    assert done["ran"] is True


def test_pause_spans_the_partitions_and_is_the_same_from_asyncio(
    redis_url: str, r: redis.Redis
) -> None:
    flow = two_stages(redis_url, partitions=2)

    async def pause_async() -> dict[str, bool]:
        async with AsyncFlow(flow) as af:
            await af.pause("b")
            return await af.paused()

    assert asyncio.run(pause_async()) == {"a": False, "b": True}
    assert r.exists("queue:{pp#0}.b:paused") and r.exists("queue:{pp#1}.b:paused")
    assert flow.paused() == {"a": False, "b": True}
    flow.resume("b")
    assert not r.exists("queue:{pp#0}.b:paused", "queue:{pp#1}.b:paused")


def test_procflow_pause_and_resume_from_the_command_line(redis_url: str) -> None:
    flow = two_stages(redis_url)
    flow.create_workers("a", lambda job: {}, count=1, block_timeout=1)
    flow.create_workers("b", lambda job: {}, count=1, block_timeout=1)

    with Supervisor(flow, monitor=False, metrics_port=0) as sup:  # registers the flow
        shown = procflow(redis_url, "pause", "pp", "b")
        assert shown.returncode == 0, shown.stderr
        assert "paused 'b' of pp" in shown.stdout
        assert flow.paused()["b"] is True
        status = procflow(redis_url, "status", "pp", "--json")
        assert status.returncode == 0, status.stderr
        (pp,) = json.loads(status.stdout)
        assert {s["name"]: s["paused"] for s in pp["stages"]} == {"a": False, "b": True}
        table = procflow(redis_url, "status", "pp")
        assert "b (paused)" in table.stdout
        assert sup.metrics_port is not None
        text = scrape(sup.metrics_port)
        assert metric(text, "procflow_stage_paused", flow="pp", queue="b") == 1
        assert metric(text, "procflow_stage_paused", flow="pp", queue="a") == 0
        shown = procflow(redis_url, "resume", "pp", "b")
        assert shown.returncode == 0 and "resumed 'b'" in shown.stdout
        assert flow.paused()["b"] is False
        unknown = procflow(redis_url, "pause", "pp", "nope")
        assert unknown.returncode != 0 and "nope" in unknown.stderr
