"""The worker loop's decisions, driven through a fake stage session that records every call
and answers from a script. No Redis, and nothing sleeps (the loop is handed a sleep that
only records its back-off)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from loguru import logger

import procflow
from procflow.definition import FlowDefinition, QueueSpec
from procflow.errors import RedisUnavailableError
from procflow.failures import FailOutcome
from procflow.settings import RedisSettings, WorkerOptions
from procflow.store.records import Lease
from procflow.worker.ending import STOP, Ending, EndReason
from procflow.worker.loop import WorkerLoop
from procflow.worker.payload import PartitionStage, WorkerKind, WorkerPayload
from procflow.worker.reporting import INTERVAL
from procflow.worker.status import Activity, StatusRecord, StatusView, StatusWriter, read_status

HOLDER = "node|1|1.00"
PID = 4242


def token(n: int) -> str:
    return f"{HOLDER}|{PID}|{n}"


# one job per lease call (prefetch=1): the protocol these tests script call by call
DEFINITION = FlowDefinition.build(
    "F",
    [
        QueueSpec("a", next_queue="b", attributes_to_get=["x"], max_attempts=2, prefetch=1),
        QueueSpec("b", prefetch=1),
    ],
    [],
    86400,
)
PARENT_DEFINITION = FlowDefinition.build(
    "F",
    [QueueSpec("p", children=[QueueSpec("c1")], next_queue="b"), QueueSpec("b", prefetch=1)],
    [],
    86400,
)


class FakeSession:
    """Implements the JobSession protocol. ``answers`` maps a method name to the answers of
    its next calls, in order: a value is returned, an exception raised, a callable called
    with the call's arguments (and its result used the same way). Past the script each
    method gives its default. Every call is recorded as (name, *args)."""

    paused = False

    MAX_CALLS = 200  # a loop that never ends fails the test instead of hanging it

    def __init__(self, **answers: list[Any]) -> None:
        self.answers = {name: list(script) for name, script in answers.items()}
        self.calls: list[tuple[Any, ...]] = []

    def _answer(self, name: str, default: Any, *args: Any) -> Any:
        self.calls.append((name, *args))
        assert len(self.calls) <= self.MAX_CALLS, "the loop did not stop"
        script = self.answers.get(name)
        answer = script.pop(0) if script else default
        if callable(answer):
            answer = answer(*args)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def connect(self) -> int | None:
        return self._answer("connect", 7)

    def close(self) -> None:
        self._answer("close", None)

    def lease(self, token: str) -> Lease | None:
        return self._answer("lease", None, token)

    def wait_for_job(self, timeout: float) -> str | None:
        return self._answer("wait_for_job", None, timeout)

    def claim(self, job_id: str, token: str) -> Lease | None:
        return self._answer("claim", None, job_id, token)

    def complete(self, job_id, token, result, next_waiting, next_token=""):
        return self._answer(
            "complete", (1, []), job_id, token, list(result), next_waiting, next_token
        )

    def fail(self, job_id, token, record, policy, mode="token", final_fields=()):
        return self._answer(
            "fail",
            FailOutcome(job_id, "retry", 1, 1000),
            job_id,
            token,
            record,
            policy,
            mode,
            list(final_fields),
        )

    def requeue(self, job_id: str, token: str) -> str | None:
        return self._answer("requeue", job_id or None, job_id, token)

    def spawn_children(self, job_id, token, children, jobs_json, ttl):
        return self._answer("spawn_children", 1, job_id, token, list(children), jobs_json, ttl)

    def park(self, job_id: str, token: str) -> int:
        return self._answer("park", 1, job_id, token)

    def children_jobs(self, job_id: str) -> bytes | None:
        return self._answer("children_jobs", None, job_id)

    def children_status(self, child_keys):
        return self._answer("children_status", [], list(child_keys))

    def report_progress(self, job_id, token, value_json, announce):
        return self._answer("report_progress", True, job_id, token, value_json, announce)


def leased(job_id: str, *values: bytes | None, attempts: int = 1) -> Callable[..., Lease]:
    """An answer for ``lease(token)`` or ``claim(job_id, token)``: the job under that token."""
    return lambda *args: Lease(job_id, attempts, list(values), args[-1])


def make_loop(
    session: FakeSession,
    fn: Callable[[Any], Any] | None = None,
    *,
    queue: str = "a",
    definition: FlowDefinition = DEFINITION,
    options: WorkerOptions | None = None,
    sleeps: list[float] | None = None,
    more: list[FakeSession] | None = None,
) -> WorkerLoop:
    """A loop on ``session`` (and, for a partitioned stage, one more partition per session
    of ``more``, each the same stage here)."""
    stage = definition.stage(queue)
    sessions = [session, *(more or [])]
    payload = WorkerPayload(
        flow="F",
        kind=WorkerKind.PARENT if stage.is_parent else WorkerKind.WORKER,
        fn=fn,
        options=options or WorkerOptions(),
        key_ttl=86400,
        holder=HOLDER,
        partitions=[
            PartitionStage(
                stage,
                RedisSettings(),
                routes=definition.routes(),
                child_stages=definition.child_keys(stage) if stage.is_parent else {},
            )
            for _ in sessions
        ],
        worker=f"{queue}#0",
    )
    status = StatusWriter(StatusRecord())
    record_sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return WorkerLoop(
        payload,
        session,
        status,
        logger.bind(flow="F", queue=queue, worker=f"{queue}#0"),
        pid=PID,
        sleep=record_sleep,
        more_sessions=sessions[1:],
    )


def job(values: list[bytes | None], job_id: str = "j1", lease_token: str = "tok") -> Lease:
    return Lease(job_id, 1, values, lease_token)


def the_failure(session: FakeSession) -> Any:
    """The one FailureRecord the loop handed to fail()."""
    (call,) = session.named("fail")
    return call[2]


# -- one job ---------------------------------------------------------------------------------


def test_a_result_is_completed_to_the_next_stage_with_json_fields() -> None:
    session = FakeSession()
    seen = []

    def work(params):
        seen.append(params)
        return {"y": 2, "name": "joe", "nested": {"k": [1.5, None]}}

    loop = make_loop(session, work)
    assert loop._process(job([b'{"k":1}'])) == []

    assert seen == [{"id": "j1", "x": {"k": 1}}]
    assert session.named("complete") == [
        (
            "j1",
            "tok",
            [(b"y", b"2"), (b"name", b'"joe"'), (b"nested", b'{"k":[1.5,null]}')],
            "queue:b:waiting",
            token(1),
        )
    ]
    assert session.named("fail") == []


def test_a_missing_field_reaches_the_function_as_none() -> None:
    seen = []
    loop = make_loop(FakeSession(), lambda p: seen.append(p) or {})
    loop._process(job([None]))
    assert seen == [{"id": "j1", "x": None}]


def test_the_last_stage_completes_the_job_out_of_the_flow() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"out": True}, queue="b")
    loop._process(job([]))
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert result == [(b"out", b"true")]
    assert next_waiting == ""


@pytest.mark.parametrize("done", [True, False, None, "yes"])
def test_done_in_a_last_stages_result_is_accepted_and_left_to_the_completion(done: Any) -> None:
    # the TypeScript library's last and child stages return done: true; the completion of a
    # job that leaves its flow writes done = true itself (Session.complete), so the result's
    # own value is never written, whatever it is
    session = FakeSession()
    loop = make_loop(session, lambda p: {"done": done, "out": 1}, queue="b")
    loop._process(job([]))
    assert session.named("fail") == []
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert (result, next_waiting) == ([(b"out", b"1")], "")


@pytest.mark.parametrize("done", [True, False])
def test_done_in_a_middle_stages_result_does_not_end_the_job_early(done: bool) -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"done": done, "nextQueue": "b", "y": 1})
    loop._process(job([b"1"]))
    assert session.named("fail") == []
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert (result, next_waiting) == ([(b"y", b"1")], "queue:b:waiting")


def test_the_lease_completion_returns_is_the_next_job() -> None:
    following = Lease("j2", 1, [b"2"], token(1))
    loop = make_loop(FakeSession(complete=[(1, [following])]), lambda p: {})
    assert loop._process(job([b"1"])) == [following]


def test_next_queue_in_the_result_routes_the_job_there() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"nextQueue": "a", "y": 1})
    loop._process(job([b"1"]))
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert next_waiting == "queue:a:waiting"
    assert result == [(b"y", b"1")]


def test_a_next_queue_of_none_keeps_the_stages_own_route() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"nextQueue": None})
    loop._process(job([b"1"]))
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert (result, next_waiting) == ([], "queue:b:waiting")


def test_an_unknown_next_queue_is_a_failed_attempt_of_kind_result() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"nextQueue": "nowhere"})
    assert loop._process(job([b"1"])) == []

    assert session.named("complete") == []
    record = the_failure(session)
    assert record.kind == "result"
    assert "'nowhere'" in record.error
    assert "its queues: a, b" in record.error


def test_an_unhashable_next_queue_is_a_failed_attempt_of_kind_result() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"nextQueue": ["b"]})
    loop._process(job([b"1"]))
    assert session.named("complete") == []
    assert the_failure(session).kind == "result"


@pytest.mark.parametrize(
    "field", ["failedQueue", "failed", "attempts:a", "children:a:jobs", "id", "progress:a"]
)
def test_a_reserved_result_field_is_a_failed_attempt_of_kind_result(field: str) -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"ok": 1, field: "x"})
    loop._process(job([b"1"]))
    assert session.named("complete") == []
    record = the_failure(session)
    assert record.kind == "result"
    assert repr(field) in record.error


def test_a_result_field_name_that_is_not_a_string_is_a_failed_attempt_of_kind_result() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {1: "x"})
    loop._process(job([b"1"]))
    assert session.named("complete") == []
    assert the_failure(session).kind == "result"


def test_a_result_value_that_is_not_json_is_a_failed_attempt_of_kind_result() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"y": float("nan")})
    loop._process(job([b"1"]))
    assert session.named("complete") == []
    record = the_failure(session)
    assert record.kind == "result"
    assert "'y'" in record.error


def test_a_function_that_raises_is_a_failed_attempt_of_kind_exception() -> None:
    def work(params):
        raise RuntimeError("boom")

    session = FakeSession()
    loop = make_loop(session, work)
    assert loop._process(job([b"1"])) == []

    assert session.named("complete") == []
    ((job_id, lease_token, record, policy, mode, _),) = session.named("fail")
    assert (job_id, lease_token, mode) == ("j1", "tok", "token")
    assert record.kind == "exception"
    assert record.error == "RuntimeError: boom"
    assert record.details["attempt"] == 1
    assert record.details["worker"] == "a#0"
    assert record.details["pid"] == PID
    assert record.details["traceback"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: boom" in record.details["traceback"]
    assert "in work" in record.details["traceback"]
    assert policy.max_attempts == 2
    assert len(policy.delays_ms) == 1


def test_system_exit_in_the_function_is_a_failed_attempt_not_an_exit() -> None:
    def work(params):
        raise SystemExit(3)

    session = FakeSession()
    make_loop(session, work)._process(job([b"1"]))
    assert the_failure(session).kind == "exception"
    assert the_failure(session).error == "SystemExit: 3"


def test_returning_none_is_a_failed_attempt_that_says_return_an_empty_dict() -> None:
    session = FakeSession()
    make_loop(session, lambda p: None)._process(job([b"1"]))
    record = the_failure(session)
    assert record.kind == "result"
    assert "returned NoneType" in record.error
    assert "return {}" in record.error


def test_returning_a_list_is_a_failed_attempt_of_kind_result() -> None:
    session = FakeSession()
    make_loop(session, lambda p: [("y", 1)])._process(job([b"1"]))
    record = the_failure(session)
    assert record.kind == "result"
    assert "returned list, not a mapping" in record.error
    assert "return {}" not in record.error


def test_a_field_that_is_not_json_is_a_failed_attempt_of_kind_decode() -> None:
    called = []
    session = FakeSession()
    make_loop(session, lambda p: called.append(p) or {})._process(job([b"{not json"]))
    assert called == []
    assert session.named("complete") == []
    record = the_failure(session)
    assert record.kind == "decode"
    assert "field 'x' of 'job:F:j1'" in record.error


def test_a_vanished_job_is_dropped_without_completing_or_failing_it(
    lines: list[dict[str, Any]],
) -> None:
    called = []
    session = FakeSession()
    loop = make_loop(session, lambda p: called.append(p) or {})
    assert loop._process(Lease("j1", -1, [None], "tok")) == []
    assert called == []
    assert session.calls == []
    assert read_status(loop.status.raw).activity is Activity.IDLE
    assert any("hash is gone" in r["message"] for r in lines)


def test_the_status_says_running_with_the_job_while_the_function_runs() -> None:
    views: list[StatusView] = []
    loop = None

    def work(params):
        views.append(read_status(loop.status.raw))
        return {}

    loop = make_loop(FakeSession(), work)
    loop._process(job([b"1"], lease_token="tok-7"))
    (view,) = views
    assert view.activity is Activity.RUNNING
    assert (view.job, view.token, view.next_token) == ("j1", "tok-7", "")
    assert view.started > 0


def test_the_status_names_the_next_token_while_completing() -> None:
    views: list[StatusView] = []
    loop = None

    def complete(*args):
        views.append(read_status(loop.status.raw))
        return 1, []

    loop = make_loop(FakeSession(complete=[complete]), lambda p: {})
    loop._process(job([b"1"]))
    (view,) = views
    assert view.activity is Activity.COMPLETING
    assert (view.job, view.token, view.next_token) == ("j1", "tok", token(1))
    after = read_status(loop.status.raw)
    assert (after.activity, after.jobs, after.token) == (Activity.IDLE, 1, "")


@pytest.mark.parametrize(("status", "words"), [(0, "was lost"), (-1, "vanished")])
def test_a_completion_that_did_not_take_is_logged(
    lines: list[dict[str, Any]], status: int, words: str
) -> None:
    loop = make_loop(FakeSession(complete=[(status, [])]), lambda p: {})
    loop._process(job([b"1"]))
    warnings = [r for r in lines if r["level"].name == "WARNING"]
    assert len(warnings) == 1
    assert words in warnings[0]["message"]
    assert warnings[0]["extra"]["job"] == "j1"


# -- the loop --------------------------------------------------------------------------------


def test_the_worker_recycles_after_max_jobs_per_child() -> None:
    session = FakeSession(lease=[leased("j1", b"1"), leased("j2", b"2")])
    loop = make_loop(session, lambda p: {}, options=WorkerOptions(max_jobs_per_child=2))
    ending = loop.run()
    assert ending == Ending(EndReason.RECYCLE_JOBS, "2 jobs done") and ending.recycles
    assert str(ending) == "recycle: 2 jobs done"  # as the supervisor logs it

    completes = session.named("complete")
    assert [c[0] for c in completes] == ["j1", "j2"]
    assert completes[0][4] == token(2)  # the first completion leases ahead
    assert completes[1][4] == ""  # the last one does not: the worker is about to end
    view = read_status(loop.status.raw)
    assert (view.activity, view.jobs) == (Activity.STOPPED, 2)


def test_failed_attempts_count_towards_recycling() -> None:
    def work(params):
        raise ValueError("nope")

    session = FakeSession(lease=[leased("j1", b"1"), leased("j2", b"2")])
    loop = make_loop(session, work, options=WorkerOptions(max_jobs_per_child=2))
    assert loop.run() == Ending(EndReason.RECYCLE_JOBS, "2 jobs done")
    assert [c[0] for c in session.named("fail")] == ["j1", "j2"]


def test_the_worker_recycles_at_its_max_age() -> None:
    session = FakeSession(lease=[leased("j1", b"1")])
    loop = make_loop(session, lambda p: {}, options=WorkerOptions(max_age=30))
    loop.born -= 31
    ending = loop.run()
    assert ending == Ending(EndReason.RECYCLE_AGE, "older than 30 s")
    assert str(ending) == "recycle: older than 30 s"
    assert session.calls == []  # due before its first lease


def test_the_loop_moves_to_the_partition_with_work_and_works_there_on_its_session() -> None:
    first, second = FakeSession(), FakeSession(lease=[leased("j1", b"1")])
    options = WorkerOptions(max_jobs_per_child=1)
    loop = make_loop(first, lambda p: {}, options=options, more=[second])
    assert loop.run() == Ending(EndReason.RECYCLE_JOBS, "1 jobs done")
    assert first.names == ["lease"]  # nothing there
    assert second.names == ["lease", "complete"]
    assert read_status(loop.status.raw).partition == 1  # what it holds is there


def test_a_loop_needs_a_session_per_partition() -> None:
    with pytest.raises(ValueError, match="2 partitions need as many sessions"):
        WorkerLoop(
            make_loop(FakeSession(), more=[FakeSession()]).payload,
            FakeSession(),
            StatusWriter(StatusRecord()),
            logger,
        )


def test_a_stop_request_ends_the_loop_before_the_next_lease() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {})
    loop.status.raw.stop = 1
    assert loop.run() == STOP
    assert session.calls == []
    assert read_status(loop.status.raw).activity is Activity.STOPPED


def test_the_external_stop_flag_ends_the_loop_too() -> None:
    stop = []
    session = FakeSession(lease=[leased("j1", b"1")])
    loop = make_loop(session, lambda p: stop.append(True) or {})
    loop._external_stop = lambda: bool(stop)
    assert loop.run() == STOP
    assert [c[0] for c in session.named("complete")] == ["j1"]
    assert session.named("complete")[0][4] == ""  # told to stop: no lease ahead


def test_a_lease_taken_ahead_is_given_back_when_stop_comes_during_the_completion() -> None:
    loop = None

    def complete_then_stop(job_id, lease_token, result, next_waiting, next_token):
        loop.status.raw.stop = 1
        return 1, [Lease("j2", 1, [b"2"], next_token)]

    ran = []
    session = FakeSession(lease=[leased("j1", b"1")], complete=[complete_then_stop])
    loop = make_loop(session, lambda p: ran.append(p["id"]) or {})
    assert loop.run() == STOP

    assert ran == ["j1"]
    assert session.named("requeue") == [("j2", token(2))]
    assert session.names[-1] == "requeue"
    assert read_status(loop.status.raw).activity is Activity.STOPPED


def test_a_lease_taken_ahead_stays_in_the_status_record_until_it_is_given_back() -> None:
    loop = None
    views: list[StatusView] = []

    def complete_then_stop(job_id, lease_token, result, next_waiting, next_token):
        loop.status.raw.stop = 1
        return 1, [Lease("j2", 1, [b"2"], next_token)]

    def requeue(job_id, lease_token):
        views.append(read_status(loop.status.raw))
        return job_id

    session = FakeSession(
        lease=[leased("j1", b"1")], complete=[complete_then_stop], requeue=[requeue]
    )
    loop = make_loop(session, lambda p: {})
    loop.run()
    (view,) = views
    assert view.activity.holds_job
    assert (view.job, view.token) == ("j2", token(2))


def test_blocking_for_a_job_then_claiming_it_shows_in_the_status_before_each_call() -> None:
    loop = None
    views: dict[str, StatusView] = {}

    def wait(timeout):
        views["wait"] = read_status(loop.status.raw)
        return "j9"

    def claim(job_id, claim_token):
        views["claim"] = read_status(loop.status.raw)
        return Lease(job_id, 1, [b"1"], claim_token)

    def complete_then_stop(*args):
        loop.status.raw.stop = 1
        return 1, []

    session = FakeSession(
        lease=[None], wait_for_job=[wait], claim=[claim], complete=[complete_then_stop]
    )
    loop = make_loop(session, lambda p: {}, options=WorkerOptions(block_timeout=2.5))
    assert loop.run() == STOP

    assert session.names == ["lease", "wait_for_job", "claim", "complete"]
    assert session.named("lease") == [(token(1),)]
    assert session.named("wait_for_job") == [(2.5,)]
    assert session.named("claim") == [("j9", token(2))]
    assert views["wait"].activity is Activity.WAITING
    assert views["wait"].token == ""
    assert views["claim"].activity is Activity.LEASING
    assert (views["claim"].job, views["claim"].token) == ("j9", token(2))


def test_a_job_someone_else_claimed_first_is_let_go() -> None:
    loop = None

    def claim_lost(job_id, claim_token):
        loop.status.raw.stop = 1
        return None

    session = FakeSession(lease=[None], wait_for_job=["j9"], claim=[claim_lost])
    loop = make_loop(session, lambda p: {})
    assert loop.run() == STOP
    assert session.named("complete") == []
    assert session.named("fail") == []


def test_an_outage_during_a_lease_gives_back_what_it_may_have_leased_and_retries(
    lines: list[dict[str, Any]],
) -> None:
    loop = None
    sleeps: list[float] = []

    def complete_then_stop(*args):
        loop.status.raw.stop = 1
        return 1, []

    session = FakeSession(
        lease=[RedisUnavailableError("127.0.0.1:1", "connection refused"), leased("j1", b"1")],
        complete=[complete_then_stop],
    )
    loop = make_loop(session, lambda p: {}, sleeps=sleeps)
    assert loop.run() == STOP

    assert session.calls[:4] == [
        ("lease", token(1)),
        ("close",),  # both connections dropped: they reconnect together, once
        ("requeue", "", token(1)),
        ("lease", token(1)),
    ]
    assert session.named("complete")[0][0] == "j1"
    assert sleeps == [0.05]
    messages = [r["message"] for r in lines]
    assert any("127.0.0.1:1 is unavailable" in m for m in messages)
    assert sum("Redis is reachable again" in m for m in messages) == 1


def test_the_back_off_doubles_up_to_two_seconds_while_redis_stays_away() -> None:
    loop = None
    sleeps: list[float] = []
    down = RedisUnavailableError("h:1", "down")

    def complete_then_stop(*args):
        loop.status.raw.stop = 1
        return 1, []

    session = FakeSession(
        lease=[down] * 8 + [leased("j1", b"1")],
        requeue=[down] * 7 + [None],
        complete=[complete_then_stop],
    )
    loop = make_loop(session, lambda p: {}, sleeps=sleeps)
    loop.run()
    # a failed requeue counts as a failed try too: 8 leases + 7 requeues broke, 15 sleeps
    assert len(sleeps) == 15
    assert sleeps[:7] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert set(sleeps[6:]) == {2.0}


def test_a_lease_broken_by_an_outage_is_given_back_when_the_worker_stops_instead_of_retrying() -> (
    None
):
    loop = None

    def broken_then_stop(lease_token):
        loop.status.raw.stop = 1
        return RedisUnavailableError("h:1", "connection reset")

    session = FakeSession(lease=[broken_then_stop])
    loop = make_loop(session, lambda p: {})
    assert loop.run() == STOP
    assert ("requeue", "", token(1)) in session.calls


# -- parent stages ---------------------------------------------------------------------------

PARAMS = json.dumps([{"childName": "c1", "v": 1}, {"childName": "c1", "v": 2}]).encode()


def parent_loop(session: FakeSession) -> WorkerLoop:
    return make_loop(session, queue="p", definition=PARENT_DEFINITION)


def test_a_parent_stage_reads_its_children_fields_first() -> None:
    stage = PARENT_DEFINITION.stage("p")
    assert stage.fields[:2] == ("children:p:params", "children:p:jobs")


def test_a_parents_first_visit_creates_its_children_once_and_lets_it_go() -> None:
    session = FakeSession()
    loop = parent_loop(session)
    assert loop._process(job([PARAMS, None])) == []

    ((job_id, lease_token, children, jobs_json, ttl),) = session.named("spawn_children")
    assert (job_id, lease_token, ttl) == ("j1", "tok", 86400)
    assert len(children) == 2
    for child_id, key, waiting, _ in children:
        assert key == f"job:p:c1:{child_id}"
        assert waiting == "queue:p:c1:waiting"
    assert [list(c[3]) for c in children] == [[(b"v", b"1")], [(b"v", b"2")]]
    assert json.loads(jobs_json) == [c[1] for c in children]
    assert session.names == ["spawn_children"]
    assert read_status(loop.status.raw).activity is Activity.IDLE


def test_a_parent_whose_children_exist_already_goes_on_to_check_them() -> None:
    keys_json = b'["job:p:c1:A"]'
    session = FakeSession(
        spawn_children=[-1],
        children_jobs=[keys_json],
        children_status=[[1, [b"true", None]]],
    )
    parent_loop(session)._process(job([PARAMS, None]))
    assert session.names == ["spawn_children", "children_jobs", "children_status", "complete"]
    assert session.named("children_status") == [(["job:p:c1:A"],)]


def test_a_parent_with_no_children_passes_on_at_once_with_none_failed() -> None:
    session = FakeSession()
    parent_loop(session)._process(job([None, None]))
    assert session.named("spawn_children") == []
    ((_, _, result, next_waiting, _),) = session.named("complete")
    # children:p:jobs = [] as the TypeScript library's ParentWorker writes it
    assert result == [(b"children:p:jobs", b"[]"), (b"children:p:failed", b"[]")]
    assert next_waiting == "queue:b:waiting"


def policy_definition(policy: str) -> FlowDefinition:
    spec = QueueSpec("p", children=[QueueSpec("c1")], next_queue="b", on_child_failure=policy)
    return FlowDefinition.build("F", [spec, QueueSpec("b", prefetch=1)], [], 86400)


#: three children: A done, B done and failed (its error), C's hash gone
THREE = b'["job:p:c1:A","job:p:c1:B","job:p:c1:C"]'
THREE_STATUS = [
    *(1, [b"true", None, None]),
    *(1, [b"true", b"true", b'"ValueError: bad"']),
    *(0, [None] * 3),
]


def test_a_parent_whose_children_failed_fails_by_default_listing_them() -> None:
    session = FakeSession(children_status=[THREE_STATUS])
    loop = parent_loop(session)
    loop._process(job([PARAMS, THREE]))

    assert session.named("complete") == []
    ((job_id, lease_token, record, policy, mode, final),) = session.named("fail")
    assert (job_id, lease_token, mode) == ("j1", "tok", "token")
    assert record.kind == "children"
    assert record.message == (
        "2 of 3 child jobs failed: job:p:c1:B: ValueError: bad; "
        "job:p:c1:C: its job hash no longer exists"
    )
    assert policy.max_attempts == 1  # its children stay failed: a retry could not help
    assert final == [("children:p:failed", '["job:p:c1:B","job:p:c1:C"]')]


def test_a_parent_that_marks_failed_children_passes_on_listing_them() -> None:
    session = FakeSession(children_status=[THREE_STATUS])
    make_loop(session, queue="p", definition=policy_definition("mark"))._process(
        job([PARAMS, THREE])
    )
    assert session.named("fail") == []
    ((job_id, lease_token, result, next_waiting, _),) = session.named("complete")
    assert (job_id, lease_token) == ("j1", "tok")
    assert result == [(b"children:p:failed", b'["job:p:c1:B","job:p:c1:C"]')]
    assert next_waiting == "queue:b:waiting"


def test_a_parent_that_continues_passes_on_writing_nothing_as_the_typescript_library() -> None:
    session = FakeSession(children_status=[THREE_STATUS])
    make_loop(session, queue="p", definition=policy_definition("continue"))._process(
        job([PARAMS, THREE])
    )
    assert session.named("fail") == []
    ((_, _, result, next_waiting, _),) = session.named("complete")
    assert result == []
    assert next_waiting == "queue:b:waiting"


@pytest.mark.parametrize("policy", ["fail", "mark"])
def test_a_parent_whose_children_all_succeeded_passes_on_with_none_failed(policy: str) -> None:
    session = FakeSession(children_status=[[1, [b"true", None, None]]])
    make_loop(session, queue="p", definition=policy_definition(policy))._process(
        job([PARAMS, b'["job:p:c1:A"]'])
    )
    ((_, _, result, next_waiting, next_token),) = session.named("complete")
    assert result == [(b"children:p:failed", b"[]")]
    assert next_waiting == "queue:b:waiting"
    assert next_token == token(1)


def test_a_parent_with_a_child_not_done_is_parked_again() -> None:
    keys_json = b'["job:p:c1:A","job:p:c1:B"]'
    session = FakeSession(children_status=[[1, [b"true", None], 1, [None, None]]])
    loop = parent_loop(session)
    assert loop._process(job([PARAMS, keys_json])) == []
    assert session.named("park") == [("j1", "tok")]
    assert session.named("complete") == []
    assert session.named("spawn_children") == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([b'{"childName":"c1"}', None], "children:p:params must be a list of objects"),
        ([b'[{"childName":"zz"}]', None], "childName 'zz' is not a child queue of 'p'"),
        ([b"{bad", None], "field 'children:p:params' of 'job:F:j1' is not valid JSON"),
        ([PARAMS, b'"job:p:c1:A"'], "children:p:jobs must be a list of job keys"),
        ([PARAMS, b"[oops"], "field 'children:p:jobs'"),
    ],
)
def test_malformed_children_fields_are_a_failed_attempt_of_kind_children(
    values: list[bytes | None], problem: str
) -> None:
    session = FakeSession()
    parent_loop(session)._process(job(values))
    assert session.named("spawn_children") == []
    assert session.named("complete") == []
    record = the_failure(session)
    assert record.kind == "children"
    assert problem in record.error


# -- progress from inside a job --------------------------------------------------------------


def test_progress_is_rate_limited_to_the_wire_and_the_last_report_lands_with_the_completion() -> (
    None
):
    def busy(params: dict[str, Any]) -> dict[str, Any]:
        for n in range(20_000):
            procflow.progress(n / 20_000, f"row {n}")
        procflow.progress(1.0, "all rows")
        return {"rows": 20_000}

    session = FakeSession()
    loop = make_loop(session, busy)
    started = time.monotonic()
    loop._process(job([b"1"]))
    elapsed = time.monotonic() - started
    *sent, last = session.named("report_progress")
    assert 1 <= len(sent) <= elapsed / INTERVAL + 1  # at most one write per interval
    # then one more: the function returned, the job no longer runs (watchers drop it)
    assert json.loads(last[3]) == {
        "id": "j1",
        "queue": "a",
        "fraction": 1.0,
        "message": "all rows",
        "ended": True,
    }
    job_id, lease_token, value, announce = sent[0]
    assert (job_id, lease_token) == ("j1", "tok")
    assert json.loads(value)["message"] == "row 0"
    assert json.loads(announce) == {"id": "j1", "queue": "a", "fraction": 0.0, "message": "row 0"}
    ((_, _, result, _, _),) = session.named("complete")
    fields = dict(result)
    final = json.loads(fields[b"progress:a"])
    assert (final["fraction"], final["message"]) == (1.0, "all rows") and final["at"] > 0


def test_a_job_that_reports_nothing_writes_no_progress_field() -> None:
    session = FakeSession()
    make_loop(session, lambda p: {"ok": True})._process(job([b"1"]))
    ((_, _, result, _, _),) = session.named("complete")
    assert b"progress:a" not in dict(result)
    assert session.named("report_progress") == []


def test_a_bad_progress_call_fails_the_attempt_with_a_message() -> None:
    session = FakeSession()
    make_loop(session, lambda p: procflow.progress(1.5) or {})._process(job([b"1"]))
    assert "progress fraction must be a number from 0 to 1, got 1.5" in the_failure(session).error


def test_progress_outside_a_job_does_nothing() -> None:
    procflow.progress(0.5, "in a plain test")  # no job runs in this process: nothing happens


def test_a_result_cannot_write_the_progress_field_itself() -> None:
    session = FakeSession()
    make_loop(session, lambda p: {"progress:a": 1})._process(job([b"1"]))
    assert "is procflow's bookkeeping" in the_failure(session).error


# -- paused by the core budget -----------------------------------------------------------------


def test_a_paused_worker_holds_no_job_until_resumed() -> None:
    session = FakeSession(lease=[leased("j1", b"1"), None])
    loop = make_loop(session, lambda p: {"ok": True})
    seen: list[tuple[Activity, list[str]]] = []

    def gate() -> bool:  # the supervisor's side: look, then resume, then stop
        seen.append((read_status(loop.status.raw).activity, list(session.names)))
        loop.status.raw.pause = 0
        return True

    loop._gate = gate
    loop.status.raw.pause = 1

    def stop_after_one(*args: Any) -> tuple[int, None]:
        loop.status.raw.stop = 1
        return 1, []

    session.answers["complete"] = [stop_after_one]
    assert loop.run() == STOP
    assert seen == [(Activity.PAUSED, [])]  # paused before it leased anything
    assert session.names[:2] == ["lease", "complete"]


def test_a_pause_asked_during_a_job_takes_no_job_ahead() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {"ok": True})
    loop.status.raw.pause = 1
    loop._process(job([b"1"]))
    ((_, _, _, _, next_token),) = session.named("complete")
    assert next_token == ""  # it will hold: it must not lease the next job with this one


def test_a_stop_while_paused_ends_the_loop() -> None:
    session = FakeSession()
    loop = make_loop(session, lambda p: {})
    loop._gate = lambda: False
    loop.status.raw.pause = 1
    assert loop.run() == STOP
    assert session.names == []
