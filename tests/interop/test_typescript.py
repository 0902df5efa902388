"""Interoperation with the TypeScript library the Redis layout comes from (npm
``@guildxyz/queues`` 0.0.8, pinned in package-lock.json next to this file).

Both directions run the real library under Node: jobs procflow creates are read, leased and
completed by a TypeScript ``Worker``; jobs the TypeScript ``Flow`` creates are read, leased and
completed by real procflow worker processes; and the bytes each side writes for the same
options are compared. The node scripts in this folder take their parameters from argv and
the environment and print one JSON object on stdout.

``npm ci`` runs once per session (into tests/interop/node_modules, git-ignored); a machine
without node or npm fails these tests, it does not skip them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import EncodeError, Flow, QueueSpec, codec
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")

HERE = Path(__file__).resolve().parent
LIBRARY = "@guildxyz/queues"
LIBRARY_VERSION = "0.0.8"
NODE_TIMEOUT = 30.0  # s, for one script run; the scripts' own deadlines are shorter
TTL = 86_400

#: the options both libraries store; every kind of JSON value, JavaScript number formatting
#: (1.0 is 1, 1e-7 stays 1e-7, 1e21 is 1e+21) and text that is not ASCII
OPTIONS: dict[str, Any] = {
    "userId": 62,
    "name": "joe",
    "city": "Zürich — ☃ 😀",
    "roleIds": [1, 2],
    "score": 2.5,
    "ratio": 1.0,
    "tiny": 1e-7,
    "huge": 1e21,
    "flag": True,
    "nothing": None,
    "nested": {"a": [1, {"b": "c"}], "d": False, "e": {}, "f": []},
}


# -- the TypeScript side --------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` in tests/interop, once per session; fails (never skips) without node/npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if not p)
        pytest.fail(
            f"{missing} not found on PATH: the interop tests run the TypeScript library "
            f"{LIBRARY}@{LIBRARY_VERSION} under Node.js; install Node.js 18 or newer with npm"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = re.match(r"v(\d+)\.", version.stdout)
    if not major or int(major.group(1)) < 18:
        pytest.fail(f"the interop tests need Node.js 18 or newer, found {version.stdout!r}")
    done = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {HERE} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    installed = json.loads((HERE / "node_modules" / LIBRARY / "package.json").read_text())
    assert installed["version"] == LIBRARY_VERSION
    return HERE / "node_modules"


class TypeScript:
    """Runs the node scripts of this folder against one server, for one flow definition."""

    def __init__(self, redis_url: str, flow: Flow) -> None:
        spec = {
            "name": flow.name,
            "queueOptions": [
                {
                    "queueName": q.name,
                    "nextQueueName": q.next_queue,
                    "attributesToGet": list(q.attributes_to_get),
                }
                for q in flow.queues
            ],
            "lookupAttributes": list(flow.lookup_attributes),
        }
        self.env = {
            **os.environ,
            "INTEROP_REDIS_URL": redis_url,
            "INTEROP_FLOW": json.dumps(spec),
            "INTEROP_TIMEOUT_MS": "10000",
        }

    def run(self, script: str, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [shutil.which("node") or "node", str(HERE / script), *args],
            cwd=HERE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"node {script} failed ({done.returncode}):\n{done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def create_jobs(self, many: list[dict[str, Any]]) -> list[str]:
        """``Flow.createJob`` for each options object, in order."""
        ids: list[str] = self.run("create.js", json.dumps(many))["ids"]
        return ids

    def jobs_by_key(self, *queries: tuple[str, Any]) -> list[list[dict[str, Any]]]:
        """``Flow.getJobsByKey(key, value, true)`` for each query."""
        results: list[list[dict[str, Any]]] = self.run("read.js", json.dumps(queries))["results"]
        return results

    def work(self, queue: str, result: dict[str, Any], count: int = 1) -> dict[str, Any]:
        """One ``Worker`` on ``queue`` (``createWorkers``, ``startAll``) returning ``result``
        until ``count`` jobs went through ``Worker.complete``; then ``stopAll``."""
        return self.run("work.js", queue, json.dumps(result), str(count))


def make_flow(redis_url: str, name: str = "interop") -> Flow:
    return Flow(
        name,
        [
            QueueSpec("prepare", next_queue="check", attributes_to_get=["userId", "roleIds"]),
            QueueSpec("check", attributes_to_get=["userId", "prepared", "params"]),
        ],
        lookup_attributes=["userId", "roleIds", "name", "score", "huge", "flag", "nothing"],
        redis_url=redis_url,
    )


@pytest.fixture
def flow(redis_url: str) -> Iterator[Flow]:
    f = make_flow(redis_url)
    yield f
    f.disconnect()


@pytest.fixture
def ts(node_modules: Path, redis_url: str, flow: Flow) -> TypeScript:
    return TypeScript(redis_url, flow)


# -- procflow worker functions (module level: the worker processes import them) -------------


def prepare(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "prepared": True,
        "params": job,
        "score2": job["userId"] * 1.5,
        "big": 1e21,
        "small": 1e-7,
        "text": "fertig — ✓",
        "none": None,
    }


def check(job: dict[str, Any]) -> dict[str, Any]:
    return {"checked": {"user": job["userId"], "prepared": job["prepared"]}, "ids": [1, 2.5]}


# -- helpers --------------------------------------------------------------------------------


def encoded(values: dict[str, Any]) -> dict[bytes, bytes]:
    """The hash fields procflow's codec writes for ``values``."""
    out = {}
    for name, value in values.items():
        text = codec.encode(value)
        out[name.encode()] = text if isinstance(text, bytes) else text.encode()
    return out


