"""procflow.aio: the asyncio client writes what the sync one writes, byte for byte, and waits
for jobs run by a real supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis

from procflow import (
    ConfigurationError,
    CreateJobsError,
    EncodeError,
    Flow,
    JobFailedError,
    QueueSpec,
    RedisFullError,
    RedisPermissionError,
    RedisRefusedError,
    RedisUnavailableError,
    Supervisor,
    UnknownJobError,
    UnknownLookupAttributeError,
    WaitTimeoutError,
)
from procflow.aio import AsyncFlow
from procflow.server import RedisServer
from tests.conftest import SERVER_KINDS, messages, server_binary
from tests.integration.test_security import certificate  # noqa: F401 - a fixture
from tests.integration.test_wire_format import OPTIONS, STORED, make_flow
from tests.process import apps
from tests.proxy import Proxy

T = TypeVar("T")
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_ids_named(data: bytes, names: dict[bytes, bytes]) -> bytes:
    """``data`` with every job id replaced by ``<N>``, N counting the ids in order seen."""
    return UUID.sub(lambda m: names.setdefault(m.group(), b"<%d>" % len(names)), data)


# -- create, read, look up, delete ---------------------------------------------------------


def test_create_get_lookup_and_delete(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)

    async def main() -> None:
        async with AsyncFlow(flow) as af:
            first = await af.create_job(OPTIONS)
            second = await af.create_job({"userId": 62, "roleIds": [2]})
            assert await af.get_job(first) == flow.get_job(first) == {"id": first, **OPTIONS}
            assert await af.get_job("no-such-job") is None
            by_user = await af.get_jobs_by_key("userId", 62)
            assert [j["id"] for j in by_user] == [first, second]
            assert by_user == flow.get_jobs_by_key("userId", 62)
            assert [j["id"] for j in await af.get_jobs_by_key("roleIds", 1)] == [first]
            assert [j["id"] for j in await af.get_jobs_by_key("name", "joe")] == [first]
            assert await af.get_jobs_by_key("userId", 999) == []
            assert [j["id"] for j in await af.get_jobs([second, "gone", first])] == [second, first]
            with pytest.raises(UnknownLookupAttributeError, match="'guildId' is not a lookup"):
                await af.get_jobs_by_key("guildId", 1)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match="a lookup value must be"):
                await af.get_jobs_by_key("userId", [1])  # type: ignore[arg-type]
            counts = await af.counts()
            assert counts == flow.counts()
            assert counts["prepare"] == dict(waiting=2, processing=0, delayed=0, parked=0, failed=0)
            assert await af.delete_job(first) is True
            assert await af.delete_job(first) is False
            assert await af.get_job(first) is None

    run(main())
    assert r.lrange("job:access:userId:62", 0, -1) == r.lrange("queue:prepare:waiting", 0, -1)
    assert len(r.lrange("queue:prepare:waiting", 0, -1)) == 1
    assert not r.exists("job:access:roleIds:1")


def test_resolve_children_of_a_hand_made_fan_out(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    parent = flow.create_job({"userId": 9})
    r.hset("job:fan:alpha:c1", mapping={"x": "1", "done": "true"})
    r.hset("job:fan:beta:c2", mapping={"y": '"two"'})
    r.hset(f"job:access:{parent}", "children:fan:jobs", '["job:fan:alpha:c1","job:fan:beta:c2"]')

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncFlow(flow) as af:
            plain = await af.get_jobs_by_key("userId", 9)
            return plain, await af.get_jobs_by_key("userId", 9, resolve_children=True)

    plain, resolved = run(main())
    assert plain[0]["children:fan:jobs"] == ["job:fan:alpha:c1", "job:fan:beta:c2"]
    assert resolved[0]["children:fan:jobs"] == [
        {"id": "c1", "x": 1, "done": True},
        {"id": "c2", "y": "two"},
    ]
    assert resolved == flow.get_jobs_by_key("userId", 9, resolve_children=True)


@pytest.mark.usefixtures("no_leaks")
def test_fan_out_through_a_supervisor_then_look_up_and_delete(
    redis_url: str, r: redis.Redis
) -> None:
    flow = apps.with_workers(apps.three_stage_flow(redis_url, name="afan"), count=2)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncFlow(flow) as af:
            ids = await af.create_jobs([{"n": n} for n in range(50)])
            jobs = await af.wait(ids, timeout=60)
            return jobs, await af.get_jobs_by_key("n", 7, resolve_children=True)

    with Supervisor(flow):
        jobs, sample = run(main())
    assert [j["total"] for j in jobs] == [2 * n + 2 for n in range(50)]
    assert all(j["done"] is True and "failed" not in j for j in jobs)
    assert sample == flow.get_jobs_by_key("n", 7, resolve_children=True)
    alpha, beta = sample[0]["children:fanout:jobs"]
    assert alpha["alphaResult"] == 8 and alpha["completed-queue"] == "fanout:alpha"
    assert beta["betaResult"] == -8 and beta["done"] is True
    child_key = sample[0]["children:fanout:jobs"][0]
    assert r.exists(f"job:fanout:alpha:{child_key['id']}")
    assert run(AsyncFlow(flow).delete_job(sample[0]["id"])) is True
    assert not r.exists(f"job:fanout:alpha:{child_key['id']}")
    assert not r.exists(f"job:afan:{sample[0]['id']}")


# -- the same bytes --------------------------------------------------------------------------


def snapshot(r: redis.Redis, ids: list[str]) -> dict[bytes, tuple[Any, ...]]:
    """Every key: its type, its content and its TTL, with the job ids named ``<N>`` in the
    order created; a hash also by DUMP, which holds its fields' bytes in their stored order."""
    names = {job_id.encode(): b"<%d>" % n for n, job_id in enumerate(ids)}
    out: dict[bytes, tuple[Any, ...]] = {}
    for key in r.keys("*"):
        kind = r.type(key)
        if kind == b"hash":
            content: Any = (sorted(r.hgetall(key).items()), r.dump(key))
        elif kind == b"list":
            content = [with_ids_named(v, names) for v in r.lrange(key, 0, -1)]
        else:
            content = kind
        out[with_ids_named(key, names)] = (kind, content, r.ttl(key))
    return out


