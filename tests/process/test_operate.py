"""Operating a flow: the registry, node heartbeats, the scripts' counts, cancel, metrics."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from procflow import Backoff, Flow, QueueSpec
from procflow.definition import FlowDefinition
from procflow.operator.ops import Operator
from procflow.store import keys
from tests.conftest import wait_until
from tests.helpers import lazy_client

pytestmark = pytest.mark.usefixtures("no_leaks")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operate"


def shop(url: str) -> Flow:
    """check → charge (fan-out to card) ; odd amounts fail in check once, 13 always."""
    return Flow(
        "shop",
        [
            QueueSpec(
                "check",
                next_queue="charge",
                attributes_to_get=["amount"],
                max_attempts=2,
                retry_backoff=Backoff(base=0, jitter=0),
            ),
            QueueSpec("charge", children=[QueueSpec("card", attributes_to_get=["amount"])]),
        ],
        lookup_attributes=["user"],
        redis_url=url,
    )


def with_workers(flow: Flow, url: str) -> Flow:
    get = lazy_client(url)

    def check(job: dict[str, Any]) -> dict[str, Any]:
        if job["amount"] == 13:
            raise ValueError("thirteen is refused")
        if job["amount"] % 2 and get().incr(f"tries:{job['id']}") == 1:
            raise RuntimeError("first try of an odd amount fails")
        return {"checked": True}

    flow.create_workers("check", check, count=1)
    flow.create_parent_workers("charge", count=1)
    flow.create_child_workers("charge", "card", lambda job: {"paid": job["amount"]}, count=1)
    return flow


def job_options(amount: int) -> dict[str, Any]:
    return {
        "amount": amount,
        "user": amount % 3,
        "children:charge:params": [{"childName": "card", "amount": amount}],
    }


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def served_names(port: int) -> set[str]:
    """Every metric name a scrape offers: families (a counter also as NAME_total) and
    samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
        names.update(s.name for s in family.samples)
    return names