def lookup_keys(r: redis.Redis, flow: str, job_id: str) -> set[bytes]:
    """Every lookup list of ``flow`` that holds ``job_id``."""
    found = set()
    for key in r.scan_iter(f"job:{flow}:*"):
        if r.type(key) == b"list" and job_id.encode() in r.lrange(key, 0, -1):
            found.add(key)
    return found


def stored(r: redis.Redis, flow: str, job_id: str) -> tuple[dict[bytes, bytes], set[bytes]]:
    """A job's hash (without the TypeScript library's ``correlationId``) and its lookup
    lists, each checked to expire after the default TTL."""
    key = f"job:{flow}:{job_id}"
    fields = r.hgetall(key)
    fields.pop(b"correlationId", None)
    lookups = lookup_keys(r, flow, job_id)
    for k in [key.encode(), *lookups]:
        assert TTL - 10 <= r.ttl(k) <= TTL, k
    return fields, lookups


# -- 1. procflow creates, TypeScript reads and works ----------------------------------------


def test_procflow_job_is_read_leased_and_completed_by_typescript(
    flow: Flow, ts: TypeScript, r: redis.Redis
) -> None:
    job_id = flow.create_job(OPTIONS)
    expected = flow.get_job(job_id)
    assert expected == {"id": job_id, **OPTIONS}

    by_user, by_role, by_name, by_score, by_huge, missing = ts.jobs_by_key(
        ("userId", 62),
        ("roleIds", 2),
        ("name", "joe"),
        ("score", 2.5),
        ("huge", 1e21),
        ("userId", 1),
    )
    assert by_user == by_role == by_name == by_score == by_huge == [expected]
    assert missing == []

    result = {
        "prepared": "by typescript",
        "count": 3,
        "ratio": 1.0,
        "tiny": 1e-7,
        "huge": 1e21,
        "text": "grüße ☃",
        "list": [1, "a", None, True],
        "obj": {"k": [False, {}]},
    }
    out = ts.work("prepare", result)
    assert out["leased"] == [{"id": job_id, "userId": 62, "roleIds": [1, 2]}]
    assert out["completed"] == [{"jobId": job_id, "ok": True}]
    assert out["logged"] == []

    # procflow sees the TypeScript worker's result, byte for byte as procflow writes it
    job = flow.get_job(job_id)
    assert job == {**expected, **result, "completed-queue": "prepare"}
    raw = r.hgetall(f"job:interop:{job_id}")
    written = {k: raw[k] for k in [*encoded(result), b"completed-queue"]}
    assert written == {
        b"prepared": b'"by typescript"',
        b"count": b"3",
        b"ratio": b"1",
        b"tiny": b"1e-7",
        b"huge": b"1e+21",
        b"text": '"grüße ☃"'.encode(),
        b"list": b'[1,"a",null,true]',
        b"obj": b'{"k":[false,{}]}',
        b"completed-queue": b'"prepare"',
    }
    assert written == {**encoded(result), b"completed-queue": b'"prepare"'}
    assert r.lrange("queue:check:waiting", 0, -1) == [job_id.encode()]
    assert r.llen("queue:prepare:waiting") == r.llen("queue:prepare:processing") == 0
    assert r.keys("lock:*") == []


