"""Sentinel: a flow on ``redis+sentinel://``, and a failover in the middle of a run.

A master, one replica and three sentinels, all local processes on loopback ports of their
own (started and stopped by pid here); the master is SIGKILLed while workers run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec, RedisRefusedError, RedisUnavailableError
from procflow.aio import AsyncFlow
from procflow.settings import RedisSettings
from procflow.store.connect import discover_master
from tests.conftest import assert_all_done, wait_until
from tests.sentinels import SentinelSet, running_sentinels

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with running_sentinels(tmp_path) as s:
        yield s


def test_a_flow_runs_through_a_sentinel_failover(sentinels: SentinelSet) -> None:
    settings = RedisSettings.from_url(sentinels.url)
    assert discover_master(settings) == ("127.0.0.1", sentinels.master_port)

    def work(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.005)
        return {"pid": os.getpid()}

    flow = Flow(
        "failover",
        [QueueSpec("w", attributes_to_get=["n"], max_attempts=5)],
        redis_url=sentinels.url,
    )
    flow.create_workers("w", work, count=2, lock_time=2)
    master = redis.Redis(port=sentinels.master_port)
    with flow.start_all(monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"n": n} for n in range(600)])
        assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has every job
        wait_until(
            lambda: master.llen("queue:w:waiting") < 450, timeout=30, what="the run under way"
        )
        sentinels.procs["master"].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        jobs = sup.wait(ids, timeout=90)
        recovered = time.monotonic() - killed_at
    assert_all_done(jobs)
    assert discover_master(settings) == ("127.0.0.1", sentinels.replica_port)
    new_master = redis.Redis(port=sentinels.replica_port)
    assert new_master.llen("queue:w:waiting") == 0 and new_master.llen("queue:w:processing") == 0
    print(f"\nsentinel failover: 600 jobs done {recovered:.1f} s after the master was killed")


def test_with_durable_every_acknowledged_job_survives_the_failover(
    sentinels: SentinelSet,
) -> None:
    url = sentinels.url + "?durable=1"
    assert RedisSettings.from_url(url).durable is True
    flow = Flow("durable", [QueueSpec("w")], redis_url=url)
    replica = sentinels.procs["replica"]

    async def create_async(options: list[dict[str, Any]]) -> list[str]:
        async with AsyncFlow(flow) as af:
            return await af.create_jobs(options)

    replica.send_signal(signal.SIGSTOP)  # no replica acknowledges: no write is acknowledged
    try:
        with pytest.raises(RedisRefusedError, match="NOREPLICAS"):
            flow.create_jobs([{"n": -1}])
        with pytest.raises(RedisRefusedError, match="NOREPLICAS"):
            asyncio.run(create_async([{"n": -2}]))  # the async client's writes wait too
    finally:
        replica.send_signal(signal.SIGCONT)
    ids: list[str] = asyncio.run(create_async([{"n": -3}]))
    for n in range(20):  # acknowledged batch after batch, right up to the kill
        ids += flow.create_jobs([{"n": n * 50 + i} for i in range(50)])
    sentinels.procs["master"].send_signal(signal.SIGKILL)  # no WAIT of the test's own
    settings = RedisSettings.from_url(url)

    def promoted() -> bool:
        try:
            return discover_master(settings)[1] == sentinels.replica_port
        except RedisUnavailableError:  # between masters: none to name yet
            return False

    wait_until(promoted, timeout=60, what="the replica promoted")
    new_master = redis.Redis(port=sentinels.replica_port)
    assert new_master.llen("queue:w:waiting") >= 1001  # the refused ones were written too
    assert all(flow.get_jobs(ids[i : i + 100]) for i in range(0, 1001, 100))
    assert len(flow.get_jobs(ids)) == 1001
    flow.disconnect()
