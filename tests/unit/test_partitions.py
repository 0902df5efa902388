"""Partitioned flows without a server: names, the partition chooser, the checks."""

from __future__ import annotations

import zlib

import pytest

from procflow import ConfigurationError, EncodeError, Flow, QueueSpec
from procflow.errors import (
    CreateJobsError,
    RedisRefusedError,
    RedisUnavailableError,
    UnknownQueueError,
)
from procflow.partitions import Partitioning, settle_creates
from procflow.store import keys
from procflow.store.slots import key_slot
from procflow.worker.turns import TURN, Turns, index_of


def _flow(**options: object) -> Flow:
    return Flow(
        "pay",
        [
            QueueSpec("check", next_queue="charge", attributes_to_get=["n"]),
            QueueSpec("charge", children=[QueueSpec("card")]),
        ],
        lookup_attributes=["user"],
        redis_url="redis://127.0.0.1:1/0",
        **options,  # type: ignore[arg-type]
    )


def test_each_partition_is_a_complete_flow_under_its_own_tag() -> None:
    flow = _flow(partitions=3)
    assert [p.name for p in flow.partitions] == ["{pay#0}", "{pay#1}", "{pay#2}"]
    two = flow.partitions[2].definition
    assert list(two.stages) == ["{pay#2}.check", "{pay#2}.charge:card", "{pay#2}.charge"]
    assert two.stages["{pay#2}.check"].spec.next_queue == "{pay#2}.charge"
    assert two.first_stage.keys.waiting == "queue:{pay#2}.check:waiting"
    # every key of a partition hashes to its tag's slot
    stage = two.stages["{pay#2}.charge:card"]
    slots = {
        key_slot(k)
        for k in (
            keys.job("{pay#2}", "x"),
            stage.keys.waiting,
            stage.keys.lock("x"),
            stage.keys.job("x"),
            keys.lookup("{pay#2}", "user", "7"),
        )
    }
    assert slots == {key_slot("{pay#2}")}
    assert flow.name == "pay" and [q.name for q in flow.queues] == ["check", "charge"]


def test_queues_go_by_the_names_given_or_by_a_partitions_full_name() -> None:
    flow = _flow(partitions=2)
    assert [s.name for s in flow.stages_of("check")] == ["{pay#0}.check", "{pay#1}.check"]
    assert [s.name for s in flow.stages_of("{pay#1}.charge:card")] == [
        "{pay#0}.charge:card",
        "{pay#1}.charge:card",
    ]
    with pytest.raises(UnknownQueueError) as caught:
        flow.stages_of("nope")
    assert "check" in str(caught.value)
    handles = flow.create_child_workers("charge", "card", lambda job: {}, count=2)
    assert [h.name for h in handles] == ["charge:card#0", "charge:card#1"]
    assert [s.name for s in flow.groups[0].stages] == ["{pay#0}.charge:card", "{pay#1}.charge:card"]


def test_round_robin_spreads_new_jobs_evenly() -> None:
    flow = _flow(partitions=3)
    jobs = flow.core.prepare_many([{"n": n} for n in range(9)])
    assert [j.key.split(":")[1] for j in jobs] == ["{pay#0}", "{pay#1}", "{pay#2}"] * 3
    assert jobs[4].waiting == "queue:{pay#1}.check:waiting"


def test_a_partition_key_picks_the_partition_by_the_crc32_of_the_values_json() -> None:
    flow = _flow(partitions=5, partition_key="user")
    for user, text in ((62, "62"), ("joe", '"joe"'), ([1, 2], "[1,2]"), (None, "null")):
        job = flow.core.prepare({"user": user, "n": 1}, "id")
        assert job.key == f"job:{{pay#{zlib.crc32(text.encode()) % 5}}}:id"
    with pytest.raises(EncodeError) as caught:
        flow.core.prepare({"n": 1}, "id")
    assert "'user'" in str(caught.value) and "partition_key" in str(caught.value)


