"""Conformance with the TypeScript library's conventions (npm ``@guildxyz/queues`` 0.0.8,
run for real under Node by ``conventions.js``).

A worker function written the way that library's own flows are written returns ``done: true``
from its child and last stages, ``nextQueue`` to route a job and ``children:Q:params`` to ask
for fan-out. Each test here runs such functions — the same function on both sides: each
stage returns what the job's ``plan`` option says it returns, plus ``seen:Q`` (the fields it
was handed) — and checks:

- at every kind of stage (plain, parent, child, last), a job worked by procflow ends in the
  same state as the same job worked by the TypeScript library, field by field but for the
  bookkeeping only one side writes (``PROCFLOW_ONLY``), whichever library created it;
- where the two deliberately differ (``done`` at a last stage that does not return
  ``done: true``; ``done: true`` returned by a middle stage), the difference is exactly the
  documented one (docs/wire-format.md, parts 4 and 5);
- TypeScript and procflow workers on the same queues at once run every job exactly once;
- the TypeScript FlowMonitor and procflow's monitor on one Redis leave each other's running
  jobs alone, and a job whose lock expired is recovered once, by one of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec
from procflow.supervisor.monitor import FlowMonitor
from tests.conftest import wait_until
from tests.interop.test_typescript import HERE, NODE_TIMEOUT, node_modules  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leaks", "node_modules")

FLOW = "conv"
CHILDREN = ("alpha", "beta")
LAST = "finish"

#: job fields only procflow writes (its bookkeeping, docs/wire-format.md part 3.2): left out
#: when a job's end state is compared with the TypeScript library's
PROCFLOW_ONLY = (
    "attempts:",  # attempts:Q (prefix)
    "lease:",  # lease:Q (prefix)
    "errors:",  # errors:Q (prefix)
    "progress:",  # progress:Q (prefix)
    "children:fan:pending",
    "children:fan:failed",
    "parentJob",
    "parentNotified",
)
#: (the TypeScript library's only own field, ``correlationId``, is written at creation: both
#: runs of a comparison create their jobs with the same library, so it is compared too)


def is_procflow_only(field: str) -> bool:
    return field.startswith(PROCFLOW_ONLY[:4]) or field in PROCFLOW_ONLY[4:]


def make_flow(redis_url: str) -> Flow:
    return Flow(
        FLOW,
        [
            QueueSpec("prepare", next_queue="middle", attributes_to_get=["plan", "userId"]),
            QueueSpec(
                "middle",
                next_queue="fan",
                attributes_to_get=["plan", "userId", "seen:prepare"],
                max_attempts=2,
            ),
            QueueSpec(
                "fan",
                next_queue=LAST,
                children=[QueueSpec(c, attributes_to_get=["plan", "n"]) for c in CHILDREN],
            ),
            QueueSpec(LAST, attributes_to_get=["plan", "userId", "children:fan:jobs"]),
        ],
        lookup_attributes=["userId"],
        redis_url=redis_url,
    )


def typescript_spec(flow: Flow) -> dict[str, Any]:
    """The same flow as the TypeScript library's ``Flow`` options."""
    return {
        "name": flow.name,
        "queueOptions": [
            {
                "queueName": q.name,
                "nextQueueName": q.next_queue,
                "attributesToGet": list(q.attributes_to_get),
                "children": [
                    {"queueName": c.name, "attributesToGet": list(c.attributes_to_get)}
                    for c in q.children
                ],
            }
            for q in flow.queues
        ],
        "lookupAttributes": list(flow.lookup_attributes),
    }


# -- the worker function, as conventions.js writes it ---------------------------------------