def sample(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    found = [v for (n, ls), v in values.items() if n == name and wanted <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_a_running_flow_describes_itself_beats_counts_and_serves_metrics(
    redis_url: str, r: redis.Redis
) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    amounts = [2, 4, 6, 3, 5, 13]  # 3 and 5 are retried once, 13 fails for good
    op = Operator(redis_url)
    with flow.start_all(metrics_port=0, node_id="node-a") as sup:
        assert op.flows() == ["shop"]
        ids = flow.create_jobs([job_options(a) for a in amounts])
        jobs = sup.wait(ids, timeout=60)
        assert [j.get("failed") is True for j in jobs] == [False] * 5 + [True]

        # the description is enough to rebuild the flow's shape, with no app code
        again = FlowDefinition.from_description(op.describe("shop"))
        assert list(again.stages) == list(flow.definition.stages)
        assert again.stage("charge").children == {"card": "charge:card"}
        assert again.lookup_attributes == ("user",)

        status = {s.name: s for s in op.status("shop")}
        assert status["check"].totals == {
            "completed": 5,
            "failed": 1,
            "retried": 3,  # 3 and 5 once, 13 once before its last attempt
            "crashed": 0,
            "cancelled": 0,
        }
        assert status["charge"].totals["completed"] == 5
        assert status["charge:card"].totals["completed"] == 5
        assert sum(status["check"].completed_per_minute) == 5
        assert sum(status["check"].failed_per_minute) == 1
        assert status["check"].failed == 1 and status["check"].waiting == 0
        finished = r.lrange(keys.finished("shop", "charge"), 0, -1)
        assert sorted(i.decode() for i in finished) == sorted(ids[:5])

        def beat_shows_the_jobs() -> dict[str, Any] | None:
            nodes = op.nodes("shop")
            if (
                len(nodes) == 1
                and {w["name"]: w["jobs"] for w in nodes[0]["workers"]}.get("check#0") == 9
            ):
                return nodes[0]
            return None

        node = wait_until(beat_shows_the_jobs, timeout=10, what="a heartbeat with the jobs")
        assert node["node"] == "node-a" and node["pid"] == os.getpid()
        assert node["state"] == "running" and node["version"]
        workers = {w["name"]: w for w in node["workers"]}
        assert set(workers) == {"check#0", "charge#0", "charge:card#0"}
        assert all(w["state"] == "idle" and w["pid"] for w in workers.values())
        assert all(w["rss"] > 0 for w in workers.values())
        ttl = r.pttl(keys.node("shop", "node-a"))
        assert 0 < ttl <= 10_000

        port = sup.metrics_port
        assert port
        values = metrics(port)
        jobs_total = "procflow_jobs_total"
        assert sample(values, jobs_total, queue="check", outcome="completed", node="node-a") == 5
        assert sample(values, jobs_total, queue="check", outcome="retried") == 3
        assert sample(values, jobs_total, queue="check", outcome="failed") == 1
        assert sample(values, jobs_total, queue="charge:card", outcome="completed") == 5
        assert sample(values, "procflow_job_duration_seconds_count", queue="check") == 9
        assert sample(values, "procflow_queue_jobs", queue="check", state="failed") == 1
        assert sample(values, "procflow_queue_jobs", queue="check", state="waiting") == 0
        assert sample(values, "procflow_workers", queue="check", state="idle") == 1
        assert sample(values, "procflow_redis_up", flow="shop") == 1
        assert sample(values, "procflow_worker_rss_bytes", worker="check#0") > 0
        assert all("job" not in dict(labels) for _, labels in values)
        # every metric the Grafana dashboard and the alert rules in docs/ use is served
        served = served_names(port)
        for path in ("grafana-dashboard.json", "alerts.yml"):
            text = (DOCS / path).read_text()
            used = set(re.findall(r"procflow_[a-z_]+", text))
            assert used and used <= served, (path, used - served)
        json.loads((DOCS / "grafana-dashboard.json").read_text())
        rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
        assert {r["alert"] for r in rules["groups"][0]["rules"]} >= {
            "ProcflowQueueWaitingTooLong",
            "ProcflowCrashLoop",
            "ProcflowNoNode",
        }
    # a clean stop removes the node's record at once; the flow stays registered
    assert op.nodes("shop") == [] and op.flows() == ["shop"]
    op.close()


def test_a_dead_nodes_record_expires_by_itself(redis_url: str) -> None:
    op = Operator(redis_url)
    shop(redis_url).forget()
    op.registry.register("shop", shop(redis_url).definition.describe())
    op.registry.beat("shop", "gone", {"node": "gone", "workers": []}, ttl_ms=300)
    assert [n["node"] for n in op.nodes("shop")] == ["gone"]
    wait_until(lambda: op.nodes("shop") == [], timeout=5, what="the record to expire")
    op.close()


def test_per_minute_counts_older_than_a_day_are_folded_into_the_totals(
    redis_url: str, r: redis.Redis
) -> None:
    op = Operator(redis_url)
    now = int(op.registry.server_time()) // 60
    key = keys.stats("shop", "check")
    old, recent = now - keys.STATS_MINUTES - 5, now - 10
    r.hset(key, mapping={f"c:{old}": 3, f"f:{old}": 1, f"c:{recent}": 2, "completed": 5})
    before = op.registry.stats("shop", ["check"])[0].totals
    assert before["completed"] == 5 + 3 + 2 and before["failed"] == 1
    assert op.registry.trim_stats("shop", ["check"]) == 2
    assert r.hgetall(key) == {
        f"c:{recent}".encode(): b"2",
        b"completed": b"8",
        b"failed": b"1",
    }
    after = op.registry.stats("shop", ["check"])[0]
    assert after.totals == before and after.completed_per_minute[-11] == 2
    op.close()


def test_cancel_removes_a_pending_job_and_stops_a_running_one(
    redis_url: str, r: redis.Redis
) -> None:
    get = lazy_client(redis_url)

    def slow(job: dict[str, Any]) -> dict[str, Any]:
        get().set(f"started:{job['id']}", os.getpid())
        time.sleep(60 if job["long"] else 0)  # the long one is cancelled while it sleeps
        return {"ran": True}

    flow = Flow(
        "cancels", [QueueSpec("w", attributes_to_get=["long"], max_attempts=3)], redis_url=redis_url
    )
    flow.create_workers("w", slow, count=1)
    op = Operator(redis_url)
    with flow.start_all() as sup:
        running = flow.create_job({"long": True})
        victim = int(wait_until(lambda: r.get(f"started:{running}"), what="the long job to start"))
        pending = flow.create_job({"long": False})  # waits behind the long one
        assert op.cancel(pending) == ("cancelled", "w")
        assert op.cancel(running) == ("running", "w")
        done = sup.wait([running, pending], timeout=20)
        # the job is marked cancelled as its worker is stopped; the replacement follows
        wait_until(
            lambda: victim not in sup.worker_pids() and len(sup.worker_pids()) == 1,
            timeout=20,
            what="the cancelled job's worker replaced",
        )
    for job in done:
        assert job["done"] is True and job["failed"] is True and job["cancelled"] is True
        assert job["failedErrorMsg"] == "cancelled by an operator"
    assert r.get(f"started:{pending}") is None  # it never ran
    assert done[0]["attempts:w"] == 1  # not retried, although max_attempts is 3
    assert op.job(running)["state"] == "cancelled"
    assert op.status("cancels")[0].totals["cancelled"] == 2
    assert r.scard(keys.cancel_requests("cancels")) == 0
    assert op.cancel(running) == ("absent", "")  # done: nothing to cancel
    op.close()


def test_job_detail_paging_search_retry_and_purge(redis_url: str, r: redis.Redis) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    op = Operator(redis_url)
    with flow.start_all() as sup:
        ids = flow.create_jobs([job_options(a) for a in (2, 13, 4)])
        sup.wait(ids, timeout=60)
        detail = op.job(ids[1])
        assert detail["flow"] == "shop" and detail["state"] == "failed"
        assert detail["places"] == [{"queue": "check", "state": "failed"}]
        assert [e["kind"] for e in detail["fields"]["errors:check"]] == ["exception"] * 2
        ok = op.job(ids[0])
        assert ok["state"] == "done"
        (child,) = ok["fields"]["children:charge:jobs"]
        assert child["paid"] == 2
        assert op.job(child["id"])["queue"] == "charge:card"  # a child job is found too

        assert [j["id"] for j in op.jobs_by("shop", "user", "1")] == [ids[1], ids[2]]
        page = op.page("shop", "check", "failed")
        assert page.total == 1 and [j["id"] for j in page.jobs] == [ids[1]]
        page = op.page("shop", "charge", "finished", start=0, count=1)
        assert page.total == 2 and len(page.jobs) == 1

        assert op.retry("shop", "check", [ids[1]]) == [ids[1]]
        (again,) = sup.wait([ids[1]], timeout=30)
        assert again["failed"] is True  # 13 fails again, now on its own record
    assert op.purge_failed("shop", "check") == 1
    assert r.exists(flow.job_key(ids[1])) == 0
    removed = op.purge_flow("shop")
    assert removed > 0 and r.keys("*") == [] and op.flows() == []
    op.close()