def same_ttls(a: dict[bytes, tuple[Any, ...]], b: dict[bytes, tuple[Any, ...]]) -> bool:
    return all(abs(a[k][2] - b[k][2]) <= 1 for k in a)


def test_stored_keys_fields_and_ttls_are_those_of_the_sync_api(
    redis_url: str, r: redis.Redis
) -> None:
    batch = [OPTIONS, {"userId": 62, "roleIds": [2], "nested": {"b": 1, "10": 2, "2": 3}}]
    for key_ttl in (86_400, 60):
        flow = make_flow(redis_url, key_ttl=key_ttl)
        r.flushall()
        ids = [flow.create_job(OPTIONS), *flow.create_jobs(batch)]
        by_sync = snapshot(r, ids)
        assert r.hgetall(f"job:access:{ids[0]}") == STORED
        r.flushall()

        async def main(flow: Flow = flow) -> list[str]:
            async with AsyncFlow(flow) as af:
                return [await af.create_job(OPTIONS), *await af.create_jobs(batch)]

        ids = run(main())
        by_async = snapshot(r, ids)
        assert r.hgetall(f"job:access:{ids[0]}") == STORED
        assert by_async.keys() == by_sync.keys()
        assert {k: v[:2] for k, v in by_async.items()} == {k: v[:2] for k, v in by_sync.items()}
        assert same_ttls(by_sync, by_async)
        ttls = {k: ttl for k, (_, _, ttl) in by_async.items()}
        assert ttls.pop(b"queue:prepare:waiting") == -1  # the queue never expires
        assert all(key_ttl - 10 <= ttl <= key_ttl for ttl in ttls.values())


