"""Failed attempts: the records written into ``errors:Q``, one log line per outcome, the
retry policy a stage hands to fail.lua, and the errors for a server's refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from loguru import logger

from procflow.definition import Backoff, FlowDefinition, QueueSpec
from procflow.errors import (
    ProcflowError,
    RedisFullError,
    RedisPermissionError,
    RedisReadOnlyError,
    RedisRefusedError,
    refusal,
)
from procflow.failures import (
    TRACEBACK_LIMIT,
    FailOutcome,
    FailureRecord,
    RetryPolicy,
    record_failure,
)


def fields(record: FailureRecord) -> dict[str, Any]:
    return json.loads(record.record_json())


# -- the records ---------------------------------------------------------------------------


def test_a_worker_failure_lists_error_kind_at_then_its_details_in_order() -> None:
    before = int(time.time() * 1000)
    record = FailureRecord.in_worker(
        "ValueError: bad", "exception", attempt=2, worker="q#0", pid=4242, traceback="tb text"
    )
    after = int(time.time() * 1000)

    entry = fields(record)
    assert list(entry) == ["error", "kind", "at", "attempt", "worker", "pid", "traceback"]
    assert entry["error"] == "ValueError: bad"
    assert entry["kind"] == "exception"
    assert before <= entry["at"] <= after
    assert (entry["attempt"], entry["worker"], entry["pid"]) == (2, "q#0", 4242)
    assert entry["traceback"] == "tb text"
    assert record.message == "ValueError: bad"
    assert record.message_json() == '"ValueError: bad"'


def test_a_worker_failure_without_a_traceback_has_no_traceback_entry() -> None:
    record = FailureRecord.in_worker("bad result", "result", attempt=1, worker="q#0", pid=1)
    assert list(fields(record)) == ["error", "kind", "at", "attempt", "worker", "pid"]


def test_a_long_traceback_is_cut_to_its_last_4000_characters() -> None:
    tb = "head " + "x" * 5000 + " the end"
    record = FailureRecord.in_worker("e", "exception", attempt=1, worker="w", pid=1, traceback=tb)
    kept = fields(record)["traceback"]
    assert TRACEBACK_LIMIT == 4000
    assert len(kept) == 4000
    assert kept == tb[-4000:]
    assert kept.endswith(" the end")
    assert not kept.startswith("head")


@pytest.mark.parametrize(
    ("exitcode", "signal_name"),
    [(-9, "SIGKILL"), (-15, "SIGTERM"), (3, None), (0, None), (None, None)],
)
def test_a_dead_worker_record_names_the_signal_that_killed_it(
    exitcode: int | None, signal_name: str | None
) -> None:
    record = FailureRecord.worker_died(
        "the worker process died", "crash", worker="q#1", pid=99, exitcode=exitcode
    )
    entry = fields(record)
    assert list(entry) == ["error", "kind", "at", "worker", "pid", "exitCode", "signal"]
    assert entry["error"] == "the worker process died"
    assert entry["kind"] == "crash"
    assert (entry["worker"], entry["pid"], entry["exitCode"]) == ("q#1", 99, exitcode)
    assert entry["signal"] == signal_name
    assert record.message == "the worker process died while running the job"


def test_a_worker_that_never_claimed_its_job_is_a_crash() -> None:
    record = FailureRecord.never_claimed()
    assert fields(record) == {
        "error": "worker died before claiming the job",
        "kind": "crash",
        "at": record.at,
    }
    assert record.message == "worker died"


def test_a_dead_supervisor_record_names_the_lock_it_held() -> None:
    record = FailureRecord.supervisor_died("node|1|1.00|2|3")
    entry = fields(record)
    assert entry["kind"] == "supervisor"
    assert "node|1|1.00|2|3" in entry["error"]
    assert record.message == "the supervisor running the job died"


def test_an_expired_lock_record_names_the_queue() -> None:
    record = FailureRecord.lock_expired("resize")
    entry = fields(record)
    assert entry["kind"] == "lock-expired"
    assert "'resize'" in entry["error"]
    assert record.message == entry["error"]


def test_fail_script_replies_become_outcomes() -> None:
    assert FailOutcome.from_reply([b"j1", b"retry", b"2", b"1500"]) == FailOutcome(
        "j1", "retry", 2, 1500
    )
    assert FailOutcome.from_reply([b"j1", b"retry", 2, 1500]).changed
    for nothing in (None, [], 0):
        outcome = FailOutcome.from_reply(nothing)
        assert outcome == FailOutcome(None, None)
        assert not outcome.changed


# -- record_failure --------------------------------------------------------------------------


class FakeFailer:
    """A stage session's ``fail``: records every call and returns a scripted outcome."""

    def __init__(self, outcome: FailOutcome) -> None:
        self.outcome = outcome
        self.calls: list[tuple[Any, ...]] = []

    def fail(
        self,
        job_id: str,
        token: str,
        record: FailureRecord,
        policy: RetryPolicy,
        mode: str = "token",
        final_fields: Sequence[tuple[str, str]] = (),
    ) -> FailOutcome:
        self.calls.append((job_id, token, record, policy, mode, *final_fields))
        return self.outcome


