from __future__ import annotations

import signal

from procflow import errors
from procflow.store.keys import is_reserved, is_reserved_in_result, is_true, safe_node_id
from procflow.worker.fanout import children_state


def test_exit_descriptions() -> None:
    assert errors.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert errors.describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert errors.describe_exit(3) == "exit code 3"
    assert errors.describe_exit(None) == "still running"


def test_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.ProcflowError)
    err = errors.RedisUnavailableError("127.0.0.1:1", "refused")
    assert "127.0.0.1:1" in str(err) and isinstance(err, ConnectionError)
    assert isinstance(errors.EncodeError("x", "y"), TypeError)
    assert "2 job(s)" in str(errors.WaitTimeoutError(["a", "b"], 1.0))


def test_node_ids_are_safe_in_lock_values() -> None:
    assert safe_node_id("web-1.example") == "web-1.example"
    assert safe_node_id('bad"node|\\名前') == "bad_node____"
    assert len(safe_node_id("x" * 200)) == 60
    assert safe_node_id("") == "node"


def test_done_as_the_typescript_monitor_writes_it() -> None:
    assert is_true(b"true") and is_true(b'"true"') and not is_true(b"false")
    assert not is_true(None)
    replies = [1, [b'"true"', b'"true"'], 1, [b"true", None], 0, [None, None]]
    assert children_state(["a", "b", "c"], replies) == (True, ["a", "c"])
    for field in (
        "failed",
        "completed-queue",
        "attempts:q",
        "errors:q",
        "lease:q",
        "children:q:jobs",
        "children:q:pending",
        "parentJob",
        "id",
        "done",
    ):
        assert is_reserved(field), field
        # a result may carry done (the TypeScript convention), nothing else of these
        assert is_reserved_in_result(field) is (field != "done"), field
    for field in ("children:q:params", "result", "failedCount", "identity"):
        assert not is_reserved(field), field
        assert not is_reserved_in_result(field), field