def monitored(redis_url: str, action: Callable[[], object]) -> list[bytes]:
    """Every command the connections of ``action`` send, as MONITOR shows them, with the
    job ids named in order seen."""
    seen: list[tuple[str, str]] = []
    ready = threading.Event()
    watcher_client = redis.Redis.from_url(redis_url)

    def watch() -> None:
        with watcher_client.monitor() as m:
            ready.set()
            for command in m.listen():
                seen.append(
                    (f"{command['client_address']}:{command['client_port']}", command["command"])
                )
                if command["command"] == "ECHO end-of-capture":
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert ready.wait(5)
    try:
        action()
    finally:
        with redis.Redis.from_url(redis_url) as end:
            end.echo("end-of-capture")
        watcher.join(10)
        watcher_client.close()
    end_client = seen[-1][0]
    names: dict[bytes, bytes] = {}
    return [with_ids_named(text.encode(), names) for who, text in seen if who != end_client]


def test_monitor_shows_the_same_commands_for_both_apis(redis_url: str) -> None:
    def sync_one() -> None:
        flow = make_flow(redis_url)
        flow.create_job({"userId": 7, "roleIds": [3]})
        flow.disconnect()

    def async_one() -> None:
        run(AsyncFlow(make_flow(redis_url)).create_job({"userId": 7, "roleIds": [3]}))

    by_sync = monitored(redis_url, sync_one)
    by_async = monitored(redis_url, async_one)
    assert by_async == by_sync
    job = by_sync[by_sync.index(b"MULTI") :]
    assert job == [
        b"MULTI",
        b"HSET job:access:<0> userId 7 roleIds [3]",
        b"EXPIRE job:access:<0> 86400",
        b"RPUSH job:access:userId:7 <0>",
        b"EXPIRE job:access:userId:7 86400",
        b"RPUSH job:access:roleIds:3 <0>",
        b"EXPIRE job:access:roleIds:3 86400",
        b"RPUSH queue:prepare:waiting <0>",
        b"EXEC",
    ]

    def sync_many() -> None:
        flow = make_flow(redis_url)
        flow.create_jobs([{"userId": n, "name": f"u{n}"} for n in range(3)])
        flow.disconnect()

    def async_many() -> None:
        run(
            AsyncFlow(make_flow(redis_url)).create_jobs(
                [{"userId": n, "name": f"u{n}"} for n in range(3)]
            )
        )

    assert monitored(redis_url, async_many) == monitored(redis_url, sync_many)