def test_children_params_written_under_the_names_given_land_under_the_partitions() -> None:
    flow = _flow(partitions=2)
    job = flow.core.prepare({"children:charge:params": [{"childName": "card"}]}, "a")
    assert job.key.startswith("job:{pay#0}:")
    assert [f for f, _ in job.fields] == [b"children:{pay#0}.charge:params"]
    split = flow.partitioning
    assert split is not None
    assert split.shown("children:{pay#1}.charge:jobs") == "children:charge:jobs"
    assert split.shown("children:{other#1}.charge:jobs") == "children:{other#1}.charge:jobs"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"partitions": 0}, "partitions must be an int from 1 to 1024"),
        ({"partitions": True}, "partitions must be an int"),
        ({"partitions": 2000}, "from 1 to 1024"),
        ({"partition_key": "user"}, "partition_key needs partitions=K"),
        ({"partitions": 2, "partition_key": ""}, "partition_key must be an option name"),
    ],
)
def test_bad_partition_options_are_refused(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        _flow(**options)


def test_a_partitioned_flow_tags_its_names_itself() -> None:
    with pytest.raises(ConfigurationError, match="tags its names itself"):
        Flow("{pay}", [QueueSpec("check")], partitions=2, redis_url="redis://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="queue names itself"):
        Flow("pay", [QueueSpec("{pay}.check")], partitions=2, redis_url="redis://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="next_queue 'nope'"):
        Flow("pay", [QueueSpec("a", next_queue="nope")], partitions=2)


def test_on_a_cluster_url_each_partition_is_pinned_to_its_own_slot() -> None:
    flow = Flow(
        "pay",
        [QueueSpec("check")],
        partitions=3,
        redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    )
    assert [key_slot(p.redis.cluster_key or "") for p in flow.partitions] == [
        key_slot(f"{{pay#{i}}}") for i in range(3)
    ]
    assert Partitioning.build("pay", 2, None).short("{pay#1}.check:x") == "check:x"


def test_a_workers_turns_go_round_the_partitions_that_have_work() -> None:
    turns = Turns(3, start=4)
    assert turns.order() == [0, 1, 2] and not turns.over
    turns.taken = TURN
    assert turns.over and turns.order() == [1, 2, 0]  # its turn over: the next one first
    assert turns.move(1) and turns.taken == 0 and not turns.move(1)
    assert [turns.idle_partition(3.0) for _ in range(4)] == [(1, 1.0), (2, 1.0), (0, 1.0), (1, 1.0)]
    single = Turns(1)
    single.taken = 100
    assert not single.over and single.idle_partition(3.0) == (0, 3.0)  # one partition: never moves
    assert [index_of(n) for n in ("check#3", "check#inline", "x")] == [3, 0, 0]


def test_a_later_stage_reads_the_childrens_fields_by_the_names_given() -> None:
    flow = Flow(
        "pay",
        [
            QueueSpec("charge", next_queue="report", children=[QueueSpec("card")]),
            QueueSpec("report", attributes_to_get=["children:charge:jobs", "total"]),
        ],
        partitions=2,
        redis_url="redis://127.0.0.1:1/0",
    )
    report = flow.partitions[1].definition.stages["{pay#1}.report"]
    assert report.fields == ("children:{pay#1}.charge:jobs", "total")
    (group,) = [flow.create_workers("report", lambda job: {})[0].group]
    payload = group.payload("pay", [(p.definition, p.redis) for p in flow.partitions], "h", "INFO")
    # what the function sees
    assert payload.partitions[1].names == ("children:charge:jobs", "total")


def test_a_batch_refused_in_one_partition_says_which_jobs_were_written() -> None:
    flow = _flow(partitions=3)
    jobs = flow.core.prepare_many([{"n": n} for n in range(6)])
    groups = [jobs[0::3], jobs[1::3], jobs[2::3]]
    settle_creates(jobs, groups, [None, None, None])  # all written: nothing to say
    full = RedisRefusedError("127.0.0.1:1", "OOM command not allowed")
    partial = CreateJobsError(full, [groups[2][0].id], [groups[2][1].id])
    with pytest.raises(CreateJobsError) as caught:
        settle_creates(jobs, groups, [None, full, partial])
    assert caught.value.created == (jobs[0].id, jobs[2].id, jobs[3].id)
    assert caught.value.not_created == (jobs[1].id, jobs[4].id, jobs[5].id)
    assert caught.value.code == "OOM"
    away = RedisUnavailableError("127.0.0.1:1", "connection refused")
    with pytest.raises(RedisUnavailableError):  # an outage: what was written is not known
        settle_creates(jobs, groups, [None, full, away])


def test_the_old_name_of_a_flows_partitions_still_works_with_a_deprecation_warning() -> None:
    flow = Flow("pay", [QueueSpec("check")], partitions=2)
    with pytest.warns(DeprecationWarning, match="Flow.partitions"):
        assert flow.parts == flow.partitions


def test_a_flow_made_without_partitions_is_one_partition_under_its_own_names() -> None:
    flow = Flow("{pay}", [QueueSpec("{pay}.fan", children=(QueueSpec("c"),))])
    split = flow.partitioning
    assert (split.count, split.tagged, [p.name for p in flow.partitions]) == (1, False, ["{pay}"])
    assert split.queue(0, "{pay}.fan") == split.short("{pay}.fan") == "{pay}.fan"
    assert split.shown("children:{pay}.fan:jobs") == "children:{pay}.fan:jobs"
    assert split.renames(flow.definition) == {}
    assert split.index_of("job:{pay}:x") == 0
    assert split.given(flow.queues) == list(flow.queues)


def test_a_partitions_names_go_back_to_the_names_given() -> None:
    queues = [
        QueueSpec("check", next_queue="fan", attributes_to_get=("n",)),
        QueueSpec("fan", children=(QueueSpec("c"),), next_queue="report"),
        QueueSpec("report", attributes_to_get=("children:fan:jobs",)),
    ]
    flow = Flow("pay", queues, partitions=3)
    split = flow.partitioning
    assert split.given(flow.partitions[2].definition.queues) == queues
    assert split.index_of("job:{pay#2}:x") == 2
    assert split.index_of("job:{pay#3}:x") == split.index_of("job:{other#1}:x") == 0
    assert keys.partition_of_name("{pay#12}") == ("pay", 12)
    assert keys.partition_of_name("{pay}") is None
    assert keys.partition_of_name("pay#1") is None
