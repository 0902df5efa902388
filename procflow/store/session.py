"""The per-job protocol of one stage, bound to one connection.

A ``StageSession`` is what a worker process talks to Redis through: lease, block for a
job, claim, complete (which leases the next job in the same script call), fail, requeue, and
the fan-out calls of a parent stage. A worker opens its own (two connections: one for
scripts, one that blocks in BLMOVE); the supervisor and the monitor borrow one from their
Store's pool (``Store.session``) to settle a job. The constant part of each hot-path script
call is packed once per session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from .. import codec
from ..errors import ParentError
from ..failures import FailOutcome, FailureRecord, RetryPolicy
from ..settings import RedisSettings
from . import keys
from .keys import StageKeys, token_at
from .records import Lease
from .wire import Arg, Prepared, Wire, pack, script

__all__ = [
    "ChildJob",
    "StageSession",
    "child_job",
    "children_failure_message",
    "children_state",
    "decoded",
]

#: scripts a worker loads when it connects (so the first job pays no NOSCRIPT round trip)
_WORKER_SCRIPTS = (
    "lease",
    "lease_many",
    "claim",
    "complete",
    "complete_many",
    "fail",
    "requeue",
    "spawn",
    "park",
    "progress",
)
_COMPLETED_QUEUE = keys.COMPLETED_QUEUE.encode()
_DONE_TRUE = (keys.DONE.encode(), b"true")

#: a child job to create: id, key, its queue's waiting list, its fields (``child_job``)
ChildJob = tuple[str, str, str, Sequence[tuple[bytes, bytes]]]


def child_job(stage: StageKeys, child_id: str, fields: Sequence[tuple[bytes, bytes]]) -> ChildJob:
    """Child job ``child_id`` of child stage ``stage``, to create with ``fields``."""
    return (child_id, stage.job(child_id), stage.waiting, fields)


class StageSession:
    """Stage ``stage``'s protocol on ``wire``. ``fields`` are the job fields a lease reads,
    ``lock_ms`` the lock a lease sets. ``blocking`` is a second connection for
    ``wait_for_job`` (a worker's; a borrowed session has none)."""

    def __init__(
        self,
        wire: Wire,
        stage: StageKeys,
        *,
        fields: Sequence[str] = (),
        lock_ms: int = 0,
        blocking: Wire | None = None,
        prefetch: int = 1,
    ) -> None:
        self.wire = wire
        #: how many jobs one lease call takes (a worker's loop sets it before each call)
        self.prefetch = max(1, prefetch)
        self.blocking = blocking
        self.stage = stage
        self.fields = tuple(fields)
        self.lock_ms = lock_ms
        self._lease = self._head("lease", (stage.waiting, stage.processing))
        self._lease_many = self._head("lease_many", (stage.waiting, stage.processing))
        self._claim = self._head("claim", (stage.processing, stage.waiting))
        #: the stage was paused at this session's last lease (``flow.pause``): it leased nothing
        self.paused = False
        #: complete.lua's calls packed once per (next waiting list, prefetch)
        self._complete: dict[tuple[str, int], Prepared] = {}
        #: fail.lua's named options of the stage (ARGV[4]), packed once
        self._fail_stage = _options(
            {
                "jobPrefix": stage.job_prefix,
                "lockPrefix": stage.lock_prefix,
                "queueJson": stage.queue_json,
                "attemptsField": stage.attempts_field,
                "errorsField": stage.errors_field,
                "leaseField": stage.lease_field,
                "stallsField": stage.stalls_field,
                "doneChannel": stage.done_channel,
                "pendingField": stage.parent_pending_field,
            }
        )

    @classmethod
    def open(
        cls,
        settings: RedisSettings,
        stage: StageKeys,
        *,
        fields: Sequence[str],
        lock_ms: int,
        block_timeout: float,
        prefetch: int = 1,
    ) -> StageSession:
        """A worker's session with connections of its own (not connected yet). The blocking
        connection's socket times out a little after the server should have answered, so a
        silently dead server is noticed."""
        return cls(
            Wire(settings),
            stage,
            fields=fields,
            lock_ms=lock_ms,
            blocking=Wire(settings, socket_timeout=block_timeout + settings.socket_timeout),
            prefetch=prefetch,
        )

    # -- connections ---------------------------------------------------------------------

    def connect(self) -> int | None:
        """Connect, check the server answers, load the scripts; returns the blocking
        connection's client id (for CLIENT UNBLOCK). Raises RedisUnavailableError."""
        self.wire.connect()
        self.wire.call("PING")
        for name in _WORKER_SCRIPTS:
            self.wire.load(script(name))
        if self.blocking is None:
            return None
        self.blocking.connect()
        return self.blocking.client_id()

    def close(self) -> None:
        self.wire.close()
        if self.blocking is not None:
            self.blocking.close()

    # -- leasing -------------------------------------------------------------------------

    def _parent_keys(self) -> tuple[str, ...]:
        """A child queue's parent waiting list and parked set; nothing for other stages."""
        stage = self.stage
        return (stage.parent_waiting, stage.parent_parked) if stage.parent_pending_field else ()

    def _head_args(self, *extra: Arg) -> list[Arg]:
        """The arguments every per-job script starts with (then ``extra``)."""
        stage = self.stage
        return [
            stage.job_prefix,
            stage.lock_prefix,
            str(self.lock_ms),
            stage.attempts_field,
            stage.lease_field,
            len(self.fields),
            *self.fields,
            *extra,
        ]

    def _head(self, name: str, script_keys: tuple[str, ...], *extra: Arg) -> Prepared:
        return Prepared(script(name), script_keys, self._head_args(*extra))

    def lease(self, token: str) -> Lease | None:
        """LMOVE the next waiting job to processing and claim it, atomically."""
        reply = self.wire.run(self._lease, (token,))
        self.paused = reply == PAUSED
        return Lease.from_reply(reply, token) if reply and not self.paused else None

    def lease_many(self, token: str) -> list[Lease]:
        """Up to ``prefetch`` waiting jobs, each claimed under its own token (``token``, then
        the tokens numbered after it), in one call."""
        reply = self.wire.run(self._lease_many, (token, str(self.prefetch)))
        self.paused = reply == PAUSED
        return [] if self.paused else _leases(reply, token)

    def wait_for_job(self, timeout: float) -> str | None:
        """BLMOVE waiting → processing, up to ``timeout`` s, on the blocking connection (a
        borrowed session blocks its only one)."""
        stage = self.stage
        wire = self.blocking or self.wire
        if wire.stale():  # the server closed it while we were away (a restart)
            wire.close()
        reply = wire.call("BLMOVE", stage.waiting, stage.processing, "LEFT", "RIGHT", timeout)
        return reply.decode() if reply is not None else None

    def claim(self, job_id: str, token: str) -> Lease | None:
        """Lock a job that BLMOVE moved; None when someone else has it now."""
        reply = self.wire.run(self._claim, (token, job_id))
        self.paused = reply == PAUSED
        return Lease.from_reply(reply, token) if reply and not self.paused else None

    def complete(
        self,
        job_id: str,
        token: str,
        result: Sequence[tuple[bytes, bytes]],
        next_waiting: str,
        next_token: str = "",
    ) -> tuple[int, list[Lease]]:
        """Complete a job (write ``result``, pass it to ``next_waiting`` or mark it done) and,
        given ``next_token``, lease the next ones (up to ``prefetch``) in the same call.
        Returns (status, the next leases): status 1 completed, 0 the lease was lost and
        nothing changed, -1 the job hash was gone."""
        prepared = self._complete.get((next_waiting, self.prefetch))
        if prepared is None:
            stage = self.stage
            script_keys = (
                stage.processing,
                stage.waiting,
                stage.stats,
                stage.finished,
                *self._parent_keys(),
                *((next_waiting,) if next_waiting else ()),
            )
            prepared = self._complete[(next_waiting, self.prefetch)] = self._head(
                "complete",
                script_keys,
                keys.FINISHED_KEPT,
                stage.done_channel,
                stage.parent_pending_field,
                self.prefetch,
            )
        tail: list[str | bytes] = [job_id, token, next_token, str(int(time.time()) // 60)]
        for field, value in result:
            tail.append(field)
            tail.append(value)
        tail += (_COMPLETED_QUEUE, self.stage.queue_json)
        if not next_waiting:
            tail += _DONE_TRUE
        reply = self.wire.run(prepared, tail)
        return int(reply[0]), self._following(reply[1:], next_token)

    def complete_many(
        self,
        jobs: Sequence[tuple[str, str, Sequence[tuple[bytes, bytes]], str]],
        next_token: str = "",
    ) -> tuple[list[int], list[Lease]]:
        """Complete the jobs of a prefetched batch — each (id, token, result, next waiting
        list) as ``complete`` would — and, given ``next_token``, lease the next batch, in one
        call. Returns (a status per job, the next leases)."""
        stage = self.stage
        targets: dict[str, int] = {}
        script_keys: list[Arg] = [
            stage.processing,
            stage.waiting,
            stage.stats,
            stage.finished,
            *self._parent_keys(),
        ]
        tail: list[Arg] = [next_token, str(int(time.time()) // 60), len(jobs)]
        for job_id, token, result, next_waiting in jobs:
            target = 0
            if next_waiting:
                target = targets.get(next_waiting, 0)
                if not target:
                    script_keys.append(next_waiting)
                    target = targets[next_waiting] = len(script_keys)
            fields = [*result, (_COMPLETED_QUEUE, stage.queue_json.encode())]
            if not next_waiting:
                fields.append(_DONE_TRUE)
            tail += [job_id, token, target, len(fields)]
            for field, value in fields:
                tail.append(field)
                tail.append(value)
        head = self._head_args(
            keys.FINISHED_KEPT, stage.done_channel, stage.parent_pending_field, self.prefetch
        )
        reply = self.wire.evalsha(script("complete_many"), script_keys, [*head, *tail])
        return [int(x) for x in reply[0]], self._following(reply[1:], next_token)

    def _following(self, claims: Sequence[Any], next_token: str) -> list[Lease]:
        """The jobs a completion leased next (none when the stage is paused)."""
        if next_token:
            self.paused = bool(claims) and claims[0] == PAUSED
        return [] if self.paused else _leases(claims, next_token)

    # -- failing and giving back -----------------------------------------------------------

    def fail(
        self,
        job_id: str,
        token: str,
        record: FailureRecord,
        policy: RetryPolicy,
        mode: str = "token",
        final_fields: Sequence[tuple[str, str]] = (),
    ) -> FailOutcome:
        """One failed attempt: retry (now or delayed) or fail for good (then with
        ``final_fields`` written too). ``job_id`` may be '' to find the job by its lock token
        (mode ``token``); in mode ``orphan`` the job must be in processing with no lock."""
        stage = self.stage
        script_keys: tuple[Arg, ...] = (
            stage.processing,
            stage.waiting,
            stage.delayed,
            stage.failed,
            stage.stats,
            *self._parent_keys(),
        )
        attempt = {
            "kind": record.kind,
            "maxAttempts": policy.max_attempts,
            "maxStalls": policy.max_stalls,
            "delays": list(policy.delays_ms),
            "final": [x for pair in final_fields for x in pair],
        }
        args: tuple[Arg, ...] = (
            job_id,
            token,
            mode,
            self._fail_stage,
            _options(attempt),
            record.record_json(),
            record.message_json(),
        )
        return FailOutcome.from_reply(self.wire.evalsha(script("fail"), script_keys, args))

    def requeue(self, job_id: str, token: str) -> str | None:
        """Give a leased job back to the front of its waiting list, uncounted. ``job_id`` ''
        finds it by token. Returns the id, or None when no job of this lease was found."""
        stage = self.stage
        reply = self.wire.evalsha(
            script("requeue"),
            (stage.processing, stage.waiting),
            (
                job_id,
                token,
                stage.job_prefix,
                stage.lock_prefix,
                stage.attempts_field,
                stage.lease_field,
            ),
        )
        return reply.decode() if reply else None

    def report_progress(self, job_id: str, token: str, value_json: str, announce: str) -> bool:
        """Write a running job's progress (``progress:Q``) and announce it, if the lease under
        ``token`` still holds."""
        stage = self.stage
        return bool(
            self.wire.evalsha(
                script("progress"),
                (stage.lock(job_id), stage.job(job_id)),
                (token, stage.progress_field, value_json, stage.progress_channel, announce),
            )
            == 1
        )

    # -- fan-out / fan-in ----------------------------------------------------------------

    def spawn_children(
        self, job_id: str, token: str, children: Sequence[ChildJob], jobs_json: str, ttl: int
    ) -> int:
        """Create child jobs and park the parent: 1 parked, 0 lease lost, -1 the children
        existed already."""
        stage = self.stage
        script_keys: list[Arg] = [stage.processing, stage.parked]
        args: list[Arg] = [
            job_id,
            token,
            stage.job_prefix,
            stage.lock_prefix,
            stage.children_jobs_field,
            jobs_json,
            keys.children_pending_field(stage.queue),
            ttl,
            codec.encode(stage.job(job_id)),
            len(children),
            stage.lease_field,
            stage.attempts_field,
        ]
        for child_id, child_key, child_waiting, fields in children:
            script_keys.append(child_key)
            script_keys.append(child_waiting)
            args.append(child_id)
            args.append(len(fields))
            for field, value in fields:
                args.append(field)
                args.append(value)
        return int(self.wire.evalsha(script("spawn"), script_keys, args))

    def park(self, job_id: str, token: str) -> int:
        """Park a leased parent whose children are not all done."""
        stage = self.stage
        return int(
            self.wire.evalsha(
                script("park"),
                (stage.processing, stage.parked),
                (
                    job_id,
                    token,
                    stage.lock_prefix,
                    stage.job_prefix,
                    stage.lease_field,
                    stage.attempts_field,
                ),
            )
        )

    def children_jobs(self, job_id: str) -> bytes | None:
        """The raw ``children:Q:jobs`` field of a parent job of this stage."""
        field = self.stage.children_jobs_field
        value: bytes | None = self.wire.call("HMGET", self.stage.job(job_id), field)[0]
        return value

    def children_of(self, job_id: str) -> list[str]:
        """The child job keys of parent job ``job_id`` of this stage (its decoded
        ``children:Q:jobs``; [] before it fanned out). DecodeError or ParentError when the
        field is not a JSON list of keys."""
        raw = self.children_jobs(job_id)
        if raw is None:
            return []
        field = self.stage.children_jobs_field
        value = codec.decode_field(self.stage.job(job_id), field, raw)
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise ParentError(f"{field} must be a list of job keys")
        return value

    def children_status(self, child_keys: Sequence[str]) -> list[Any]:
        """Per child: EXISTS, then HMGET done failed — pipelined in one round trip."""
        return children_status(self.wire, child_keys)


def _options(options: dict[str, Any]) -> str:
    """Named options of a script, packed in one argument (JSON, read with cjson.decode)."""
    return json.dumps(options, separators=(",", ":"), ensure_ascii=False)


#: a lease script's reply when the stage is paused
PAUSED = b"paused"


def _leases(claims: Sequence[Any], first_token: str) -> list[Lease]:
    """The claims of one lease call: the i-th under the token i places after ``first_token``."""
    return [
        Lease.from_reply(claim, token_at(first_token, i) if i else first_token)
        for i, claim in enumerate(claims)
    ]


def children_status(wire: Wire, child_keys: Sequence[str]) -> list[Any]:
    """Per child: EXISTS, then HMGET done failed failedErrorMsg, pipelined (read by
    ``children_state`` and ``children_failure_message``)."""
    commands = []
    for key in child_keys:
        commands.append(pack("EXISTS", key))
        commands.append(pack("HMGET", key, keys.DONE, keys.FAILED, keys.FAILED_ERROR_MSG))
    return [wire.check(r) for r in wire.pipeline(commands)]


def children_state(child_keys: Sequence[str], replies: Sequence[Any]) -> tuple[bool, list[str]]:
    """From pipelined ``EXISTS`` / ``HMGET done failed …`` replies per child: whether every
    child is done, and the keys of those that failed. A child whose hash is gone counts as done
    and failed (it expired or was deleted)."""
    all_done = True
    failed = []
    for n, key in enumerate(child_keys):
        exists, fields = replies[2 * n], replies[2 * n + 1]
        done, has_failed = fields[0], fields[1]
        if not exists:
            failed.append(key)
            continue
        if not keys.is_true(done):
            all_done = False
        if keys.is_true(has_failed):
            failed.append(key)
    return all_done, failed


def children_failure_message(
    child_keys: Sequence[str], replies: Sequence[Any], failed: Sequence[str]
) -> str:
    """The ``failedErrorMsg`` of a parent failed for its children: how many failed, and the
    first few with their own ``failedErrorMsg`` (from the replies' third field)."""
    errors: dict[str, str] = {}
    for n, key in enumerate(child_keys):
        if key not in failed:
            continue
        exists, fields = replies[2 * n], replies[2 * n + 1]
        raw = fields[2] if exists and len(fields) > 2 else None
        if not exists:
            errors[key] = "its job hash no longer exists"
        elif raw is None:
            errors[key] = "failed"
        else:
            try:
                errors[key] = str(codec.decode(raw))
            except ValueError:
                errors[key] = raw.decode("utf-8", "replace")
    shown = "; ".join(f"{k}: {errors[k]}" for k in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} of {len(child_keys)} child jobs failed: {shown}{more}"


def decoded(stage: StageKeys, job_id: str, field: str, raw: bytes) -> Any:
    """A raw field of job ``job_id`` of stage ``stage``, decoded (DecodeError names the
    job's key and the field)."""
    return codec.decode_field(stage.job(job_id), field, raw)