class Recorder:
    """A TCP proxy that records what each client connection sends to the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                record = bytearray()
                self.sent.append(record)
                for a, b, rec in ((client, upstream, record), (upstream, client, None)):
                    t = threading.Thread(target=self._pipe, args=(a, b, rec), daemon=True)
                    t.start()
                    self._threads.append(t)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if record is not None:
                    record += data
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> list[bytes]:
        self.listener.close()
        for t in self._threads:
            t.join(5)
        names: dict[bytes, bytes] = {}
        return [with_ids_named(bytes(s), names) for s in self.sent]


def test_the_bytes_sent_are_the_sync_api_s(server: RedisServer, redis_url: str) -> None:
    def capture(action: Callable[[Flow], object]) -> list[bytes]:
        recorder = Recorder(server.port)
        flow = make_flow(f"redis://127.0.0.1:{recorder.port}/0")
        action(flow)
        return recorder.close()

    def sync(flow: Flow) -> None:
        flow.create_job(OPTIONS)
        flow.create_jobs([OPTIONS, {"userId": 1}])
        flow.disconnect()

    async def aio(flow: Flow) -> None:
        async with AsyncFlow(flow) as af:
            await af.create_job(OPTIONS)
            await af.create_jobs([OPTIONS, {"userId": 1}])

    by_sync = capture(sync)
    by_async = capture(lambda flow: run(aio(flow)))
    assert len(by_sync) == len(by_async) == 1  # one connection each
    assert by_async == by_sync  # the handshake and every job, byte for byte
    assert by_sync[0].count(b"*1\r\n$5\r\nMULTI\r\n") == 3


# -- bad input, unreachable servers, refusals ----------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"userId": 1, "tags": {1, 2}},
        {"userId": 1, "blob": b"\x00"},
        {"userId": 1, "when": object()},
        {"userId": 1, "x": float("nan")},
        {"userId": 1, "y": float("inf")},
        {"userId": 2**60},
        {"userId": 1, "done": True},
        {"userId": 1, "attempts:prepare": 1},
        {},
    ],
)
def test_bad_options_raise_the_sync_error_and_write_nothing(
    redis_url: str, r: redis.Redis, bad: dict[str, Any]
) -> None:
    flow = make_flow(redis_url)
    with pytest.raises(EncodeError) as by_sync:
        flow.create_job(bad)
    af = AsyncFlow(flow)
    with pytest.raises(EncodeError) as by_async:
        run(af.create_job(bad))
    assert str(by_async.value) == str(by_sync.value)
    with pytest.raises(EncodeError, match="job 1:") as batch:
        run(af.create_jobs([{"userId": 1}, bad, {"userId": 3}]))
    with pytest.raises(EncodeError) as sync_batch:
        flow.create_jobs([{"userId": 1}, bad, {"userId": 3}])
    assert str(batch.value) == str(sync_batch.value)
    assert r.dbsize() == 0


def test_a_bad_job_in_a_big_batch_writes_none(redis_url: str, r: redis.Redis) -> None:
    batch = [{"userId": i} for i in range(1200)] + [{"userId": {1}}]
    with pytest.raises(EncodeError, match="job 1200"):
        run(AsyncFlow(make_flow(redis_url)).create_jobs(batch))
    assert r.dbsize() == 0


def test_unreachable_redis_names_the_address() -> None:
    flow = Flow("f", [QueueSpec("a")], lookup_attributes=["a"], redis_url="redis://127.0.0.1:1/0")

    async def main() -> None:
        af = AsyncFlow(flow)
        assert await af.create_jobs([]) == []  # needs no connection
        calls = [
            af.connect(),
            af.create_job({"a": 1}),
            af.create_jobs([{"a": 1}, {"a": 2}]),
            af.get_job("x"),
            af.get_jobs_by_key("a", 1),
            af.delete_job("x"),
            af.counts(),
            af.wait(["x"], timeout=0.5),  # rides out the outage until the deadline
        ]
        for call in calls:
            with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1"):
                await call
        await af.aclose()

    run(main())


def test_unix_socket_password_and_db() -> None:
    with RedisServer(server_binary(SERVER_KINDS[0]), unix_socket=True, password="s3cret") as srv:
        url = srv.url + "&db=3" if "?" in srv.url else srv.url + "?db=3"
        flow = Flow("f", [QueueSpec("a")], redis_url=url)
        job_id = run(AsyncFlow(flow).create_job({"a": 1}))
        assert flow.get_job(job_id) == {"id": job_id, "a": 1}
        with redis.Redis(unix_socket_path=srv.socket_path, password="s3cret", db=3) as r3:
            assert r3.exists(f"job:f:{job_id}")
        wrong = Flow("f", [QueueSpec("a")], redis_url=url.replace("s3cret", "nope"))
        with pytest.raises(RedisUnavailableError, match="invalid username-password"):
            run(AsyncFlow(wrong).create_job({"a": 1}))


def test_tls(certificate: tuple[str, str]) -> None:  # noqa: F811 - the fixture
    with RedisServer(server_binary("redis"), tls=certificate) as srv:
        flow = Flow("f", [QueueSpec("a")], redis_url=srv.url)
        job_id = run(AsyncFlow(flow).create_job({"a": 1}))
        assert flow.get_job(job_id) == {"id": job_id, "a": 1}
        plain = Flow(
            "f", [QueueSpec("a")], redis_url=srv.url.split("?")[0].replace("rediss", "redis")
        )
        with pytest.raises(RedisUnavailableError):
            run(AsyncFlow(plain).connect())


def test_refusals_are_the_sync_api_s(redis_url: str, r: redis.Redis) -> None:
    beyond = Flow("x", [QueueSpec("a")], redis_url=redis_url.rsplit("/", 1)[0] + "/99")
    with pytest.raises(RedisRefusedError, match="'databases' setting") as by_async:
        run(AsyncFlow(beyond).connect())
    with pytest.raises(RedisRefusedError) as by_sync:
        beyond.connect()
    assert str(by_async.value) == str(by_sync.value)
    r.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+ping")
    try:
        url = redis_url.replace("redis://", "redis://reader:pw@")
        flow = Flow("readonly", [QueueSpec("a")], redis_url=url)
        af = AsyncFlow(flow)
        run(af.connect())  # PING is allowed
        with pytest.raises(RedisPermissionError, match=r"NOPERM.*docs/configuration\.md") as info:
            run(af.create_job({"a": 1}))
        with pytest.raises(RedisPermissionError) as sync_info:
            flow.create_job({"a": 1})
        assert info.value.code == sync_info.value.code == "NOPERM"
        assert r.keys("job:readonly:*") == []
    finally:
        r.execute_command("ACL", "DELUSER", "reader")


@pytest.mark.parametrize("fresh_server", SERVER_KINDS, indirect=True)
def test_create_jobs_refused_part_way_says_exactly_which_jobs_exist(
    fresh_server: RedisServer,
) -> None:
    r = redis.Redis.from_url(fresh_server.url)
    flow = Flow("part", [QueueSpec("w")], lookup_attributes=["n"], redis_url=fresh_server.url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", used + 3_000_000)
    af = AsyncFlow(flow)
    try:
        with pytest.raises(CreateJobsError) as info:
            run(af.create_jobs([{"n": n, "pad": "p" * 500} for n in range(20_000)]))
        r.config_set("maxmemory", 1)  # full whatever the batch left
        with pytest.raises(RedisFullError, match="OOM"):
            run(af.create_job({"n": -1}))
    finally:
        r.config_set("maxmemory", 0)
    err = info.value
    assert err.code == "OOM" and isinstance(err.refused, RedisFullError)
    assert err.created and err.not_created
    assert len(err.created) + len(err.not_created) == 20_000
    waiting = [i.decode() for i in r.lrange("queue:w:waiting", 0, -1)]
    assert waiting == list(err.created)  # exactly the jobs it says, in order
    assert all(r.exists(f"job:part:{i}") for i in err.created[-5:])
    assert not any(r.exists(f"job:part:{i}") for i in err.not_created[:50])
    r.close()


def test_a_user_with_exactly_the_flow_s_acl_rules(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)
    r.execute_command("ACL", "SETUSER", "app", "on", ">pw", *flow.acl_rules())
    try:
        url = redis_url.replace("redis://", "redis://app:pw@")
        limited = make_flow(url)

        async def main() -> None:
            async with AsyncFlow(limited) as af:
                ids = await af.create_jobs([{"userId": n} for n in range(3)])
                ids.append(await af.create_job({"userId": 9}))
                assert len(await af.get_jobs_by_key("userId", 9)) == 1
                waiting = asyncio.create_task(af.wait(ids, timeout=10))
                await asyncio.sleep(0.3)
                for job_id in ids:  # as a worker would end them
                    r.hset(f"job:access:{job_id}", "done", "true")
                    r.publish("procflow:access:done", job_id)
                assert [j["id"] for j in await waiting] == ids
                assert (await af.counts())["prepare"]["waiting"] == 4
                assert await af.delete_job(ids[0]) is True

        run(main())
    finally:
        r.execute_command("ACL", "DELUSER", "app")


# -- concurrency ---------------------------------------------------------------------------


def client_ids(r: redis.Redis, kind: str = "normal") -> set[int]:
    """Ids of the server's connections of that type."""
    return {int(c["id"]) for c in r.client_list(_type=kind)}


