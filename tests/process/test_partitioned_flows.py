"""Partitioned flows on one server: jobs spread over the partitions, workers lease fairly
across them, reads and waits span them, and a worker killed in another partition than the
first has its job settled there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Backoff, EncodeError, Flow, QueueSpec, Supervisor
from procflow.aio import AsyncFlow
from procflow.operator.ops import Operator
from procflow.testing import run_inline
from procflow.worker.turns import TURN
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def _pay(redis_url: str, partitions: int, **options: Any) -> Flow:
    return Flow(
        "pay",
        [
            QueueSpec("check", next_queue="charge", attributes_to_get=["n"], max_attempts=3),
            QueueSpec(
                "charge",
                children=[QueueSpec("card", attributes_to_get=["n"], max_attempts=3)],
            ),
        ],
        lookup_attributes=["user"],
        redis_url=redis_url,
        partitions=partitions,
        **options,
    )


def check(job: dict[str, Any]) -> dict[str, Any]:
    # the children field goes by the queue name as written; the worker files it under its
    # partition's name
    return {"checked": job["n"], "children:charge:params": [{"childName": "card", "n": job["n"]}]}


def test_a_partitioned_flow_with_fan_out_runs_on_fewer_workers_than_partitions(
    redis_url: str,
) -> None:
    flow = _pay(redis_url, 4)
    client = redis.Redis.from_url(redis_url)
    ids = flow.create_jobs([{"n": n, "user": n % 2} for n in range(40)])
    assert [client.llen(f"queue:{{pay#{i}}}.check:waiting") for i in range(4)] == [10] * 4
    assert all(client.exists(f"job:{{pay#{n % 4}}}:{i}") for n, i in enumerate(ids))
    assert flow.counts()["check"]["waiting"] == 40
    flow.create_workers("check", check, count=1, block_timeout=1)
    flow.create_parent_workers("charge", count=1, block_timeout=1)
    flow.create_child_workers("charge", "card", lambda j: {"paid": j["n"]}, count=1)
    with Supervisor(flow, monitor_interval=0.2) as sup:
        jobs = sup.wait(ids, timeout=60)
        late = flow.create_job({"n": 99, "user": 5})  # an idle stage still finds new work
        (last,) = flow.wait([late], timeout=30)
        assert Operator(redis_url).flows() == ["pay"]  # one flow, however many partitions
        names = [t.name for t in threading.enumerate()]
        # four partitions' monitors and heartbeats, each kind on one thread
        assert names.count("procflow-monitor") == names.count("procflow-heartbeat") == 1
        op = Operator(redis_url)
        first, charge, card = op.status("pay")  # the partitions summed, by the names given
        assert (first.name, charge.name, card.name, card.parent) == (
            "check",
            "charge",
            "charge:card",
            "charge",
        )
        assert first.totals["completed"] == charge.totals["completed"] == 41
        assert [p.name for p in op.flow("pay").partitions] == [f"{{pay#{i}}}" for i in range(4)]
        odd = op.jobs_by("pay", "user", "1")  # from all four partitions
        assert sorted(j["n"] for j in odd) == list(range(1, 40, 2))
        # a page runs across the partitions' lists, one after the other (about 10 each)
        page = op.page("pay", "charge", "finished", start=8, count=5)  # jobs that left the flow
        assert (page.total, len(page.jobs), page.queue) == (41, 5, "charge")
        assert len({j["id"] for j in page.jobs}) == 5
        detail = op.job(ids[5])  # found in its partition, shown by the names given
        assert (detail["flow"], detail["fields"]["n"]) == ("pay", 5)
        assert "children:charge:jobs" in detail["fields"]
        (node,) = op.nodes("pay")
        assert {w["stage"] for w in node["workers"]} == {"check", "charge", "charge:card"}
        # the jobs' costs, from the node's (first partition's) heartbeat, by the names given
        check_costs = wait_until(
            lambda: (s := op.status("pay")[0]).job_seconds_mean is not None and s,
            what="check's job costs in a heartbeat",
        )
        assert check_costs.workers == 1 and check_costs.cpu_seconds_mean is not None
        assert (check_costs.backlog_seconds, check_costs.eta_seconds) == (0.0, 0.0)
        shown = subprocess.run(
            [sys.executable, "-m", "procflow", "status", "pay", "--json", "--redis-url", redis_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        (status,) = json.loads(shown.stdout)
        assert [s["name"] for s in status["stages"]] == ["check", "charge", "charge:card"]
        op.close()
        described = json.loads(client.get("procflow:{pay#2}:flow") or b"{}")
        assert (described["partitionOf"], described["partition"]) == ("pay", 2)
        assert described["queues"][0]["name"] == "{pay#2}.check"
    assert all(j["done"] is True and "failed" not in j for j in jobs)
    assert [j["checked"] for j in jobs] == list(range(40)) and last["done"] is True
    zeros = flow.get_jobs_by_key("user", 0, resolve_children=True)
    assert sorted(j["n"] for j in zeros) == list(range(0, 40, 2))  # from all four partitions
    assert {j["completed-queue"].split("}")[0] for j in zeros} == {
        "{pay#0",
        "{pay#2",
    }  # even n: created in turn into partitions 0 and 2
    assert all([c["paid"] for c in j["children:charge:jobs"]] == [j["n"]] for j in zeros)
    counts = flow.counts()
    assert set(counts) == {"check", "charge", "charge:card"}
    assert all(n == 0 for c in counts.values() for n in c.values())
    assert flow.get_job(ids[3])["n"] == 3  # type: ignore[index]
    assert flow.partition_of(ids[3]) is flow.partitions[3]
    assert flow.delete_job(ids[3]) and flow.get_job(ids[3]) is None
    assert not client.exists(f"job:{{pay#3}}:{ids[3]}")


def _keys_for(partitions: int) -> list[str]:
    """One value of ``p`` per partition (by the CRC-32 the flow uses)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        text = f"k{n}"
        found.setdefault(zlib.crc32(f'"{text}"'.encode()) % partitions, text)
        n += 1
    return [found[i] for i in range(partitions)]


