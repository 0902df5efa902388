"""The chaos suite: jobs counted one by one while processes and servers are killed.

Each case asserts lost = 0 (every id done, or failed for a stated reason), no id in two
places, no process left behind, and reports duplicate executions in the chaos report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from procflow import Backoff, Flow, QueueSpec, Supervisor
from procflow.server import RedisServer
from tests.chaos.harness import Audit, Killer, audit, chaos_flow, timed
from tests.conftest import CHAOS_REPORT, SERVER_KINDS, server_binary, wait_until
from tests.helpers import lazy_client, segfault
from tests.proxy import Proxy

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("no_leaks")]
ROOT = Path(__file__).resolve().parents[2]


def kind_of(server: RedisServer) -> str:
    return "valkey" if "valkey" in server.binary else "redis"


def report(case: str, result: Audit, kills: int, wall: float, server: str = "") -> None:
    CHAOS_REPORT.append(
        {
            "case": case,
            "server": server,
            "jobs": result.jobs,
            "kills": kills,
            "lost": len(result.lost),
            "misplaced": len(result.misplaced),
            "failed": result.failed,
            "duplicates": result.duplicates,
            "wall_s": f"{wall:.1f}",
        }
    )
    assert result.lost == [], result.lost[:10]
    assert result.misplaced == [], result.misplaced[:10]
    assert result.unstated == []


def done_count(flow: Flow, ids: list[str]) -> int:
    return sum(1 for j in flow.get_jobs(ids) if j.get("done"))


def test_a_random_worker_sigkilled_every_200ms(redis_url: str, server: RedisServer) -> None:
    flow = chaos_flow(redis_url)
    clock = timed()
    with Supervisor(flow, monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"n": n} for n in range(3000)])
        with Killer(sup.worker_pids, 0.2) as killer:
            sup.wait(ids, timeout=240)
    result = audit(flow, ids)
    assert result.done == 3000
    assert killer.kills >= 10
    report("a: SIGKILL a worker every 200 ms", result, killer.kills, clock(), kind_of(server))


@pytest.mark.parametrize(
    ("case", "prefetch", "partitions", "jobs"),
    [
        ("g: SIGKILL a worker every 200 ms, prefetch 16", 16, None, 8000),  # fast: more jobs
        ("i: SIGKILL a worker every 200 ms, 3 partitions", 4, 3, 5000),
    ],
    ids=["prefetch-16", "partitioned"],
)
def test_a_random_worker_sigkilled_every_200ms_with_batches_or_partitions(
    redis_url: str,
    server: RedisServer,
    case: str,
    prefetch: int,
    partitions: int | None,
    jobs: int,
) -> None:
    flow = chaos_flow(redis_url, prefetch=prefetch, partitions=partitions)
    clock = timed()
    with Supervisor(flow, monitor_interval=0.5) as sup:
        ids = flow.create_jobs([{"n": n} for n in range(jobs)])
        with Killer(sup.worker_pids, 0.2) as killer:
            sup.wait(ids, timeout=240)
    result = audit(flow, ids)
    assert result.done == jobs
    assert killer.kills >= 10
    report(case, result, killer.kills, clock(), kind_of(server))


def _cli(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procflow.supervisor",
            "tests.chaos.harness:chaos_app",
            "--log-level",
            "WARNING",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "PROCFLOW_REDIS_URL": url, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, killed whole below
    )


def _locks(r: redis.Redis, flow: Flow) -> dict[tuple[str, str], str]:
    """(stage, job id) → lock value, for every job in the flow's processing lists."""
    out = {}
    for stage in flow.stages.values():
        ids = [i.decode() for i in r.lrange(stage.keys.processing, 0, -1)]
        values = r.mget([stage.keys.lock(i) for i in ids]) if ids else []
        for job_id, value in zip(ids, values, strict=True):
            if value is not None:
                out[(stage.name, job_id)] = value.decode()
    return out


def _held_by(r: redis.Redis, flow: Flow, node: str) -> set[tuple[str, str]]:
    """The (stage, job id) pairs locked by ``node``."""
    return {k for k, v in _locks(r, flow).items() if v.startswith(f"{node}|")}


def _moved_on(r: redis.Redis, flow: Flow, held: set[tuple[str, str]], node: str) -> bool:
    """Whether every job ``node`` held has left that stage or is held by another node."""
    locks = _locks(r, flow)
    for stage, job_id in held:
        value = locks.get((stage, job_id))
        if value is None:
            in_stage = r.lpos(flow.stage(stage).keys.processing, job_id) is not None
            if in_stage:
                return False  # still there without a lock: not taken back yet
        elif value.startswith(f"{node}|"):
            return False
    return True


