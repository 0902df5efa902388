"""Redis refusing commands — a least-privilege ACL user, a long script (BUSY), a full server
(OOM) — neither stops the supervisor nor kills a worker nor fails a job that ran fine."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from procflow import (
    CreateJobsError,
    Flow,
    QueueSpec,
    RedisFullError,
    RedisRefusedError,
    Supervisor,
)
from procflow.server import RedisServer
from tests.conftest import SERVER_KINDS, messages, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


def fan_out_flow(url: str, name: str = "acl") -> Flow:
    flow = Flow(
        name,
        [
            QueueSpec("prep", next_queue="split", attributes_to_get=["n"]),
            QueueSpec(
                "split",
                next_queue="last",
                children=[QueueSpec("kid", attributes_to_get=["v"], max_attempts=2)],
                on_child_failure="mark",  # the failed kid's parent goes on: every stage runs
            ),
            QueueSpec("last", attributes_to_get=["n"]),
        ],
        lookup_attributes=["n"],
        redis_url=url,
    )
    flow.create_workers(
        "prep",
        lambda j: {"children:split:params": [{"childName": "kid", "v": j["n"]}]},
        count=1,
    )
    flow.create_parent_workers("split", count=1)

    def kid(j: dict[str, Any]) -> dict[str, Any]:
        if j["v"] == 3:
            raise ValueError("three is refused")  # fails twice: a retry, then failed
        return {"w": j["v"] * 2}

    flow.create_child_workers("split", "kid", kid, count=1)
    flow.create_workers("last", lambda j: {"seen": j["n"]}, count=1)
    return flow


def test_a_user_with_exactly_the_documented_acl_rules_runs_a_whole_flow(
    redis_url: str, r: redis.Redis
) -> None:
    rules = fan_out_flow(redis_url).acl_rules()
    r.execute_command("ACL", "SETUSER", "least", "on", ">pw", *rules)
    try:
        url = redis_url.replace("redis://", "redis://least:pw@")
        flow = fan_out_flow(url)
        with Supervisor(flow, monitor_interval=0.1) as sup:
            ids = flow.create_jobs([{"n": n} for n in range(6)])
            jobs = sup.wait(ids, timeout=30)
            assert [j["n"] for j in flow.get_jobs_by_key("n", 2, resolve_children=True)] == [2]
        assert [j.get("seen") for j in jobs] == list(range(6))  # every parent went on
        kids = flow.failed_jobs("split:kid")
        assert len(kids) == 1
        assert flow.counts()["split:kid"]["failed"] == 1
        assert flow.retry_failed("split:kid") == kids
        assert flow.delete_job(ids[0]) is True
        assert flow.get_job(ids[0]) is None
        # and nothing beyond them: another flow's keys are out of reach
        other = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.set("job:someoneelse:1", "x")
        other.close()
    finally:
        r.execute_command("ACL", "DELUSER", "least")


def busy_script(url: str, seconds: float, started: threading.Event) -> None:
    """Run a script that keeps the server busy for ``seconds`` (other clients get BUSY)."""
    client = redis.Redis.from_url(url)
    spin = """
    local t = redis.call('TIME')
    local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
    while true do
      local n = redis.call('TIME')
      if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
    end
    return 1
    """
    started.set()
    client.eval(spin, 0, int(seconds * 1_000_000))
    client.close()


def slow_flow(url: str, name: str) -> Flow:
    flow = Flow(name, [QueueSpec("w", attributes_to_get=["n"], max_attempts=1)], redis_url=url)
    flow.create_workers("w", lambda j: time.sleep(0.01) or {"twice": j["n"] * 2}, count=2)
    return flow


@pytest.mark.parametrize("fresh_server", SERVER_KINDS, indirect=True)
def test_a_busy_server_is_ridden_out_by_workers_and_supervisor(
    fresh_server: RedisServer, lines: list[dict[str, Any]]
) -> None:
    r = redis.Redis.from_url(fresh_server.url)
    r.config_set("busy-reply-threshold", 100)
    flow = slow_flow(fresh_server.url, "busy")
    with Supervisor(flow, monitor_interval=0.1) as sup:
        pids = sorted(sup.worker_pids())
        ids = flow.create_jobs([{"n": n} for n in range(300)])
        wait_until(lambda: r.llen("queue:w:waiting") < 250, what="work under way")
        started = threading.Event()
        spinner = threading.Thread(target=busy_script, args=(fresh_server.url, 1.5, started))
        spinner.start()
        started.wait(5)
        wait_until(lambda: any("BUSY" in m for m in messages(lines)), what="workers seeing BUSY")
        spinner.join(20)
        jobs = sup.wait(ids, timeout=60)
        assert sorted(sup.worker_pids()) == pids  # no worker died or was replaced
        assert sup.manager.alive
    r.close()
    assert all(j["done"] and "failed" not in j for j in jobs)
    assert [j["twice"] for j in jobs] == [2 * n for n in range(300)]
    assert any("accepts the calls again" in m for m in messages(lines))


@pytest.mark.parametrize("fresh_server", SERVER_KINDS, indirect=True)
def test_a_full_server_delays_completions_but_fails_no_job(
    fresh_server: RedisServer, lines: list[dict[str, Any]]
) -> None:
    r = redis.Redis.from_url(fresh_server.url)
    flow = slow_flow(fresh_server.url, "full")
    with Supervisor(flow, monitor_interval=0.1) as sup:
        pids = sorted(sup.worker_pids())
        ids = flow.create_jobs([{"n": n} for n in range(200)])
        wait_until(lambda: r.llen("queue:w:waiting") < 150, what="work under way")
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", used // 2)  # over the limit: every write is refused
        wait_until(lambda: any("OOM" in m for m in messages(lines)), what="a completion refused")
        r.config_set("maxmemory", 0)
        jobs = sup.wait(ids, timeout=60)
        assert sorted(sup.worker_pids()) == pids
    r.close()
    assert all(j["done"] and "failed" not in j for j in jobs)  # max_attempts=1, yet none failed
    refused = [m for m in messages(lines) if "OOM" in m and "keeps its lease" in m]
    assert 1 <= len(refused) <= 2 * len(pids)  # once per episode and worker, not per retry


@pytest.mark.parametrize("fresh_server", SERVER_KINDS, indirect=True)
def test_create_jobs_refused_part_way_says_exactly_which_jobs_exist(
    fresh_server: RedisServer,
) -> None:
    r = redis.Redis.from_url(fresh_server.url)
    flow = Flow("part", [QueueSpec("w")], lookup_attributes=["n"], redis_url=fresh_server.url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", used + 3_000_000)
    with pytest.raises(CreateJobsError) as info:
        flow.create_jobs([{"n": n, "pad": "p" * 500} for n in range(20_000)])
    err = info.value
    assert isinstance(err, RedisRefusedError) and err.code == "OOM"
    assert isinstance(err.refused, RedisFullError)
    assert err.created and err.not_created
    assert len(err.created) + len(err.not_created) == 20_000
    r.config_set("maxmemory", 0)
    waiting = [i.decode() for i in r.lrange("queue:w:waiting", 0, -1)]
    assert waiting == list(err.created)  # exactly the jobs it says, in order
    assert all(r.exists(f"job:part:{i}") for i in err.created[-5:])
    assert not any(r.exists(f"job:part:{i}") for i in err.not_created[:50])
    assert "created (their ids are in .created)" in str(err)
    r.close()


def test_creating_no_jobs_needs_no_connection() -> None:
    flow = Flow("none", [QueueSpec("w")], redis_url="redis://127.0.0.1:1/0")
    assert flow.create_jobs([]) == []
