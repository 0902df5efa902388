"""A flow's definition is checked when it is built, before any server is touched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import procflow
from procflow import Backoff, ConfigurationError, Flow, QueueSpec, UnknownQueueError
from procflow.ids import uuid7, uuid7_batch
from procflow.operator.cli import demo_flow
from procflow.store import keys
from procflow.store.keys import StageKeys

URL = "redis://127.0.0.1:1/0"  # never connected to in these tests


def test_public_api_is_exactly_all() -> None:
    # "@py_…": pytest's assertion rewriting of procflow, a pytest plugin's package
    public = {n for n in dir(procflow) if not n.startswith(("_", "@"))}
    # the packages by side, and the modules beside them (procflow.aio: AsyncFlow's public path)
    modules = {
        "client",
        "supervisor",
        "worker",
        "store",
        "operator",
        "definition",
        "codec",
        "errors",
        "settings",
        "ids",
        "failures",
        "version",
        "handles",
        "partitions",
        "cost",
        "cpus",
        "app",
        "server",
        "testing",
        "aio",
    }
    assert public - modules == set(procflow.__all__) - {"__version__"}


@pytest.mark.parametrize(
    ("queues", "problem"),
    [
        ([], "non-empty list"),
        ([QueueSpec("a"), QueueSpec("a")], "used twice"),
        ([QueueSpec("a", next_queue="b")], "next_queue 'b'"),
        ([QueueSpec("a", children=[QueueSpec("x"), QueueSpec("x")])], "child 'x' is used twice"),
        ([QueueSpec("a", children=[QueueSpec("x", next_queue="a")])], "cannot have children"),
        (["a"], "not a QueueSpec"),
    ],
)
def test_bad_flow_definitions(queues: list[QueueSpec], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        Flow("f", queues, redis_url=URL)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": ""}, "non-empty"),
        ({"name": "q", "attributes_to_get": "userId"}, "not a string"),
        ({"name": "q", "max_attempts": 0}, "max_attempts"),
        ({"name": "q", "timeout": -1}, "timeout"),
        ({"name": "q", "memory_limit": "huge"}, "memory_limit"),
    ],
)
def test_bad_queue_specs(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        QueueSpec(**kwargs)  # type: ignore[arg-type]


def test_flow_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="flow name"):
        Flow("", [QueueSpec("a")], redis_url=URL)
    with pytest.raises(ConfigurationError, match="key_ttl"):
        Flow("f", [QueueSpec("a")], redis_url=URL, key_ttl=0)
    with pytest.raises(ConfigurationError, match="lookup_attributes"):
        Flow("f", [QueueSpec("a")], lookup_attributes="userId", redis_url=URL)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot parse Redis URL"):
        Flow("f", [QueueSpec("a")], redis_url="redis://h:port")


def test_stages_and_child_key_names() -> None:
    flow = Flow(
        "access",
        [
            QueueSpec("prepare", next_queue="manage-reward"),
            QueueSpec("manage-reward", children=[QueueSpec("discord", attributes_to_get=["x"])]),
        ],
        redis_url=URL,
    )
    child = flow.stage("manage-reward:discord")
    assert child.parent == "manage-reward"
    assert child.keys.waiting == "queue:manage-reward:discord:waiting"
    assert child.keys.job("CID") == "job:manage-reward:discord:CID"
    assert child.keys.lock("CID") == "lock:manage-reward:discord:CID"
    parent = flow.stage("manage-reward")
    assert parent.fields[:2] == ("children:manage-reward:params", "children:manage-reward:jobs")
    assert flow.stage("prepare").keys.job("ID") == "job:access:ID"
    with pytest.raises(UnknownQueueError, match="unknown queue 'nope'"):
        flow.stage("nope")


def test_worker_factories_check_their_queue() -> None:
    flow = Flow("f", [QueueSpec("a"), QueueSpec("p", children=[QueueSpec("c")])], redis_url=URL)
    with pytest.raises(UnknownQueueError):
        flow.create_workers("zzz", lambda j: {})
    with pytest.raises(ConfigurationError, match="create_parent_workers"):
        flow.create_workers("p", lambda j: {})
    with pytest.raises(ConfigurationError, match="no children"):
        flow.create_parent_workers("a")
    with pytest.raises(UnknownQueueError):
        flow.create_child_workers("p", "nochild", lambda j: {})
    with pytest.raises(ConfigurationError, match="not callable"):
        flow.create_workers("a", "fn")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="lock_time"):
        flow.create_workers("a", lambda j: {}, lock_time=0.5)
    handles = flow.create_child_workers("p", "c", lambda j: {}, count=3)
    assert [h.name for h in handles] == ["p:c#0", "p:c#1", "p:c#2"]
    assert handles[0].state == "new"


def test_key_names() -> None:
    assert keys.job("F", "ID") == "job:F:ID"
    assert keys.lookup("F", "userId", "62") == "job:F:userId:62"
    assert keys.waiting("Q") == "queue:Q:waiting"
    assert keys.processing("Q") == "queue:Q:processing"
    assert keys.lock("Q", "ID") == "lock:Q:ID"
    assert keys.child_job("P", "C", "ID") == "job:P:C:ID"
    assert keys.children_params_field("P") == "children:P:params"
    assert keys.children_jobs_field("P") == "children:P:jobs"
    stage = StageKeys.build("F", "P:C", parent_queue="P")
    assert (stage.parent_waiting, stage.parent_parked) == ("queue:P:waiting", "queue:P:parked")
    assert stage.queue_json == '"P:C"'


def test_uuid7() -> None:
    ids = [uuid7() for _ in range(100)] + uuid7_batch(100)
    assert len(set(ids)) == 200
    for i in ids:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i
        )


def test_backoff_delays() -> None:
    b = Backoff(base=1.0, factor=2.0, max=5.0, jitter=0.0)
    assert b.delays_ms(5) == [1000, 2000, 4000, 5000]
    jittered = Backoff(base=1.0, factor=2.0, max=100.0, jitter=0.5).delays_ms(4)
    for got, full in zip(jittered, [1000, 2000, 4000], strict=True):
        assert full / 2 <= got <= full
    assert Backoff().delays_ms(1) == []
    with pytest.raises(ConfigurationError):
        Backoff(factor=0.5)


def test_the_acl_rules_in_the_docs_are_the_code_s() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    block = doc.split("For the demo flow", 1)[1].split("```", 2)[1]
    assert block.split() == demo_flow("redis://127.0.0.1:1/0").acl_rules()


def test_acl_patterns_escape_glob_characters() -> None:
    flow = Flow("a*b", [QueueSpec("q?")])
    rules = flow.acl_rules()
    assert "~job:a\\*b:*" in rules and "~queue:q\\?:*" in rules
    assert "&procflow:a\\*b:done" in rules
