"""procflow's pytest plugin (procflow.testing): the fixtures as a user's project gets them (an
inner pytest run through pytester), run_inline and run_until_idle directly."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from procflow import Backoff, Flow, QueueSpec, WaitTimeoutError
from procflow.testing import (
    TEST_REDIS_SERVER_ENV,
    TEST_REDIS_URL_ENV,
    IdleTimeoutError,
    run_inline,
    run_until_idle,
)
from tests.conftest import server_binary

pytest_plugins = ["pytester"]

#: a user's test file: a two-stage flow with a fan-out stage whose child queue retries
USER_TESTS = """
from __future__ import annotations

import os
import pathlib

from procflow import Backoff, Flow, QueueSpec
from procflow.testing import run_inline, run_until_idle


def make_flow(url: str, marks: pathlib.Path) -> Flow:
    flow = Flow(
        "orders",
        [
            QueueSpec("plan", next_queue="ship", attributes_to_get=["items"]),
            QueueSpec(
                "ship",
                children=[
                    QueueSpec(
                        "pack",
                        attributes_to_get=["item"],
                        max_attempts=2,
                        retry_backoff=Backoff(base=0.2, jitter=0),
                    )
                ],
            ),
        ],
        lookup_attributes=["order"],
        redis_url=url,
    )

    def plan(job):
        return {"children:ship:params": [{"childName": "pack", "item": i} for i in job["items"]]}

    def pack(job):
        mark = marks / job["item"]
        if job["item"] == "b" and not mark.exists():  # fails once, in whichever process
            mark.touch()
            raise RuntimeError("the packer jammed")
        return {"packed": job["item"].upper(), "pid": os.getpid()}

    flow.create_workers("plan", plan)
    flow.create_parent_workers("ship")
    flow.create_child_workers("ship", "pack", pack, count=2)
    return flow


def check_order(flow: Flow, inline: bool) -> None:
    job = flow.get_jobs_by_key("order", 1, resolve_children=True)[0]
    assert job["done"] is True and "failed" not in job
    assert job["children:ship:failed"] == []
    children = {c["item"]: c for c in job["children:ship:jobs"]}
    assert {i: c["packed"] for i, c in children.items()} == {"a": "A", "b": "B", "c": "C"}
    assert children["b"]["attempts:ship:pack"] == 2
    assert [e["error"] for e in children["b"]["errors:ship:pack"]] == [
        "RuntimeError: the packer jammed"
    ]
    assert all(c == dict.fromkeys(c, 0) for c in flow.counts().values())
    here = {c["pid"] == os.getpid() for c in children.values()}
    assert here == {inline}  # inline: in this process; else in worker processes


def test_1_leaves_a_job_behind(procflow_redis_url):
    flow = Flow("leftover", [QueueSpec("q")], redis_url=procflow_redis_url)
    flow.create_job({"n": 1})
    assert flow.counts()["q"]["waiting"] == 1


def test_2_starts_on_an_empty_server(procflow_redis_url):
    flow = Flow("leftover", [QueueSpec("q")], redis_url=procflow_redis_url)
    assert flow.counts()["q"]["waiting"] == 0


def test_the_server_is_private(procflow_server, procflow_redis_url):
    assert procflow_server.server is not None and procflow_server.server.pid
    assert procflow_redis_url == procflow_server.url
    assert procflow_redis_url.startswith("redis://127.0.0.1:")


def test_inline(procflow_redis_url, tmp_path):
    flow = make_flow(procflow_redis_url, tmp_path)
    flow.create_job({"order": 1, "items": ["a", "b", "c"]})
    run = run_inline(flow)
    check_order(flow, inline=True)
    # a, b (failed), c, b again; the parent when it fans out and when it passes on
    assert run.jobs == {"plan": 1, "ship": 2, "ship:pack": 4}


def test_worker_processes(procflow_redis_url, tmp_path):
    flow = make_flow(procflow_redis_url, tmp_path)
    flow.create_job({"order": 1, "items": ["a", "b", "c"]})
    counts = run_until_idle(flow, timeout=60)
    check_order(flow, inline=False)
    assert counts["ship:pack"] == dict.fromkeys(counts["ship:pack"], 0)
"""


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The inner run's environment without the plugin's variables of whoever runs this."""
    monkeypatch.delenv(TEST_REDIS_URL_ENV, raising=False)
    monkeypatch.delenv(TEST_REDIS_SERVER_ENV, raising=False)
    return monkeypatch


def inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a process of its own, as in a user's project: the plugin comes from the
    entry point (there is no conftest)."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=110)