def test_three_nodes_one_killed_one_cut_off_longer_than_its_locks(
    redis_url: str, server: RedisServer
) -> None:
    flow = chaos_flow(redis_url)
    r = redis.Redis.from_url(redis_url)
    ids = flow.create_jobs([{"n": n} for n in range(4000)])
    short = {"CHAOS_LOCK_TIME": "2"}
    clock = timed()
    with Proxy(server.port) as proxy:
        a = _cli(redis_url, "--node-id", "node-a", env=short)
        b = _cli(redis_url, "--node-id", "node-b", env=short)
        c = _cli(proxy.url(), "--node-id", "node-c", env=short)
        try:

            def cut_off_holding() -> set[tuple[str, str]]:
                proxy.pause()  # node c's connections stay open but silent
                held = _held_by(r, flow, "node-c")
                if not held:
                    proxy.resume()  # it held nothing at that moment: try again
                return held

            held_c = wait_until(cut_off_holding, timeout=60, what="node c cut off holding jobs")
            cut = time.monotonic()
            wait_until(lambda: _held_by(r, flow, "node-a"), timeout=60, what="node a at work")
            os.killpg(a.pid, signal.SIGKILL)  # the whole node: supervisor and workers
            a.wait(10)
            killed = time.monotonic()
            held_a = _held_by(r, flow, "node-a")
            wait_until(
                lambda: _moved_on(r, flow, held_a, "node-a"), timeout=60, what="a's jobs rerun"
            )
            a_recovered = time.monotonic() - killed
            wait_until(
                lambda: _moved_on(r, flow, held_c, "node-c"), timeout=60, what="c's jobs taken"
            )
            c_taken = time.monotonic() - cut
            wait_until(lambda: time.monotonic() - cut > 5, timeout=10, what="the partition")
            proxy.resume()  # c comes back: its stale leases must not complete
            wait_until(lambda: done_count(flow, ids) == 4000, timeout=180, what="every job done")
        finally:
            for proc in (a, b, c):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in (a, b, c):
                proc.wait(60)
    result = audit(flow, ids)
    r.close()
    assert result.done == 4000
    print(
        f"\nnode a's {len(held_a)} jobs running elsewhere {a_recovered:.1f} s after the kill; "
        f"node c's {len(held_c)} taken over {c_taken:.1f} s after the cut"
    )
    report("h: 3 nodes, one SIGKILLed, one cut off 5 s", result, 2, clock(), kind_of(server))


def test_the_whole_supervisor_sigkilled_then_restarted(redis_url: str, server: RedisServer) -> None:
    flow = chaos_flow(redis_url)
    ids = flow.create_jobs([{"n": n} for n in range(1500)])
    clock = timed()
    first = _cli(redis_url)
    try:
        wait_until(lambda: done_count(flow, ids) >= 300, timeout=60, what="a fifth done")
        workers = [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        # the workers die with their supervisor (PR_SET_PDEATHSIG), leaving their jobs locked
        wait_until(
            lambda: (
                not [
                    p
                    for p in workers
                    if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                ]
            ),
            timeout=10,
            what="the orphaned workers to die",
        )
        restarted = time.monotonic()
        second = _cli(redis_url)
        try:
            wait_until(
                lambda: done_count(flow, ids) == 1500,
                timeout=120,
                interval=0.2,
                what="everything done after the restart",
            )
            finished_after = time.monotonic() - restarted
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    result = audit(flow, ids)
    # reclaimed at once: well before the 30 s locks of the dead supervisor expire
    assert finished_after < 25, finished_after
    report(
        "b: SIGKILL the supervisor's group, restart",
        result,
        1 + len(workers),
        clock(),
        kind_of(server),
    )


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_redis_with_aof_sigkilled_and_restarted_twice(kind: str) -> None:
    with RedisServer(server_binary(kind), appendonly=True, appendfsync="always") as server:
        flow = chaos_flow(server.url)
        ids = flow.create_jobs([{"n": n} for n in range(1000)])
        clock = timed()
        restarts = 0
        with Supervisor(flow, monitor_interval=0.5) as sup:

            def crash_redis() -> None:
                nonlocal restarts
                for fraction in (0.3, 0.6):
                    wait_until(
                        lambda f=fraction: _finished(server.url) >= f * len(ids),
                        timeout=120,
                        interval=0.01,
                        what=f"{fraction:.0%} done",
                    )
                    server.kill()
                    time.sleep(0.3)  # the server stays down a moment
                    server.start()
                    restarts += 1

            chaos = threading.Thread(target=crash_redis)
            chaos.start()
            sup.wait(ids, timeout=240)
            chaos.join(60)
        result = audit(flow, ids)
    assert restarts == 2
    report("c: Redis with AOF SIGKILLed twice", result, restarts, clock(), kind)


def _finished(url: str) -> int:
    """How many jobs ran their last stage (cheap: one HLEN)."""
    try:
        return int(redis.Redis.from_url(url).hlen("exec:finish"))
    except redis.RedisError:
        return 0


def test_hangs_segfaults_and_memory_hogs(redis_url: str, server: RedisServer) -> None:
    def work(job: dict[str, Any]) -> dict[str, Any]:
        kind = job["kind"]
        if kind == "hang":
            time.sleep(600)
        elif kind == "segv":
            segfault()
        elif kind == "hog":
            hoard = [bytearray(25 * 2**20) for _ in range(400)]  # 10 GB if nobody stops it
            return {"n": len(hoard)}
        return {"ok": True}

    flow = Flow(
        "limits",
        [
            QueueSpec(
                "w",
                attributes_to_get=["kind"],
                timeout=2.0,  # well above a hog's time to 400 MiB on a loaded machine
                memory_limit="400MiB",
                max_attempts=2,
                retry_backoff=Backoff(base=0.05),
            )
        ],
        redis_url=redis_url,
    )
    flow.create_workers("w", work, count=2)
    kinds = ["ok"] * 200 + ["hang", "segv", "hog"] * 2
    clock = timed()
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"kind": k} for k in kinds])
        jobs = sup.wait(ids, timeout=120)
    result = audit(flow, ids)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_kind.setdefault(job["kind"], []).append(job)
    assert all(j["done"] and "failed" not in j for j in by_kind["ok"])
    for kind, words, record_kind in (
        ("hang", "time limit", "timeout"),
        ("segv", "SIGSEGV", "crash"),
        ("hog", "memory limit", "memory"),
    ):
        for job in by_kind[kind]:
            assert job["failed"] is True and words in job["failedErrorMsg"], job
            assert [e["kind"] for e in job["errors:w"]] == [record_kind] * 2
    report("d: hangs, segfaults, memory hogs", result, 12, clock(), kind_of(server))


