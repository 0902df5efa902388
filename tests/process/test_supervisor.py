"""The supervisor with real worker processes and a real server."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import psutil
import pytest
import redis
from loguru import logger

from procflow import (
    Backoff,
    Flow,
    QueueSpec,
    Supervisor,
    SupervisorStateError,
    WaitTimeoutError,
    WorkerStartError,
)
from procflow.worker.status import Activity
from tests.conftest import wait_until
from tests.helpers import lazy_client
from tests.process import apps

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_connect_then_start_and_stop_then_disconnect_order(redis_url: str) -> None:
    flow = apps.with_workers(apps.three_stage_flow(redis_url), count=2)
    sup = flow.start_all()
    pids = sup.worker_pids()
    assert len(pids) == 9
    flow.stop_all()
    events = sup.lifecycle
    workers = {h.name for h in flow.handles}

    def times(what: str) -> list[int]:
        return [e.time_ns for e in events if e.who in workers and e.what == what]

    flow_connected = next(e.time_ns for e in events if e.who == "flow" and e.what == "connected")
    flow_disconnected = next(
        e.time_ns for e in events if e.who == "flow" and e.what == "disconnected"
    )
    assert len(times("connected")) == len(times("started")) == 9
    assert len(times("stopped")) == len(times("disconnected")) == 9
    assert flow_connected < min(times("connected"))
    assert max(times("connected")) < min(times("started"))
    assert max(times("started")) < min(times("stopped"))
    assert max(times("stopped")) < min(times("disconnected"))
    assert max(times("disconnected")) < flow_disconnected
    assert {e.pid for e in events if e.what == "started"} == set(pids)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_thousand_jobs_through_three_stages_with_fan_out(redis_url: str, r: redis.Redis) -> None:
    flow = apps.with_workers(apps.three_stage_flow(redis_url), count=2)
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"n": n} for n in range(1000)])
        jobs = sup.wait(ids, timeout=90)
    assert len(jobs) == 1000
    for n, job in enumerate(jobs):
        assert job["id"] == ids[n]
        assert job["done"] is True
        assert "failed" not in job
        assert job["completed-queue"] == "finish"
        assert job["prepared"] == 2 * n
        assert job["total"] == 2 * n + 2
        assert job["children:fanout:failed"] == []
        assert len(job["children:fanout:jobs"]) == 2
    sample = flow.get_jobs_by_key("n", 7, resolve_children=True)[0]
    alpha, beta = sample["children:fanout:jobs"]
    assert (
        alpha["alphaResult"] == 8
        and alpha["done"] is True
        and alpha["completed-queue"] == "fanout:alpha"
    )
    assert beta["betaResult"] == -8 and beta["done"] is True
    assert all(c == dict.fromkeys(c, 0) for c in flow.counts().values())
    assert r.keys("lock:*") == []


@pytest.mark.filterwarnings("error::DeprecationWarning")  # added workers join start_all's
def test_parent_jobs_do_not_hold_workers_and_resume_fast(redis_url: str, r: redis.Redis) -> None:
    flow = apps.three_stage_flow(redis_url)
    flow.create_workers("prepare", apps.prepare)
    flow.create_parent_workers("fanout", count=1)
    flow.create_workers("finish", apps.finish)
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"n": n} for n in range(20)])
        # one parent worker, no child workers yet: every parent gets parked, none waits in a worker
        wait_until(lambda: r.zcard("queue:fanout:parked") == 20, what="20 parked parents")
        assert r.llen("queue:fanout:processing") == 0
        flow.create_child_workers("fanout", "alpha", apps.alpha)
        flow.create_child_workers("fanout", "beta", apps.beta)
        for handle in flow.handles[-2:]:
            handle.connect()
            handle.start()
        jobs = sup.wait(ids, timeout=30)
    lags = []
    for job in flow.get_jobs(ids, resolve_children=True):
        last_child = max(c["finishedAt"] for c in job["children:fanout:jobs"])
        lags.append(job["finalAt"] - last_child)
    lags.sort()
    assert all(j["done"] for j in jobs)
    assert lags[len(lags) // 2] < 0.1, f"median fan-in lag {lags[len(lags) // 2]:.3f} s"


def test_failing_worker_functions_fail_the_job_and_the_worker_lives_on(redis_url: str) -> None:
    def work(job: dict[str, Any]) -> Any:
        kind = job["kind"]
        if kind == "raise":
            raise ValueError("bad input 42")
        if kind == "list":
            return [1, 2]
        if kind == "none":
            return None
        if kind == "set":
            return {"s": {1, 2}}
        if kind == "route":
            return {"nextQueue": "nowhere"}
        if kind == "exit":
            sys.exit(3)
        if kind == "reserved":
            return {"failed": True}
        return {"pid": os.getpid()}

    flow = Flow("errs", [QueueSpec("w", attributes_to_get=["kind"])], redis_url=redis_url)
    flow.create_workers("w", work, count=1)
    kinds = ["raise", "list", "none", "set", "route", "exit", "reserved", "ok"]
    with flow.start_all() as sup:
        pid = sup.worker_pids()[0]
        ids = flow.create_jobs([{"kind": k} for k in kinds])
        jobs = {j["kind"]: j for j in sup.wait(ids, timeout=30)}
        assert sup.worker_pids() == [pid]
    expected = {
        "raise": "ValueError: bad input 42",
        "list": "worker function returned list, not a mapping of result fields",
        "none": "returned NoneType, not a mapping of result fields (return {} for no result",
        "set": "result field 's': a set is not JSON-encodable",
        "route": "result nextQueue 'nowhere' is not a queue of flow 'errs'",
        "exit": "SystemExit: 3",
        "reserved": "result field 'failed' is procflow's bookkeeping",
    }
    for kind, message in expected.items():
        job = jobs[kind]
        assert job["done"] is True and job["failed"] is True, job
        assert job["failedQueue"] == "w"
        assert message in job["failedErrorMsg"], job["failedErrorMsg"]
        assert job["errors:w"][0]["kind"] in ("exception", "result")
    assert jobs["raise"]["errors:w"][0]["worker"] == "w#0"
    assert jobs["raise"]["errors:w"][0]["pid"] == pid
    assert "traceback" in jobs["raise"]["errors:w"][0]
    assert "ValueError" in jobs["raise"]["errors:w"][0]["traceback"]
    assert jobs["ok"]["pid"] == pid and "failed" not in jobs["ok"]


def test_next_queue_in_the_result_routes_the_job(redis_url: str) -> None:
    flow = Flow(
        "route",
        [QueueSpec("a", attributes_to_get=["to"]), QueueSpec("b"), QueueSpec("c")],
        redis_url=redis_url,
    )
    flow.create_workers("a", lambda j: {"nextQueue": j["to"]})
    flow.create_workers("b", lambda j: {"via": "b"})
    flow.create_workers("c", lambda j: {"via": "c"})
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"to": "b"}, {"to": "c"}])
        jobs = sup.wait(ids, timeout=20)
    assert [(j["via"], j["completed-queue"]) for j in jobs] == [("b", "b"), ("c", "c")]
    assert all("nextQueue" not in j for j in jobs)


def test_closures_travel_with_cloudpickle_under_spawn(redis_url: str) -> None:
    offset = 1000
    scale = {"factor": 3}
    flow = Flow("spawned", [QueueSpec("w", attributes_to_get=["x"])], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"y": j["x"] * scale["factor"] + offset}, count=2)
    with Supervisor(flow, start_method="spawn") as sup:
        ids = flow.create_jobs([{"x": x} for x in range(10)])
        jobs = sup.wait(ids, timeout=60)
    assert [j["y"] for j in jobs] == [x * 3 + 1000 for x in range(10)]


def test_a_worker_that_cannot_connect_fails_start_and_leaves_nothing(
    redis_url: str, r: redis.Redis
) -> None:
    flow = Flow("noconn", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {}, count=3)
    flow.connect()
    clients = len(r.client_list())
    r.config_set("maxclients", clients + 1)  # room for one more connection, not six
    try:
        with pytest.raises(WorkerStartError, match="could not connect"):
            flow.start_all()
        assert flow.supervisor is not None and flow.supervisor.worker_pids() == []
        assert flow.supervisor.state == "stopped"
    finally:
        redis.Redis.from_url(redis_url).config_set("maxclients", 10000)


def test_one_worker_by_hand(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("manual", [QueueSpec("w")], redis_url=redis_url)
    handle, other = flow.create_workers("w", lambda j: {"ok": True}, count=2)
    sup = Supervisor(flow, heartbeat=False)
    handle.connect(supervisor=sup)
    assert handle.state == "connected" and other.state == "new"
    assert handle.supervisor is sup and flow.supervisor is None
    job_id = flow.create_job({"a": 1})
    assert r.llen("queue:w:waiting") == 1  # connected, not started: takes nothing
    assert sup.worker_status(handle).activity is Activity.IDLE
    handle.start()
    wait_until(lambda: (flow.get_job(job_id) or {}).get("done"), what="the job done")
    wait_until(
        lambda: sup.worker_status(handle).activity is Activity.WAITING,
        what="idle worker",
    )
    pid = handle.pid
    assert pid is not None
    handle.stop()
    assert handle.state == "stopped"
    handle.disconnect()
    assert handle.pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    sup.stop()


def test_a_supervisor_adopts_the_flows_workers_and_the_flow_does_not_point_back(
    redis_url: str,
) -> None:
    flow = Flow("adopted", [QueueSpec("w")], redis_url=redis_url)
    handle, other = flow.create_workers("w", lambda j: {"ok": True}, count=2)
    with pytest.raises(SupervisorStateError, match="has no supervisor"):
        handle.start()
    sup = Supervisor(flow, heartbeat=False)
    assert flow.supervisor is None  # built by the user: the flow does not know it
    assert handle.supervisor is sup and other.supervisor is sup
    handle.connect()  # asks the supervisor that adopted it: no warning, no new supervisor
    try:
        assert handle.state == "connected" and flow.supervisor is None
        assert flow.supervised
        with pytest.raises(SupervisorStateError, match="cannot change the Redis"):
            flow.use_redis(redis_url)
        with pytest.raises(SupervisorStateError, match="already has a running supervisor"):
            flow.start_all()
        assert handle.supervisor is sup and flow.supervisor is None
    finally:
        handle.disconnect()  # connected, never started: it ends at once
        sup.stop()
    assert not flow.supervised
    own = flow.start_all(heartbeat=False)  # the flow's own: adopts the workers back
    try:
        assert flow.supervisor is own and handle.supervisor is own
        assert own.running and not sup.running
    finally:
        flow.stop_all()
    assert not own.running and handle.state in ("disconnected", "dead")


def test_connect_without_a_supervisor_still_works_but_is_deprecated(redis_url: str) -> None:
    flow = Flow("oldway", [QueueSpec("w")], redis_url=redis_url)
    (handle,) = flow.create_workers("w", lambda j: {"ok": True}, count=1)
    with pytest.warns(DeprecationWarning, match="has no supervisor"):
        handle.connect()
    try:
        assert flow.supervisor is not None and handle.supervisor is flow.supervisor
        assert handle.state == "connected"
    finally:
        handle.disconnect()  # connected, never started: it ends at once
        flow.stop_all()


def test_workers_started_by_hand_get_their_due_retries(redis_url: str, r: redis.Redis) -> None:
    """The monitor (which promotes due retries) runs however the workers were started."""
    flow = Flow(
        "byhand",
        [QueueSpec("w", max_attempts=2, retry_backoff=Backoff(base=0.2, jitter=0))],
        redis_url=redis_url,
    )
    client = lazy_client(redis_url)

    def flaky(job: dict[str, Any]) -> dict[str, Any]:
        if client().incr("byhand:calls") == 1:
            raise RuntimeError("first attempt fails")
        return {"ok": True}

    (handle,) = flow.create_workers("w", flaky, count=1)
    sup = Supervisor(flow, monitor_interval=0.05)
    try:
        handle.connect()
        handle.start()
        job_id = flow.create_job({"a": 1})
        wait_until(lambda: r.zcard("queue:w:delayed") == 1, what="the retry to be delayed")
        job = wait_until(
            lambda: (flow.get_job(job_id) or {}).get("done") and flow.get_job(job_id),
            timeout=10,
            what="the retry to be promoted and done",
        )
        assert job["ok"] is True and job["attempts:w"] == 2
    finally:
        sup.stop()
        handle.disconnect()


@pytest.mark.usefixtures("no_leaks")
def test_a_worker_killed_while_it_waits_to_start_is_replaced_and_nothing_wedges(
    redis_url: str,
) -> None:
    """Lifecycle commands go on a pipe per process: telling a dead process never waits."""
    flow = Flow("killwait", [QueueSpec("w")], redis_url=redis_url)
    first, second = flow.create_workers("w", lambda j: {"ok": True}, count=2)
    sup = Supervisor(flow)
    try:
        first.connect()
        second.connect()  # both wait for their start command now
        dead = first.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        wait_until(lambda: first.pid not in (None, dead), what="the replacement")
        wait_until(lambda: first.state == "started", what="the replacement to start")
        second.start()
        jobs = sup.wait(flow.create_jobs([{"n": n} for n in range(10)]), timeout=20)
        assert all(j["ok"] for j in jobs)
        old = second.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)  # killed while it waits for jobs
        wait_until(lambda: second.pid not in (None, old), what="the second replacement")
    finally:
        sup.stop()  # returns: no command waits on a dead process


def test_worker_processes_are_named_in_ps(redis_url: str) -> None:
    flow = Flow("titles", [QueueSpec("check")], redis_url=redis_url)
    flow.create_workers("check", lambda j: {}, count=2)
    with flow.start_all() as sup:
        shown = sorted(
            (" ".join(psutil.Process(p).cmdline()).strip(), psutil.Process(p).name())
            for p in sup.worker_pids()
        )
    # setproctitle rewrites the command line where the interpreter lets it (ps, top), and
    # otherwise the process name (ps -o comm, 15 characters)
    for (cmdline, name), want in zip(
        shown,
        ["procflow: worker check#0 [flow titles]", "procflow: worker check#1 [flow titles]"],
        strict=True,
    ):
        assert cmdline == want or name == want[:15], (cmdline, name)


def test_wait_times_out_with_the_pending_ids(redis_url: str) -> None:
    flow = Flow("waits", [QueueSpec("w"), QueueSpec("nobody")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"nextQueue": "nobody"})
    with flow.start_all() as sup:
        ids = flow.create_jobs([{"a": 1}])
        with pytest.raises(WaitTimeoutError) as info:
            sup.wait(ids, timeout=0.5)
        assert info.value.pending == tuple(ids)


def test_worker_logs_reach_the_supervisor_whole(redis_url: str) -> None:
    lines: list[dict[str, Any]] = []
    sink = logger.add(lambda m: lines.append({"text": str(m), **m.record["extra"]}), level="INFO")
    try:

        def chatty(job: dict[str, Any]) -> dict[str, Any]:
            from loguru import logger as lg  # noqa: PLC0415 - the worker process's own logger

            lg.bind(job=job["id"]).info("working on {}", job["n"])
            print("printed " + "x" * 10_000)
            return {}

        flow = Flow("logs", [QueueSpec("w", attributes_to_get=["n"])], redis_url=redis_url)
        flow.create_workers("w", chatty, count=2)
        with flow.start_all() as sup:
            ids = flow.create_jobs([{"n": n} for n in range(20)])
            sup.wait(ids, timeout=30)
    finally:
        logger.remove(sink)
    working = [line for line in lines if "working on" in line["text"]]
    assert len(working) == 20
    for line in working:
        assert line["flow"] == "logs" and line["queue"] == "w"
        assert line["worker"] in ("w#0", "w#1") and line["pid"] > 0 and line["job"] in ids
    printed = [line for line in lines if "printed" in line["text"]]
    assert len(printed) == 20
    assert all(line["text"].rstrip().endswith("x" * 10_000) for line in printed)
    assert all(line["stream"] == "stdout" for line in printed)


def test_a_replacement_forked_as_the_supervisor_stops_is_stopped_too(redis_url: str) -> None:
    """A crashed worker's replacement that is being forked at the moment ``stop`` begins is
    either in the list of workers to stop or never forked: nothing outlives the stop (a
    replacement that did would lease later jobs of any flow sharing the queue names)."""
    flow = Flow("race", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda job: os._exit(7), count=1)
    sup = flow.start_all()
    forking, stopping, listed = threading.Event(), threading.Event(), threading.Event()
    spawn, live = sup.manager.spawn, sup.table.live
    order: list[str] = []

    def listing() -> list[Any]:  # stop() takes its list of workers to stop
        if threading.current_thread() is threading.main_thread() and stopping.is_set():
            listed.set()
        return live()

    def spawn_as_stop_begins(handle: Any, start: bool = False) -> Any:
        forking.set()
        stopping.wait(10)
        # give stop() the chance to list its workers before this fork; it must not take it
        order.append("listed, then forked" if listed.wait(2) else "forked, then listed")
        return spawn(handle, start)

    sup.table.live = listing  # type: ignore[method-assign]
    sup.manager.spawn = spawn_as_stop_begins  # type: ignore[method-assign]
    try:
        flow.create_job({"a": 1})  # its worker dies; the manager forks a replacement
        assert forking.wait(20), "no replacement was forked"
    finally:
        stopping.set()
        sup.stop()
    assert order == ["forked, then listed"]
    assert not sup.manager.alive
    assert sup.worker_pids() == []


def test_a_supervisor_run_again_after_use_redis_sends_its_workers_to_the_new_server(
    redis_url: str, fresh_server: Any
) -> None:
    """The payload a worker is told names the flow's servers as they are at each start, not
    as they were when the supervisor was made or last ran."""
    flow = Flow("moves", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"ok": True}, count=1)
    sup = Supervisor(flow, heartbeat=False)
    with sup:
        first = flow.create_job({"a": 1})
        assert sup.wait([first], timeout=30)[0]["ok"] is True
    flow.use_redis(fresh_server.url)
    with sup:
        second = flow.create_job({"a": 2})
        assert sup.wait([second], timeout=30)[0]["ok"] is True
    assert redis.Redis.from_url(fresh_server.url).exists(flow.job_key(second)) == 1


def test_stop_all_still_stops_a_supervisor_built_by_hand_but_warns(redis_url: str) -> None:
    flow = Flow("byhand", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"ok": True}, count=1)
    sup = Supervisor(flow, heartbeat=False)
    sup.start()
    try:
        assert flow.supervisor is None and flow.supervised
        with pytest.warns(DeprecationWarning, match="stops only the supervisor"):
            flow.stop_all()
        assert not sup.running and sup.worker_pids() == []
    finally:
        sup.stop()
