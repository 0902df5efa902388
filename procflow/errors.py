"""Every error procflow raises.

::

    ProcflowError
    ├── ConfigurationError          a flow, queue, worker or setting that cannot work
    │   ├── UnknownQueueError       a queue name the flow does not have
    │   └── UnknownLookupAttributeError
    ├── EncodeError                 a value JavaScript's JSON.stringify cannot write (a TypeError)
    ├── DecodeError                 a stored field that is not JSON (keeps key, field, raw bytes)
    ├── RedisUnavailableError       the server cannot be reached (names the address)
    ├── WorkerStartError            a worker process failed to connect or start
    ├── SupervisorStateError        an operation in the wrong lifecycle state
    └── WaitTimeoutError            Supervisor.wait ran out of time (keeps the ids still pending)

A message says what was wrong and, where it can, what to do about it.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

__all__ = [
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "ProcflowError",
    "RedisUnavailableError",
    "SupervisorStateError",
    "UnknownLookupAttributeError",
    "UnknownQueueError",
    "WaitTimeoutError",
    "WorkerStartError",
    "describe_exit",
]


class ProcflowError(Exception):
    """Root of every error procflow raises."""


class ConfigurationError(ProcflowError, ValueError):
    """A flow, queue, worker or connection setting that cannot work."""


class UnknownQueueError(ConfigurationError, KeyError):
    """A queue name that the flow does not define."""

    def __init__(self, queue: str, known: Sequence[str]) -> None:
        self.queue = queue
        self.known = tuple(known)
        super().__init__(f"unknown queue {queue!r}; this flow's queues are: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownLookupAttributeError(ConfigurationError, KeyError):
    """A lookup attribute that the flow was not created with."""

    def __init__(self, attribute: str, known: Sequence[str]) -> None:
        self.attribute = attribute
        self.known = tuple(known)
        listed = ", ".join(known) if known else "(none)"
        super().__init__(
            f"{attribute!r} is not a lookup attribute of this flow; its lookup attributes are: "
            f"{listed}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class EncodeError(ProcflowError, TypeError):
    """A value that cannot be stored: it is not JSON as JavaScript's JSON.stringify writes it."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class DecodeError(ProcflowError, ValueError):
    """A stored hash field whose bytes are not valid JSON."""

    def __init__(self, key: str, field: str, raw: bytes, problem: str) -> None:
        self.key = key
        self.field = field
        self.raw = raw
        super().__init__(
            f"field {field!r} of {key!r} is not valid JSON ({problem}); raw bytes: {raw!r}"
        )


class RedisUnavailableError(ProcflowError, ConnectionError):
    """The Redis server cannot be reached, or the connection broke."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        self.address = address
        super().__init__(f"Redis at {address} is unavailable: {cause}")


class WorkerStartError(ProcflowError, RuntimeError):
    """A worker process could not connect or start; nothing was left running."""


class SupervisorStateError(ProcflowError, RuntimeError):
    """A supervisor or worker operation called in a lifecycle state where it cannot run."""


class WaitTimeoutError(ProcflowError, TimeoutError):
    """Supervisor.wait gave up before every job was done."""

    def __init__(self, pending: Sequence[str], timeout: float) -> None:
        self.pending = tuple(pending)
        shown = ", ".join(self.pending[:5]) + (" …" if len(self.pending) > 5 else "")
        super().__init__(f"{len(self.pending)} job(s) not done after {timeout:g} s: {shown}")


def describe_exit(exitcode: int | None) -> str:
    """Turn a process exit code into words: ``exit code 3`` or ``killed by SIGKILL``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit code {exitcode}"