def convention(queue: str, work: float = 0.0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Stage ``queue``'s function: what the job's plan says, plus the fields it was handed."""

    def run(job: dict[str, Any]) -> dict[str, Any]:
        plan = job.get("plan") or {}
        if queue not in plan:
            raise KeyError(f"job {job['id']} has no plan for {queue}")
        if work:
            time.sleep(work)  # the job's work, not a wait for anything
        seen = {k: v for k, v in job.items() if k not in ("id", "plan")}
        return {**json.loads(json.dumps(plan[queue])), f"seen:{queue}": seen}

    return run


#: what the child stages return, the library's way: done: true (and a null nextQueue)
CHILD_PLAN = {
    "fan:alpha": {"done": True, "out": "alpha"},
    "fan:beta": {"done": True, "out": "beta", "nextQueue": None},
}


def child(name: str, n: int) -> dict[str, Any]:
    return {"childName": name, "plan": CHILD_PLAN, "n": n}


#: plans whose end state must be the same whichever library works them: each stage's result
CONFORMING: dict[str, dict[str, Any]] = {
    # access-preparation's way: child params and an explicit nextQueue to the parent stage
    "fan-out": {
        "prepare": {
            "children:fan:params": [child("alpha", 1), child("beta", 2)],
            "nextQueue": "fan",
        },
        LAST: {"done": True, "verdict": "granted"},
    },
    # every stage in turn; done: false from a plain stage, child params from a later one
    "every stage": {
        "prepare": {"done": False, "a": 1},
        "middle": {"b": [1, 2.5], "children:fan:params": [child("alpha", 3)]},
        LAST: {"done": True, "nextQueue": None, "text": "fertig — ✓"},
    },
    # done: true from a middle stage; a fan-out with no children
    "done early": {
        "prepare": {"done": True, "early": "yes"},
        "middle": {"children:fan:params": []},
        LAST: {"done": True},
    },
    # nextQueue past the stages in between
    "routed past": {
        "prepare": {"nextQueue": LAST, "skipped": True},
        LAST: {"done": True, "v": 2},
    },
}

#: plans where the libraries differ, as documented: a last stage that does not return
#: done: true (the TypeScript library then never sets done; procflow does when the job
#: leaves its flow)
DIFFERING: dict[str, dict[str, Any]] = {
    "last stage without done": {"prepare": {"nextQueue": LAST}, LAST: {"v": 3}},
    "last stage done false": {"prepare": {"nextQueue": LAST}, LAST: {"done": False}},
}
#: the one field they differ in: (TypeScript library, procflow)
DIFFERENCES = {
    "last stage without done": {"done": (None, b"true")},
    "last stage done false": {"done": (b"false", b"true")},
}


# -- running each side ----------------------------------------------------------------------


class Node:
    """``conventions.js``: TypeScript workers (and a FlowMonitor) until ``stop``."""

    def __init__(self, redis_url: str, flow: Flow, **config: Any) -> None:
        env = {
            **os.environ,
            "INTEROP_REDIS_URL": redis_url,
            "INTEROP_FLOW": json.dumps(typescript_spec(flow)),
        }
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(HERE / "conventions.js"), json.dumps(config)],
            cwd=HERE,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(self._started, timeout=NODE_TIMEOUT, what="the TypeScript workers to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"node conventions.js exited early:\n{self.stderr()}")
        return any(e["event"] == "ready" for e in self.events)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == kind]

    def stop(self) -> dict[str, Any]:
        """Close stdin (``Flow.stopAll``); the ``stopped`` event, checked: nothing logged."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=NODE_TIMEOUT)
        finally:
            self.kill()
        self._reader.join(timeout=5)
        assert code == 0, f"node conventions.js failed ({code}):\n{self.stderr()}"
        (stopped,) = self.of("stopped")
        assert stopped["logged"] == []
        return stopped

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream and not stream.closed:
                stream.close()


@pytest.fixture
def node(redis_url: str) -> Iterator[Callable[..., Node]]:
    """Starts ``Node`` runs; any still running at the end is killed."""
    started: list[Node] = []

    def start(flow: Flow, **config: Any) -> Node:
        started.append(Node(redis_url, flow, **config))
        return started[-1]

    yield start
    for run in started:
        run.kill()


ALL_NODE_WORKERS: dict[str, Any] = {
    "workers": ["prepare", "middle", LAST],
    "parents": ["fan"],
    "children": [["fan", c] for c in CHILDREN],
}


def procflow_workers(flow: Flow, work: float = 0.0) -> None:
    """procflow workers for every stage, running ``convention``."""
    for queue in ("prepare", "middle", LAST):
        flow.create_workers(queue, convention(queue, work), block_timeout=0.2)
    flow.create_parent_workers("fan", block_timeout=0.2)
    for name in CHILDREN:
        flow.create_child_workers("fan", name, convention(f"fan:{name}", work), block_timeout=0.2)


def create(
    creator: str, flow: Flow, redis_url: str, plans: list[dict[str, Any]], first: int = 0
) -> list[str]:
    """One job per plan, created by ``creator`` (``node`` or ``procflow``)."""
    options = [{"userId": first + n, "plan": plan} for n, plan in enumerate(plans)]
    if creator == "procflow":
        return flow.create_jobs(options)
    env = {
        **os.environ,
        "INTEROP_REDIS_URL": redis_url,
        "INTEROP_FLOW": json.dumps(typescript_spec(flow)),
    }
    done = subprocess.run(
        [shutil.which("node") or "node", str(HERE / "create.js"), json.dumps(options)],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ids: list[str] = json.loads(done.stdout)["ids"]
    return ids


def finished_by_typescript(r: redis.Redis, ids: list[str]) -> bool:
    """Every job completed its last stage and nothing is left on any queue (the TypeScript
    library does not always set ``done``)."""
    return not r.keys("queue:*") and all(
        r.hget(f"job:{FLOW}:{i}", "completed-queue") == f'"{LAST}"'.encode() for i in ids
    )


def run_by_typescript(
    node: Callable[..., Node], flow: Flow, r: redis.Redis, ids: list[str]
) -> None:
    run = node(flow, **ALL_NODE_WORKERS)
    wait_until(lambda: finished_by_typescript(r, ids), timeout=30, what="the TypeScript workers")
    completions = run.stop()
    assert all(e["ok"] for e in run.of("completed")), completions


def run_by_procflow(flow: Flow, ids: list[str]) -> None:
    procflow_workers(flow)
    with flow.start_all(heartbeat=False) as sup:
        jobs = sup.wait(ids, timeout=30)
    assert not [j for j in jobs if j.get("failed")], jobs


# -- what is compared -----------------------------------------------------------------------

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def end_state(r: redis.Redis, ids: list[str]) -> list[dict[str, Any]]:
    """Each job's hash and its children's, but for ``PROCFLOW_ONLY`` fields, ids replaced by
    ``ID`` (each run makes its own); and nothing left on a queue or holding a lock."""
    assert r.keys("queue:*:waiting") == r.keys("queue:*:processing") == []
    assert r.keys("queue:*") == [] and r.keys("lock:*") == []

    def fields(key: str) -> dict[str, bytes]:
        raw = r.hgetall(key)
        assert raw, f"{key} is gone"
        assert 86_400 - 60 <= r.ttl(key) <= 86_400, key
        return {
            k.decode(): _UUID.sub(b"ID", v)
            for k, v in raw.items()
            if not is_procflow_only(k.decode())
        }

    states = []
    for job_id in ids:
        job = fields(f"job:{FLOW}:{job_id}")
        children_raw = r.hget(f"job:{FLOW}:{job_id}", "children:fan:jobs")
        children = [fields(k) for k in json.loads(children_raw or b"[]")]
        states.append({"job": job, "children": children})
    return states


def differences(ts: dict[str, Any], pf: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as (TypeScript library, procflow)."""
    out = {}
    for name in sorted(set(ts) | set(pf)):
        if ts.get(name) != pf.get(name):
            out[name] = (ts.get(name), pf.get(name))
    return out


# -- 1. each kind of stage ends in the same state -------------------------------------------


@pytest.mark.parametrize("creator", ["node", "procflow"])
def test_conventions_end_in_the_same_state_whichever_library_works_the_job(
    creator: str, node: Callable[..., Node], redis_url: str, r: redis.Redis
) -> None:
    plans = [*CONFORMING.values(), *DIFFERING.values()]
    names = [*CONFORMING, *DIFFERING]

    flow = make_flow(redis_url)
    ids = create(creator, flow, redis_url, plans)
    run_by_typescript(node, flow, r, ids)
    by_typescript = end_state(r, ids)
    flow.disconnect()

    r.flushall()
    flow = make_flow(redis_url)
    ids = create(creator, flow, redis_url, plans)
    run_by_procflow(flow, ids)
    by_procflow = end_state(r, ids)
    flow.disconnect()

    # the comparison covers what it claims: every kind of stage wrote its fields
    fan_out = by_procflow[names.index("fan-out")]
    assert [c["out"] for c in fan_out["children"]] == [b'"alpha"', b'"beta"']
    assert fan_out["job"]["children:fan:jobs"] == b'["job:fan:alpha:ID","job:fan:beta:ID"]'
    assert fan_out["job"]["verdict"] == b'"granted"' and fan_out["job"]["done"] == b"true"
    assert all(c["done"] == b"true" and "failed" not in c for c in fan_out["children"])
    every = by_procflow[names.index("every stage")]["job"]
    assert {"seen:prepare", "seen:middle", "seen:finish", "a", "b"} <= set(every)
    assert "nextQueue" not in every

    found = {
        name: {
            "job": differences(ts["job"], pf["job"]),
            "children": [
                differences(a, b) for a, b in zip(ts["children"], pf["children"], strict=False)
            ],
            "child count": (len(ts["children"]), len(pf["children"])),
        }
        for name, ts, pf in zip(names, by_typescript, by_procflow, strict=True)
    }
    expected = {
        name: {
            "job": DIFFERENCES.get(name, {}),
            "children": [{} for _ in found[name]["children"]],
            "child count": (n := len(by_typescript[i]["children"]), n),
        }
        for i, name in enumerate(names)
    }
    assert found == expected


def test_done_true_from_a_middle_stage_is_written_only_by_the_typescript_library(
    node: Callable[..., Node], redis_url: str, r: redis.Redis
) -> None:
    """The documented difference while a job is still in its flow: the TypeScript library
    writes a middle stage's ``done: true`` as it is and moves the job on (it looks done
    while the next stage has it); procflow leaves ``done`` to the job's end."""
    plan = CONFORMING["done early"]
    flow = make_flow(redis_url)
    (by_ts,) = create("procflow", flow, redis_url, [plan])
    run = node(flow, workers=["prepare"])
    wait_until(lambda: r.lrange("queue:middle:waiting", 0, -1) == [by_ts.encode()], timeout=20)
    run.stop()
    assert r.hget(f"job:{FLOW}:{by_ts}", "done") == b"true"
    assert r.hget(f"job:{FLOW}:{by_ts}", "early") == b'"yes"'

    r.flushall()
    (by_pf,) = create("procflow", flow, redis_url, [plan])
    flow.create_workers("prepare", convention("prepare"), block_timeout=0.2)
    with flow.start_all(heartbeat=False):
        wait_until(lambda: r.lrange("queue:middle:waiting", 0, -1) == [by_pf.encode()], timeout=20)
    assert r.hget(f"job:{FLOW}:{by_pf}", "done") is None
    assert r.hget(f"job:{FLOW}:{by_pf}", "early") == b'"yes"'
    assert flow.get_job(by_pf)["completed-queue"] == "prepare"
    flow.disconnect()


# -- 2. both libraries' workers on the same queues at once ----------------------------------


def test_typescript_and_procflow_workers_on_the_same_queues_run_every_job_once(
    node: Callable[..., Node], redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a procflow parent whose children a TypeScript worker completed is not told by them (the
    # library knows no parentJob): the monitor's parked check resumes it, here within 0.3 s
    monkeypatch.setitem(FlowMonitor.__init__.__kwdefaults__, "parked_check", 0.3)
    plans = [CONFORMING["fan-out"], CONFORMING["every stage"]] * 12
    flow = make_flow(redis_url)
    run = node(flow, workMs=20, **ALL_NODE_WORKERS)
    procflow_workers(flow, work=0.02)
    with flow.start_all(heartbeat=False, monitor_interval=0.1) as sup:
        ids = create("node", flow, redis_url, plans[:12])
        ids += create("procflow", flow, redis_url, plans[12:], first=12)
        jobs = sup.wait(ids, timeout=60)
        wait_until(lambda: not r.keys("queue:*"), timeout=10, what="every queue to empty")
    run.stop()

    assert len(set(ids)) == len(plans)
    assert not [j for j in jobs if j.get("failed") or j["completed-queue"] != LAST], jobs
    assert [j["verdict"] for j in jobs if "verdict" in j] == ["granted"] * 12
    children = [
        c for j in flow.get_jobs(ids, resolve_children=True) for c in j["children:fan:jobs"]
    ]
    assert len(children) == 12 * 2 + 12
    assert all(c["done"] is True and "failed" not in c for c in children)

    # every stage ran every job that reaches it exactly once, on one side or the other
    by_node = Counter((e["queue"], e["jobId"]) for e in run.of("completed"))
    assert all(e["ok"] for e in run.of("completed"))
    assert max(by_node.values()) == 1
    node_counts = Counter(queue for queue, _ in by_node)
    procflow_counts = {
        queue: sum(
            int(v)
            for k, v in r.hgetall(f"procflow:{FLOW}:stats:{queue}").items()
            if k.startswith(b"c:")
        )
        for queue in ("prepare", "middle", "fan", LAST, "fan:alpha", "fan:beta")
    }
    visits = {"prepare": 24, "middle": 12, "fan": 24, LAST: 24, "fan:alpha": 24, "fan:beta": 12}
    assert {q: node_counts[q] + procflow_counts[q] for q in visits} == visits
    assert node_counts["prepare"] > 0 and procflow_counts["prepare"] > 0  # both took part
    flow.disconnect()


# -- 3. both monitors on one Redis ----------------------------------------------------------


def test_both_monitors_leave_each_others_running_jobs_alone(
    node: Callable[..., Node], redis_url: str, r: redis.Redis
) -> None:
    """procflow workers run ``prepare`` under the TypeScript FlowMonitor (every 50 ms);
    TypeScript workers run ``finish`` under procflow's monitor (every 0.1 s). Each job takes
    several rounds of both; none is taken away, requeued or run twice.

    The FlowMonitor has a race of its own (the library's jobs are as exposed as procflow's):
    a job completed between its LRANGE of processing and its GET of the lock is marked
    ``failed`` though it went on; its LREM then removes nothing. Such a marking is told apart
    by that reply and allowed here; a job taken out of processing is not."""
    flow = make_flow(redis_url)
    ids = create("procflow", flow, redis_url, [CONFORMING["routed past"]] * 6)
    run = node(flow, workers=[LAST], workMs=200, monitor={"queues": ["prepare"], "intervalMs": 50})
    flow.create_workers("prepare", convention("prepare", 0.2), block_timeout=0.2)
    with flow.start_all(heartbeat=False, monitor_interval=0.1) as sup:
        jobs = sup.wait(ids, timeout=30)
        assert r.get(f"procflow:{FLOW}:monitor") is not None  # procflow's monitor is active
    refreshes = len(run.of("refresh"))
    run.stop()

    assert refreshes >= 10  # the FlowMonitor went round all along
    assert [e for e in run.of("monitorLRem") if e["removed"]] == []
    raced = {e["jobId"] for e in run.of("lockExpired")}
    for job in jobs:
        assert job["done"] is True and job["completed-queue"] == LAST and job["v"] == 2
        assert job["attempts:prepare"] == 1 and "errors:prepare" not in job
        assert "errors:finish" not in job and "attempts:finish" not in job  # procflow's monitor
        if job["id"] in raced:
            assert job["failedErrorMsg"] == "prepare lock time exceeded"
        else:
            assert "failed" not in job and "failedErrorMsg" not in job
    assert sorted(e["jobId"] for e in run.of("completed")) == sorted(ids)
    assert all(e["ok"] for e in run.of("completed"))
    flow.disconnect()


def test_an_expired_lock_is_recovered_once_with_both_monitors_watching(
    node: Callable[..., Node], redis_url: str, r: redis.Redis
) -> None:
    """Two jobs left in ``queue:middle:processing`` with no lock: one a procflow worker had
    claimed (``lease:middle``), one a TypeScript worker had leased; both workers died. The
    TypeScript FlowMonitor fails such a job at once, procflow's monitor retries it after its
    grace period: each job is recovered by exactly one of them, completely."""
    flow = make_flow(redis_url)
    claimed, leased = create("procflow", flow, redis_url, [CONFORMING["every stage"]] * 2)
    for job_id in (claimed, leased):
        r.lrem("queue:prepare:waiting", 0, job_id)
        r.rpush("queue:middle:processing", job_id)
    r.hset(f"job:{FLOW}:{claimed}", mapping={"lease:middle": '"gone|1|1.00|2|1"'})
    r.hincrby(f"job:{FLOW}:{claimed}", "attempts:middle", 1)

    scans: list[float] = []
    monitor = FlowMonitor(flow, "test|1|1.00", interval=0.1, grace=0.5)
    scan = monitor._scan_orphans
    monkey_scan = lambda stages: (scan(stages), scans.append(time.monotonic()))  # noqa: E731
    monitor._scan_orphans = monkey_scan  # type: ignore[method-assign]
    run = node(flow, monitor={"queues": ["middle"], "intervalMs": 100})
    monitor.start()
    try:
        wait_until(lambda: r.llen("queue:middle:processing") == 0, timeout=20)
        recovered = time.monotonic()
        node_rounds = len(run.of("refresh"))
        # both monitors had every chance to act again: procflow's past its grace period
        wait_until(
            lambda: (
                scans
                and scans[-1] > recovered + 2 * monitor.grace
                and len(run.of("refresh")) >= node_rounds + 3
            ),
            timeout=20,
            what="more rounds of both monitors",
        )
    finally:
        monitor.stop()
    run.stop()

    expired = Counter(e["jobId"] for e in run.of("lockExpired"))
    for job_id in (claimed, leased):
        job = r.hgetall(f"job:{FLOW}:{job_id}")
        on_lists = [k for k in r.keys("queue:*") if job_id.encode() in _members(r, k)]
        by_procflow = b"errors:middle" in job or on_lists != []
        by_typescript = expired[job_id] > 0
        assert by_procflow != by_typescript, (job_id, job, on_lists, expired)
        if by_typescript:  # failed the library's way, once, and on no list
            assert expired[job_id] == 1
            assert job[b"done"] == job[b"failed"] == b'"true"'
            assert job[b"failedErrorMsg"] == b'"middle lock time exceeded"'
            assert on_lists == [] and b"errors:middle" not in job
        else:  # retried procflow's way: back on waiting, untouched by the library's monitor
            assert on_lists == [b"queue:middle:waiting"]
            assert b"done" not in job and b"failed" not in job
    flow.disconnect()


def _members(r: redis.Redis, key: bytes) -> list[bytes]:
    kind = r.type(key)
    if kind == b"list":
        return list(r.lrange(key, 0, -1))
    if kind == b"zset":
        return list(r.zrange(key, 0, -1))
    return []
