"""A job that kills its worker right after the worker started, while the supervisor is still
starting: a crash of that job, not a failed start of the node."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis

from procflow import Backoff, Flow, QueueSpec, Supervisor, WorkerStartError
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def crash_or_work(job: dict[str, Any]) -> dict[str, Any]:
    if job["kind"] == "crash":
        os._exit(3)  # stands in for a segfault in native code
    return {"pid": os.getpid()}


def test_jobs_that_kill_their_worker_at_once_do_not_fail_the_start(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow(
        "startcrash",
        [
            QueueSpec(
                "w",
                attributes_to_get=["kind"],
                max_attempts=2,
                retry_backoff=Backoff(base=0, jitter=0),
            )
        ],
        redis_url=redis_url,
    )
    flow.create_workers("w", crash_or_work, count=6)
    # waiting before the start (as after a restart): each worker leases one the moment it
    # starts, before the supervisor has read every worker's "started"
    crash_ids = flow.create_jobs([{"kind": "crash"} for _ in range(8)])
    work_ids = flow.create_jobs([{"kind": "work"} for _ in range(8)])
    sup = Supervisor(flow)
    sup.start(timeout=30)  # raised WorkerStartError before the fix
    try:
        assert sup.state == "running"
        crashed = sup.wait(crash_ids, timeout=30)
        for job in crashed:  # its policy: two attempts, each a crash with exit code 3
            assert job["failed"] is True and job["failedQueue"] == "w", job
            assert job["attempts:w"] == 2
            assert [e["exitCode"] for e in job["errors:w"]] == [3, 3]
            assert "exit code 3" in job["failedErrorMsg"]
        worked = sup.wait(work_ids, timeout=30)
        assert all(j["done"] is True and "failed" not in j for j in worked)
        # the node runs on, with both its workers, and serves new jobs
        wait_until(lambda: len(sup.worker_pids()) == 6, what="every worker replaced")
        later = sup.wait(flow.create_jobs([{"kind": "work"} for _ in range(6)]), timeout=30)
        assert all(j["done"] is True and "failed" not in j for j in later)
        assert {j["pid"] for j in later} <= set(sup.worker_pids())
    finally:
        sup.stop()
    assert r.llen("queue:w:processing") == 0


def test_a_worker_that_cannot_load_its_function_still_fails_the_start(redis_url: str) -> None:
    flow = Flow("startbad", [QueueSpec("w")], redis_url=redis_url)

    class Unloadable:
        def __reduce__(self) -> Any:
            return (_refuse, ())

    bad = Unloadable()
    flow.create_workers("w", lambda j: {"x": str(bad)}, count=2)
    sup = Supervisor(flow)
    with pytest.raises(
        WorkerStartError,
        match=r"could not connect: its function could not be loaded: ImportError: no module",
    ):
        sup.start(timeout=30)
    assert sup.state == "stopped" and sup.worker_pids() == []


def _refuse() -> None:
    raise ImportError("no module named 'gone' (the worker function cannot be loaded)")
