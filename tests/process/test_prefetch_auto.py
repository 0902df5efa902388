"""``prefetch="auto"`` (the default) on real workers: a stage of tiny jobs is leased many at a
time — few script calls for many jobs — and a stage of slow jobs one at a time, so two
workers share it instead of one holding a batch the other could run."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec, Supervisor

pytestmark = pytest.mark.usefixtures("no_leaks")


def script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_tiny_jobs_are_leased_many_at_a_time(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("tiny", [QueueSpec("t", attributes_to_get=["n"])], redis_url=redis_url)  # auto
    ids = flow.create_jobs([{"n": n} for n in range(600)])
    flow.create_workers("t", lambda job: {"twice": job["n"] * 2}, count=1, block_timeout=1)
    before = script_calls(r)
    with Supervisor(flow, monitor=False, heartbeat=False):
        jobs = flow.wait(ids, timeout=60)
    calls = script_calls(r) - before
    assert [j["twice"] for j in jobs] == [2 * n for n in range(600)]
    # one call per job at prefetch=1 (each completion leases the next); batches of up to 64
    # here, a few one- and two-job leases while the first jobs are measured
    assert calls < 600 / 8, calls


def test_slow_jobs_are_leased_one_at_a_time_and_shared(redis_url: str) -> None:
    def slow(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)  # the job's own work: 50 ms of wall time
        return {"pid": os.getpid()}

    flow = Flow("slow", [QueueSpec("s")], redis_url=redis_url)
    flow.create_workers("s", slow, count=2, block_timeout=1)
    with Supervisor(flow, monitor=False, heartbeat=False) as sup:
        warm = flow.create_jobs([{"n": n} for n in range(4)])  # each worker measures its jobs
        sup.wait(warm, timeout=30)
        ids = flow.create_jobs([{"n": n} for n in range(24)])  # all waiting at once
        jobs = sup.wait(ids, timeout=60)
    by_worker: dict[int, int] = {}
    for job in jobs:
        by_worker[job["pid"]] = by_worker.get(job["pid"], 0) + 1
    # a fixed prefetch of 24 would let the first worker to lease take every one of them
    assert len(by_worker) == 2 and min(by_worker.values()) >= 6, by_worker


def test_a_fixed_prefetch_stays_what_it_says(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("fixed", [QueueSpec("f", prefetch=1)], redis_url=redis_url)
    ids = flow.create_jobs([{"n": n} for n in range(200)])
    flow.create_workers("f", lambda job: {}, count=1, block_timeout=1)
    before = script_calls(r)
    with Supervisor(flow, monitor=False, heartbeat=False):
        flow.wait(ids, timeout=60)
    assert script_calls(r) - before >= 200  # one script call per job
