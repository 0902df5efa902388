"""Every error procflow raises.

    ProcflowError
    ├── ConfigurationError          a flow, queue, worker or setting that cannot work
    │   ├── UnknownQueueError       a queue name the flow does not have
    │   └── UnknownLookupAttributeError
    ├── EncodeError                 a value JavaScript's JSON.stringify cannot write (a TypeError)
    ├── DecodeError                 a stored field that is not JSON (keeps key, field, raw bytes)
    ├── ParentError                 a parent job's child parameters cannot become child jobs
    ├── UnknownJobError             ids that are no job of the flow (keeps the ids)
    ├── RedisUnavailableError       the server cannot be reached (names the address)
    ├── RedisRefusedError           the server answered with an error (keeps its code)
    │   ├── RedisPermissionError    NOPERM, NOAUTH, WRONGPASS: the user lacks a right
    │   ├── RedisFullError          OOM: maxmemory reached with a no-eviction policy
    │   ├── RedisReadOnlyError      READONLY, MISCONF: the server takes no writes now
    │   └── CreateJobsError         create_jobs was refused part way (keeps the ids created)
    ├── WorkerStartError            a worker process failed to connect or start
    ├── SupervisorStateError        an operation in the wrong lifecycle state
    ├── ServerStartError            a private or embedded server did not start
    ├── WaitTimeoutError            wait ran out of time (keeps the ids still pending)
    │   └── IdleTimeoutError        a test helper found the flow still busy (keeps the stages)
    └── JobFailedError              wait(raise_on_failure=True) found failed jobs, or jobs
                                    passed on with failed children (keeps them)

A message says what was wrong and, where it can, what to do about it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ConfigurationError",
    "CreateJobsError",
    "DecodeError",
    "EncodeError",
    "IdleTimeoutError",
    "JobFailedError",
    "ParentError",
    "ProcflowError",
    "RedisFullError",
    "RedisPermissionError",
    "RedisReadOnlyError",
    "RedisRefusedError",
    "RedisUnavailableError",
    "ServerStartError",
    "SupervisorStateError",
    "UnknownFlowError",
    "UnknownJobError",
    "UnknownLookupAttributeError",
    "UnknownQueueError",
    "WaitTimeoutError",
    "WorkerStartError",
    "describe_exit",
    "refusal",
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


class UnknownFlowError(ConfigurationError, KeyError):
    """A flow name that no supervisor registered in this Redis."""

    def __init__(self, flow: str, known: Sequence[str]) -> None:
        self.flow = flow
        self.known = tuple(known)
        listed = (
            ", ".join(known) if known else "none yet (a flow registers when its supervisor starts)"
        )
        super().__init__(
            f"no flow {flow!r} is registered in this Redis; registered flows: {listed}"
        )

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
        shown = repr(raw) if len(raw) <= 200 else f"{raw[:200]!r}… ({len(raw):,} bytes)"
        super().__init__(
            f"field {field!r} of {key!r} is not valid JSON ({problem}); raw bytes: {shown}"
        )


class ParentError(ProcflowError, ValueError):
    """The parent job's child parameters cannot be turned into child jobs."""


class UnknownJobError(ProcflowError, KeyError):
    """Job ids that are no job of the flow (never created, expired or deleted)."""

    def __init__(self, flow: str, ids: Sequence[str]) -> None:
        self.ids = tuple(ids)
        shown = ", ".join(self.ids[:5]) + (" …" if len(self.ids) > 5 else "")
        super().__init__(f"no such job(s) in flow {flow!r}: {shown}")

    def __str__(self) -> str:
        return str(self.args[0])


class RedisUnavailableError(ProcflowError, ConnectionError):
    """The Redis server cannot be reached, or the connection broke."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        self.address = address
        super().__init__(f"Redis at {address} is unavailable: {cause}")


class RedisRefusedError(ProcflowError):
    """The server answered a command with an error reply. ``code`` is its first word
    (``NOPERM``, ``OOM``, ``ERR`` …), ``reply`` the whole text."""

    def __init__(self, address: str, reply: str, hint: str = "") -> None:
        self.address = address
        self.reply = reply
        first = reply.split(" ", 1)[0]
        self.code = first if first in REFUSAL_CODES else "ERR"
        text = f"Redis at {address} refused a command: {reply}"
        super().__init__(f"{text}; {hint}" if hint else text)


class RedisPermissionError(RedisRefusedError):
    """The connection's user may not run a command or touch a key procflow needs."""


class RedisFullError(RedisRefusedError):
    """The server is at ``maxmemory`` and evicts nothing (``OOM command not allowed``)."""


class RedisReadOnlyError(RedisRefusedError):
    """The server takes no writes now: a replica (``READONLY``) or failing to persist
    (``MISCONF``)."""


#: the error codes Redis and Valkey put first in an error reply (redis-py drops ``ERR``)
REFUSAL_CODES = frozenset(
    [
        "ERR",
        "WRONGTYPE",
        "NOPERM",
        "NOAUTH",
        "WRONGPASS",
        "OOM",
        "BUSY",
        "LOADING",
        "READONLY",
        "MISCONF",
        "NOSCRIPT",
        "EXECABORT",
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "CROSSSLOT",
        "MASTERDOWN",
        "NOREPLICAS",
        "UNBLOCKED",
        "NOGROUP",
        "BUSYGROUP",
        "NOTBUSY",
        "UNKILLABLE",
        "NOPROTO",
    ]
)


