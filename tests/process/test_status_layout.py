"""``procflow status`` laid out for the terminal it is shown on: at 80 columns every name is
shown in full and a node's heading is one line."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from procflow import Flow, QueueSpec
from procflow.cost import DURATION_BUCKETS, JobCost
from procflow.operator.commands import _status_view
from procflow.operator.ops import Operator

JOB = "01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b"
NODE = "node-a"
HOST = "compute-01.example.org"


def pipeline(url: str) -> Flow:
    return Flow(
        "pipeline",
        [
            QueueSpec("generate", next_queue="fanout"),
            QueueSpec("fanout", children=[QueueSpec("alpha"), QueueSpec("beta")]),
        ],
        redis_url=url,
    )


def worker(name: str, stage: str, pid: int, job: str | None) -> dict[str, object]:
    busy = job is not None
    return {
        "name": name,
        "stage": stage,
        "pid": pid,
        "state": "running" if busy else "idle",
        "job": job,
        "since": time.time() - 3 if busy else None,
        "rss": 52 * 2**20,
        "cpu": 99.5 if busy else 0.0,
        "jobs": 1234,
        "restarts": 0,
    }


def cost(seconds: float, cpu: float, jobs: int) -> dict[str, object]:
    """A stage's cost figures as a heartbeat carries them: ``jobs`` alike."""
    wall, cpus = [0.0] * (len(DURATION_BUCKETS) + 1), [0.0] * (len(DURATION_BUCKETS) + 1)
    wall[sum(b < seconds for b in DURATION_BUCKETS)] = jobs
    cpus[sum(b < cpu for b in DURATION_BUCKETS)] = jobs
    return JobCost(jobs, jobs * seconds, jobs * cpu, wall, cpus).as_record()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_status_at_80_columns_shows_every_name_in_full(redis_url: str, width: int) -> None:
    flow = pipeline(redis_url)
    op = Operator(redis_url)
    try:
        op.registry.register(flow.name, flow.definition.describe())
        workers = [
            worker("generate#0", "generate", 4101, JOB),
            worker("fanout#0", "fanout", 4102, None),
            worker("fanout:alpha#0", "fanout:alpha", 4103, JOB),
            worker("fanout:beta#0", "fanout:beta", 4104, None),
        ]
        stages = {
            "generate": {"cost": cost(0.1234, 0.1201, 5000)},
            "fanout": {"cost": cost(0.0021, 0.0019, 5000)},
            "fanout:alpha": {"cost": cost(312.5, 0.5, 3)},
        }
        record = {
            "node": NODE,
            "host": HOST,
            "pid": 4100,
            "state": "running",
            "workers": workers,
            "stages": stages,
        }
        op.registry.beat(flow.name, NODE, record, 60_000)
        flow.create_jobs([{"n": n} for n in range(12345)])
        out = io.StringIO()
        console = Console(file=out, width=width, markup=False, emoji=False, highlight=False)
        console.print(_status_view(op, [flow.name]))
    finally:
        op.close()
        flow.disconnect()
    text = out.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text, text
    for name in ("generate", "fanout:alpha", "fanout:beta", "generate#0", "fanout:alpha#0"):
        assert name in text, (name, text)
    assert JOB in text, text
    heading = [line for line in lines if NODE in line]
    assert len(heading) == 1, text
    for part in (HOST, "pid 4100", "running"):
        assert part in heading[0], (part, text)
    rows = [line for line in lines if "4103" in line]
    assert len(rows) == 1 and "fanout:alpha#0" in rows[0], text  # a worker is one row
    for header in ("processing", "completed", "p50/p95", "backlog", "ETA"):
        assert header in text, (header, text)
    # generate: 12345 waiting, 0.1234 s each, on one worker; fanout:alpha's jobs run 5 min
    assert "25 min" in text and "ETA of the flow: 25 min" in text, text
    assert "5 min/5 min" in text, text
