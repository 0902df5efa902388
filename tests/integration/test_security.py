"""Redis ACL users and TLS (``rediss://``), with worker processes on those connections too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from procflow import (
    Flow,
    QueueSpec,
    RedisPermissionError,
    RedisRefusedError,
    RedisUnavailableError,
    Supervisor,
)
from procflow.server import RedisServer
from tests.conftest import server_binary

pytestmark = pytest.mark.usefixtures("no_leaks")


def run_a_flow(url: str) -> list[dict[str, object]]:
    flow = Flow("secure", [QueueSpec("w", attributes_to_get=["n"])], redis_url=url)
    flow.create_workers("w", lambda j: {"twice": j["n"] * 2}, count=2)
    with Supervisor(flow) as sup:
        return sup.wait(flow.create_jobs([{"n": n} for n in range(10)]), timeout=30)


def test_an_acl_user(redis_url: str, r: redis.Redis) -> None:
    r.execute_command("ACL", "SETUSER", "worker", "on", ">s3cret", "~*", "&*", "+@all")
    url = redis_url.replace("redis://", "redis://worker:s3cret@")
    as_worker = redis.Redis.from_url(url)
    as_worker.execute_command("ACL", "SETUSER", "default", "off")  # only the ACL user gets in
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(redis_url).ping()
        jobs = run_a_flow(url)
        with pytest.raises(RedisUnavailableError, match="invalid username-password"):
            Flow("x", [QueueSpec("a")], redis_url=url.replace("s3cret", "wrong")).connect()
    finally:
        as_worker.execute_command("ACL", "SETUSER", "default", "on")
        as_worker.execute_command("ACL", "DELUSER", "worker")
        as_worker.close()
    assert [j["twice"] for j in jobs] == [n * 2 for n in range(10)]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_tls(certificate: tuple[str, str]) -> None:
    # the embedded Valkey is built without TLS, so this runs on redis-server
    with RedisServer(server_binary("redis"), tls=certificate) as server:
        assert server.url.startswith("rediss://")
        jobs = run_a_flow(server.url)
        assert [j["twice"] for j in jobs] == [n * 2 for n in range(10)]
        plain = Flow(
            "x", [QueueSpec("a")], redis_url=server.url.split("?")[0].replace("rediss", "redis")
        )
        with pytest.raises(RedisUnavailableError):
            plain.connect()


def test_redis_refusals_become_procflow_errors_that_say_what_to_do(
    redis_url: str, r: redis.Redis
) -> None:
    beyond = redis_url.rsplit("/", 1)[0] + "/99"
    with pytest.raises(RedisRefusedError, match="'databases' setting") as info:
        Flow("x", [QueueSpec("a")], redis_url=beyond).connect()
    assert info.value.code == "ERR"
    r.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+ping")
    try:
        url = redis_url.replace("redis://", "redis://reader:pw@")
        flow = Flow("readonly", [QueueSpec("a")], redis_url=url)
        flow.connect()  # PING is allowed
        with pytest.raises(RedisPermissionError, match=r"NOPERM.*docs/configuration\.md"):
            flow.create_job({"a": 1})
        assert r.keys("job:readonly:*") == []
        flow.disconnect()
    finally:
        r.execute_command("ACL", "DELUSER", "reader")
