"""The Redis layout is the TypeScript library's protocol: exact key names, exact bytes."""

from __future__ import annotations

import threading

import pytest
import redis

from procflow import (
    DecodeError,
    EncodeError,
    Flow,
    QueueSpec,
    RedisUnavailableError,
    UnknownLookupAttributeError,
)
from procflow.server import RedisServer
from tests.conftest import SERVER_KINDS, server_binary

OPTIONS = {
    "userId": 62,
    "name": "joe",
    "city": "Zürich — ☃",
    "roleIds": [1, 2],
    "score": 2.5,
    "ratio": 1.0,
    "tiny": 1e-7,
    "flag": True,
    "nothing": None,
    "nested": {"a": [1, {"b": "c"}], "d": False},
}

STORED = {
    b"userId": b"62",
    b"name": b'"joe"',
    b"city": '"Zürich — ☃"'.encode(),
    b"roleIds": b"[1,2]",
    b"score": b"2.5",
    b"ratio": b"1",
    b"tiny": b"1e-7",
    b"flag": b"true",
    b"nothing": b"null",
    b"nested": b'{"a":[1,{"b":"c"}],"d":false}',
}


def make_flow(url: str, **kwargs: object) -> Flow:
    return Flow(
        "access",
        [QueueSpec("prepare", next_queue="check"), QueueSpec("check")],
        lookup_attributes=["userId", "roleIds", "name", "flag", "nothing", "nested", "score"],
        redis_url=url,
        **kwargs,  # type: ignore[arg-type]
    )