# -- the plugin in a user's project ------------------------------------------------------------


@pytest.mark.usefixtures("no_leaks", "user_env")
def test_a_users_tests_get_the_fixtures_without_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_flow=USER_TESTS)
    result = inner(pytester, "-v")
    result.assert_outcomes(passed=5)


@pytest.mark.usefixtures("user_env")
def test_p_no_procflow_disables_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        def test_uses_the_fixture(procflow_redis_url):
            pass
        """
    )
    result = inner(pytester, "-p", "no:procflow")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'procflow_redis_url' not found*"])


@pytest.mark.usefixtures("no_leaks")
def test_the_url_variable_names_a_server_to_use_and_flush(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch, redis_url: str
) -> None:
    leftover = Flow("leftover", [QueueSpec("q")], redis_url=redis_url)
    leftover.create_job({"n": 1})
    user_env.setenv(TEST_REDIS_URL_ENV, redis_url)
    pytester.makepyfile(
        test_given="""
        import os

        from procflow import Flow, QueueSpec

        def test_uses_the_given_server(procflow_server, procflow_redis_url):
            assert procflow_server.server is None  # nothing started
            assert procflow_redis_url == os.environ["PROCFLOW_TEST_REDIS_URL"]
            flow = Flow("leftover", [QueueSpec("q")], redis_url=procflow_redis_url)
            assert flow.counts()["q"]["waiting"] == 0  # flushed
        """
    )
    inner(pytester).assert_outcomes(passed=1)
    assert leftover.counts()["q"]["waiting"] == 0


@pytest.mark.usefixtures("no_leaks")
def test_the_server_variable_names_a_binary_to_start(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    user_env.setenv(TEST_REDIS_SERVER_ENV, server_binary("redis"))
    pytester.makepyfile(
        test_binary="""
        import os

        def test_runs_that_binary(procflow_server, procflow_redis_url):
            server = procflow_server.server
            assert server is not None
            assert server.binary == os.environ["PROCFLOW_TEST_REDIS_SERVER"]
            assert server.pid and procflow_redis_url == server.url
        """
    )
    inner(pytester).assert_outcomes(passed=1)


def test_a_server_variable_that_names_no_binary_is_a_clear_error(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    user_env.setenv(TEST_REDIS_SERVER_ENV, "/nonexistent/redis-server")
    pytester.makepyfile(
        test_bad="""
        def test_needs_a_server(procflow_redis_url):
            pass
        """
    )
    result = inner(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*$PROCFLOW_TEST_REDIS_SERVER='/nonexistent/redis-server' is not an executable*"]
    )


# -- run_inline ------------------------------------------------------------------------------


def test_run_inline_makes_the_json_round_trip(redis_url: str) -> None:
    flow = Flow(
        "roundtrip",
        [QueueSpec("make", next_queue="use"), QueueSpec("use", attributes_to_get=["pair", "deep"])],
        redis_url=redis_url,
    )
    seen: list[tuple[int, dict[str, Any]]] = []

    def use(job: dict[str, Any]) -> dict[str, Any]:
        seen.append((os.getpid(), job))
        return {"pairType": type(job["pair"]).__name__}

    flow.create_workers("make", lambda job: {"pair": (1, 2), "deep": {"t": ("a", (True, None))}})
    flow.create_workers("use", use)
    job_id = flow.create_job({"n": 1})
    run = run_inline(flow)
    assert run.jobs == {"make": 1, "use": 1} and run.total == 2
    [(pid, job)] = seen  # ran in this process: the closure saw it
    assert pid == os.getpid()
    assert job == {"id": job_id, "pair": [1, 2], "deep": {"t": ["a", [True, None]]}}
    stored = flow.get_job(job_id)
    assert stored is not None
    assert stored["done"] is True and stored["pair"] == [1, 2] and stored["pairType"] == "list"
    assert all(c == dict.fromkeys(c, 0) for c in run.counts.values())


def _set_result(job: dict[str, Any]) -> dict[str, Any]:
    return {"tags": {"a", "b"}}  # a set: no JSON for it


@pytest.mark.usefixtures("no_leaks")
def test_a_result_json_cannot_hold_fails_the_attempt_as_in_a_worker_process(
    redis_url: str,
) -> None:
    flow = Flow("badresult", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", _set_result)
    inline_id = flow.create_job({"n": 1})
    assert run_inline(flow).jobs == {"w": 1}
    process_id = flow.create_job({"n": 2})
    run_until_idle(flow, timeout=60)
    inline, process = flow.get_jobs([inline_id, process_id])
    for job in (inline, process):
        assert job["failed"] is True and job["failedQueue"] == "w"
        assert [e["kind"] for e in job["errors:w"]] == ["result"]
    assert "set" in inline["failedErrorMsg"]
    assert inline["failedErrorMsg"] == process["failedErrorMsg"]
    assert inline["errors:w"][0]["error"] == process["errors:w"][0]["error"]
    assert inline["errors:w"][0]["pid"] == os.getpid() != process["errors:w"][0]["pid"]
    assert flow.counts()["w"]["failed"] == 2


def test_run_inline_retries_through_the_delayed_set(redis_url: str) -> None:
    flow = Flow(
        "retry",
        [QueueSpec("w", max_attempts=3, retry_backoff=Backoff(base=0.1, factor=1, jitter=0))],
        redis_url=redis_url,
    )
    calls: list[float] = []

    def flaky(job: dict[str, Any]) -> dict[str, Any]:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)}")
        return {"ok": True}

    flow.create_workers("w", flaky)
    job_id = flow.create_job({"n": 1})
    run = run_inline(flow)
    assert run.jobs == {"w": 3}
    assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.09  # each retry waited
    job = flow.get_job(job_id)
    assert job is not None and job["done"] is True and job["ok"] is True
    assert job["attempts:w"] == 3
    errors = [e["error"] for e in job["errors:w"]]
    assert errors == ["ValueError: attempt 1", "ValueError: attempt 2"]


def test_run_inline_leaves_a_retry_due_after_its_timeout(redis_url: str) -> None:
    flow = Flow(
        "later",
        [QueueSpec("w", max_attempts=2, retry_backoff=Backoff(base=60, jitter=0))],
        redis_url=redis_url,
    )

    def fails(job: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("not yet")

    flow.create_workers("w", fails)
    flow.create_job({"n": 1})
    started = time.monotonic()
    run = run_inline(flow, timeout=5)
    assert time.monotonic() - started < 2  # did not sit out the timeout
    assert run.jobs == {"w": 1}
    assert run.counts["w"]["delayed"] == 1


def test_run_inline_timeout_names_the_busy_stage(redis_url: str) -> None:
    flow = Flow("circle", [QueueSpec("loop")], redis_url=redis_url)
    flow.create_workers("loop", lambda job: {"nextQueue": "loop"})  # never done
    flow.create_job({"n": 1})
    with pytest.raises(IdleTimeoutError) as caught:
        run_inline(flow, timeout=0.3)
    error = caught.value
    assert isinstance(error, WaitTimeoutError) and isinstance(error, TimeoutError)
    assert error.busy["loop"]["waiting"] == 1
    assert str(error) == "run_inline: flow 'circle' was not idle after 0.3 s: 'loop' has 1 waiting"


def test_run_inline_gives_the_job_back_when_interrupted(redis_url: str) -> None:
    flow = Flow("interrupted", [QueueSpec("w")], redis_url=redis_url)

    def interrupted(job: dict[str, Any]) -> dict[str, Any]:
        raise KeyboardInterrupt

    flow.create_workers("w", interrupted)
    flow.create_job({"n": 1})
    with pytest.raises(KeyboardInterrupt):
        run_inline(flow)
    counts = flow.counts()["w"]
    assert counts["waiting"] == 1 and counts["processing"] == 0


# -- run_until_idle --------------------------------------------------------------------------


def _sleeps(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(60)
    return {}


@pytest.mark.usefixtures("no_leaks")
def test_run_until_idle_timeout_names_the_busy_stage(redis_url: str) -> None:
    flow = Flow("slow", [QueueSpec("nap"), QueueSpec("after")], redis_url=redis_url)
    flow.create_workers("nap", _sleeps)
    flow.create_job({"n": 1})
    started = time.monotonic()
    with pytest.raises(IdleTimeoutError) as caught:
        run_until_idle(flow, timeout=1)
    assert time.monotonic() - started < 15
    error = caught.value
    assert isinstance(error, WaitTimeoutError) and isinstance(error, TimeoutError)
    assert str(error) == (
        "run_until_idle: flow 'slow' was not idle after 1 s: 'nap' has 1 processing"
    )
    assert list(error.busy) == ["nap"]
    assert flow.supervisor is not None and not flow.supervisor.running
    counts = flow.counts()["nap"]  # killed after a short drain, its job put back
    assert counts["waiting"] == 1 and counts["processing"] == 0
