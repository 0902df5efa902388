"""Data that must not lie or crash: deep JSON, oversized values, fields named like
procflow's own, failed lists whose jobs expired."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from procflow import DecodeError, EncodeError, Flow, QueueSpec, Supervisor
from procflow.codec import encode_fields


def test_a_deeply_nested_field_is_a_decode_error_with_key_field_and_bytes(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("deep", [QueueSpec("w", attributes_to_get=["x"])], redis_url=redis_url)
    job_id = flow.create_job({"x": 1})
    deep = b"[" * 10_000 + b"]" * 10_000
    r.hset(f"job:deep:{job_id}", "x", deep)
    with pytest.raises(DecodeError) as info:
        flow.get_job(job_id)
    assert (info.value.key, info.value.field, info.value.raw) == (f"job:deep:{job_id}", "x", deep)
    assert "nested too deeply" in str(info.value)
    assert len(str(info.value)) < 1000  # the message shows the start of the bytes, not 20 KB


def test_a_worker_leasing_deep_json_fails_the_attempt_and_lives(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("deepw", [QueueSpec("w", attributes_to_get=["x"])], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"ok": True}, count=1)
    bad, good = flow.create_jobs([{"x": 1}, {"x": 2}])
    r.hset(f"job:deepw:{bad}", "x", b"[" * 10_000 + b"]" * 10_000)
    with Supervisor(flow) as sup:
        pid = sup.worker_pids()
        with pytest.raises(DecodeError):  # both done; the bad one cannot be read back whole
            sup.wait([bad, good], timeout=20)
        assert sup.worker_pids() == pid
    assert flow.get_job(good)["ok"] is True
    raw = r.hgetall(f"job:deepw:{bad}")
    assert raw[b"failed"] == b"true"
    assert b"nested too deeply" in raw[b"failedErrorMsg"]
    assert b'"kind":"decode"' in raw[b"errors:w"]


def test_a_value_over_the_servers_bulk_limit_is_refused_before_sending(
    redis_url: str, r: redis.Redis
) -> None:
    r.config_set("proto-max-bulk-len", "1mb")
    try:
        url = redis_url + "?max_value_bytes=1MiB"
        flow = Flow("big", [QueueSpec("w")], redis_url=url)
        with pytest.raises(EncodeError, match=r"option 'blob'.*1\.0 MiB.*proto-max-bulk-len"):
            flow.create_jobs([{"n": 1}, {"blob": "x" * (1 << 20)}])
        assert r.keys("job:big:*") == [] and r.llen("queue:w:waiting") == 0
        flow.create_job({"blob": "x" * 1000})  # the connection is fine
    finally:
        r.config_set("proto-max-bulk-len", "512mb")


def test_the_size_limit_counts_the_json_bytes() -> None:
    assert encode_fields({"a": "é" * 10}, max_bytes=22)  # "…" quotes + 20 bytes of UTF-8
    with pytest.raises(EncodeError, match="23 bytes"):
        encode_fields({"a": "é" * 10 + "x"}, max_bytes=22)


@pytest.mark.parametrize("field", ["id", "done", "failed", "failedQueue", "attempts:w"])
def test_options_named_like_procflows_own_fields_are_refused(redis_url: str, field: str) -> None:
    flow = Flow("own", [QueueSpec("w")], redis_url=redis_url)
    with pytest.raises(EncodeError, match=f"option '{field}'"):
        flow.create_job({"a": 1, field: "forged"})


def test_a_stored_id_field_never_replaces_the_real_id(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("ids", [QueueSpec("w")], lookup_attributes=["a"], redis_url=redis_url)
    job_id = flow.create_job({"a": 1})
    r.hset(f"job:ids:{job_id}", "id", '"forged-id"')  # as another library might write it
    assert flow.get_job(job_id)["id"] == job_id
    assert [j["id"] for j in flow.get_jobs_by_key("a", 1)] == [job_id]


@pytest.mark.parametrize("field", ["id", "failed", "failedQueue", "completed-queue"])
def test_results_named_like_procflows_own_fields_fail_the_attempt(
    redis_url: str, r: redis.Redis, field: str
) -> None:
    flow = Flow("res", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {field: "forged"}, count=1)
    with Supervisor(flow) as sup:
        (job,) = sup.wait([flow.create_job({"a": 1})], timeout=20)
    assert job["failed"] is True and job["id"] != "forged"
    assert f"result field {field!r} is procflow's bookkeeping" in job["failedErrorMsg"]


@pytest.mark.parametrize("value", [True, False, "forged"])
def test_a_results_done_is_read_not_written(redis_url: str, r: redis.Redis, value: Any) -> None:
    """The TypeScript library's workers return ``done``: accepted, and the job's ``done`` is
    still procflow's own flag (true when the job leaves its flow; tests/interop compares
    the whole state with the library's)."""
    flow = Flow("res", [QueueSpec("a", next_queue="b"), QueueSpec("b")], redis_url=redis_url)
    flow.create_workers("a", lambda j: {"done": value, "x": 1}, count=1)
    flow.create_workers("b", lambda j: {"y": 2}, count=1)
    with Supervisor(flow) as sup:
        (job,) = sup.wait([flow.create_job({"a": 1})], timeout=20)
    assert "failed" not in job and job["done"] is True
    assert job["x"] == 1 and job["y"] == 2 and job["completed-queue"] == "b"


def test_failed_lists_follow_their_jobs_expiry(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("gone", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: 1 / 0, count=1)
    with Supervisor(flow) as sup:
        ids = sup.wait(flow.create_jobs([{"n": n} for n in range(4)]), timeout=20)
    ids = [j["id"] for j in ids]
    assert flow.counts()["w"]["failed"] == 4
    r.delete(f"job:gone:{ids[1]}")  # as when its TTL runs out
    assert flow.counts()["w"]["failed"] == 3
    assert flow.failed_jobs("w") == [ids[0], ids[2], ids[3]]
    assert r.llen("queue:w:failed") == 3