def test_many_concurrent_create_job_calls_all_land_on_one_connection(
    redis_url: str, r: redis.Redis
) -> None:
    flow = make_flow(redis_url)

    async def main() -> tuple[list[str], int]:
        before = client_ids(r)
        async with AsyncFlow(flow) as af:
            ids = await asyncio.gather(
                *[af.create_job({"userId": n % 7, "n": n}) for n in range(2000)]
            )
            return ids, len(client_ids(r) - before)

    ids, connections = run(main())
    assert connections == 1  # pipelined on one connection, not a pool of 2000
    assert len(set(ids)) == 2000
    assert sorted(r.lrange("queue:prepare:waiting", 0, -1)) == sorted(i.encode() for i in ids)
    jobs = flow.get_jobs(ids)
    assert [j["n"] for j in jobs] == list(range(2000))
    assert sum(r.llen(f"job:access:userId:{u}") for u in range(7)) == 2000


def test_cancelled_calls_leave_the_connection_in_step(redis_url: str, r: redis.Redis) -> None:
    flow = make_flow(redis_url)

    async def main() -> None:
        async with AsyncFlow(flow) as af:
            await af.connect()
            tasks = [asyncio.create_task(af.create_job({"userId": n})) for n in range(500)]
            await asyncio.sleep(0)  # every one has sent its MULTI … EXEC and awaits the reply
            for task in tasks[::2]:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(d, asyncio.CancelledError) for d in done) == 250
            reads = [asyncio.create_task(af.get_jobs_by_key("userId", n)) for n in range(500)]
            await asyncio.sleep(0)
            for task in reads[1::2]:
                task.cancel()
            for n in range(0, 500, 2):
                assert [j["userId"] for j in await reads[n]] == [n]
            for n in range(500):  # every reply matches its request
                assert [j["userId"] for j in await af.get_jobs_by_key("userId", n)] == [n]

    run(main())
    assert r.llen("queue:prepare:waiting") == 500  # the cancelled calls were sent whole


