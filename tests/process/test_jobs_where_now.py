"""``procflow jobs``: the table says where each job is now (waiting, processing, parked
waiting for children, retrying, done, failed in a stage), not only the last stage that
completed it (the wire format's ``completed-queue``, shown beside it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec
from tests.process.test_cli_first_hour import PROCFLOW, run
from tests.process.test_cli_shows_data_as_it_is import register

pytestmark = pytest.mark.usefixtures("no_leaks")


def shop(url: str) -> Flow:
    return Flow(
        "shop",
        [
            QueueSpec("check", next_queue="charge"),
            QueueSpec("charge", children=[QueueSpec("card")]),
        ],
        lookup_attributes=["user"],
        redis_url=url,
    )


def write(r: redis.Redis, flow: Flow, job_id: str, **fields: Any) -> None:
    r.hset(flow.job_key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})


def test_the_jobs_table_says_where_each_job_is_now(redis_url: str, r: redis.Redis) -> None:
    flow = shop(redis_url)
    register(redis_url, flow)
    ids = flow.create_jobs([{"user": 1, "n": n} for n in range(7)])
    waiting, running, passed, parked, retrying, done, failed = ids
    write(r, flow, running, **{"lease:check": "node|1", "attempts:check": 1})
    write(r, flow, passed, **{"completed-queue": "check"})
    write(
        r,
        flow,
        parked,
        **{"completed-queue": "check", "children:charge:jobs": ["a", "b"]},
        **{"children:charge:pending": 2},
    )
    write(r, flow, retrying, **{"errors:check": [{"error": "x", "kind": "error", "at": 1}]})
    write(r, flow, done, **{"completed-queue": "charge", "done": True})
    write(
        r,
        flow,
        failed,
        **{"done": True, "failed": True, "failedQueue": "check", "failedErrorMsg": "no"},
    )
    out = run(PROCFLOW, "jobs", "shop", "--by", "user=1", url=redis_url)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.split()}
    assert "where now" in out.stdout and "last completed stage" in out.stdout, out.stdout
    expected = {
        waiting: "waiting in check",
        running: "processing in check",
        passed: "waiting in charge",
        parked: "parked in charge (2 children pending)",
        retrying: "to retry in check (1 failed attempt)",
        done: "done",
        failed: "failed in check",
    }
    for job_id, where in expected.items():
        assert where in rows[job_id], (where, rows[job_id])
    assert "check" in rows[passed].split("waiting in charge")[1], rows[passed]
    flow.disconnect()