class CreateJobsError(RedisRefusedError):
    """``create_jobs`` was refused part way through (the server full, say). Each job is
    written whole or not at all: ``created`` holds the ids that were written (in the order
    given), ``not_created`` the others; create those again, not the whole batch."""

    def __init__(
        self, refused: RedisRefusedError, created: Sequence[str], not_created: Sequence[str]
    ) -> None:
        self.created = tuple(created)
        self.not_created = tuple(not_created)
        self.refused = refused
        super().__init__(
            refused.address,
            refused.reply,
            f"{len(self.created)} job(s) were created (their ids are in .created) and "
            f"{len(self.not_created)} were not (.not_created); "
            + (refused.args[0].split("; ", 1)[1] if "; " in refused.args[0] else "retry those"),
        )


_REFUSALS: dict[str, tuple[type[RedisRefusedError], str]] = {
    "NOPERM": (
        RedisPermissionError,
        "the Redis user lacks a permission procflow needs (docs/configuration.md lists them)",
    ),
    "NOAUTH": (RedisPermissionError, "the server needs a password: put it in the Redis URL"),
    "WRONGPASS": (RedisPermissionError, "check the user name and password in the Redis URL"),
    "OOM": (
        RedisFullError,
        "the server reached maxmemory: free memory, raise maxmemory or remove old jobs",
    ),
    "READONLY": (RedisReadOnlyError, "this server is a replica: point procflow at the master"),
    "MISCONF": (
        RedisReadOnlyError,
        "the server cannot save to disk and refuses writes: check its disk and logs",
    ),
}


def refusal(address: str, reply: str) -> RedisRefusedError:
    """The procflow error for an error reply, with what to do about it."""
    code = reply.split(" ", 1)[0]
    kind, hint = _REFUSALS.get(code, (RedisRefusedError, ""))
    if "DB index is out of range" in reply:
        hint = "the URL's database number is higher than the server's 'databases' setting"
    elif "unknown command" in reply:
        hint = "procflow needs Redis 6.2 or later (or Valkey)"
    return kind(address, reply, hint)


class WorkerStartError(ProcflowError, RuntimeError):
    """A worker process could not connect or start; nothing was left running."""


class SupervisorStateError(ProcflowError, RuntimeError):
    """A supervisor or worker operation called in a lifecycle state where it cannot run."""


class ServerStartError(ProcflowError, RuntimeError):
    """A private or embedded Redis-compatible server did not start (its log's end is in the
    message)."""


class WaitTimeoutError(ProcflowError, TimeoutError):
    """Supervisor.wait gave up before every job was done."""

    def __init__(self, pending: Sequence[str], timeout: float) -> None:
        self.pending = tuple(pending)
        shown = ", ".join(self.pending[:5]) + (" …" if len(self.pending) > 5 else "")
        super().__init__(f"{len(self.pending)} job(s) not done after {timeout:g} s: {shown}")


_BUSY = ("waiting", "processing", "delayed", "parked")


class IdleTimeoutError(WaitTimeoutError):
    """The flow still had work when ``run_until_idle`` or ``run_inline`` ran out of
    time. ``busy`` maps each stage still busy to its counts (waiting, processing, delayed,
    parked, failed); ``pending`` (WaitTimeoutError's job ids) is empty: the stages are named
    instead."""

    def __init__(
        self,
        how: str,
        flow: str,
        timeout: float,
        busy: Mapping[str, Mapping[str, int]],
        detail: str = "",
    ) -> None:
        self.pending = ()
        self.flow = flow
        self.timeout = timeout
        self.busy = {stage: dict(counts) for stage, counts in busy.items()}
        stages = "; ".join(
            f"{stage!r} has " + ", ".join(f"{counts[s]} {s}" for s in _BUSY if counts.get(s))
            for stage, counts in self.busy.items()
        )
        text = f"{how}: flow {flow!r} was not idle after {timeout:g} s"
        text += f": {stages}" if stages else ""
        text += f" ({detail})" if detail else ""
        # WaitTimeoutError's own __init__ words its message for job ids: skip it
        super(WaitTimeoutError, self).__init__(text)


class JobFailedError(ProcflowError, RuntimeError):
    """``wait(..., raise_on_failure=True)`` found jobs that failed for good, or that a parent
    stage passed on though some of their child jobs failed (``on_child_failure="mark"``).
    ``jobs`` holds every job waited for, in the order given; ``failed`` the failed ones;
    ``incomplete`` the ones done with failed children, each with their keys
    (``children:P:failed``)."""

    def __init__(
        self,
        jobs: Sequence[Mapping[str, Any]],
        failed_children: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.failed = [j for j in self.jobs if j.get("failed") is True]
        children = failed_children or {}
        self.incomplete = [
            j for j in self.jobs if j.get("failed") is not True and children.get(str(j.get("id")))
        ]
        parts = []
        if self.failed:
            shown = "; ".join(
                f"{j.get('id')} in {j.get('failedQueue')!r}: {j.get('failedErrorMsg')}"
                for j in self.failed[:3]
            )
            more = f" (and {len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
            parts.append(f"{len(self.failed)} job(s) failed: {shown}{more}")
        if self.incomplete:
            shown = "; ".join(
                f"{j['id']}: {len(children[j['id']])} failed, {children[j['id']][0]} first"
                for j in self.incomplete[:3]
            )
            n = len(self.incomplete)
            more = f" (and {n - 3} more)" if n > 3 else ""
            parts.append(f"{n} job(s) done with failed children: {shown}{more}")
        super().__init__("; ".join(parts))


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