# -- 2. TypeScript creates, procflow reads and works ----------------------------------------


def test_typescript_job_is_read_leased_and_completed_by_procflow_workers(
    flow: Flow, ts: TypeScript, r: redis.Redis
) -> None:
    (job_id,) = ts.create_jobs([OPTIONS])
    created = flow.get_job(job_id)
    assert created == {"id": job_id, **OPTIONS, "correlationId": "x"}
    assert flow.get_jobs_by_key("userId", 62) == [created]
    assert flow.get_jobs_by_key("roleIds", 1) == flow.get_jobs_by_key("roleIds", 2) == [created]
    assert flow.get_jobs_by_key("name", "joe") == [created]
    assert flow.get_jobs_by_key("huge", 1e21) == [created]
    assert r.lrange("queue:prepare:waiting", 0, -1) == [job_id.encode()]

    flow.create_workers("prepare", prepare, block_timeout=1)
    flow.create_workers("check", check, block_timeout=1)
    with flow.start_all() as sup:
        (finished,) = sup.wait([job_id], timeout=20)

    assert finished["done"] is True and "failed" not in finished
    assert finished["completed-queue"] == "check"
    assert finished["params"] == {"id": job_id, "userId": 62, "roleIds": [1, 2]}
    assert finished["checked"] == {"user": 62, "prepared": True}
    prepared = prepare(finished["params"])
    assert {k: finished[k] for k in prepared} == prepared
    assert r.llen("queue:check:waiting") == r.llen("queue:check:processing") == 0
    assert r.keys("lock:*") == []

    # the TypeScript library parses every field procflow wrote (bookkeeping fields too)
    ((seen,),) = ts.jobs_by_key(("userId", 62))
    assert seen == flow.get_job(job_id) == finished


def test_mixed_pipeline_typescript_finishes_what_procflow_started(
    flow: Flow, ts: TypeScript, r: redis.Redis
) -> None:
    """TypeScript creates, a procflow worker does the first stage, a TypeScript worker the
    last one (returning ``done: true``, as the library's own last stages do); procflow's
    ``Supervisor.wait`` takes that job as finished."""
    (job_id,) = ts.create_jobs([OPTIONS])
    flow.create_workers("prepare", prepare, block_timeout=1)
    with flow.start_all() as sup:
        wait_until(
            lambda: r.lrange("queue:check:waiting", 0, -1) == [job_id.encode()],
            timeout=20,
            what="procflow to pass the job on to check",
        )
    params = {"id": job_id, "userId": 62, "roleIds": [1, 2]}

    out = ts.work("check", {"done": True, "verdict": "ok"})
    assert out["leased"] == [
        {"id": job_id, "userId": 62, "prepared": True, "params": params},
    ]
    assert out["completed"] == [{"jobId": job_id, "ok": True}]
    assert out["logged"] == []

    (job,) = sup.wait([job_id], timeout=5)
    assert job["done"] is True and job["verdict"] == "ok"
    assert job["completed-queue"] == "check" and job["params"] == params
    assert r.hget(f"job:interop:{job_id}", "done") == b"true"
    assert r.keys("queue:*") == [] and r.keys("lock:*") == []


# -- 3. the same bytes for the same options -------------------------------------------------

#: options objects both libraries must store identically (each passes to Node as JSON)
SAME_BYTES: dict[str, dict[str, Any]] = {
    "mixed": OPTIONS,
    "numbers": {
        "userId": 2**53,
        "score": -0.0,
        "huge": 1.5e300,
        "floats": [0.1, 1 / 3, 1e16, 1.5e16, 1e-6, 1.5e-7, 5e-324, 1.7976931348623157e308],
        "more": [2.0**63, 1e20, 1.2345e-5, -2.5e-8, 100.0, 0.1 + 0.2, 1e-4, 9.999e15, -1e21],
        "ints": [0, -1, 2**31, 2**53, -(2**53), 10**20],
    },
    "text": {
        "name": '\x00\x1f\n\t\r\b\f"\\/\x7f\u2028\u2029 é ☃ 😀 \U0010ffff',
        "city": "",
        "quote": '"',
        "lone": "\ud800 and \udfff",  # JSON.stringify escapes lone surrogates
    },
    "lookups": {
        "userId": -7,
        "roleIds": [3, "x", True, None, [1, [2, None]], {"k": 1}, 2.5, 1e21, -0.0, ""],
        "name": "Zürich: a/b c",
        "score": 1e-7,
        "huge": 1e21,
        "flag": False,
        "nothing": None,
    },
    "empty": {"roleIds": [], "name": "", "obj": {}, "list": [[], {}]},
    "lookup objects": {"userId": {"a": 1}, "roleIds": [[]], "score": [1.0, 2.0]},
}