def record_partition(job: dict[str, Any]) -> dict[str, Any]:
    with open(os.environ["PROCFLOW_TEST_ORDER"], "a") as out:
        out.write(job["p"] + "\n")
    return {}


@pytest.mark.parametrize("prefetch", [1, 4])
def test_one_worker_takes_turns_at_partitions_that_all_have_work(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefetch: int
) -> None:
    order = tmp_path / "order"
    monkeypatch.setenv("PROCFLOW_TEST_ORDER", str(order))
    flow = Flow(
        "fair",
        [QueueSpec("w", attributes_to_get=["p"], prefetch=prefetch)],
        redis_url=redis_url,
        partitions=3,
        partition_key="p",
    )
    p = _keys_for(3)
    backlog = {p[0]: 100, p[1]: 40, p[2]: 20}  # all created before the worker starts
    ids = flow.create_jobs([{"p": k} for k, n in backlog.items() for _ in range(n)])
    assert [flow.partition_of(i).index for i in (ids[0], ids[100], ids[140])] == [0, 1, 2]  # type: ignore[union-attr]
    flow.create_workers("w", record_partition, count=1)
    with Supervisor(flow) as sup:
        sup.wait(ids, timeout=60)
    seen = order.read_text().split()
    assert sorted(seen) == sorted(k for k, n in backlog.items() for _ in range(n))
    # while more than one partition had work, no partition had more than its turn in a row
    longest, run = 0, 0
    for n, k in enumerate(seen):
        left = {q for q in backlog if seen[n:].count(q)}
        if len(left) < 2:
            break
        run = run + 1 if n and seen[n - 1] == k else 1
        longest = max(longest, run)
    assert 1 <= longest <= TURN * prefetch
    first_round = seen[: 3 * TURN * prefetch]
    assert set(first_round) == set(p)  # every partition served in the first round


def crash_once(job: dict[str, Any]) -> dict[str, Any]:
    marker = Path(os.environ["PROCFLOW_TEST_ORDER"])
    if not marker.exists():
        marker.write_text("crashed")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid()}


