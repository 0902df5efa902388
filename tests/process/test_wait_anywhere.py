"""Waiting for jobs from any process, and progress reported from inside a job."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import redis

import procflow
from procflow import Flow, JobFailedError, QueueSpec, Supervisor
from procflow.client.waiting import _show
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leaks")

WAITER = textwrap.dedent(
    """
    import json, sys
    from procflow import Flow, QueueSpec
    flow = Flow("anywhere", [QueueSpec("w", attributes_to_get=["n"])], redis_url=sys.argv[1])
    jobs = flow.wait(sys.argv[2:], timeout=60)
    print(json.dumps([[j["id"], j["n"], j.get("twice")] for j in jobs]))
    """
)


def stepper(job: dict[str, Any]) -> dict[str, Any]:
    for step in range(4):
        procflow.progress(step / 4, f"step {step}")
        time.sleep(0.25)  # the job's own work, spread over a second
    procflow.progress(1.0, "finished")
    return {"twice": 2 * job["n"]}


def test_a_process_that_runs_no_workers_waits_for_jobs(redis_url: str) -> None:
    flow = Flow("anywhere", [QueueSpec("w", attributes_to_get=["n"])], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"twice": 2 * j["n"]}, count=2)
    ids = flow.create_jobs([{"n": n} for n in range(20)])
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAITER, redis_url, *ids], stdout=subprocess.PIPE, text=True
    )
    try:
        with Supervisor(flow):
            out, _ = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0
    assert json.loads(out) == [[i, n, 2 * n] for n, i in enumerate(ids)]


def test_progress_is_stored_announced_and_last_report_kept(redis_url: str, r: redis.Redis) -> None:
    flow = Flow("steps", [QueueSpec("w", attributes_to_get=["n"])], redis_url=redis_url)
    flow.create_workers("w", stepper, count=1)
    heard: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("procflow:steps:progress")
        subscribed.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(h["message"] == "finished" for h in heard):
            message = pubsub.get_message(timeout=0.5)
            if message:
                heard.append(json.loads(message["data"]))
        pubsub.close()
        client.close()

    listener = threading.Thread(target=listen)
    listener.start()
    subscribed.wait(5)
    with Supervisor(flow) as sup:
        job_id = flow.create_job({"n": 3})
        wait_until(
            lambda: r.hget(f"job:steps:{job_id}", "progress:w") is not None,
            what="progress written while the job runs",
        )
        assert flow.get_job(job_id).get("done") is None  # still running
        (job,) = sup.wait([job_id], timeout=30)
    listener.join(35)
    assert job["twice"] == 6
    assert job["progress:w"]["fraction"] == 1.0 and job["progress:w"]["message"] == "finished"
    assert [h["message"] for h in heard][:2] == ["step 0", "step 1"]
    assert all(h["id"] == job_id and h["queue"] == "w" for h in heard)


def test_wait_can_raise_for_failed_jobs(redis_url: str) -> None:
    flow = Flow("fails", [QueueSpec("w", attributes_to_get=["n"])], redis_url=redis_url)
    flow.create_workers("w", lambda j: {"r": 1 / j["n"]}, count=1)
    with Supervisor(flow):
        ids = flow.create_jobs([{"n": 1}, {"n": 0}])
        jobs = flow.wait(ids, timeout=30)
        assert [j.get("failed", False) for j in jobs] == [False, True]
        with pytest.raises(JobFailedError, match=r"1 job\(s\) failed.*division by zero") as info:
            flow.wait(ids, timeout=30, raise_on_failure=True)
    assert [j["id"] for j in info.value.failed] == [ids[1]]
    assert len(info.value.jobs) == 2


def test_the_progress_line_shows_the_running_jobs_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _show(3, 10, 2.0, {"a": 0.5, "b": 0.25, "done-one": 1.0}, {"a", "b"})
    line = capsys.readouterr().err
    assert "3/10 jobs done" in line and "2 reporting progress, 38% on average" in line


def reports_then_returns(job: dict[str, Any]) -> dict[str, Any]:
    procflow.progress(0.5, "half way")
    return {"first": True}


def test_the_progress_line_counts_no_job_that_left_the_stage_it_reported_in(
    redis_url: str,
    r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # stage a reports 50 % and returns; nothing runs stage b, so the jobs wait there: none of
    # them is running, whatever stage a's reports said
    flow = Flow("moved-on", [QueueSpec("a", next_queue="b"), QueueSpec("b")], redis_url=redis_url)
    flow.create_workers("a", reports_then_returns, count=1)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a line every 0.2 s
    ended: list[BaseException] = []
    ids = flow.create_jobs([{"n": n} for n in range(3)])

    def wait() -> None:
        try:
            flow.wait(ids, timeout=8, progress=True)
        except procflow.WaitTimeoutError as exc:
            ended.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()  # subscribed before any job runs, so it hears every report
    channel = "procflow:moved-on:progress"
    wait_until(lambda: r.pubsub_numsub(channel)[0][1] == 1, what="the wait's subscription")
    with Supervisor(flow):
        wait_until(lambda: flow.counts()["b"]["waiting"] == 3, what="the jobs in stage b")
        capsys.readouterr()  # what was shown while they ran stage a
        shown: list[str] = []
        wait_until(
            lambda: shown.append(capsys.readouterr().err) or "\r" in "".join(shown),
            what="a progress line after the jobs left stage a",
        )
        waiter.join(timeout=20)
    assert ended, "the wait should end at its deadline: no job can finish"
    line = "".join(shown).split("\r")[-1]
    assert "0/3 jobs done" in line, line
    assert "reporting progress" not in line, line
