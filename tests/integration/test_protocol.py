"""The job protocol's scripts, one state change at a time, against a real server."""

from __future__ import annotations

import json

import pytest
import redis

from procflow import Flow, QueueSpec
from procflow.codec import encode
from procflow.failures import FailureRecord, RetryPolicy
from procflow.store.session import StageSession
from procflow.store.wire import Wire
from procflow.worker.fanout import plan_children

LOCK_MS = 30_000


@pytest.fixture
def flow(redis_url: str) -> Flow:
    return Flow(
        "F",
        [
            QueueSpec("a", next_queue="b", attributes_to_get=["x", "missing"], max_attempts=3),
            QueueSpec("b"),
            QueueSpec("p", children=[QueueSpec("c1"), QueueSpec("c2")], next_queue="b"),
        ],
        redis_url=redis_url,
    )


@pytest.fixture
def wire(flow: Flow) -> Wire:
    return Wire(flow.redis)


def session(flow: Flow, wire: Wire, queue: str, fields: bool = True) -> StageSession:
    """Stage ``queue``'s protocol on ``wire``, with a blocking connection of its own."""
    stage = flow.stage(queue)
    return StageSession(
        wire,
        stage.keys,
        fields=stage.fields if fields else (),
        lock_ms=LOCK_MS,
        blocking=Wire(flow.redis),
    )


def lease(flow: Flow, wire: Wire, queue: str, token: str = "T1"):  # type: ignore[no-untyped-def]
    return session(flow, wire, queue).lease(token)