def test_a_parent_moves_on_when_its_childs_worker_is_killed(
    redis_url: str, server: RedisServer
) -> None:
    get = lazy_client(redis_url)
    r = redis.Redis.from_url(redis_url)

    def child(queue: str) -> Any:
        def run(job: dict[str, Any]) -> dict[str, Any]:
            get().rpush(f"running:{queue}", f"{os.getpid()}:{job['id']}")
            time.sleep(0.3)  # the child's work; one worker of each queue is killed meanwhile
            return {"v": job["v"]}

        return run

    flow = Flow(
        "parents",
        [
            QueueSpec(
                "p",
                next_queue="after",
                children=[
                    QueueSpec(
                        "kid",
                        attributes_to_get=["v"],
                        max_attempts=2,
                        retry_backoff=Backoff(base=0.05),
                    ),
                    QueueSpec("once", attributes_to_get=["v"], max_attempts=1),
                ],
            ),
            QueueSpec("after"),
        ],
        redis_url=redis_url,
    )
    flow.create_parent_workers("p")
    flow.create_child_workers("p", "kid", child("kid"), count=2)
    flow.create_child_workers("p", "once", child("once"), count=1)
    flow.create_workers("after", lambda j: {"moved": True})
    params = [{"childName": "kid", "v": 1}, {"childName": "once", "v": 2}]
    clock = timed()
    victims = {}
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"children:p:params": params} for _ in range(10)])
        for queue in ("kid", "once"):
            entry = wait_until(lambda q=queue: r.lpop(f"running:{q}"), timeout=30, what=queue)
            pid, child_id = entry.decode().split(":")
            os.kill(int(pid), signal.SIGKILL)
            victims[queue] = child_id
        jobs = sup.wait(ids, timeout=60)
    result = audit(flow, ids)
    once_key = f"job:p:once:{victims['once']}"
    once = r.hgetall(once_key)  # one attempt only: failed
    assert once[b"failed"] == b"true" and b"SIGKILL" in once[b"failedErrorMsg"]
    # its parent fails (on_child_failure's default), naming the child; the others go on
    [parent] = [j for j in jobs if j.get("failed")]
    assert parent["id"] == json.loads(once[b"parentJob"]).split(":")[-1]
    assert parent["failedQueue"] == "p" and parent["children:p:failed"] == [once_key]
    assert parent["failedErrorMsg"].startswith(f"1 of 2 child jobs failed: {once_key}: ")
    assert "SIGKILL" in parent["failedErrorMsg"] and "moved" not in parent
    others = [j for j in jobs if j is not parent]
    assert all(j["moved"] is True and j["completed-queue"] == "after" for j in others)
    assert all(j["children:p:failed"] == [] for j in others)
    kid = r.hgetall(f"job:p:kid:{victims['kid']}")
    assert kid[b"done"] == b"true" and b"failed" not in kid and kid[b"attempts:p:kid"] == b"2"
    report("e: child workers killed under parents", result, 2, clock(), kind_of(server))


def test_sigterm_mid_run_loses_nothing(redis_url: str, server: RedisServer) -> None:
    flow = chaos_flow(redis_url)
    ids = flow.create_jobs([{"n": n} for n in range(1000)])
    clock = timed()
    proc = _cli(redis_url)
    try:
        wait_until(lambda: done_count(flow, ids) >= 200, timeout=60, what="a fifth done")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = audit(flow, ids)
    # after a graceful stop nothing is in processing: every job is done or waiting somewhere
    assert not [m for m in stopped.misplaced if "processing" in m]
    assert not redis.Redis.from_url(redis_url).keys("lock:*")
    with Supervisor(chaos_flow(redis_url)) as sup:  # a new run finishes the rest
        sup.wait(ids, timeout=120)
    result = audit(flow, ids)
    assert result.done == 1000
    report("f: SIGTERM mid-run, then restart", result, 0, clock(), kind_of(server))