RECORD = FailureRecord.in_worker("RuntimeError: boom", "exception", attempt=1, worker="w", pid=1)
POLICY = RetryPolicy(3, (1000, 2000))


def test_record_failure_makes_one_fail_call_with_the_record_and_policy(
    lines: list[dict[str, Any]],
) -> None:
    failer = FakeFailer(FailOutcome("j1", "retry", 1, 1000))
    outcome = record_failure(failer, "j1", "tok", RECORD, POLICY, logger)
    assert failer.calls == [("j1", "tok", RECORD, POLICY, "token")]
    assert outcome is failer.outcome


@pytest.mark.parametrize(
    ("outcome", "level", "text"),
    [
        (
            FailOutcome("j1", "retry", 1, 1500),
            "WARNING",
            "job j1 attempt 1 failed: RuntimeError: boom; retrying in 1.5 s",
        ),
        (
            FailOutcome("j1", "stalled", 0, 0),
            "WARNING",
            "job j1 lost its worker: RuntimeError: boom; put back on its waiting list without "
            "using an attempt",
        ),
        (
            FailOutcome("j1", "failed", 3, 0),
            "ERROR",
            "job j1 failed after 3 attempt(s): RuntimeError: boom",
        ),
        (
            FailOutcome("j1", "requeued", 0, 0),
            "INFO",
            "job j1 was never started; put back on its waiting list",
        ),
        (
            FailOutcome("j1", "missing", 0, 0),
            "WARNING",
            "job j1 vanished while failing: RuntimeError: boom",
        ),
        (
            FailOutcome(None, None),
            "WARNING",
            "job j1 failed (RuntimeError: boom) but its lease was lost; nothing changed",
        ),
    ],
)
def test_each_outcome_is_logged_in_one_line_naming_the_job(
    lines: list[dict[str, Any]], outcome: FailOutcome, level: str, text: str
) -> None:
    record_failure(FakeFailer(outcome), "j1", "tok", RECORD, POLICY, logger)
    assert [(r["level"].name, r["message"]) for r in lines] == [(level, text)]
    assert lines[0]["extra"]["job"] == "j1"


def test_a_job_found_by_its_token_is_logged_under_the_id_fail_found(
    lines: list[dict[str, Any]],
) -> None:
    failer = FakeFailer(FailOutcome("found", "failed", 1, 0))
    record_failure(failer, "", "tok", RECORD, POLICY, logger)
    assert failer.calls[0][0] == ""
    assert lines[0]["extra"]["job"] == "found"
    assert lines[0]["message"].startswith("job found failed")


def test_an_orphan_call_that_changed_nothing_is_not_logged(
    lines: list[dict[str, Any]],
) -> None:
    failer = FakeFailer(FailOutcome(None, None))
    outcome = record_failure(failer, "j1", "", RECORD, POLICY, logger, mode="orphan")
    assert failer.calls == [("j1", "", RECORD, POLICY, "orphan")]
    assert not outcome.changed
    assert lines == []