def test_job_hash_holds_exact_json_bytes(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    job_id = flow.create_job(OPTIONS)
    assert r.hgetall(f"job:access:{job_id}") == STORED
    assert 86_390 <= r.ttl(f"job:access:{job_id}") <= 86_400


def test_lookup_lists_and_first_queue(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    job_id = flow.create_job(OPTIONS)
    expected_lookups = {
        b"job:access:userId:62",
        b"job:access:roleIds:1",
        b"job:access:roleIds:2",
        b"job:access:name:joe",
        b"job:access:score:2.5",
    }
    assert set(r.keys("job:access:*")) == expected_lookups | {f"job:access:{job_id}".encode()}
    for key in expected_lookups:
        assert r.lrange(key, 0, -1) == [job_id.encode()]
        assert 86_390 <= r.ttl(key) <= 86_400
    assert r.lrange("queue:prepare:waiting", 0, -1) == [job_id.encode()]
    assert set(r.keys("queue:*")) == {b"queue:prepare:waiting"}


def test_create_job_is_one_multi_exec(redis_url: str) -> None:
    flow = make_flow(redis_url)
    flow.connect()
    client = redis.Redis.from_url(redis_url)
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as m:
            ready.set()
            for command in m.listen():
                text = command["command"]
                if text.startswith(("MULTI", "HSET", "EXPIRE", "RPUSH", "EXEC")):
                    seen.append(text.split(" ", 1)[0])
                if text.startswith("EXEC"):
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert ready.wait(5)
    flow.create_job({"userId": 7, "roleIds": [3]})
    watcher.join(10)
    assert seen == [
        "MULTI",
        "HSET",
        "EXPIRE",
        "RPUSH",
        "EXPIRE",
        "RPUSH",
        "EXPIRE",
        "RPUSH",
        "EXEC",
    ]


def test_custom_ttl(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url, key_ttl=60)
    job_id = flow.create_job({"userId": 1})
    assert 50 <= r.ttl(f"job:access:{job_id}") <= 60
    assert 50 <= r.ttl("job:access:userId:1") <= 60


@pytest.mark.parametrize(
    "bad",
    [
        {"userId": 1, "tags": {1, 2}},
        {"userId": 1, "blob": b"\x00"},
        {"userId": 1, "when": object()},
        {"userId": 1, "x": float("nan")},
        {"userId": 1, "y": float("inf")},
        {},
    ],
)
def test_bad_options_write_nothing(redis_url: str, r: redis.Redis, bad: dict[str, object]) -> None:
    flow = make_flow(redis_url)
    with pytest.raises(EncodeError):
        flow.create_job(bad)
    assert r.dbsize() == 0


def test_a_bad_job_in_a_batch_writes_none(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    batch = [{"userId": i} for i in range(1200)] + [{"userId": {1}}]
    with pytest.raises(EncodeError, match="job 1200"):
        flow.create_jobs(batch)
    assert r.dbsize() == 0


def test_batch_layout_matches_single(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    ids = flow.create_jobs([OPTIONS, {"userId": 62, "roleIds": [2]}])
    assert r.hgetall(f"job:access:{ids[0]}") == STORED
    assert r.lrange("job:access:userId:62", 0, -1) == [i.encode() for i in ids]
    assert r.lrange("job:access:roleIds:2", 0, -1) == [i.encode() for i in ids]
    assert r.lrange("queue:prepare:waiting", 0, -1) == [i.encode() for i in ids]


def test_get_jobs_by_key(redis_url: str) -> None:
    flow = make_flow(redis_url)
    first = flow.create_job({"userId": 62, "roleIds": [1, 2], "name": "joe"})
    second = flow.create_job({"userId": 62, "roleIds": [2]})
    flow.create_job({"userId": 63})
    jobs = flow.get_jobs_by_key("userId", 62)
    assert [j["id"] for j in jobs] == [first, second]
    assert jobs[0] == {"id": first, "userId": 62, "roleIds": [1, 2], "name": "joe"}
    assert [j["id"] for j in flow.get_jobs_by_key("roleIds", 1)] == [first]
    assert [j["id"] for j in flow.get_jobs_by_key("name", "joe")] == [first]
    assert flow.get_jobs_by_key("userId", 999) == []
    with pytest.raises(UnknownLookupAttributeError, match="'guildId' is not a lookup attribute"):
        flow.get_jobs_by_key("guildId", 1)


def test_get_jobs_reads_all_hashes_in_one_round_trip(redis_url: str) -> None:
    flow = make_flow(redis_url)
    for i in range(50):
        flow.create_job({"userId": 5, "n": i})
    calls: list[int] = []
    original = flow.store.get_hashes

    def counting(keys: list[str]) -> list[dict[bytes, bytes]]:
        calls.append(len(keys))
        return original(keys)

    flow.store.get_hashes = counting  # type: ignore[method-assign]
    jobs = flow.get_jobs_by_key("userId", 5)
    assert [j["n"] for j in jobs] == list(range(50))
    assert calls == [50]


def test_resolve_children(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    parent = flow.create_job({"userId": 9})
    r.hset("job:fan:alpha:c1", mapping={"x": "1", "done": "true"})
    r.hset("job:fan:beta:c2", mapping={"y": '"two"'})
    r.hset(f"job:access:{parent}", "children:fan:jobs", '["job:fan:alpha:c1","job:fan:beta:c2"]')
    plain = flow.get_jobs_by_key("userId", 9)[0]
    assert plain["children:fan:jobs"] == ["job:fan:alpha:c1", "job:fan:beta:c2"]
    resolved = flow.get_jobs_by_key("userId", 9, resolve_children=True)[0]
    assert resolved["children:fan:jobs"] == [
        {"id": "c1", "x": 1, "done": True},
        {"id": "c2", "y": "two"},
    ]


def test_delete_job_removes_hash_and_lookups(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    keep = flow.create_job({"userId": 62, "roleIds": [1]})
    gone = flow.create_job({"userId": 62, "roleIds": [1, 2]})
    assert flow.delete_job(gone) is True
    assert not r.exists(f"job:access:{gone}")
    assert r.lrange("job:access:userId:62", 0, -1) == [keep.encode()]
    assert r.lrange("job:access:roleIds:1", 0, -1) == [keep.encode()]
    assert not r.exists("job:access:roleIds:2")
    assert r.lrange("queue:prepare:waiting", 0, -1) == [keep.encode()]
    assert flow.get_job(gone) is None
    assert flow.delete_job(gone) is False


def test_invalid_stored_json_is_reported_with_key_field_and_bytes(
    redis_url: str, r: redis.Redis
) -> None:
    flow = make_flow(redis_url)
    job_id = flow.create_job({"userId": 3})
    r.hset(f"job:access:{job_id}", "broken", b"{not json")
    with pytest.raises(DecodeError) as info:
        flow.get_job(job_id)
    assert info.value.key == f"job:access:{job_id}"
    assert info.value.field == "broken"
    assert info.value.raw == b"{not json"


def test_unreachable_redis_names_the_address() -> None:
    flow = Flow("f", [QueueSpec("a")], redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1"):
        flow.create_job({"a": 1})
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1"):
        flow.connect()


def test_unix_socket_and_password(tmp_path: object) -> None:
    with RedisServer(server_binary(SERVER_KINDS[0]), unix_socket=True, password="s3cret") as srv:
        flow = Flow("f", [QueueSpec("a")], redis_url=srv.url)
        job_id = flow.create_job({"a": 1})
        assert flow.get_job(job_id) == {"id": job_id, "a": 1}
        wrong = Flow("f", [QueueSpec("a")], redis_url=srv.url.replace("s3cret", "nope"))
        with pytest.raises(RedisUnavailableError):
            wrong.create_job({"a": 1})
