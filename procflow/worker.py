"""The loop that runs inside a worker process: lease → run → complete or fail.

On the hot path a job costs one script call: completing a job leases the next one in the same
round trip. When nothing waits, the worker blocks in BLMOVE and claims what it gets with a
second call. The worker writes what it holds into its shared-memory slot before every call,
so its supervisor can clean up after it whatever kills it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from .errors import DecodeError, EncodeError, RedisUnavailableError
from .parent import ParentError, children_state, plan_children
from .store import keys
from .store.keys import StageKeys
from .store.redis import FailOutcome, Lease, Store
from .store.wire import Wire, script
from .supervisor.slots import SlotWriter

if TYPE_CHECKING:
    from loguru import Logger

    from .flow import Stage
    from .settings import RedisSettings

__all__ = ["WorkerLoop", "WorkerPayload"]

T = TypeVar("T")

_SCRIPTS = ("lease", "claim", "complete", "fail", "requeue", "spawn", "park")


@dataclass
class WorkerPayload:
    """Everything a worker process needs, sent to it once (with cloudpickle)."""

    worker: str
    flow: str
    redis: RedisSettings
    stage: Stage
    kind: str
    fn: Callable[[Any], Any] | None
    lock_time: float
    block_timeout: float
    key_ttl: int
    holder: str
    routes: dict[str, str] = field(default_factory=dict)  # queue name -> waiting list
    child_stages: dict[str, StageKeys] = field(default_factory=dict)
    max_jobs_per_child: int | None = None
    max_age: float | None = None
    log_level: str = "INFO"


class WorkerLoop:
    """One worker: connects, then takes jobs until told to stop."""

    def __init__(
        self,
        payload: WorkerPayload,
        slot: SlotWriter,
        log: Logger,
        stop_flag: Callable[[], bool] = lambda: False,
    ) -> None:
        self.p = payload
        self.stage = payload.stage
        self.k = payload.stage.keys
        self.slot = slot
        self.log = log
        self._external_stop = stop_flag
        self.store = Store(payload.redis)
        self.wire = Wire(payload.redis, socket_timeout=10.0)
        self.bwire = self.store.blocking_wire(payload.block_timeout)
        self.lock_ms = int(payload.lock_time * 1000)
        self.fields = payload.stage.fields
        spec = payload.stage.spec
        self.next_waiting = keys.waiting(spec.next_queue) if spec.next_queue else ""
        self.max_attempts = spec.max_attempts
        self.pid = os.getpid()
        self.token_prefix = f"{payload.holder}|{self.pid}|"
        self.count = 0
        self.jobs_done = 0
        self.born = time.monotonic()
        self.client_id: int | None = None
        self.end_reason = ""
        self._outage_since: float | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open both connections and load the scripts; raises RedisUnavailableError."""
        self.wire.connect()
        self.wire.call("PING")
        for name in _SCRIPTS:
            self.wire.load(script(name))
        self.bwire.connect()
        self.client_id = self.bwire.client_id()

    def disconnect(self) -> None:
        self.wire.close()
        self.bwire.close()

    def _token(self) -> str:
        self.count += 1
        return f"{self.token_prefix}{self.count}"

    def should_end(self) -> bool:
        if self.slot.stop_requested or self._external_stop():
            self.end_reason = "stop"
            return True
        if self.p.max_jobs_per_child is not None and self.jobs_done >= self.p.max_jobs_per_child:
            self.end_reason = f"recycle: {self.jobs_done} jobs done"
            return True
        if self.p.max_age is not None and time.monotonic() - self.born >= self.p.max_age:
            self.end_reason = f"recycle: older than {self.p.max_age:g} s"
            return True
        return False

    def run(self) -> str:
        """Take jobs until told to stop or due for recycling; returns why it ended."""
        lease: Lease | None = None
        while True:
            if lease is None:
                if self.should_end():
                    break
                lease = self._next_lease()
                continue
            if self.should_end():
                # leased together with the last completion and never started: give it back
                self._give_back(lease)
                self.slot.finished()
                break
            lease = self._process(lease)
        self.slot.stopped()
        return self.end_reason

    def _give_back(self, lease: Lease) -> None:
        self._redis(lambda: self.store.requeue(self.k, lease.id, lease.token, self.wire))

    # -- Redis calls that survive outages ------------------------------------------------

    def _redis(
        self, op: Callable[[], T], lost_token: str = "", abort_on_stop: bool = False
    ) -> T | None:
        """Run ``op`` until it works. After a broken connection, a lease that may have
        happened under ``lost_token`` is given back before ``op`` runs again."""
        delay = 0.05
        broken = False
        while True:
            try:
                if broken and lost_token:
                    self.store.requeue(self.k, "", lost_token, self.wire)
                result = op()
            except RedisUnavailableError as exc:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self.log.warning("{} ; retrying with backoff", exc)
                broken = True
                if abort_on_stop and self.should_end():
                    return None
                time.sleep(delay)  # back-off before reconnecting, not synchronisation
                delay = min(delay * 2, 2.0)
                continue
            if self._outage_since is not None:
                self.log.info(
                    "Redis is reachable again after {:.1f} s", time.monotonic() - self._outage_since
                )
                self._outage_since = None
            return result

    # -- leasing -------------------------------------------------------------------------

    def _next_lease(self) -> Lease | None:
        token = self._token()
        self.slot.leasing(token)
        lease = self._redis(
            lambda: self.store.lease(self.wire, self.k, token, self.lock_ms, self.fields),
            lost_token=token,
            abort_on_stop=True,
        )
        if lease is not None:
            lease.token = token
            return lease
        self.slot.waiting()
        job_id = self._redis(
            lambda: self.store.wait_for_job(self.bwire, self.k, self.p.block_timeout),
            abort_on_stop=True,
        )
        if job_id is None:
            return None
        token = self._token()
        self.slot.leasing(token, job_id)
        lease = self._redis(
            lambda: self.store.claim(self.wire, self.k, job_id, token, self.lock_ms, self.fields),
            lost_token=token,
        )
        if lease is None:
            self.slot.waiting()
            return None
        lease.token = token
        return lease

    # -- one job ---------------------------------------------------------------------------

    def _process(self, lease: Lease) -> Lease | None:
        if lease.vanished:
            self.log.bind(job=lease.id).warning(
                "job {} was in {} but its hash is gone (expired or deleted); dropped",
                lease.id,
                self.k.waiting,
            )
            self.slot.finished()
            return None
        self.slot.running(lease.id, lease.token, time.monotonic())
        if self.p.kind == "parent":
            return self._process_parent(lease)
        fn = self.p.fn
        assert fn is not None
        try:
            params = self._params(lease)
        except DecodeError as exc:
            return self._fail(lease, str(exc), "decode")
        try:
            result = fn(params)
        except (Exception, SystemExit) as exc:
            return self._fail(
                lease, f"{type(exc).__name__}: {exc}", "exception", traceback.format_exc()
            )
        try:
            pairs, next_waiting = self._result(result)
        except (EncodeError, ValueError) as exc:
            return self._fail(lease, str(exc), "result")
        return self._complete(lease, pairs, next_waiting)

    def _params(self, lease: Lease) -> dict[str, Any]:
        params: dict[str, Any] = {"id": lease.id}
        key = self.k.job(lease.id)
        for name, raw in zip(self.fields, lease.values, strict=False):
            params[name] = None if raw is None else codec.decode_field(key, name, raw)
        return params

    def _result(self, result: Any) -> tuple[list[tuple[bytes, bytes]], str]:
        if not isinstance(result, Mapping):
            hint = " (return {} for no result fields)" if result is None else ""
            raise ValueError(
                f"worker function returned {type(result).__name__}, not a mapping of result "
                f"fields{hint}"
            )
        next_waiting = self.next_waiting
        if "nextQueue" in result and result["nextQueue"] is not None:
            name = result["nextQueue"]
            if name not in self.p.routes:
                raise ValueError(
                    f"result nextQueue {name!r} is not a queue of flow {self.p.flow!r} "
                    f"(its queues: {', '.join(self.p.routes)})"
                )
            next_waiting = self.p.routes[name]
        fields = {k: v for k, v in result.items() if k != "nextQueue"}
        reserved = [k for k in fields if keys.is_reserved(k)]
        if reserved:
            raise ValueError(
                f"result field {reserved[0]!r} is procflow's bookkeeping; a worker function "
                "cannot set it"
            )
        return codec.encode_fields(fields, "result field"), next_waiting

    def _complete(
        self, lease: Lease, pairs: list[tuple[bytes, bytes]], next_waiting: str
    ) -> Lease | None:
        self.jobs_done += 1
        next_token = "" if self.should_end() else self._token()
        self.slot.completing(next_token)
        reply = self._redis(
            lambda: self.store.complete(
                self.wire,
                self.k,
                lease.id,
                lease.token,
                pairs,
                next_waiting,
                next_token,
                self.lock_ms,
                self.fields,
            ),
            lost_token=next_token,
        )
        assert reply is not None
        status, following = reply
        self.slot.finished()
        if status == 0:
            self.log.bind(job=lease.id).warning(
                "the lease on job {} was lost before it completed (its lock expired and the job "
                "was taken back); this result was not written",
                lease.id,
            )
        elif status < 0:
            self.log.bind(job=lease.id).warning("job {} vanished before it completed", lease.id)
        elif self._debug:
            self.log.bind(job=lease.id).debug("completed job {}", lease.id)
        if following is not None:
            following.token = next_token
        return following

    @property
    def _debug(self) -> bool:
        return self.p.log_level in ("DEBUG", "TRACE")

    def _fail(self, lease: Lease, message: str, kind: str, tb: str | None = None) -> Lease | None:
        """Record one failed attempt (retry or fail per the queue's policy); the loop then
        leases its next job on its own, so this returns None."""
        self.jobs_done += 1
        record: dict[str, Any] = {
            "error": message,
            "kind": kind,
            "at": int(time.time() * 1000),
            "attempt": lease.attempts,
            "worker": self.p.worker,
            "pid": self.pid,
        }
        if tb:
            record["traceback"] = tb[-4000:]
        record_json = codec.encode(record)
        message_json = codec.encode(message)
        delays = self.stage.retry_delays_ms()
        outcome = self._redis(
            lambda: self.store.fail(
                self.k,
                lease.id,
                lease.token,
                record_json,
                message_json,
                self.max_attempts,
                delays,
                w=self.wire,
            )
        )
        self.slot.finished()
        log_outcome(self.log.bind(job=lease.id), lease.id, message, outcome)
        return None

    # -- parent stages ---------------------------------------------------------------------

    def _process_parent(self, lease: Lease) -> Lease | None:
        queue = self.stage.name
        key = self.k.job(lease.id)
        params_field = keys.children_params_field(queue)
        jobs_field = keys.children_jobs_field(queue)
        try:
            raw_params, raw_jobs = lease.values[0], lease.values[1]
            child_keys = None if raw_jobs is None else codec.decode_field(key, jobs_field, raw_jobs)
            if child_keys is None:
                params = (
                    None
                    if raw_params is None
                    else codec.decode_field(key, params_field, raw_params)
                )
                plan = plan_children(queue, params, self.p.child_stages)
                if not plan.children:
                    return self._complete(
                        lease,
                        [(keys.children_failed_field(queue).encode(), b"[]")],
                        self.next_waiting,
                    )
                status = self._redis(
                    lambda: self.store.spawn_children(
                        self.wire,
                        self.k,
                        lease.id,
                        lease.token,
                        plan.children,
                        plan.jobs_json,
                        self.p.key_ttl,
                    )
                )
                if status == 1:
                    self.log.bind(job=lease.id).debug(
                        "created {} child jobs; parent parked", len(plan.children)
                    )
                    self.slot.finished()
                    return None
                if status == 0:
                    self.log.bind(job=lease.id).warning("lease on parent job {} lost", lease.id)
                    self.slot.finished()
                    return None
                child_keys = codec.decode_field(
                    key, jobs_field, self.store.hash_fields(key, [jobs_field])[0] or b"[]"
                )
            if not isinstance(child_keys, list) or not all(isinstance(k, str) for k in child_keys):
                raise ParentError(f"{jobs_field} must be a list of job keys")
        except (DecodeError, ParentError) as exc:
            return self._fail(lease, str(exc), "children")
        replies = self._redis(lambda: self.store.children_status(self.wire, child_keys))
        assert replies is not None
        all_done, failed = children_state(child_keys, replies)
        if all_done:
            return self._complete(
                lease,
                [(keys.children_failed_field(queue).encode(), codec.encode(failed).encode())],
                self.next_waiting,
            )
        self._redis(lambda: self.store.park(self.wire, self.k, lease.id, lease.token))
        self.slot.finished()
        return None


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
    elif outcome.outcome == "requeued":
        log.info("job {} was never started; put back on its waiting list", job_id)
    else:
        log.warning("job {} vanished while failing: {}", job_id, message)