def test_lease_moves_locks_counts_and_reads(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": {"k": [1, 2]}})
    got = lease(flow, wire, "a")
    assert got is not None
    assert (got.id, got.attempts) == (job_id, 1)
    assert got.values == [b'{"k":[1,2]}', None]
    assert r.lrange("queue:a:waiting", 0, -1) == []
    assert r.lrange("queue:a:processing", 0, -1) == [job_id.encode()]
    assert r.get(f"lock:a:{job_id}") == b"T1"
    assert 29_000 < r.pttl(f"lock:a:{job_id}") <= 30_000
    assert r.hget(f"job:F:{job_id}", "attempts:a") == b"1"
    assert r.hget(f"job:F:{job_id}", "lease:a") == b'"T1"'
    assert lease(flow, wire, "a", "T2") is None


def test_complete_writes_result_and_routes(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    got = lease(flow, wire, "a")
    assert got is not None
    status, following = session(flow, wire, "a").complete(
        job_id,
        "T1",
        [(b"result", encode({"ok": True}).encode()), (b"n", b"3")],
        "queue:b:waiting",
    )
    assert (status, following) == (1, [])
    job = r.hgetall(f"job:F:{job_id}")
    assert job[b"result"] == b'{"ok":true}'
    assert job[b"n"] == b"3"
    assert job[b"completed-queue"] == b'"a"'
    assert b"done" not in job
    assert r.lrange("queue:b:waiting", 0, -1) == [job_id.encode()]
    assert r.llen("queue:a:processing") == 0
    assert not r.exists(f"lock:a:{job_id}")


def test_last_stage_marks_done_and_announces(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    r.delete("queue:a:waiting")
    r.rpush("queue:b:waiting", job_id)
    sub = r.pubsub()
    sub.subscribe("procflow:F:done")
    b = session(flow, wire, "b", fields=False)
    assert b.lease("T") is not None
    status, _ = b.complete(job_id, "T", [], "")
    assert status == 1
    assert r.hget(f"job:F:{job_id}", "done") == b"true"
    assert r.hget(f"job:F:{job_id}", "completed-queue") == b'"b"'
    messages = [sub.get_message(timeout=1) for _ in range(2)]
    assert any(m and m["type"] == "message" and m["data"] == job_id.encode() for m in messages)


def test_complete_leases_the_next_job_in_the_same_call(
    flow: Flow, wire: Wire, r: redis.Redis
) -> None:
    first, second = flow.create_jobs([{"x": 1}, {"x": 2}])
    got = lease(flow, wire, "a")
    assert got is not None and got.id == first
    status, following = session(flow, wire, "a").complete(first, "T1", [], "queue:b:waiting", "T2")
    assert status == 1
    (nxt,) = following
    assert (nxt.id, nxt.values) == (second, [b"2", None])
    assert r.get(f"lock:a:{second}") == b"T2"


def test_a_stale_completion_changes_nothing(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    assert lease(flow, wire, "a", "OLD") is not None
    r.set(f"lock:a:{job_id}", "NEW")  # the lock expired and another worker re-leased it
    before = r.hgetall(f"job:F:{job_id}")
    status, _ = session(flow, wire, "a").complete(job_id, "OLD", [(b"r", b"1")], "queue:b:waiting")
    assert status == 0
    assert r.hgetall(f"job:F:{job_id}") == before
    assert r.lrange("queue:a:processing", 0, -1) == [job_id.encode()]
    assert r.get(f"lock:a:{job_id}") == b"NEW"
    assert r.llen("queue:b:waiting") == 0


def fail(
    flow: Flow, queue: str, job_id: str, token: str, message: str = "boom", mode: str = "token"
):  # type: ignore[no-untyped-def]
    stage = flow.stage(queue)
    record = FailureRecord(message, "test", message)
    policy = RetryPolicy(stage.spec.max_attempts, [0, 60_000])
    with flow.store.session(stage.keys) as s:
        return s.fail(job_id, token, record, policy, mode)


def test_failures_retry_then_fail_for_good(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    assert lease(flow, wire, "a", "T1") is not None
    outcome = fail(flow, "a", job_id, "T1", "first")
    assert (outcome.outcome, outcome.attempts, outcome.delay_ms) == ("retry", 1, 0)
    assert r.lrange("queue:a:waiting", 0, -1) == [job_id.encode()]  # no delay: straight back
    assert lease(flow, wire, "a", "T2") is not None
    outcome = fail(flow, "a", job_id, "T2", "second")
    assert (outcome.outcome, outcome.attempts, outcome.delay_ms) == ("retry", 2, 60_000)
    assert r.llen("queue:a:waiting") == 0
    assert r.zscore("queue:a:delayed", job_id) is not None
    r.zadd("queue:a:delayed", {job_id: 0})  # due now
    assert flow.store.promote([flow.stage("a").keys])[0][0] == 1
    assert lease(flow, wire, "a", "T3") is not None
    outcome = fail(flow, "a", job_id, "T3", "third")
    assert (outcome.outcome, outcome.attempts) == ("failed", 3)
    job = r.hgetall(f"job:F:{job_id}")
    assert job[b"done"] == b"true"
    assert job[b"failed"] == b"true"
    assert job[b"failedQueue"] == b'"a"'
    assert job[b"failedErrorMsg"] == b'"third"'
    errors = json.loads(job[b"errors:a"])
    assert [e["error"] for e in errors] == ["first", "second", "third"]
    assert {e["kind"] for e in errors} == {"test"} and all(e["at"] > 0 for e in errors)
    assert job[b"attempts:a"] == b"3"
    assert r.lrange("queue:a:failed", 0, -1) == [job_id.encode()]
    assert r.llen("queue:a:processing") == 0
    assert flow.failed_jobs("a") == [job_id]
    assert flow.retry_failed("a") == [job_id]
    job = r.hgetall(f"job:F:{job_id}")
    assert b"done" not in job and b"failed" not in job and b"attempts:a" not in job
    assert b"errors:a" in job
    assert r.lrange("queue:a:waiting", 0, -1) == [job_id.encode()]


def test_fail_with_a_foreign_token_changes_nothing(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    assert lease(flow, wire, "a", "MINE") is not None
    assert fail(flow, "a", job_id, "OTHER").outcome is None
    assert r.get(f"lock:a:{job_id}") == b"MINE"


def test_requeue_finds_the_job_by_token_and_gives_the_attempt_back(
    flow: Flow, wire: Wire, r: redis.Redis
) -> None:
    job_id = flow.create_job({"x": 1})
    flow.create_job({"x": 2})
    assert lease(flow, wire, "a", "LOST") is not None
    a = session(flow, wire, "a")
    assert a.requeue("", "LOST") == job_id
    assert r.lrange("queue:a:waiting", 0, 0) == [job_id.encode()]  # at the front
    assert r.hget(f"job:F:{job_id}", "attempts:a") == b"0"
    assert not r.hexists(f"job:F:{job_id}", "lease:a")
    assert a.requeue("", "LOST") is None


def test_claim_after_blmove_and_orphan_recovery(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    a = session(flow, wire, "a")
    job_id = flow.create_job({"x": 1})
    moved = a.wait_for_job(1)
    assert moved == job_id
    # moved but never claimed: the monitor puts it back without counting an attempt
    outcome = fail(flow, "a", job_id, "", "lock expired", mode="orphan")
    assert outcome.outcome == "requeued"
    assert r.lrange("queue:a:waiting", 0, -1) == [job_id.encode()]
    assert not r.hexists(f"job:F:{job_id}", "errors:a")
    # claimed, then the lock expired: that attempt counts
    assert a.wait_for_job(1) == job_id
    assert a.claim(job_id, "T") is not None
    assert a.claim(job_id, "T2") is None
    r.delete(f"lock:a:{job_id}")
    outcome = fail(flow, "a", job_id, "", "lock expired", mode="orphan")
    assert (outcome.outcome, outcome.attempts) == ("retry", 1)


def test_claim_refused_when_the_job_was_taken_back(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    a = session(flow, wire, "a")
    job_id = flow.create_job({"x": 1})
    assert a.wait_for_job(1) == job_id
    fail(flow, "a", job_id, "", "taken back", mode="orphan")
    assert a.claim(job_id, "T") is None
    assert not r.exists(f"lock:a:{job_id}")


def test_a_job_whose_hash_expired_is_dropped(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    job_id = flow.create_job({"x": 1})
    r.delete(f"job:F:{job_id}")
    got = lease(flow, wire, "a")
    assert got is not None and got.vanished
    assert r.llen("queue:a:processing") == 0
    assert not r.exists(f"job:F:{job_id}")  # not resurrected as a fragment


def test_scripts_reload_after_script_flush(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    flow.create_jobs([{"x": 1}, {"x": 2}])
    assert lease(flow, wire, "a", "T1") is not None
    r.script_flush()
    assert lease(flow, wire, "a", "T2") is not None


def test_renew_extends_only_locks_still_held(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    a, b = flow.create_jobs([{"x": 1}, {"x": 2}])
    lease(flow, wire, "a", "TA")
    lease(flow, wire, "a", "TB")
    r.set(f"lock:a:{b}", "SOMEONE-ELSE", px=1000)
    assert flow.store.renew([(f"lock:a:{a}", "TA", 90_000), (f"lock:a:{b}", "TB", 90_000)]) == [
        True,
        False,
    ]
    assert r.pttl(f"lock:a:{a}") > 60_000
    assert r.pttl(f"lock:a:{b}") <= 1000


def test_fan_out_and_fan_in(flow: Flow, wire: Wire, r: redis.Redis) -> None:
    parent_id = flow.create_job({"x": 1})
    r.delete("queue:a:waiting")
    r.hset(
        f"job:F:{parent_id}",
        "children:p:params",
        '[{"childName":"c1","v":1},{"childName":"c2","v":2}]',
    )
    r.rpush("queue:p:waiting", parent_id)
    stage = flow.stage("p")
    p = session(flow, wire, "p")
    got = p.lease("TP")
    assert got is not None
    plan = plan_children("p", json.loads(got.values[0]), flow.definition.child_keys(stage))
    args = (parent_id, "TP", plan.children, plan.jobs_json, 86400)
    assert p.spawn_children(*args) == 1
    assert p.spawn_children(*args) == 0  # the lease is gone: nothing twice
    child_keys = json.loads(r.hget(f"job:F:{parent_id}", "children:p:jobs"))
    assert [k.rsplit(":", 1)[0] for k in child_keys] == ["job:p:c1", "job:p:c2"]
    c1 = r.hgetall(child_keys[0])
    assert c1[b"v"] == b"1" and b"childName" not in c1
    assert c1[b"parentJob"] == f'"job:F:{parent_id}"'.encode()
    assert r.ttl(child_keys[0]) > 86_000
    assert r.zscore("queue:p:parked", parent_id) is not None
    assert r.llen("queue:p:processing") == 0
    assert r.hget(f"job:F:{parent_id}", "attempts:p") == b"0"
    # the children finish; the last one puts the parent back on queue:p:waiting
    for n, key in enumerate(child_keys):
        child_session = session(flow, wire, f"p:c{n + 1}", fields=False)
        child = child_session.lease(f"TC{n}")
        assert child is not None
        assert r.llen("queue:p:waiting") == 0
        if n == 0:
            status, _ = child_session.complete(child.id, f"TC{n}", [], "")
            assert status == 1
        else:
            assert fail(flow, "p:c2", child.id, f"TC{n}", "child broke").outcome == "failed"
        assert r.hget(key, "done") == b"true"
    assert r.lrange("queue:p:waiting", 0, -1) == [parent_id.encode()]
    assert r.zscore("queue:p:parked", parent_id) is None
    assert r.hget(f"job:F:{parent_id}", "children:p:pending") == b"0"


def test_a_prefetching_lease_takes_up_to_k_jobs_each_under_its_own_token(
    flow: Flow, wire: Wire, r: redis.Redis
) -> None:
    ids = flow.create_jobs([{"x": n} for n in range(5)])
    stage = flow.stage("a")
    s = StageSession(wire, stage.keys, fields=stage.fields, lock_ms=LOCK_MS, prefetch=3)
    leases = s.lease_many("node|1|2.00|3|10")
    assert [(x.id, x.token, x.attempts) for x in leases] == [
        (ids[0], "node|1|2.00|3|10", 1),
        (ids[1], "node|1|2.00|3|11", 1),
        (ids[2], "node|1|2.00|3|12", 1),
    ]
    assert [x.values for x in leases] == [[b"0", None], [b"1", None], [b"2", None]]
    for x in leases:
        assert r.get(f"lock:a:{x.id}") == x.token.encode()
        assert 0 < r.pttl(f"lock:a:{x.id}") <= LOCK_MS
    assert [i.decode() for i in r.lrange("queue:a:processing", 0, -1)] == ids[:3]
    # the last one's completion leases the rest in the same call: as many as wait
    status, following = s.complete(
        ids[2], leases[2].token, [], "queue:b:waiting", "node|1|2.00|3|13"
    )
    assert status == 1
    assert [(x.id, x.token) for x in following] == [
        (ids[3], "node|1|2.00|3|13"),
        (ids[4], "node|1|2.00|3|14"),
    ]
    assert s.lease_many("node|1|2.00|3|20") == []  # nothing waits: nothing leased


def test_a_prefetched_batch_is_completed_in_one_call_that_leases_the_next(
    flow: Flow, wire: Wire, r: redis.Redis
) -> None:
    ids = flow.create_jobs([{"x": n} for n in range(5)])
    stage = flow.stage("a")
    s = StageSession(wire, stage.keys, fields=stage.fields, lock_ms=LOCK_MS, prefetch=3)
    leases = s.lease_many("n|1|2.00|3|1")
    r.set(f"lock:a:{ids[1]}", "SOMEONE ELSE")  # its lock expired and another node took it
    statuses, following = s.complete_many(
        [
            (ids[0], leases[0].token, [(b"r", b"0")], "queue:b:waiting"),
            (ids[1], leases[1].token, [(b"r", b"1")], "queue:b:waiting"),
            (ids[2], leases[2].token, [(b"r", b"2")], ""),  # it leaves the flow here
        ],
        "n|1|2.00|3|4",
    )
    assert statuses == [1, 0, 1]
    assert [(x.id, x.token) for x in following] == [
        (ids[3], "n|1|2.00|3|4"),
        (ids[4], "n|1|2.00|3|5"),
    ]
    assert [i.decode() for i in r.lrange("queue:b:waiting", 0, -1)] == [ids[0]]
    assert r.hget(f"job:F:{ids[0]}", "r") == b"0" and r.hget(f"job:F:{ids[1]}", "r") is None
    assert r.hget(f"job:F:{ids[2]}", "done") == b"true"
    assert r.hget(f"job:F:{ids[2]}", "completed-queue") == b'"a"'
    assert r.exists(f"lock:a:{ids[0]}", f"lock:a:{ids[2]}") == 0
    assert [i.decode() for i in r.lrange("queue:a:processing", 0, -1)] == [ids[1], ids[3], ids[4]]
    assert (
        sum(int(v) for k, v in r.hgetall("procflow:F:stats:a").items() if k.startswith(b"c:")) == 2
    )
