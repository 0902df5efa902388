"""How long the head of a stage's waiting list has waited *in that stage* (issue 17, item 4):
every push onto a waiting list notes the server's time in the job (``waiting-since:Q``), and
the CLI, the dashboard and the metric read that, not the job's age."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import redis

import procflow.client.flow as flow_module
from procflow import Flow, QueueSpec, ids
from procflow.errors import EncodeError
from procflow.failures import FailureRecord, RetryPolicy
from procflow.operator.ops import Operator
from procflow.store import keys
from procflow.store.session import StageSession
from procflow.store.wire import Wire
from procflow.worker.fanout import plan_children
from tests.conftest import wait_until
from tests.helpers import metric, scrape
from tests.process.test_cli_first_hour import PROCFLOW, run

LOCK_MS = 30_000
#: how long ago the jobs of these tests were "created" (their UUIDv7 ids say so)
AGE_S = 600


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture
def old_ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Jobs created while this fixture is active carry ids made AGE_S seconds ago: as if
    they had spent that long in the stages before."""
    past = ids.uuid7()
    born = ids.created_at(past)
    assert born is not None
    ms = int(born * 1000) - AGE_S * 1000
    monkeypatch.setattr(flow_module, "uuid7", lambda: ids._format(ms, os.urandom(10)))
    monkeypatch.setattr(
        flow_module,
        "uuid7_batch",
        lambda n: [ids._format(ms, os.urandom(10)) for _ in range(n)],
        raising=False,
    )
    yield


def since(r: redis.Redis, job_key: str, queue: str) -> int | None:
    raw = r.hget(job_key, keys.waiting_since_field(queue))
    if raw is None:
        return None
    value = json.loads(raw)  # JSON, as every job field
    assert isinstance(value, int)
    return value


@pytest.fixture
def flow(redis_url: str) -> Flow:
    return Flow(
        "F",
        [
            QueueSpec("a", next_queue="b", max_attempts=3),
            QueueSpec("b"),
            QueueSpec("p", children=[QueueSpec("c1")], next_queue="b"),
        ],
        redis_url=redis_url,
    )


def session(flow: Flow, queue: str, prefetch: int = 1) -> StageSession:
    stage = flow.stage(queue)
    return StageSession(
        Wire(flow.redis), stage.keys, fields=stage.fields, lock_ms=LOCK_MS, prefetch=prefetch
    )


def fail(flow: Flow, queue: str, job_id: str, token: str, delays: list[int]) -> str | None:
    stage = flow.stage(queue)
    with flow.store.session(stage.keys) as s:
        outcome = s.fail(
            job_id, token, FailureRecord("boom", "test", "boom"), RetryPolicy(3, delays)
        )
    return outcome.outcome


def test_every_push_onto_a_waiting_list_notes_when_by_the_servers_clock(
    flow: Flow, r: redis.Redis
) -> None:
    first, second, third = flow.create_jobs([{"x": 1}, {"x": 2}, {"x": 3}])
    job = flow.job_key
    # created: the first stage's entry is the id's creation time (no note needed)
    assert since(r, job(first), "a") is None
    # complete → the next stage's list, noted; the stage it left forgets its note
    a = session(flow, "a")
    before = server_ms(r)
    assert a.lease("T1") is not None
    assert a.complete(first, "T1", [], "queue:b:waiting")[0] == 1
    noted = since(r, job(first), "b")
    assert noted is not None and before <= noted <= server_ms(r)
    # a batch's completions too
    many = session(flow, "a", prefetch=2)
    leases = many.lease_many("n|1|2.00|3|1")
    statuses, _ = many.complete_many([(x.id, x.token, [], "queue:b:waiting") for x in leases])
    assert statuses == [1, 1]
    assert all(since(r, job(i), "b") is not None for i in (second, third))
    # a retry straight back onto its own list; one through the delayed set, when promoted
    b = session(flow, "b")
    assert b.lease("T2") is not None  # first
    r.hset(job(first), keys.waiting_since_field("b"), "1")  # so that a new note shows
    assert fail(flow, "b", first, "T2", [0, 60_000]) == "retry"
    assert (since(r, job(first), "b") or 0) >= before
    assert b.lease("T3") is not None  # second
    r.hset(job(second), keys.waiting_since_field("b"), "1")
    assert fail(flow, "b", second, "T3", [60_000]) == "retry"
    assert since(r, job(second), "b") == 1  # delayed: not waiting yet
    r.zadd("queue:b:delayed", {second: 0})  # due now
    assert flow.store.promote([flow.stage("b").keys])[0][0] == 1
    assert (since(r, job(second), "b") or 0) >= before
    # revived from the failed list
    r.hset(job(third), keys.waiting_since_field("b"), "1")
    r.lrem("queue:b:waiting", 0, third)
    r.rpush("queue:b:failed", third)
    assert flow.retry_failed("b", [third]) == [third]
    assert (since(r, job(third), "b") or 0) >= before
    # a parked parent put back by the monitor's safety net
    r.zadd("queue:p:parked", {first: 0})
    r.lrem("queue:b:waiting", 0, first)
    assert flow.store.unpark(flow.stage("p").keys, first)
    assert (since(r, job(first), "p") or 0) >= before


