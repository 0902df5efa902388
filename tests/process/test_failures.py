"""Crashes, hangs, limits, retries, dead holders, outages: one mechanism per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
import redis
from loguru import logger

from procflow import Backoff, Flow, QueueSpec, Supervisor
from procflow.failures import FailureRecord, RetryPolicy
from procflow.server import RedisServer
from procflow.supervisor.monitor import FlowMonitor
from tests.conftest import SERVER_KINDS, wait_until
from tests.helpers import lazy_client, segfault

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_a_sigkilled_workers_job_is_retried_within_a_second(redis_url: str, r: redis.Redis) -> None:
    get = lazy_client(redis_url)

    def work(job: dict[str, Any]) -> dict[str, Any]:
        c = get()
        if c.incr(f"runs:{job['id']}") == 1:
            c.set("victim", os.getpid())
            time.sleep(60)  # the test kills us here
        return {"pid": os.getpid()}

    backoff = Backoff(base=0.2, jitter=0)
    flow = Flow(
        "kill", [QueueSpec("w", max_attempts=2, retry_backoff=backoff)], redis_url=redis_url
    )
    flow.create_workers("w", work, count=1)
    with flow.start_all() as sup:
        job_id = flow.create_job({"a": 1})
        victim = int(wait_until(lambda: r.get("victim"), what="the job to start"))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: r.zscore("queue:w:delayed", job_id), timeout=5, what="the retry scheduled"
        )
        recovered_after = time.monotonic() - killed_at
        wait_until(lambda: r.get(f"runs:{job_id}") == b"2", timeout=5, what="the retry")
        rerun_after = time.monotonic() - killed_at
        job = sup.wait([job_id], timeout=10)[0]
        assert sup.worker_pids() and victim not in sup.worker_pids()
    assert recovered_after < 1.0, recovered_after
    assert rerun_after < 1.0 + 0.2, rerun_after
    assert job["done"] is True and "failed" not in job and job["pid"] != victim
    (record,) = job["errors:w"]
    assert record["kind"] == "crash"
    assert record["signal"] == "SIGKILL" and record["exitCode"] == -9
    assert "killed by SIGKILL" in record["error"]
    assert job["attempts:w"] == 2


def test_a_job_that_segfaults_every_time_is_quarantined(redis_url: str, r: redis.Redis) -> None:
    def crash(job: dict[str, Any]) -> dict[str, Any]:
        segfault()
        return {}

    flow = Flow(
        "poison",
        [QueueSpec("w", max_attempts=3, retry_backoff=Backoff(base=0))],
        redis_url=redis_url,
    )
    flow.create_workers("w", crash, count=1)
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING")
    logger.enable("procflow")
    try:
        with flow.start_all() as sup:
            job_id = flow.create_job({"a": 1})
            job = sup.wait([job_id], timeout=30)[0]
    finally:
        logger.remove(sink)
        logger.disable("procflow")
    assert any("crashed 2 times in a row; restarting it in 0.25 s" in line for line in lines)
    assert job["failed"] is True and job["failedQueue"] == "w"
    assert "SIGSEGV" in job["failedErrorMsg"]
    assert [e["signal"] for e in job["errors:w"]] == ["SIGSEGV"] * 3
    assert job["attempts:w"] == 3
    assert flow.failed_jobs("w") == [job_id]


def test_exit_code_is_recorded(redis_url: str) -> None:
    flow = Flow("exits", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: os._exit(7), count=1)
    with flow.start_all() as sup:
        job = sup.wait([flow.create_job({"a": 1})], timeout=20)[0]
    assert job["failed"] is True
    assert "exit code 7" in job["failedErrorMsg"]
    assert job["errors:w"][0]["exitCode"] == 7 and job["errors:w"][0]["signal"] is None


def test_a_long_job_keeps_its_short_lease(redis_url: str, r: redis.Redis) -> None:
    get = lazy_client(redis_url)

    def long_job(job: dict[str, Any]) -> dict[str, Any]:
        get().incr("long:runs")
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:  # busy CPU, three and a half lock lifetimes
            pass
        return {"ok": True}

    flow = Flow("lease", [QueueSpec("w", max_attempts=5)], redis_url=redis_url)
    flow.create_workers("w", long_job, count=2, lock_time=1)
    with flow.start_all() as sup:
        job = sup.wait([flow.create_job({"a": 1})], timeout=30)[0]
    assert job["done"] is True and "errors:w" not in job
    assert job["attempts:w"] == 1
    assert r.get("long:runs") == b"1"


def test_a_hung_job_is_killed_at_its_timeout_with_its_children(
    redis_url: str, r: redis.Redis
) -> None:
    get = lazy_client(redis_url)

    def hang(job: dict[str, Any]) -> dict[str, Any]:
        child = subprocess.Popen(["sleep", "300"])
        get().rpush("hang:children", child.pid)
        time.sleep(300)
        return {}

    flow = Flow(
        "hang",
        [QueueSpec("w", timeout=1.0, max_attempts=2, retry_backoff=Backoff(base=0))],
        redis_url=redis_url,
    )
    flow.create_workers("w", hang, count=1)
    with flow.start_all() as sup:
        started = time.monotonic()
        job = sup.wait([flow.create_job({"a": 1})], timeout=30)[0]
        took = time.monotonic() - started
    assert job["failed"] is True
    assert "ran longer than its 1 s time limit" in job["failedErrorMsg"]
    assert [e["kind"] for e in job["errors:w"]] == ["timeout", "timeout"]
    assert 2.0 <= took < 6.0
    for pid in r.lrange("hang:children", 0, -1):
        assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == "zombie"


def test_a_job_past_its_memory_limit_is_killed(redis_url: str) -> None:
    def hog(job: dict[str, Any]) -> dict[str, Any]:
        hoard = []
        for _ in range(200):  # up to 4 GB, 20 MB at a time
            hoard.append(bytearray(20 * 2**20))
            time.sleep(0.005)
        return {"survived": len(hoard)}

    flow = Flow("mem", [QueueSpec("w", memory_limit="300MiB")], redis_url=redis_url)
    flow.create_workers("w", hog, count=1)
    with flow.start_all() as sup:
        job = sup.wait([flow.create_job({"a": 1})], timeout=30)[0]
    assert job["failed"] is True, job
    assert "over the queue's memory limit of 300 MiB" in job["failedErrorMsg"]
    assert job["errors:w"][0]["kind"] == "memory"


def test_workers_are_recycled_after_max_jobs(redis_url: str) -> None:
    flow = Flow("recycle", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"pid": os.getpid()}, count=1, max_jobs_per_child=3)
    with flow.start_all() as sup:
        jobs = sup.wait(flow.create_jobs([{"n": n} for n in range(9)]), timeout=30)
    pids = [j["pid"] for j in jobs]
    assert len(set(pids)) == 3
    assert all(pids.count(p) == 3 for p in set(pids))
    assert all(j["done"] and "failed" not in j for j in jobs)


def test_workers_are_recycled_after_max_age(redis_url: str) -> None:
    flow = Flow("aged", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: time.sleep(0.1) or {"pid": os.getpid()}, max_age=0.35)
    with flow.start_all() as sup:
        jobs = sup.wait(flow.create_jobs([{"n": n} for n in range(12)]), timeout=30)
    pids = [j["pid"] for j in jobs]
    assert len(set(pids)) >= 3  # ~1.2 s of work, a new process every ~0.4 s
    assert all(j["done"] and "failed" not in j for j in jobs)


def test_the_monitor_waits_a_grace_period_before_recovering(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("grace", [QueueSpec("w")], redis_url=redis_url)
    job_id = flow.create_job({"a": 1})
    with flow.store.session(flow.stage("w").keys) as s:  # BLMOVE done, not claimed: no lock
        assert s.wait_for_job(1) == job_id
    monitor = FlowMonitor(flow, "node-m", interval=0.05, grace=0.5)
    monitor.tick()
    assert r.lrange("queue:w:processing", 0, -1) == [job_id.encode()]  # not taken for an orphan
    wait_until(
        lambda: monitor.tick() is not None and r.llen("queue:w:waiting") == 1,
        timeout=5,
        interval=0.05,
        what="recovery after the grace period",
    )
    job = flow.get_job(job_id)
    assert job is not None and "errors:w" not in job  # never claimed: put back, uncounted


def test_failures_retry_with_backoff_through_the_delayed_set(
    redis_url: str, r: redis.Redis
) -> None:
    get = lazy_client(redis_url)

    def flaky(job: dict[str, Any]) -> dict[str, Any]:
        if get().incr(f"tries:{job['id']}") < 3:
            raise RuntimeError("not yet")
        return {"ok": True}

    flow = Flow(
        "retry",
        [QueueSpec("w", max_attempts=3, retry_backoff=Backoff(base=0.3, jitter=0))],
        redis_url=redis_url,
    )
    flow.create_workers("w", flaky, count=1)
    with flow.start_all() as sup:
        job_id = flow.create_job({"a": 1})
        wait_until(lambda: r.zscore("queue:w:delayed", job_id), what="the retry to be delayed")
        assert r.llen("queue:w:processing") == 0  # a waiting retry holds no worker
        started = time.monotonic()
        job = sup.wait([job_id], timeout=20)[0]
        took = time.monotonic() - started
    assert job["done"] is True and job["ok"] is True
    assert [e["error"] for e in job["errors:w"]] == ["RuntimeError: not yet"] * 2
    assert job["attempts:w"] == 3
    assert took >= 0.5  # the second retry waited its 0.6 s (the first 0.3 s partly before)


def test_drain_deadline_kills_and_puts_jobs_back_uncounted(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("drain", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: time.sleep(60) or {}, count=2)
    sup = Supervisor(flow, drain_timeout=0.5)
    sup.start()
    ids = flow.create_jobs([{"n": n} for n in range(3)])
    wait_until(lambda: r.llen("queue:w:processing") == 2, what="two jobs running")
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 10
    assert r.llen("queue:w:processing") == 0
    assert sorted(i.decode() for i in r.lrange("queue:w:waiting", 0, -1)) == sorted(ids)
    for job in flow.get_jobs(ids):
        assert "failed" not in job and job.get("attempts:w", 0) == 0


@pytest.mark.parametrize("fresh_server", ["redis", "valkey"], indirect=True)
def test_workers_survive_a_redis_restart_and_consume_again(fresh_server: RedisServer) -> None:
    flow = Flow("outage", [QueueSpec("w")], redis_url=fresh_server.url)
    flow.create_workers("w", lambda j: {"pid": os.getpid()}, count=2, block_timeout=1)
    with flow.start_all() as sup:
        before = sup.wait(flow.create_jobs([{"n": 1}]), timeout=10)
        pids = sup.worker_pids()
        fresh_server.kill()
        time.sleep(0.5)  # Redis stays down for a while (the outage itself)
        fresh_server.start()
        after = sup.wait(flow.create_jobs([{"n": n} for n in range(20)]), timeout=30)
        assert sorted(sup.worker_pids()) == sorted(pids)  # the same processes, not respawned
    assert before[0]["done"] is True
    assert all(j["done"] for j in after)


@pytest.mark.parametrize("fresh_server", SERVER_KINDS, indirect=True)
def test_after_a_redis_restart_each_worker_reconnects_once_and_says_so_once(
    fresh_server: RedisServer,
) -> None:
    records: list[dict[str, Any]] = []
    logger.enable("procflow")
    handler = logger.add(lambda m: records.append(m.record), level="INFO")
    try:
        flow = Flow("once", [QueueSpec("w")], redis_url=fresh_server.url)
        flow.create_workers("w", lambda j: {"ok": True}, count=2, block_timeout=1)
        with flow.start_all() as sup:
            sup.wait(flow.create_jobs([{"n": 1}]), timeout=10)
            fresh_server.kill()
            fresh_server.start()
            sup.wait(flow.create_jobs([{"n": n} for n in range(20)]), timeout=30)
    finally:
        logger.remove(handler)
        logger.disable("procflow")
    for worker in ("w#0", "w#1"):
        said = [str(r["message"]) for r in records if r["extra"].get("worker") == worker]
        down = [m for m in said if "is unavailable" in m]
        back = [m for m in said if "reachable again" in m]
        assert len(down) == len(back) == 1, said


def test_one_monitor_leads_and_another_takes_over(redis_url: str) -> None:
    flow = Flow("lead", [QueueSpec("w")], redis_url=redis_url)
    first = FlowMonitor(flow, "node-a", interval=0.1, leader_ttl=0.5)
    second = FlowMonitor(flow, "node-b", interval=0.1, leader_ttl=0.5)
    first.start()
    wait_until(lambda: first.is_leader, what="a leader")
    second.start()
    second.tick()  # one round of its own, now: the lock is taken
    assert first.is_leader and not second.is_leader
    first.stop(release=False)  # dies holding the lock
    started = time.monotonic()
    wait_until(lambda: second.is_leader, timeout=5, what="the takeover")
    assert time.monotonic() - started < 2.0
    second.stop()


def test_a_dead_nodes_job_is_recovered_after_its_lock_expires_without_using_an_attempt(
    redis_url: str, r: redis.Redis
) -> None:
    # one attempt allowed (the default): the node's death is not the job's failure
    flow = Flow("dead", [QueueSpec("w")], redis_url=redis_url)
    stage = flow.stage("w")
    job_id = flow.create_job({"a": 1})
    with flow.store.session(stage.keys, lock_ms=1000) as s:  # leased, then the node vanished
        assert s.lease("othernode|1|1.00|2|1") is not None
    flow.create_workers("w", lambda j: {"by": os.getpid()}, count=1)
    with Supervisor(flow, monitor_interval=0.2) as sup:
        job = sup.wait([job_id], timeout=15)[0]
    assert job["done"] is True and "failed" not in job, job
    assert job["errors:w"][0]["kind"] == "lock-expired"
    assert job["attempts:w"] == 1  # the lost lease gave its attempt back
    assert job["stalls:w"] == 1


def test_a_job_that_keeps_losing_its_node_fails_after_max_stalls(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("stally", [QueueSpec("w", max_stalls=1)], redis_url=redis_url)
    stage = flow.stage("w")
    job_id = flow.create_job({"a": 1})
    record = FailureRecord.lock_expired("w")
    outcomes = []
    for n in range(2):  # leased by a node that vanished, found by the monitor, twice
        with flow.store.session(stage.keys, lock_ms=60_000) as s:
            assert s.lease(f"gone|1|1.00|2|{n}") is not None
            r.delete(f"lock:w:{job_id}")
            outcomes.append(s.fail(job_id, "", record, stage.retry_policy(), "orphan").outcome)
    assert outcomes == ["stalled", "failed"]
    job = flow.get_job(job_id)
    assert job is not None and job["failed"] is True and job["stalls:w"] == 2
    assert [e["kind"] for e in job["errors:w"]] == ["lock-expired", "lock-expired"]


def test_a_restarted_supervisor_reclaims_its_nodes_jobs_at_once(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("reclaim", [QueueSpec("w", max_attempts=2)], redis_url=redis_url)
    stage = flow.stage("w")
    job_id = flow.create_job({"a": 1})
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = f"mynode|{dead.pid}|{time.time():.2f}|{dead.pid}|1"
    with flow.store.session(stage.keys, lock_ms=600_000) as s:
        assert s.lease(holder) is not None
    flow.create_workers("w", lambda j: {"ok": True}, count=1)
    with Supervisor(flow, node_id="mynode") as sup:
        job = sup.wait([job_id], timeout=10)[0]  # well before the 600 s lock expires
    assert job["done"] is True and "failed" not in job, job
    assert job["errors:w"][0]["kind"] == "supervisor"
    assert (job["attempts:w"], job["stalls:w"]) == (1, 1)  # its supervisor's death was free


def test_failed_jobs_cli_lists_and_retries(redis_url: str, r: redis.Redis) -> None:
    env = {**os.environ, "PROCFLOW_REDIS_URL": redis_url}
    flow = Flow("cli", [QueueSpec("work", attributes_to_get=["sleep"])], redis_url=redis_url)
    job_id = flow.create_job({"sleep": 0})
    with flow.store.session(flow.stage("work").keys, lock_ms=10_000) as s:
        assert s.lease("T") is not None
        s.fail(job_id, "T", FailureRecord("x", "test", "broken"), RetryPolicy(1))
    run = [sys.executable, "-m", "procflow", "failed", "tests.process.apps:cli_flow", "work"]
    listed = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert f"{job_id}  broken" in listed
    retried = subprocess.run([*run, "--retry"], env=env, capture_output=True, text=True, check=True)
    assert "put 1 job(s) back" in retried.stdout
    assert r.lrange("queue:work:waiting", 0, -1) == [job_id.encode()]


def test_a_parent_is_resumed_when_its_children_were_finished_elsewhere(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow(
        "safety",
        [QueueSpec("p", children=[QueueSpec("c")], next_queue="after"), QueueSpec("after")],
        redis_url=redis_url,
    )
    flow.create_parent_workers("p")
    flow.create_workers("after", lambda j: {"after": True})
    params = [{"childName": "c", "v": 1}]
    monitor = FlowMonitor(flow, "node-x", interval=0.1, parked_check=0.3)
    with Supervisor(flow, monitor=False) as sup:
        job_id = flow.create_job({"children:p:params": params})
        wait_until(lambda: r.zscore("queue:p:parked", job_id), what="the parent parked")
        (child_key,) = flow.get_job(job_id)["children:p:jobs"]
        # another library finishes the child without telling the parent (the TypeScript
        # monitor writes done as the JSON string "true")
        r.hset(child_key, "done", '"true"')
        r.lrem("queue:p:c:waiting", 0, child_key.rsplit(":", 1)[1])
        monitor.start()
        try:
            job = sup.wait([job_id], timeout=10)[0]
        finally:
            monitor.stop()
    assert job["after"] is True and job["children:p:failed"] == []


def daemon_then_crash(url: str) -> Any:
    """A job that starts processes outside its worker's process group — one in a session of
    its own, one double-forked by a shell — notes their pids, then kills its worker."""
    client = lazy_client(url)

    def job(j: dict[str, Any]) -> dict[str, Any]:
        own = subprocess.Popen(["sleep", "600"], start_new_session=True)
        shell = subprocess.run(
            ["sh", "-c", "setsid sleep 601 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        client().rpush("daemons", own.pid, int(shell.stdout))
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    return job


@pytest.mark.usefixtures("no_leaks")
def test_processes_a_crashed_job_left_in_their_own_session_are_killed(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("daemons", [QueueSpec("w", max_attempts=1)], redis_url=redis_url)
    flow.create_workers("w", daemon_then_crash(redis_url), count=1)
    with Supervisor(flow) as sup:
        (job,) = sup.wait([flow.create_job({"a": 1})], timeout=30)
        assert job["failed"] is True
        pids = [int(p) for p in r.lrange("daemons", 0, -1)]
        assert len(pids) == 2

        def gone() -> bool:
            return not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                for p in pids
            )

        wait_until(gone, timeout=10, what="the job's daemons to be killed")
    assert not any(psutil.pid_exists(p) for p in pids)  # and reaped, not left as zombies


def test_a_crash_with_a_prefetched_batch_counts_only_the_running_job(
    redis_url: str, r: redis.Redis
) -> None:
    get = lazy_client(redis_url)

    def work(job: dict[str, Any]) -> dict[str, Any]:
        c = get()
        c.rpush("order", job["n"])
        if job["n"] == 0 and c.incr("first-runs") == 1:
            c.set("victim", os.getpid())
            time.sleep(60)  # the test kills us here, with seven more jobs prefetched
        return {"pid": os.getpid()}

    flow = Flow(
        "batch",
        [QueueSpec("w", attributes_to_get=["n"], max_attempts=2, prefetch=8)],
        redis_url=redis_url,
    )
    flow.create_workers("w", work, count=1)
    ids = flow.create_jobs([{"n": n} for n in range(8)])  # waiting before the worker starts
    with flow.start_all() as sup:
        victim = int(wait_until(lambda: r.get("victim"), what="the first job to start"))
        assert r.llen("queue:w:processing") == 8 and r.llen("queue:w:waiting") == 0
        held = [r.get(f"lock:w:{i}").decode() for i in ids]
        assert len(set(held)) == 8  # each job its own lease token …
        assert [int(t.rsplit("|", 1)[1]) for t in held] == list(range(1, 9))  # … in sequence
        os.kill(victim, signal.SIGKILL)
        jobs = sup.wait(ids, timeout=30)
    assert all(j["done"] is True and "failed" not in j for j in jobs)
    (crash,) = jobs[0]["errors:w"]
    assert crash["kind"] == "crash" and crash["signal"] == "SIGKILL"
    assert jobs[0]["attempts:w"] == 2
    for job in jobs[1:]:  # given back uncounted: each ran once, on its first attempt
        assert job["attempts:w"] == 1 and "errors:w" not in job
        assert job["pid"] != victim
    ran = [int(n) for n in r.lrange("order", 0, -1)]
    assert sorted(ran) == [0, *range(8)]  # nothing ran twice but the crashed one