def test_an_orphan_call_that_changed_something_is_logged(lines: list[dict[str, Any]]) -> None:
    failer = FakeFailer(FailOutcome("j1", "retry", 1, 1000))
    record_failure(failer, "j1", "", RECORD, POLICY, logger, mode="orphan")
    assert len(lines) == 1
    assert "retrying in 1.0 s" in lines[0]["message"]


# -- the retry policy -------------------------------------------------------------------------


def stage_with(**spec: Any) -> Any:
    return FlowDefinition.build("F", [QueueSpec("q", **spec)], [], 86400).stage("q")


def test_a_stage_without_jitter_gives_exact_doubling_delays() -> None:
    policy = stage_with(
        max_attempts=3, retry_backoff=Backoff(base=1, factor=2, max=10, jitter=0)
    ).retry_policy()
    assert policy.max_attempts == 3
    assert list(policy.delays_ms) == [1000, 2000]


def test_the_delay_is_capped_at_the_backoffs_max() -> None:
    policy = stage_with(
        max_attempts=5, retry_backoff=Backoff(base=1, factor=3, max=4, jitter=0)
    ).retry_policy()
    assert list(policy.delays_ms) == [1000, 3000, 4000, 4000]


def test_one_attempt_allows_no_retry() -> None:
    policy = stage_with().retry_policy()
    assert policy.max_attempts == 1
    assert list(policy.delays_ms) == []


def test_jitter_draws_each_delay_at_or_below_its_exact_value() -> None:
    policy = stage_with(
        max_attempts=4, retry_backoff=Backoff(base=1, factor=2, max=100, jitter=0.5)
    ).retry_policy()
    for delay, exact in zip(policy.delays_ms, [1000, 2000, 4000], strict=True):
        assert exact * 0.5 <= delay <= exact


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "code"),
    [
        (
            "NOPERM User app has no permissions to run the 'evalsha' command",
            RedisPermissionError,
            "NOPERM",
        ),
        ("NOAUTH Authentication required.", RedisPermissionError, "NOAUTH"),
        ("WRONGPASS invalid username-password pair", RedisPermissionError, "WRONGPASS"),
        ("OOM command not allowed when used memory > 'maxmemory'.", RedisFullError, "OOM"),
        ("READONLY You can't write against a read only replica.", RedisReadOnlyError, "READONLY"),
        ("MISCONF Redis is configured to save RDB snapshots", RedisReadOnlyError, "MISCONF"),
    ],
)
def test_known_refusals_become_their_own_errors(
    reply: str, kind: type[RedisRefusedError], code: str
) -> None:
    err = refusal("127.0.0.1:6379", reply)
    assert type(err) is kind
    assert isinstance(err, RedisRefusedError)
    assert isinstance(err, ProcflowError)
    assert err.code == code
    assert err.reply == reply
    assert err.address == "127.0.0.1:6379"
    assert str(err).startswith(f"Redis at 127.0.0.1:6379 refused a command: {reply}; ")


def test_a_database_number_out_of_range_names_the_databases_setting() -> None:
    err = refusal("h:1", "ERR DB index is out of range")
    assert type(err) is RedisRefusedError
    assert isinstance(err, ProcflowError)
    assert err.code == "ERR"
    assert "'databases' setting" in str(err)


def test_an_unknown_command_says_which_server_version_is_needed() -> None:
    err = refusal("h:1", "ERR unknown command 'BLMOVE', with args beginning with: ")
    assert type(err) is RedisRefusedError
    assert "Redis 6.2 or later" in str(err)


def test_an_unknown_refusal_is_a_plain_refusal_keeping_its_code() -> None:
    reply = "WRONGTYPE Operation against a key holding the wrong kind of value"
    err = refusal("h:1", reply)
    assert type(err) is RedisRefusedError
    assert isinstance(err, ProcflowError)
    assert err.code == "WRONGTYPE"
    assert str(err) == f"Redis at h:1 refused a command: {reply}"
