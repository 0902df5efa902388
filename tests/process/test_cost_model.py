"""The cost model from a running flow: jobs of a known cost (a busy loop of CPU, a sleep of
wall time), their figures from the heartbeats in ``Operator.status``, ``procflow status
--json`` and the metrics, and the backlog and ETA they give (``procflow/cost.py``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec
from procflow.operator.ops import Operator, StageStatus, flow_eta
from tests.conftest import wait_until
from tests.helpers import lazy_client
from tests.process.test_operate import metrics, sample, served_names

pytestmark = pytest.mark.usefixtures("no_leaks")
ROOT = Path(__file__).resolve().parents[2]
#: CPU seconds a job of ``burn`` spins; wall seconds a job of ``nap`` sleeps
BURN = 0.01
NAP = 0.02


def costs(url: str) -> Flow:
    """burn (a busy loop; a job with ``hold`` first waits to be released) → nap (a sleep)."""
    flow = Flow(
        "costs",
        [
            QueueSpec("burn", next_queue="nap", attributes_to_get=["hold"]),
            QueueSpec("nap"),
        ],
        redis_url=url,
    )
    get = lazy_client(url)

    def burn(job: dict[str, Any]) -> dict[str, Any]:
        if job.get("hold"):
            get().blpop(["release"], timeout=60)  # the test lets it go
        start = time.process_time()
        while time.process_time() - start < BURN:
            pass
        return {"burnt": True}

    def nap(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(NAP)  # the job's own cost: wall time, no CPU
        return {"napped": True}

    flow.create_workers("burn", burn, count=1)
    flow.create_workers("nap", nap, count=1)
    return flow


def by_name(stages: list[StageStatus]) -> dict[str, StageStatus]:
    return {s.name: s for s in stages}


def status_json(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "procflow", "status", "costs", "--json", "--redis-url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (shown,) = json.loads(done.stdout)
    return shown  # type: ignore[no-any-return]


def test_job_costs_backlog_and_eta_follow_the_work(redis_url: str, r: redis.Redis) -> None:
    flow = costs(redis_url)
    op = Operator(redis_url)
    try:
        op.adopt(flow)
        ids = flow.create_jobs([{"n": n} for n in range(6)])
        before = by_name(op.status("costs"))
        burn = before["burn"]
        assert burn.waiting == 6 and burn.workers == 0
        # nothing ran yet: no figures, so no backlog in seconds and no ETA
        assert burn.job_seconds_mean is None and burn.cpu_seconds_p95 is None
        assert burn.backlog_seconds is None and burn.eta_seconds is None
        assert flow_eta(list(before.values())) is None
        assert before["nap"].backlog_seconds == 0.0 and before["nap"].eta_seconds == 0.0

        with flow.start_all(metrics_port=0, node_id="node-a") as sup:
            sup.wait(ids, timeout=60)

            def measured() -> dict[str, StageStatus] | None:
                found = by_name(op.status("costs"))
                ready = all(
                    s.job_seconds_mean is not None and s.workers == 1 for s in found.values()
                )
                return found if ready else None

            after = wait_until(measured, timeout=20, what="a heartbeat with the jobs' costs")
            burn, nap = after["burn"], after["nap"]
            assert burn.jobs_measured > 0 and nap.jobs_measured > 0
            assert nap.job_seconds_mean is not None and nap.job_seconds_mean >= NAP
            assert nap.job_seconds_p95 is not None and nap.job_seconds_p50 is not None
            assert burn.cpu_seconds_mean is not None and burn.cpu_seconds_mean >= BURN
            assert nap.cpu_seconds_mean is not None
            assert burn.cpu_seconds_mean > nap.cpu_seconds_mean  # a sleep costs no CPU
            assert (burn.backlog_seconds, burn.eta_seconds) == (0.0, 0.0)  # nothing pending
            assert flow_eta(list(after.values())) == 0.0

            # a burst that waits behind a held job: a backlog, and its ETA on one worker
            flow.create_jobs([{"n": 0, "hold": True}])
            wait_until(
                lambda: by_name(op.status("costs"))["burn"].processing == 1,
                what="the held job running",
            )
            flow.create_jobs([{"n": n} for n in range(1, 9)])
            stages = by_name(op.status("costs"))
            burn = stages["burn"]
            assert (burn.waiting, burn.processing, burn.delayed) == (8, 1, 0)
            assert burn.job_seconds_mean is not None
            assert burn.backlog_seconds == pytest.approx(9 * burn.job_seconds_mean, abs=1e-3)
            assert burn.eta_seconds == pytest.approx(burn.backlog_seconds / 1, abs=1e-3)
            # the flow: burn's 9 jobs, then nap's (they all pass it), one after the other
            nap = stages["nap"]
            assert nap.job_seconds_mean is not None
            expected = max(burn.eta_seconds + nap.job_seconds_mean, 9 * nap.job_seconds_mean)
            assert flow_eta(list(stages.values())) == pytest.approx(expected, abs=2e-3)

            shown = status_json(redis_url)
            listed = {s["name"]: s for s in shown["stages"]}
            for field in (
                "eta_seconds",
                "backlog_seconds",
                "job_seconds_mean",
                "job_seconds_p95",
                "cpu_seconds_mean",
                "cpu_seconds_p95",
                "throughput_per_s",
            ):
                assert field in listed["burn"], field
            assert listed["burn"]["waiting"] == 8
            assert listed["burn"]["backlog_seconds"] == pytest.approx(
                9 * listed["burn"]["job_seconds_mean"], abs=1e-3
            )
            assert shown["eta_seconds"] is not None and shown["eta_seconds"] > 0
            assert listed["burn"]["throughput_per_s"] > 0  # 6 completions, this minute

            # the metric KEDA scales on: the same backlog, from the same heartbeats
            assert sup.metrics_port
            values = metrics(sup.metrics_port)
            backlog = sample(values, "procflow_stage_backlog_seconds", queue="burn")
            assert backlog == pytest.approx(burn.backlog_seconds, rel=1e-3, abs=1e-3)
            assert sample(values, "procflow_stage_backlog_seconds", queue="nap") == 0
            eta = sample(values, "procflow_stage_eta_seconds", queue="burn")
            assert eta == pytest.approx(burn.eta_seconds, rel=1e-3, abs=1e-3)
            cpu = sample(
                values, "procflow_stage_job_seconds", queue="burn", time="cpu", stat="mean"
            )
            assert cpu >= BURN
            assert sample(values, "procflow_job_cpu_seconds_count", queue="burn") == 6
            keda = (ROOT / "docs" / "deploy" / "keda-scaledobject.yaml").read_text()
            used = set(re.findall(r"procflow_[a-z_]+", keda))
            assert "procflow_stage_backlog_seconds" in used
            assert used <= served_names(sup.metrics_port)

            r.rpush("release", 1)
            wait_until(
                lambda: by_name(op.status("costs"))["burn"].pending == 0,
                timeout=30,
                what="the burst run",
            )
    finally:
        op.close()
        flow.disconnect()