def test_usable_from_one_event_loop_after_another(redis_url: str) -> None:
    af = AsyncFlow(make_flow(redis_url))
    first = run(af.create_job({"userId": 1}))
    second = run(af.create_job({"userId": 1}))  # the first loop's connection is gone
    assert [j["id"] for j in run(af.get_jobs_by_key("userId", 1))] == [first, second]
    run(af.aclose())


# -- waiting, with a real supervisor -------------------------------------------------------


def work(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("fail"):
        raise ValueError(f"job {job['n']} broke")
    time.sleep(job["sleep"] or 0)  # the job's own work (a missing field is None)
    return {"twice": 2 * job["n"]}


def work_flow(url: str, name: str = "aw", count: int = 2) -> Flow:
    flow = Flow(name, [QueueSpec("w", attributes_to_get=["n", "fail", "sleep"])], redis_url=url)
    flow.create_workers("w", work, count=count)
    return flow


@pytest.mark.usefixtures("no_leaks")
def test_wait_returns_jobs_times_out_and_reports_failures(redis_url: str, r: redis.Redis) -> None:
    flow = work_flow(redis_url)

    async def main() -> None:
        async with AsyncFlow(flow) as af:
            ids = await af.create_jobs([{"n": n} for n in range(20)])
            jobs = await af.wait(ids, timeout=30)
            assert [j["id"] for j in jobs] == ids
            assert [j["twice"] for j in jobs] == [2 * n for n in range(20)]
            assert all(j["done"] is True and "failed" not in j for j in jobs)
            assert await af.wait(ids[:3], timeout=1) == jobs[:3]  # done already: at once
            assert await af.wait([]) == []

            slow = await af.create_job({"n": 99, "sleep": 2})
            quick = await af.create_job({"n": 98})
            await af.wait([quick], timeout=10)
            started = time.monotonic()
            with pytest.raises(WaitTimeoutError) as info:
                await af.wait([quick, slow], timeout=0.5)
            assert 0.5 <= time.monotonic() - started < 1.5
            assert info.value.pending == (slow,)
            assert (await af.wait([slow], timeout=10))[0]["twice"] == 198

            bad = await af.create_job({"n": 7, "fail": True})
            good = await af.create_job({"n": 8})
            final = await af.wait([bad, good], timeout=10)
            assert final[0]["failed"] is True and final[0]["failedQueue"] == "w"
            assert "job 7 broke" in final[0]["failedErrorMsg"]
            assert final[1]["twice"] == 16 and "failed" not in final[1]
            with pytest.raises(JobFailedError) as failed:
                await af.wait([bad, good], timeout=10, raise_on_failure=True)
            assert [j["id"] for j in failed.value.failed] == [bad]
            assert [j["id"] for j in failed.value.jobs] == [bad, good]
            assert await af.wait([good], raise_on_failure=True) == [final[1]]

            with pytest.raises(UnknownJobError) as unknown:
                await af.wait([good, "no-such-job"], timeout=5)
            assert unknown.value.ids == ("no-such-job",)

    with Supervisor(flow):
        run(main())


@pytest.mark.usefixtures("no_leaks")
def test_concurrent_waits_share_one_subscription(redis_url: str, r: redis.Redis) -> None:
    flow = work_flow(redis_url, count=4)

    async def main() -> None:
        async with AsyncFlow(flow) as af:
            ids = await af.create_jobs([{"n": n, "sleep": 0.05} for n in range(100)])
            before = client_ids(r, "pubsub")
            waits = [asyncio.create_task(af.wait([i], timeout=30)) for i in ids]
            await asyncio.sleep(0.2)
            assert len(client_ids(r, "pubsub") - before) == 1
            results = await asyncio.gather(*waits)
            assert [job["twice"] for [job] in results] == [2 * n for n in range(100)]
            await asyncio.sleep(0.1)
            assert client_ids(r, "pubsub") - before == set()  # the last wait unsubscribed

    with Supervisor(flow):
        run(main())


@pytest.mark.usefixtures("no_leaks")
def test_wait_rides_out_lost_subscriptions_and_a_silent_server(
    server: RedisServer, redis_url: str, r: redis.Redis, lines: list[dict[str, Any]]
) -> None:
    flow = work_flow(redis_url)
    with Proxy(server.port) as proxy:
        # the waiting side reaches Redis through the proxy; a second is its longest silence
        through = Flow(flow.name, flow.queues, redis_url=proxy.url("/0?socket_timeout=1"))

        async def main() -> list[dict[str, Any]]:
            async with AsyncFlow(through) as af:
                ids = await af.create_jobs([{"n": n, "sleep": 0.3} for n in range(12)])
                waiting = asyncio.create_task(af.wait(ids, timeout=60))
                await asyncio.sleep(0.5)
                r.client_kill_filter(_type="pubsub")  # the subscription is cut
                await asyncio.sleep(0.5)
                proxy.pause()  # then the server goes silent: half-open connections
                await asyncio.sleep(3)
                proxy.resume()
                return await waiting

        with Supervisor(flow):
            jobs = run(main())
    assert [j["twice"] for j in jobs] == [2 * n for n in range(12)]
    said = messages(lines)
    assert any(m.startswith("wait: Redis at") and "still waiting" in m for m in said)
    assert "wait: Redis is reachable again" in said


def test_a_silent_server_cannot_hold_a_wait_past_its_deadline(server: RedisServer) -> None:
    with Proxy(server.port) as proxy:
        flow = Flow("silent", [QueueSpec("w")], redis_url=proxy.url())  # socket_timeout 10 s

        async def main() -> None:
            async with AsyncFlow(flow) as af:
                ids = await af.create_jobs([{"n": n} for n in range(3)])  # no workers
                for paused in (False, True):
                    if paused:
                        proxy.pause()
                    started = time.monotonic()
                    with pytest.raises(WaitTimeoutError) as info:
                        await af.wait(ids, timeout=0.5)
                    assert 0.5 <= time.monotonic() - started < 1.5
                    assert info.value.pending == tuple(sorted(ids))
                proxy.resume()

        run(main())


@pytest.mark.usefixtures("no_leaks")
def test_wait_rides_out_a_redis_restart() -> None:
    with RedisServer(server_binary(SERVER_KINDS[0]), appendonly=True, appendfsync="always") as srv:
        flow = work_flow(srv.url)

        async def main() -> list[dict[str, Any]]:
            async with AsyncFlow(flow) as af:
                ids = await af.create_jobs([{"n": n, "sleep": 0.2} for n in range(10)])
                waiting = asyncio.create_task(af.wait(ids, timeout=60))
                await asyncio.sleep(0.5)
                await asyncio.to_thread(srv.restart)
                return await waiting

        with Supervisor(flow):
            jobs = run(main())
    assert [j["twice"] for j in jobs] == [2 * n for n in range(10)]
