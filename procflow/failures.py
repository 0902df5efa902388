"""Failed attempts: the record that describes one, the retry policy, and what came of it.

Whoever notices a failure — the worker (the function raised, a field or the result is bad),
the supervisor (its worker died, ran too long or too big), the monitor (a lock expired) —
builds a ``FailureRecord`` with one of the constructors below and hands it to
``record_failure``, which makes the one store call (``fail.lua``) and logs the outcome in
one line. docs/wire-format.md lists every record's fields.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import codec

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "FailOutcome",
    "Failer",
    "FailureRecord",
    "RetryPolicy",
    "log_outcome",
    "record_failure",
]

#: how much of a traceback a record keeps (its end)
TRACEBACK_LIMIT = 4000


def _now_ms() -> int:
    return int(time.time() * 1000)


def signal_name(exitcode: int | None) -> str | None:
    """``SIGKILL`` for an exit code of -9; None when no signal ended the process."""
    if exitcode is None or exitcode >= 0 or -exitcode not in signal.valid_signals():
        return None
    return signal.Signals(-exitcode).name


@dataclass(frozen=True)
class FailureRecord:
    """One failed attempt. ``error`` and ``kind`` go into the job's ``errors:Q`` list (with
    ``at`` and ``details``); ``message`` becomes ``failedErrorMsg`` if this attempt was the
    last."""

    error: str
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: int = field(default_factory=_now_ms)

    # -- noticed by the worker ------------------------------------------------------------

    @classmethod
    def in_worker(
        cls,
        error: str,
        kind: str,
        *,
        attempt: int,
        worker: str,
        pid: int,
        traceback: str | None = None,
    ) -> FailureRecord:
        """The function raised (``exception``), a field was not JSON (``decode``), the result
        was unusable (``result``) or a parent's children were malformed (``children``)."""
        details: dict[str, Any] = {"attempt": attempt, "worker": worker, "pid": pid}
        if traceback:
            details["traceback"] = traceback[-TRACEBACK_LIMIT:]
        return cls(error, kind, error, details)

    # -- noticed by the supervisor --------------------------------------------------------

    @classmethod
    def worker_died(
        cls, reason: str, kind: str, *, worker: str, pid: int | None, exitcode: int | None
    ) -> FailureRecord:
        """The worker process died (``crash``) or was killed (``timeout``, ``memory``) while
        it ran or completed the job."""
        details = {
            "worker": worker,
            "pid": pid,
            "exitCode": exitcode,
            "signal": signal_name(exitcode),
        }
        return cls(reason, kind, f"{reason} while running the job", details)

    @classmethod
    def never_claimed(cls) -> FailureRecord:
        """The worker died between moving the job (BLMOVE) and claiming it."""
        return cls("worker died before claiming the job", "crash", "worker died")

    @classmethod
    def supervisor_died(cls, lock: str) -> FailureRecord:
        """A previous supervisor on this node died holding the job (found at start-up)."""
        return cls(
            f"the supervisor holding the job died (lock {lock})",
            "supervisor",
            "the supervisor running the job died",
        )

    # -- noticed by the monitor -----------------------------------------------------------

    @classmethod
    def lock_expired(cls, queue: str) -> FailureRecord:
        message = f"the job's lock in {queue!r} expired: its worker or node stopped"
        return cls(message, "lock-expired", message)

    # -- on the wire ----------------------------------------------------------------------

    def record_json(self) -> str:
        """The entry for ``errors:Q``: error, kind, at, then the details."""
        return codec.encode({"error": self.error, "kind": self.kind, "at": self.at, **self.details})

    def message_json(self) -> str:
        return codec.encode(self.message)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a stage allows, the delay (ms) before retry 1, 2, …, and how many
    times a job may lose its worker to a dead node or supervisor (a failure of kind
    ``lock-expired`` or ``supervisor``) without it costing an attempt; later ones count."""

    max_attempts: int = 1
    delays_ms: Sequence[int] = ()
    max_stalls: int = 3


@dataclass(frozen=True)
class FailOutcome:
    """What fail.lua did: ``retry``, ``stalled`` (put back uncounted: its node or supervisor
    died), ``failed``, ``requeued``, ``missing``; ``None`` when the job was not ours any more
    and nothing changed."""

    id: str | None
    outcome: str | None
    attempts: int = 0
    delay_ms: int = 0

    @classmethod
    def from_reply(cls, reply: Any) -> FailOutcome:
        if not reply:
            return cls(None, None)
        return cls(reply[0].decode(), reply[1].decode(), int(reply[2]), int(reply[3]))

    @property
    def changed(self) -> bool:
        return self.outcome is not None


class Failer(Protocol):
    """What can write a failed attempt: a stage session of the store."""

    def fail(
        self,
        job_id: str,
        token: str,
        record: FailureRecord,
        policy: RetryPolicy,
        mode: str = "token",
        final_fields: Sequence[tuple[str, str]] = (),
    ) -> FailOutcome: ...


def record_failure(
    target: Failer,
    job_id: str,
    token: str,
    record: FailureRecord,
    policy: RetryPolicy,
    log: Logger,
    *,
    mode: str = "token",
    final_fields: Sequence[tuple[str, str]] = (),
) -> FailOutcome:
    """Write one failed attempt and log what came of it. ``mode`` ``orphan`` is for a job in
    processing with no lock (the monitor, or a worker that died before claiming); such a
    call that changed nothing is not logged (another node got there first).
    ``final_fields`` (field, JSON value) are written if the job fails for good."""
    outcome = target.fail(job_id, token, record, policy, mode, final_fields)
    if mode != "orphan" or outcome.changed:
        log_outcome(
            log.bind(job=job_id or outcome.id), job_id or outcome.id or "?", record.message, outcome
        )
    return outcome


def log_outcome(log: Logger, job_id: str, message: str, outcome: FailOutcome | None) -> None:
    """One log line for what fail.lua did."""
    if outcome is None or outcome.outcome is None:
        log.warning("job {} failed ({}) but its lease was lost; nothing changed", job_id, message)
    elif outcome.outcome == "retry":
        log.warning(
            "job {} attempt {} failed: {}; retrying in {:.1f} s",
            job_id,
            outcome.attempts,
            message,
            outcome.delay_ms / 1000,
        )
    elif outcome.outcome == "failed":
        log.error("job {} failed after {} attempt(s): {}", job_id, outcome.attempts, message)
    elif outcome.outcome == "stalled":
        log.warning(
            "job {} lost its worker: {}; put back on its waiting list without using an attempt",
            job_id,
            message,
        )
    elif outcome.outcome == "requeued":
        log.info("job {} was never started; put back on its waiting list", job_id)
    else:
        log.warning("job {} vanished while failing: {}", job_id, message)