def test_fan_out_notes_the_children_and_the_parent_put_back_by_its_last_child(
    flow: Flow, r: redis.Redis
) -> None:
    parent = flow.create_job({"x": 1})
    r.delete("queue:a:waiting")
    r.hset(flow.job_key(parent), "children:p:params", '[{"childName":"c1"}]')
    r.rpush("queue:p:waiting", parent)
    stage = flow.stage("p")
    p = session(flow, "p")
    got = p.lease("TP")
    assert got is not None
    plan = plan_children("p", json.loads(got.values[0]), flow.definition.child_keys(stage))
    before = server_ms(r)
    assert p.spawn_children(parent, "TP", plan.children, plan.jobs_json, 86_400) == 1
    (child_key,) = json.loads(r.hget(flow.job_key(parent), "children:p:jobs"))
    assert (since(r, child_key, "p:c1") or 0) >= before
    child = session(flow, "p:c1")
    leased = child.lease("TC")
    assert leased is not None
    r.hset(flow.job_key(parent), keys.waiting_since_field("p"), "1")
    assert child.complete(leased.id, "TC", [], "")[0] == 1
    assert r.lrange("queue:p:waiting", 0, -1) == [parent.encode()]
    assert (since(r, flow.job_key(parent), "p") or 0) >= before


def test_the_note_is_procflows_own_field(flow: Flow) -> None:
    field = keys.waiting_since_field("b")
    assert field == "waiting-since:b"
    assert keys.is_reserved(field) and keys.is_reserved_in_result(field)
    with pytest.raises(EncodeError, match="waiting-since:b"):
        flow.create_job({field: 1})


def test_a_job_pushed_without_a_note_has_waited_since_its_creation(
    flow: Flow, r: redis.Redis, old_ids: None
) -> None:
    """As the TypeScript library pushes a job: no note, so the id's creation time counts."""
    job_id = flow.create_job({"x": 1})
    r.delete("queue:a:waiting")
    r.rpush("queue:b:waiting", job_id)
    op = Operator(flow.redis)
    try:
        waited = {s.name: s.oldest_waiting_s for s in op_status(op, flow)}
    finally:
        op.close()
    assert waited["b"] is not None and AGE_S - 5 <= waited["b"] <= AGE_S + 60


def op_status(op: Operator, flow: Flow) -> list:  # type: ignore[type-arg]
    op.adopt(flow)
    return op.status(flow.name)


# -- the whole path: a supervisor's worker moves jobs on; CLI and metric agree ------------------


@pytest.mark.usefixtures("no_leaks")
def test_a_late_stage_shows_the_wait_in_the_stage_not_the_jobs_age(
    redis_url: str, r: redis.Redis, old_ids: None
) -> None:
    flow = Flow(
        "pipe",
        [QueueSpec("one", next_queue="two", attributes_to_get=["n"]), QueueSpec("two")],
        redis_url=redis_url,
    )
    created = [flow.create_job({"n": n}) for n in range(3)]  # in stage one for AGE_S seconds
    flow.create_workers("one", lambda job: {"seen": job["n"]}, count=1)  # none for two
    with flow.start_all(node_id="node-a", metrics_port=0) as sup:
        wait_until(lambda: r.llen("queue:two:waiting") == 3, timeout=30, what="stage two")
        port = sup.metrics_port
        assert port is not None
        text = scrape(port)
        in_metric = metric(text, "procflow_queue_oldest_waiting_seconds", queue="two")
        out = run(PROCFLOW, "status", "pipe", "--json", url=redis_url)
        assert out.returncode == 0, out.stdout + out.stderr
        ((status,),) = [[f] for f in json.loads(out.stdout)]
        stages = {s["name"]: s for s in status["stages"]}
        in_cli = stages["two"]["oldest_waiting_s"]
    flow.disconnect()
    assert sorted(i.decode() for i in r.lrange("queue:two:waiting", 0, -1)) == sorted(created)
    # entered stage two moments ago, created AGE_S seconds ago
    assert in_cli is not None and in_cli < 60, in_cli
    assert in_metric < 60, in_metric
    assert abs(in_cli - in_metric) < 30
    assert stages["one"]["oldest_waiting_s"] is None  # nothing waits there
    # a noeviction server: the eviction gauge reads 0
    assert metric(text, "procflow_redis_eviction_unsafe", flow="pipe", policy="noeviction") == 0
