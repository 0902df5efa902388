"""Redis Cluster: a hash-tagged flow on a real local cluster, and a master killed mid-run;
a partitioned flow over every master; a slot migrated under a running flow.

Six ``redis-server --cluster-enabled yes`` processes (three masters, three replicas; see
tests/clusters.py), started and stopped by pid.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import ConfigurationError, Flow, QueueSpec
from procflow.operator.ops import Operator
from procflow.store.connect import slot_master
from procflow.store.slots import key_slot
from tests.clusters import Cluster
from tests.conftest import assert_all_done, server_binary, wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(server_binary("redis"), tmp_path).start()
    try:
        yield c
    finally:
        c.stop()


def test_a_flow_whose_keys_spread_over_slots_is_refused_with_the_tagged_spelling() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Flow("pay", [QueueSpec("check")], redis_url="redis+cluster://127.0.0.1:1")
    text = str(caught.value)
    assert "job:pay:ID (slot" in text and "queue:check:waiting (slot" in text
    assert "Flow('{pay}', [QueueSpec('{pay}.check')])" in text


def test_a_tagged_flow_with_fan_out_runs_through_a_master_failover(cluster: Cluster) -> None:
    def check(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.002)
        return {
            "checked": True,
            "children:{pay}.charge:params": [{"childName": "card", "amount": job["amount"]}],
        }

    flow = Flow(
        "{pay}",
        [
            QueueSpec(
                "{pay}.check",
                next_queue="{pay}.charge",
                attributes_to_get=["amount"],
                max_attempts=5,
            ),
            QueueSpec(
                "{pay}.charge",
                children=[QueueSpec("card", attributes_to_get=["amount"], max_attempts=5)],
                max_attempts=5,
            ),
        ],
        lookup_attributes=["user"],
        redis_url=cluster.url,
    )
    flow.create_workers("{pay}.check", check, count=2, lock_time=2)
    flow.create_parent_workers("{pay}.charge", count=1, lock_time=2)
    flow.create_child_workers(
        "{pay}.charge", "card", lambda job: {"paid": job["amount"]}, count=1, lock_time=2
    )
    host, port = slot_master(flow.redis)
    assert host == "127.0.0.1" and port in cluster.ports[:3]
    assert key_slot("job:{pay}:x") == key_slot("queue:{pay}.charge:card:waiting")
    master = cluster.client(port)
    with flow.start_all(monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"amount": n, "user": n % 4} for n in range(300)])
        assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has every job
        wait_until(
            lambda: master.llen("queue:{pay}.check:waiting") < 250,
            timeout=30,
            what="the run under way",
        )
        cluster.procs[port].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        jobs = sup.wait(ids, timeout=120)
        recovered = time.monotonic() - killed_at
    assert_all_done(jobs)
    children = [
        c
        for j in flow.get_jobs(ids, resolve_children=True)
        for c in j["children:{pay}.charge:jobs"]
    ]
    assert len(children) == 300 and all(c.get("paid") is not None for c in children)
    _, new_port = slot_master(flow.redis)
    assert new_port != port and new_port in cluster.ports[3:]  # its replica took over
    op = Operator(cluster.url)  # the registry's set lives in a slot of its own
    assert op.flows() == ["{pay}"]
    assert [s.name for s in op.status("{pay}")] == [
        "{pay}.check",
        "{pay}.charge",
        "{pay}.charge:card",
    ]
    op.close()
    print(f"\ncluster failover: 300 jobs with fan-out done {recovered:.1f} s after the kill")


def test_a_partitioned_flow_spreads_over_the_masters_and_rides_out_a_master_kill(
    cluster: Cluster,
) -> None:
    def check(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.002)
        return {"children:charge:params": [{"childName": "card", "amount": job["amount"]}]}

    flow = Flow(
        "pay",
        [
            QueueSpec("check", next_queue="charge", attributes_to_get=["amount"], max_attempts=5),
            QueueSpec(
                "charge",
                children=[QueueSpec("card", attributes_to_get=["amount"], max_attempts=5)],
                max_attempts=5,
            ),
        ],
        lookup_attributes=["user"],
        redis_url=cluster.url,
        partitions=4,
    )
    masters = [slot_master(part.redis)[1] for part in flow.partitions]
    assert set(masters) == set(cluster.ports[:3])  # {pay#0} … {pay#3} reach every master
    flow.create_workers("check", check, count=2, lock_time=2)
    flow.create_parent_workers("charge", count=1, lock_time=2)
    flow.create_child_workers(
        "charge", "card", lambda job: {"paid": job["amount"]}, count=1, lock_time=2
    )
    victim = masters[2]  # partition 2's master (and whatever else it serves)
    with flow.start_all(monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"amount": n, "user": n % 4} for n in range(400)])
        for port in set(masters):
            assert cluster.client(port).execute_command("WAIT", 1, 5000) == 1
        wait_until(
            lambda: flow.counts()["check"]["waiting"] < 320, timeout=30, what="the run under way"
        )
        cluster.procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        jobs = sup.wait(ids, timeout=120)
        recovered = time.monotonic() - killed_at
    assert_all_done(jobs)
    where = [flow.partition_of(i) for i in ids]
    assert [sum(p is part for p in where) for part in flow.partitions] == [100] * 4
    ones = flow.get_jobs_by_key("user", 1, resolve_children=True)
    assert sorted(j["amount"] for j in ones) == list(range(1, 400, 4))
    assert all([c["paid"] for c in j["children:charge:jobs"]] == [j["amount"]] for j in ones)
    assert slot_master(flow.partitions[2].redis)[1] in cluster.ports[3:]  # its replica took over
    print(
        f"\npartitioned flow on the cluster: 400 jobs with fan-out over 4 partitions on 3 "
        f"masters, done {recovered:.1f} s after partition 2's master was killed"
    )


def _asking(client: redis.Redis, *command: Any) -> Any:
    """One command on an importing node, after an ASKING on the same connection."""
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*command)
    return pipe.execute()[1]


def test_a_flow_keeps_running_while_its_slot_migrates_to_another_master(
    cluster: Cluster,
) -> None:
    def work(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.005)
        return {"twice": job["n"] * 2}

    flow = Flow(
        "{mig}",
        [QueueSpec("{mig}.w", attributes_to_get=["n"], max_attempts=10)],
        lookup_attributes=["g"],
        redis_url=cluster.url,
    )
    flow.create_workers("{mig}.w", work, count=2, lock_time=5)
    slot = key_slot("{mig}")
    source_port = slot_master(flow.redis)[1]
    target_port = next(p for p in cluster.ports[:3] if p != source_port)
    source, target = cluster.client(source_port), cluster.client(target_port)
    source_id = source.execute_command("CLUSTER", "MYID").decode()
    target_id = target.execute_command("CLUSTER", "MYID").decode()
    waiting = "queue:{mig}.w:waiting"
    with flow.start_all(monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"n": n, "g": n % 3} for n in range(1500)])
        wait_until(lambda: source.llen(waiting) < 1450, timeout=30, what="the run under way")
        # the slot migrates as redis-cli --cluster reshard moves it: importing, migrating,
        # its keys moved (here until none is left), then given to the target
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while moving := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000):
            source.execute_command(
                "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "REPLACE", "KEYS", *moving
            )
        # now the source answers ASK for every key of the slot: the flow goes on over there
        left = _asking(target, "LLEN", waiting)
        assert left > 100
        # a read goes there after an ASKING (a new job must wait for the end: Redis refuses
        # transactions over keys of which some are missing there with TRYAGAIN meanwhile)
        assert flow.get_job(ids[-1]) == {"id": ids[-1], "n": 1499, "g": 1499 % 3}
        wait_until(
            lambda: _asking(target, "LLEN", waiting) <= left - 100,
            timeout=30,
            what="100 jobs done while the slot is migrating",
        )
        for client in [target, source, *(cluster.client(p) for p in cluster.ports[:3])]:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        late = flow.create_job({"n": -1, "g": 9})  # on the new owner, after a MOVED
        jobs = sup.wait([*ids, late], timeout=120)
    assert_all_done(jobs)
    assert [j["twice"] for j in jobs] == [n * 2 for n in range(1500)] + [-2]
    assert slot_master(flow.redis)[1] == target_port
    assert len(flow.get_jobs_by_key("g", 1)) == 500
