"""A core budget shared across stages: at most N job-running processes, moved by demand."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec, Supervisor
from procflow.supervisor import rebalance
from procflow.supervisor.rebalance import Limits
from procflow.worker.status import Activity
from tests.conftest import messages, wait_until
from tests.helpers import metric, scrape
from tests.process.test_cli import Output, cli_flow, run_cli

pytestmark = pytest.mark.usefixtures("no_leaks")


def quick(job: dict[str, Any]) -> dict[str, Any]:
    return {"n": job["n"]}


def slow(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.03)
    return {"m": job["n"]}


def two_stage_flow(url: str) -> Flow:
    flow = Flow(
        "budget",
        [
            QueueSpec("quick", next_queue="slow", attributes_to_get=["n"]),
            QueueSpec("slow", attributes_to_get=["n"]),
        ],
        redis_url=url,
    )
    flow.create_workers("quick", quick)
    flow.create_workers("slow", slow)
    return flow


def test_the_budget_moves_processes_to_the_backed_up_stage_and_never_exceeds_it(
    redis_url: str, lines: list[dict[str, Any]]
) -> None:
    flow = two_stage_flow(redis_url)
    most = {"running": 0}
    stop = threading.Event()
    sup = Supervisor(flow, cores=2, metrics_port=0)

    def watch() -> None:  # every job-running process, sampled from the status records
        while not stop.is_set():
            running = sum(
                1
                for w in sup.table
                if not w.gone
                and sup.worker_status(w.handle).activity in (Activity.RUNNING, Activity.COMPLETING)
            )
            most["running"] = max(most["running"], running)
            stop.wait(0.002)

    watcher = threading.Thread(target=watch)
    with sup:
        watcher.start()
        jobs = sup.wait(flow.create_jobs([{"n": n} for n in range(200)]), timeout=60)
        stop.set()
        watcher.join(5)
        slow_processes = sum(
            1 for h in flow.handles if h.group.stage.name == "slow" and h.pid is not None
        )
        assert sup.metrics_port is not None
        counted = metric(scrape(sup.metrics_port), "procflow_budget_moves_total", flow=flow.name)
        assert sup.manager.budget is not None
        assert counted == sup.manager.budget.moves >= 1
    assert all(j["done"] and j["m"] == j["n"] for j in jobs)
    assert most["running"] <= 2
    said = messages(lines)
    moves = [m for m in said if m.startswith("rebalanced: ")]
    assert moves, said
    assert any("slow 1→2" in m or "slow 0→2" in m for m in moves), moves
    assert slow_processes >= 1


def step(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(job["t"])
    return {}


def test_under_a_steady_load_moves_are_logged_at_debug_and_summed_up_at_info_now_and_then(
    redis_url: str, lines: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebalance, "SUMMARY_EVERY", 1.0)
    names = ["s1", "s2", "s3", "s4"]  # 4 stages on 2 cores: they must share the cores
    flow = Flow(
        "steady",
        [
            QueueSpec(n, next_queue=m, attributes_to_get=["t"])
            for n, m in zip(names, [*names[1:], None], strict=True)
        ],
        redis_url=redis_url,
    )
    for name in names:
        flow.create_workers(name, step, block_timeout=0.5)
    with Supervisor(flow, cores=2) as sup:
        ids: list[str] = []
        pace = threading.Event()  # never set: the feed's clock
        for _ in range(80):  # 40 jobs/s for 4 s, ~4 ms a stage: a third of the 2 cores
            ids += flow.create_jobs([{"t": 0.004} for _ in range(2)])
            pace.wait(0.05)
        jobs = sup.wait(ids, timeout=60)
        moved = sup.manager.budget.moves if sup.manager.budget is not None else 0
    assert all(j["done"] for j in jobs)
    said = [r for r in lines if r["extra"].get("worker") == "supervisor"]
    info = [str(r["message"]) for r in said if r["level"].name == "INFO"]
    assert not [m for m in info if m.startswith("rebalanced: ")], info  # each move: DEBUG
    debug = [str(r["message"]) for r in said if r["level"].name == "DEBUG"]
    assert any(m.startswith("rebalanced: ") for m in debug)
    summaries = [r for r in said if str(r["message"]).startswith("budget: ")]
    assert len(summaries) >= 2, info
    times = [r["time"].timestamp() for r in summaries]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.99, gaps  # at most one summary per SUMMARY_EVERY
    counted = sum(int(str(r["message"]).split()[1]) for r in summaries)
    assert 0 < counted <= moved


def test_limits_are_kept(redis_url: str, lines: list[dict[str, Any]]) -> None:
    flow = two_stage_flow(redis_url)
    with Supervisor(flow, cores=2, limits={"slow": Limits(max=1), "quick": Limits(min=1)}) as sup:
        jobs = sup.wait(flow.create_jobs([{"n": n} for n in range(60)]), timeout=60)
        assert len([h for h in flow.handles if h.group.stage.name == "slow"]) == 1
    assert all(j["done"] for j in jobs)
    assert not any("slow 1→2" in m for m in messages(lines))


def test_a_bad_budget_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="cores must be a number >= 1 or 'auto'"):
        Supervisor(two_stage_flow(redis_url), cores=0)


def test_the_supervisor_cli_runs_a_core_budget_with_stage_ranges(
    redis_url: str, r: redis.Redis
) -> None:
    proc = run_cli(
        "tests.process.apps:cli_flow", "--cores", "2", "--workers", "work=1:2", url=redis_url
    )
    output = Output(proc)
    try:
        flow = cli_flow(redis_url)
        ids = flow.create_jobs([{"sleep": 0.01} for _ in range(40)])
        wait_until(
            lambda: all(j.get("done") for j in flow.get_jobs(ids)), timeout=30, what="jobs done"
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        proc.kill()
    out = output.text()
    assert proc.returncode == 0, out
    assert "core budget: 2 process(es) over 1 stage(s)" in out


def test_a_stage_range_without_a_budget_is_refused() -> None:
    proc = run_cli("tests.process.apps:cli_flow", "--workers", "work=1:2")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "a range needs --cores" in out
