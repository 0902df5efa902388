"""Sentinel: a flow on ``redis+sentinel://``, and a failover in the middle of a run.

A master, one replica and three sentinels, all local processes on loopback ports of their
own (started and stopped by pid here); the master is SIGKILLed while workers run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec, RedisRefusedError, RedisUnavailableError
from procflow.aio import AsyncFlow
from procflow.settings import RedisSettings
from procflow.store.connect import discover_master
from tests.conftest import assert_all_done, server_binary, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SentinelSet:
    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        watched = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{watched}/pfmaster/0"


def _start(binary: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    binary = server_binary("redis")
    s = SentinelSet(free_port(), free_port(), [free_port() for _ in range(3)])
    common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    for name, port, extra in (
        ("master", s.master_port, []),
        ("replica", s.replica_port, ["--replicaof", "127.0.0.1", str(s.master_port)]),
    ):
        d = tmp_path / name
        d.mkdir()
        s.procs[name] = _start(binary, ["--port", str(port), "--dir", str(d), *common, *extra], d)
    for n, port in enumerate(s.sentinel_ports):
        d = tmp_path / f"sentinel{n}"
        d.mkdir()
        conf = d / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {d}\n"
            f"sentinel monitor pfmaster 127.0.0.1 {s.master_port} 2\n"
            "sentinel down-after-milliseconds pfmaster 500\n"
            "sentinel failover-timeout pfmaster 5000\n"
            "sentinel parallel-syncs pfmaster 1\n"
        )
        s.procs[f"sentinel{n}"] = _start(binary, [str(conf), "--sentinel"], d)
    try:
        for port in (s.master_port, s.replica_port, *s.sentinel_ports):
            wait_until(lambda port=port: _ping(port), timeout=20, what=f"the server on {port}")

        def ready() -> bool:  # every sentinel knows the replica and the other sentinels
            for port in s.sentinel_ports:
                c = redis.Redis(port=port, decode_responses=True)
                if not c.sentinel_slaves("pfmaster") or len(c.sentinel_sentinels("pfmaster")) < 2:
                    return False
            link = redis.Redis(port=s.replica_port).info("replication")
            return link.get("master_link_status") == "up"

        wait_until(ready, timeout=30, what="the sentinels to see the replica and each other")
        yield s
    finally:
        for proc in s.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


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