def test_a_worker_killed_on_a_job_of_partition_2_has_it_settled_in_partition_2(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCFLOW_TEST_ORDER", str(tmp_path / "marker"))
    flow = Flow(
        "settle",
        [QueueSpec("w", attributes_to_get=["p"], max_attempts=2, retry_backoff=Backoff(0.1))],
        redis_url=redis_url,
        partitions=3,
        partition_key="p",
    )
    flow.create_workers("w", crash_once, count=1, lock_time=120)
    # a lock far longer than the wait: only the supervisor's settling (not an expired lock)
    # can bring this job back in time; the monitor promotes its delayed retry
    with Supervisor(flow, monitor_interval=0.2) as sup:
        job_id = flow.create_job({"p": _keys_for(3)[2]})
        assert flow.partition_of(job_id) is flow.partitions[2]
        (job,) = sup.wait([job_id], timeout=30)
    assert job["done"] is True and "failed" not in job and job["pid"] > 0
    assert job["attempts:{settle#2}.w"] == 2
    assert "crash" in str(job["errors:{settle#2}.w"])


def test_a_missing_partition_key_is_refused_and_writes_nothing(redis_url: str) -> None:
    flow = _pay(redis_url, 3, partition_key="user")
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(EncodeError, match="partition_key"):
        flow.create_jobs([{"n": 1, "user": 1}, {"n": 2}])
    assert client.dbsize() == 0


def test_a_wait_listens_where_each_partition_announces_its_jobs(redis_url: str) -> None:
    flow = Flow("one", [QueueSpec("w")], redis_url=redis_url, partitions=1)
    client = redis.Redis.from_url(redis_url)
    job_id = flow.create_job({"n": 1})
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.extend(flow.wait([job_id], timeout=60)))
    waiter.start()
    channel = "procflow:{one#0}:done"  # not procflow:one:done: no job is announced there
    wait_until(
        lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()) == 1,
        what="the wait subscribed to the partition's channel",
    )
    flow.create_workers("w", lambda job: {"ok": True})
    run_inline(flow)
    waiter.join(60)
    assert [j["ok"] for j in got] == [True]


def test_the_async_client_creates_reads_and_waits_across_partitions(redis_url: str) -> None:
    flow = _pay(redis_url, 3)
    flow.create_workers("check", check, count=1, block_timeout=1)
    flow.create_parent_workers("charge", count=1, block_timeout=1)
    flow.create_child_workers("charge", "card", lambda j: {"paid": j["n"]}, count=1)

    async def scenario() -> dict[str, Any]:
        async with AsyncFlow(flow) as af:
            ids = await af.create_jobs([{"n": n, "user": n % 2} for n in range(12)])
            where = {flow.partition_of(i).index for i in ids}  # type: ignore[union-attr]
            late = await af.create_job({"n": 99, "user": 1})
            jobs = await af.wait([*ids, late], timeout=60)
            ones = await af.get_jobs_by_key("user", 1, resolve_children=True)
            got = await af.get_job(ids[4])
            deleted = await af.delete_job(ids[4])
            return {
                "where": where,
                "jobs": jobs,
                "ones": ones,
                "got": got,
                "deleted": deleted,
                "gone": await af.get_job(ids[4]),
                "counts": await af.counts(),
            }

    with Supervisor(flow, monitor_interval=0.2):
        seen = asyncio.run(scenario())
    assert seen["where"] == {0, 1, 2}  # in turn over the three partitions
    assert [j["checked"] for j in seen["jobs"]] == [*range(12), 99]
    assert sorted(j["n"] for j in seen["ones"]) == [1, 3, 5, 7, 9, 11, 99]
    assert all([c["paid"] for c in j["children:charge:jobs"]] == [j["n"]] for j in seen["ones"])
    assert seen["got"]["n"] == 4 and seen["deleted"] is True and seen["gone"] is None
    assert set(seen["counts"]) == {"check", "charge", "charge:card"}
    assert all(n == 0 for c in seen["counts"].values() for n in c.values())
