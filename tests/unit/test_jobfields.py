"""The operator views' reading of a decoded job's bookkeeping fields (store.jobfields): what
each question answers for a job that has the field, one that lacks it, and odd values."""

from __future__ import annotations

from procflow.store import jobfields

JOB = {
    "id": "j1",
    "userId": 62,
    "attempts:check": 2,
    "errors:check": [{"error": "a"}, {"error": "b"}],
    "lease:check": "node|1|1.00|7|3",
    "children:fan:pending": 3,
    "children:fan:jobs": [{"id": "k1"}],
    "children:fan:failed": ["job:fan:c1:k1"],
    "done": False,
}


def test_the_jobs_own_fields_leave_the_bookkeeping_out() -> None:
    assert jobfields.own_fields(JOB) == {"userId": 62}
    assert jobfields.is_bookkeeping("errors:x") and not jobfields.is_bookkeeping("userId")


def test_attempts_errors_and_lease_are_read_per_stage() -> None:
    assert jobfields.attempts(JOB, "check") == 2
    assert jobfields.attempts(JOB, "other") == 0
    assert jobfields.errors(JOB, "check") == [{"error": "a"}, {"error": "b"}]
    assert jobfields.errors({"errors:q": "not a list"}, "q") == []
    assert list(jobfields.errors_anywhere(JOB)) == [[{"error": "a"}, {"error": "b"}]]
    assert jobfields.is_leased(JOB, "check") and not jobfields.is_leased(JOB, "other")


def test_children_pending_and_failed() -> None:
    assert jobfields.pending_children(JOB, "fan") == 3
    assert jobfields.pending_children(JOB, "check") == 0
    assert jobfields.pending_children({"children:fan:pending": True}, "fan") == 0
    assert jobfields.failed_children(JOB) == ["job:fan:c1:k1"]


def test_a_child_names_its_parent_and_its_queue() -> None:
    assert jobfields.parent_id({"parentJob": "job:F:p1"}) == "p1"
    assert jobfields.parent_id({"parentJob": 3}) is None
    assert jobfields.parent_id({}) is None
    assert jobfields.stage_of_child({"failedQueue": "fan:c1"}, "fan") == "fan:c1"
    assert jobfields.stage_of_child({"attempts:fan:c2": 1}, "fan") == "fan:c2"
    assert jobfields.stage_of_child({}, "fan") == "fan"


def test_per_stage_records_are_told_apart_from_other_fields() -> None:
    assert jobfields.stage_records("errors:check") == ("errors", "check")
    assert jobfields.stage_records("attempts:fan:c1") == ("attempts", "fan:c1")
    assert jobfields.stage_records("children:fan:jobs") == ("children", "fan")
    assert jobfields.stage_records("children:fan:params") is None
    assert jobfields.stage_records("userId") is None
