"""A server whose ``maxmemory-policy`` may evict procflow's keys (issue 17, item 2): said
loudly where a flow connects and where a supervisor starts (or refused there), shown by
``procflow status`` and the metric; read from INFO where CONFIG is refused, ``unknown`` where
both are. ``noeviction`` says nothing."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec
from procflow.aio import AsyncFlow
from procflow.errors import ConfigurationError
from procflow.operator.ops import Operator
from procflow.server import RedisServer
from tests.clusters import Cluster
from tests.conftest import server_binary, shared_server
from tests.helpers import metric, scrape
from tests.process.test_cli_first_hour import PROCFLOW, run

LRU = ("--maxmemory", "50mb", "--maxmemory-policy", "allkeys-lru")
ADVICE = "CONFIG SET maxmemory-policy noeviction"


@pytest.fixture(scope="module")
def lru() -> Iterator[RedisServer]:
    """A private redis-server with ``maxmemory 50mb`` and ``allkeys-lru``."""
    with shared_server("redis", LRU) as srv:
        yield srv


@pytest.fixture
def lru_url(lru: RedisServer) -> str:
    client = redis.Redis.from_url(lru.url)
    client.flushall()
    for user in client.acl_users():
        if user != "default":
            client.acl_deluser(user)
    client.close()
    return lru.url


def small(url: str) -> Flow:
    return Flow("evict", [QueueSpec("one")], redis_url=url)


def warned(records: list[dict[str, Any]], text: str) -> list[str]:
    return [
        str(r["message"])
        for r in records
        if r["level"].name == "WARNING" and text in str(r["message"])
    ]


def test_a_flow_connecting_to_an_evicting_server_warns_loudly(
    lru_url: str, lines: list[dict[str, Any]]
) -> None:
    flow = small(lru_url)
    with pytest.warns(UserWarning, match="maxmemory-policy allkeys-lru"):
        flow.connect()
    flow.disconnect()
    (line,) = warned(lines, "maxmemory-policy allkeys-lru")
    assert ADVICE in line and "vanish without an error" in line

    async def connect() -> None:
        async with AsyncFlow(small(lru_url)) as af:
            await af.connect()

    lines.clear()
    with pytest.warns(UserWarning, match="maxmemory-policy allkeys-lru"):
        asyncio.run(connect())
    assert len(warned(lines, "maxmemory-policy allkeys-lru")) == 1


def test_refuse_mode_stops_the_connect_and_the_supervisor(
    lru_url: str, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    monkeypatch.setenv("PROCFLOW_EVICTION_CHECK", "refuse")
    flow = small(lru_url)
    with pytest.raises(ConfigurationError, match=r"allkeys-lru.*noeviction"):
        flow.connect()
    flow.create_workers("one", lambda job: {}, count=1)
    with pytest.raises(ConfigurationError, match="allkeys-lru"):
        flow.start_all(node_id="node-a")
    flow.disconnect()


def test_a_supervisor_on_it_warns_and_status_and_the_metric_show_it(
    lru_url: str, lines: list[dict[str, Any]], no_leaks: None
) -> None:
    flow = small(lru_url)
    flow.create_workers("one", lambda job: {}, count=1)
    with (
        pytest.warns(UserWarning, match="allkeys-lru"),
        flow.start_all(node_id="node-a", metrics_port=0) as sup,
    ):
        assert warned(lines, "maxmemory-policy allkeys-lru")
        assert sup.metrics_port is not None
        text = scrape(sup.metrics_port)
        shown = run(PROCFLOW, "status", "evict", url=lru_url)
        as_json = run(PROCFLOW, "status", "evict", "--json", url=lru_url)
    flow.disconnect()
    value = metric(text, "procflow_redis_eviction_unsafe", flow="evict", policy="allkeys-lru")
    assert value == 1
    assert shown.returncode == 0, shown.stdout + shown.stderr
    head = shown.stdout.split("flow evict")[0]  # above the stage table
    assert "maxmemory-policy allkeys-lru" in " ".join(head.split()), shown.stdout
    assert as_json.returncode == 0, as_json.stderr
    (entry,) = json.loads(as_json.stdout)
    assert [(s["policy"], s["source"], s["unsafe"]) for s in entry["redis"]] == [
        ("allkeys-lru", "config", True)
    ]


def test_an_acl_user_without_config_reads_info_and_without_both_it_is_unknown(
    lru_url: str, lines: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = redis.Redis.from_url(lru_url)
    rules = small(lru_url).acl_rules()  # the flow's own minimal user
    admin.execute_command("ACL", "SETUSER", "pf", "on", ">pw", *rules)
    admin.execute_command("ACL", "SETUSER", "blind", "on", ">pw", *rules, "-info")
    host_port = lru_url.split("//", 1)[1]
    as_pf = f"redis://pf:pw@{host_port}"
    as_blind = f"redis://blind:pw@{host_port}"
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(as_pf).config_get("maxmemory-policy")

    flow = small(as_pf)
    found = flow.store.eviction_policy()
    assert (found.policy, found.source, found.unsafe) == ("allkeys-lru", "info", True)
    with pytest.warns(UserWarning, match="allkeys-lru"):
        flow.connect()
    flow.disconnect()

    blind = small(as_blind)
    found = blind.store.eviction_policy()
    assert (found.policy, found.source, found.unsafe) == ("unknown", "", False)
    monkeypatch.setenv("PROCFLOW_EVICTION_CHECK", "refuse")  # refuses what it knows is unsafe
    with pytest.warns(UserWarning, match="could not be read"):
        blind.connect()
    blind.disconnect()
    assert warned(lines, "could not be read")
    admin.close()


def test_noeviction_says_nothing(redis_url: str, lines: list[dict[str, Any]]) -> None:
    flow = small(redis_url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow.connect()
    flow.disconnect()
    assert not [r for r in lines if r["level"].name == "WARNING"]
    op = Operator(redis_url)
    try:
        (found,) = op.eviction()
    finally:
        op.close()
    assert (found.policy, found.unsafe) == ("noeviction", False)


def test_on_a_cluster_every_master_is_read(tmp_path: Path) -> None:
    cluster = Cluster(server_binary("redis"), tmp_path, masters=2, replicas_each=0).start()
    try:
        first, second = cluster.master_ports
        cluster.client(second).config_set("maxmemory-policy", "volatile-lru")
        op = Operator(cluster.url)
        try:
            found = {p.address: p for p in op.eviction()}
        finally:
            op.close()
        assert set(found) == {f"127.0.0.1:{first}", f"127.0.0.1:{second}"}
        assert not found[f"127.0.0.1:{first}"].unsafe
        lru = found[f"127.0.0.1:{second}"]
        assert lru.unsafe and "time to live" in lru.message()
    finally:
        cluster.stop()
