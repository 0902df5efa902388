"""A network partition that drops packets (the TCP connections stay open, nothing answers):
every connection has a bounded read, so the supervisor keeps supervising and stops."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from procflow import Flow, QueueSpec, Supervisor
from procflow.server import RedisServer
from tests.conftest import wait_until
from tests.proxy import Proxy

pytestmark = pytest.mark.usefixtures("no_leaks")


def slow(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(job["s"])
    return {"pid": os.getpid()}


def test_a_silent_server_does_not_wedge_the_supervisor(server: RedisServer) -> None:
    with Proxy(server.port) as proxy:
        flow = Flow(
            "partition",
            [QueueSpec("w", attributes_to_get=["s"], max_attempts=5)],
            redis_url=proxy.url("/0?socket_timeout=1"),
        )
        flow.create_workers("w", slow, count=1, lock_time=3, block_timeout=1)
        sup = Supervisor(flow, drain_timeout=2, monitor_interval=0.2)
        sup.start()
        try:
            job_id = flow.create_job({"s": 4})  # longer than its lock: renewed from outside
            wait_until(lambda: sup.worker_status(flow.handles[0]).job == job_id, what="running")
            (first,) = sup.worker_pids()
            proxy.pause()
            os.kill(first, signal.SIGKILL)  # the manager must notice, settle and respawn
            wait_until(
                lambda: sup.worker_pids() not in ([], [first]),
                timeout=15,
                what="a replacement spawned while Redis is silent",
            )
            assert sup.manager.alive
            proxy.resume()
            (done,) = sup.wait([flow.create_job({"s": 0})], timeout=60)
            assert done["done"] is True and done["pid"] != first
            proxy.pause()
            stopper = threading.Thread(target=sup.stop)
            started = time.monotonic()
            stopper.start()
            stopper.join(60)
            assert not stopper.is_alive(), "stop() hung on a silent server"
            assert time.monotonic() - started < 60
        finally:
            proxy.resume()
            sup.stop()
