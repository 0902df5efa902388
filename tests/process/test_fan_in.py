"""Fan-in: what a parent stage does when some of its child jobs failed (``on_child_failure``),
and how ``wait`` reports it — with real worker processes and a real server."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from procflow import ConfigurationError, Flow, JobFailedError, QueueSpec, Supervisor
from procflow.operator.ops import Operator, where_now

pytestmark = pytest.mark.usefixtures("no_leaks")


def child(job: dict[str, Any]) -> dict[str, Any]:
    if job["bad"]:
        raise ValueError(f"child {job['n']} is bad")
    return {"out": job["n"] * 10}


def fan_flow(redis_url: str, policy: str | None) -> Flow:
    extra = {} if policy is None else {"on_child_failure": policy}
    flow = Flow(
        f"fanin-{policy}",
        [
            QueueSpec(
                "split",
                next_queue="last",
                children=[QueueSpec("kid", attributes_to_get=["n", "bad"])],
                **extra,  # type: ignore[arg-type]
            ),
            QueueSpec("last"),
        ],
        redis_url=redis_url,
    )
    flow.create_parent_workers("split", count=1)
    flow.create_child_workers("split", "kid", child, count=1)
    flow.create_workers("last", lambda j: {"reached": True}, count=1)
    return flow


def params(*bad: bool) -> dict[str, Any]:
    kids = [{"childName": "kid", "n": n, "bad": b} for n, b in enumerate(bad)]
    return {"children:split:params": kids}


def test_a_failed_child_fails_its_parent_by_default(redis_url: str, r: redis.Redis) -> None:
    flow = fan_flow(redis_url, None)
    with Supervisor(flow):
        bad, good = flow.create_jobs([params(False, True, False), params(False, False)])
        jobs = flow.wait([bad, good], timeout=30)
        with pytest.raises(JobFailedError, match=r"1 job\(s\) failed: .*1 of 3 child jobs"):
            flow.wait([bad, good], timeout=30, raise_on_failure=True)
    failed, passed = jobs
    assert failed["failed"] is True and failed["done"] is True
    assert failed["failedQueue"] == "split"
    assert failed["failedErrorMsg"].startswith("1 of 3 child jobs failed: job:split:kid:")
    assert failed["failedErrorMsg"].endswith(": ValueError: child 1 is bad")
    assert "reached" not in failed and "completed-queue" not in failed
    [kid_key] = failed["children:split:failed"]
    assert r.hget(kid_key, "failedErrorMsg") == b'"ValueError: child 1 is bad"'
    assert [e["kind"] for e in failed["errors:split"]] == ["children"]
    assert r.lrange("queue:split:failed", 0, -1) == [bad.encode()]
    # the parent whose children all succeeded went on as before
    assert passed["reached"] is True and "failed" not in passed
    assert passed["children:split:failed"] == []


def test_a_marking_parent_goes_on_and_wait_reports_its_failed_children(redis_url: str) -> None:
    flow = fan_flow(redis_url, "mark")
    with Supervisor(flow):
        bad, good = flow.create_jobs([params(True, False), params(False)])
        marked, passed = flow.wait([bad, good], timeout=30)
        with pytest.raises(JobFailedError, match=r"1 job\(s\) done with failed children") as info:
            flow.wait([bad, good], timeout=30, raise_on_failure=True)
    assert marked["reached"] is True and marked["completed-queue"] == "last"
    assert marked["done"] is True and "failed" not in marked
    assert len(marked["children:split:failed"]) == 1
    assert [j["id"] for j in info.value.incomplete] == [bad]
    assert info.value.failed == []
    assert passed["children:split:failed"] == []
    # the operator's views (CLI, dashboard) say so too
    op = Operator(redis_url)
    try:
        assert op.job(bad)["state"] == "done, with 1 failed child job"
        assert op.job(good)["state"] == "done"
        assert where_now(op.flow(flow.name), marked) == "done, with 1 failed child job"
    finally:
        op.close()


def test_a_continuing_parent_goes_on_as_the_typescript_librarys_and_writes_nothing(
    redis_url: str,
) -> None:
    flow = fan_flow(redis_url, "continue")
    with Supervisor(flow):
        [job_id] = flow.create_jobs([params(True, False)])
        [job] = flow.wait([job_id], timeout=30, raise_on_failure=True)
    assert job["reached"] is True and "failed" not in job
    assert "children:split:failed" not in job
    assert len(job["children:split:jobs"]) == 2


def test_on_child_failure_is_checked_where_the_flow_is_defined() -> None:
    with pytest.raises(ConfigurationError, match="on_child_failure must be one of"):
        QueueSpec("p", children=[QueueSpec("c")], on_child_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="applies to a stage with children"):
        QueueSpec("p", on_child_failure="mark")