def assert_same_bytes(
    r: redis.Redis, flow: Flow, ts: TypeScript, cases: dict[str, dict[str, Any]]
) -> None:
    """Every case created by the TypeScript library, then (on an empty server) by procflow:
    the same hash fields (but ``correlationId``), the same lookup lists, the same order on
    the first queue."""
    ts_ids = ts.create_jobs(list(cases.values()))
    for i in ts_ids:  # the one field only the TypeScript library writes (correlator.getId())
        assert r.hget(f"job:{flow.name}:{i}", "correlationId") == b'"x"'
    by_typescript = {name: stored(r, flow.name, i) for name, i in zip(cases, ts_ids, strict=True)}
    assert r.lrange("queue:prepare:waiting", 0, -1) == [i.encode() for i in ts_ids]

    r.flushall()
    py_ids = [flow.create_job(options) for options in cases.values()]
    by_procflow = {name: stored(r, flow.name, i) for name, i in zip(cases, py_ids, strict=True)}
    assert r.lrange("queue:prepare:waiting", 0, -1) == [i.encode() for i in py_ids]
    # neither the fields nor the lookup list names hold the job id: compare them as they are
    assert by_procflow == by_typescript


def test_same_options_give_the_same_bytes(flow: Flow, ts: TypeScript, r: redis.Redis) -> None:
    assert_same_bytes(r, flow, ts, SAME_BYTES)
    # and what was compared is what the wire format says
    fields, lookups = stored(r, "interop", flow.get_jobs_by_key("userId", 62)[0]["id"])
    assert fields == {
        b"userId": b"62",
        b"name": b'"joe"',
        b"city": '"Zürich — ☃ 😀"'.encode(),
        b"roleIds": b"[1,2]",
        b"score": b"2.5",
        b"ratio": b"1",
        b"tiny": b"1e-7",
        b"huge": b"1e+21",
        b"flag": b"true",
        b"nothing": b"null",
        b"nested": b'{"a":[1,{"b":"c"}],"d":false,"e":{},"f":[]}',
    }
    assert lookups == {
        b"job:interop:userId:62",
        b"job:interop:roleIds:1",
        b"job:interop:roleIds:2",
        b"job:interop:name:joe",
        b"job:interop:score:2.5",
        b"job:interop:huge:1e+21",
    }


# -- where the two libraries disagree (procflow is not changed here; these document it) -----


def test_integer_like_object_keys(flow: Flow, ts: TypeScript, r: redis.Redis) -> None:
    # JavaScript lists array-index keys first, ascending: {"2":3,"10":2,"b":1}
    assert_same_bytes(r, flow, ts, {"keys": {"userId": 1, "obj": {"b": 1, "10": 2, "2": 3}}})


def test_integers_javascript_would_change_are_refused(flow: Flow, r: redis.Redis) -> None:
    # the TypeScript library writes 10**21 as 1e+21 and reads 2**53 + 1 as 2**53; procflow
    # refuses such integers with a clear error and writes nothing
    for options in ({"userId": 10**21}, {"userId": 1, "n": [10**22]}, {"n": 2**53 + 1}):
        with pytest.raises(EncodeError, match="cannot be stored as JavaScript stores numbers"):
            flow.create_job(options)
    assert r.dbsize() == 0


def test_lone_surrogate_in_a_lookup_value(flow: Flow, ts: TypeScript, r: redis.Redis) -> None:
    # node-redis sends a lone surrogate in a key as U+FFFD; procflow does the same
    assert_same_bytes(r, flow, ts, {"surrogate": {"userId": 1, "name": "\ud800x"}})
