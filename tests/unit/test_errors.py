from __future__ import annotations

import signal

from procflow import errors


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
