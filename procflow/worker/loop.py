"""The loop that runs inside a worker process: lease → run → complete or fail.

On the hot path a job costs one script call: completing a job leases the next one in the same
round trip. When nothing waits, the worker blocks in BLMOVE and claims what it gets with a
second call. The worker writes what it holds into its status record before every call, so
its supervisor can clean up after it whatever kills it. Every Redis call goes through the
stage session it is given (a fake one in unit tests).
"""

from __future__ import annotations

import collections
import functools
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .. import codec
from ..errors import (
    DecodeError,
    EncodeError,
    ParentError,
    RedisRefusedError,
    RedisUnavailableError,
)
from ..failures import FailureRecord, RetryPolicy, record_failure
from ..store.keys import TokenSeries
from ..store.records import Lease
from ..store.session import decoded
from . import reporting
from .fanout import child_keys_of, children_failure_message, children_state, plan_children
from .lanes import Turns, index_of
from .payload import WorkerPayload
from .results import read_result
from .session import JobSession, Retrier
from .status import Outcome, StatusWriter

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["JobSession", "WorkerLoop"]  # JobSession is worker.session's, re-exported

T = TypeVar("T")
#: what fail.lua reported → how the status record counts the attempt
_OUTCOMES = {"retry": Outcome.RETRIED, "failed": Outcome.FAILED}
#: how long the results of a prefetched batch's jobs may wait to be written with the batch's
#: last one (seconds); past it they are written at once
DEFER_AT_MOST = 0.05


class WorkerLoop:
    """One worker: connects, then takes jobs until told to stop or due for recycling."""

    def __init__(
        self,
        payload: WorkerPayload,
        session: JobSession,
        status: StatusWriter,
        log: Logger,
        stop_flag: Callable[[], bool] = lambda: False,
        *,
        pid: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        gate: Callable[[], bool] | None = None,
        more_sessions: Sequence[JobSession] = (),
    ) -> None:
        self.payload = payload
        self.lanes = payload.all_lanes()
        self.sessions = [session, *more_sessions]
        if len(self.sessions) != len(self.lanes):
            raise ValueError(f"{len(self.lanes)} lanes need as many sessions")
        self.stage = payload.stage
        self.keys = payload.stage.keys
        self.routes = self.lanes[0].routes
        self.child_stages = self.lanes[0].child_stages
        self.options = payload.options
        self.session = session
        self.status = status
        #: the lane (partition) in use and its turn
        self.turns = Turns(len(self.lanes), index_of(payload.worker))
        self.log = log
        self._external_stop = stop_flag
        self._sleep = sleep
        #: blocks while the supervisor has paused this worker; False when it must end instead
        self._gate = gate
        self.pid = os.getpid() if pid is None else pid
        self.tokens = TokenSeries(payload.holder, self.pid)
        #: how many jobs one lease call takes (1 for a parent stage)
        self.prefetch = self.stage.prefetch
        #: leased jobs not started yet, in order, and their place in the prefetched batch
        self._batch: collections.deque[tuple[Lease, int]] = collections.deque()
        #: prefetched jobs run, their completion not yet written: (lease, index, result, next)
        self._deferred: list[tuple[Lease, int, list[tuple[bytes, bytes]], str]] = []
        self._deferred_since = 0.0
        self._index = -1  # the running job's place in its prefetched batch (-1: none)
        self.jobs_done = 0
        self.born = time.monotonic()
        self.client_id: int | None = None
        self.end_reason = ""
        self.retrier = Retrier(session, status, log, sleep, self.should_end)
        self._debug = payload.log_level in ("DEBUG", "TRACE")

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open the sessions' connections and load the scripts; raises
        RedisUnavailableError."""
        self.client_id = self.sessions[0].connect()
        for session in self.sessions[1:]:
            session.connect()

    def disconnect(self) -> None:
        for session in self.sessions:
            session.close()

    def _use(self, lane: int) -> None:
        """Move to partition ``lane`` (only while holding nothing)."""
        if not self.turns.move(lane):
            return
        to = self.lanes[lane]
        self.session = self.retrier.session = self.sessions[lane]
        self.stage, self.keys = to.stage, to.stage.keys
        self.routes, self.child_stages = to.routes, to.child_stages
        self.status.lane(lane)

    def should_end(self) -> bool:
        """Told to stop, or due for recycling (sets ``end_reason``)."""
        if self.status.stop_requested or self._external_stop():
            self.end_reason = "stop"
            return True
        limit = self.options.max_jobs_per_child
        if limit is not None and self.jobs_done >= limit:
            self.end_reason = f"recycle: {self.jobs_done} jobs done"
            return True
        age = self.options.max_age
        if age is not None and time.monotonic() - self.born >= age:
            self.end_reason = f"recycle: older than {age:g} s"
            return True
        return False

    def run(self) -> str:
        """Take jobs until told to stop or due for recycling; returns why it ended."""
        while True:
            if not self._batch:
                if self.status.pause_requested and not self._hold():
                    self.end_reason = self.end_reason or "stop"
                    break
                if self.should_end():
                    break
                self._take(self._next_leases())
                continue
            if self.should_end():
                self._flush(lease_next=False)  # what ran is written …
                self._give_back_batch()  # … what never started goes back uncounted
                break
            self._step()
        self.status.stopped()
        return self.end_reason

    def _step(self) -> None:
        """Run the next held job; after a batch's last one, write the batch's completions
        and lease the next batch in the same call."""
        lease, index = self._batch.popleft()
        self._take(self._process(lease, index, last=not self._batch))
        if not self._batch and self._deferred:
            hold = self.should_end() or self.status.pause_requested or self.turns.over
            self._take(self._flush(lease_next=not hold))

    def _take(self, leases: list[Lease]) -> None:
        """Hold newly leased jobs (several: prefetched, recorded for the supervisor)."""
        if len(leases) > 1:
            self.status.hold([lease.id for lease in leases], leases[0].token)
            self._batch.extend((lease, i) for i, lease in enumerate(leases))
        elif leases:
            self._batch.append((leases[0], -1))

    def _give_back_batch(self) -> None:
        for lease, _ in self._batch:
            self._redis(functools.partial(self.session.requeue, lease.id, lease.token))
        self._batch.clear()
        self.status.release_held()
        self.status.finished()

    def run_available(self, limit: int | None = None) -> int:
        """Take the jobs waiting now, without blocking for more (at most ``limit``), and
        return how many were processed — for running a flow's logic inline, in a test
        process (``procflow.testing``). Each one goes through the same calls as in a worker
        process, so fields make the same JSON round trip."""
        done = 0
        while limit is None or done < limit:
            self._take(self._lease_any())
            if not self._batch:
                self.status.waiting()
                return done
            while self._batch:
                if limit is not None and done >= limit:
                    self._flush(lease_next=False)
                    self._give_back_batch()
                    return done
                done += 1
                self._step()
        return done

    def _hold(self) -> bool:
        """Paused by the core budget: hold, holding no job, until resumed (True) or told to
        end (False)."""
        self.status.paused()
        if self._gate is None:
            return False
        ok = self._gate()
        self.status.waiting()
        return ok

    # -- Redis calls that survive outages ------------------------------------------------

    def _redis(
        self,
        op: Callable[[], T],
        lost_token: str = "",
        abort_on_stop: bool = False,
        lost_count: int = 1,
    ) -> T | None:
        """``Retrier.call``: run ``op`` through outages and refusals (None: stopped)."""
        return self.retrier.call(op, lost_token, abort_on_stop, lost_count)

    # -- leasing -------------------------------------------------------------------------

    def _lease_now(self, abort_on_stop: bool = False) -> list[Lease]:
        """Lease what waits now (up to ``prefetch`` jobs, one call), without blocking."""
        k = self.prefetch
        token = self.tokens.next(k)
        self.status.leasing(token, count=k)
        if k == 1:
            lease = self._redis(
                lambda: self.session.lease(token), lost_token=token, abort_on_stop=abort_on_stop
            )
            return [lease] if lease is not None else []
        leases = self._redis(
            lambda: self.session.lease_many(token),
            lost_token=token,
            abort_on_stop=abort_on_stop,
            lost_count=k,
        )
        return leases or []

    def _lease_any(self, abort_on_stop: bool = False) -> list[Lease]:
        """What waits now in this partition — or, its turn over or nothing there, in the
        next partition that has work (``lanes.Turns``)."""
        for lane in self.turns.order():
            self._use(lane)
            leases = self._lease_now(abort_on_stop)
            if leases:
                self.turns.taken += 1
                return leases
            if abort_on_stop and (self.should_end() or self.status.pause_requested):
                break
        return []

    def _next_leases(self) -> list[Lease]:
        """What waits now; else block in BLMOVE for the next job and claim it (a partitioned
        stage waits on its partitions in turn: ``lanes.Turns.idle_lane``)."""
        leases = self._lease_any(abort_on_stop=True)
        if leases or self.should_end() or self.status.pause_requested:
            return leases
        self.status.waiting()
        lane, timeout = self.turns.idle_lane(self.options.block_timeout)
        self._use(lane)
        job_id = self._redis(lambda: self.session.wait_for_job(timeout), abort_on_stop=True)
        if job_id is None:
            return []
        token = self.tokens.next()
        self.status.leasing(token, job_id)
        lease = self._redis(lambda: self.session.claim(job_id, token), lost_token=token)
        if lease is None:
            self.status.waiting()
            return []
        self.turns.taken = 1
        return [lease]

    # -- one job ---------------------------------------------------------------------------

    def _process(self, lease: Lease, index: int = -1, last: bool = True) -> list[Lease]:
        """Run one job (``index``: its place in a prefetched batch); ``last``: no other job
        is held, so its completion leases the next ones. Returns what that leased."""
        if lease.vanished:
            self.log.bind(job=lease.id).warning(
                "job {} was in {} but its hash is gone (expired or deleted); dropped",
                lease.id,
                self.keys.waiting,
            )
            self.status.running(lease.id, lease.token, time.monotonic())
            if index >= 0:
                self.status.release(index)
            self.status.finished()
            return []
        self._index = index
        self.status.running(lease.id, lease.token, time.monotonic())
        if self.payload.is_parent:
            return self._process_parent(lease)
        fn = self.payload.fn
        assert fn is not None
        try:
            params = self._params(lease)
        except DecodeError as exc:
            return self._fail(lease, str(exc), "decode")
        reporter = reporting.Reporter(lease.id, self.stage.name, self._progress_sender(lease))
        reporting.begin(reporter)
        try:
            result = fn(params)
        except (Exception, SystemExit) as exc:
            return self._fail(
                lease, f"{type(exc).__name__}: {exc}", "exception", traceback.format_exc()
            )
        finally:
            reporting.end()
            reporter.finish()
        try:
            lane = self.lanes[self.turns.lane]
            pairs, next_waiting = read_result(
                result, self.stage, self.routes, self.payload.flow, lane.redis, lane.renames
            )
            if reporter.reported:  # the last report, written with the completion
                pairs.append((self.keys.progress_field.encode(), reporter.value_json().encode()))
        except (EncodeError, ValueError) as exc:
            return self._fail(lease, str(exc), "result")
        except Exception as exc:  # any result that cannot be read is the attempt's failure
            return self._fail(lease, f"unusable result: {type(exc).__name__}: {exc}", "result")
        return self._complete(lease, pairs, next_waiting, last)

    def _progress_sender(self, lease: Lease) -> Callable[[str, str], None]:
        def send(value_json: str, announce: str) -> None:
            try:  # progress is news, not state: one try, never held up by an outage
                self.session.report_progress(lease.id, lease.token, value_json, announce)
            except (RedisUnavailableError, RedisRefusedError) as exc:
                if self._debug:
                    self.log.bind(job=lease.id).debug("progress not written: {}", exc)

        return send

    def _params(self, lease: Lease) -> dict[str, Any]:
        params: dict[str, Any] = {"id": lease.id}
        fields = self.stage.fields
        names = self.lanes[self.turns.lane].names or fields  # a partition's: as written
        for field, name, raw in zip(fields, names, lease.values, strict=False):
            params[name] = None if raw is None else decoded(self.keys, lease.id, field, raw)
        return params

    def _complete(
        self, lease: Lease, pairs: list[tuple[bytes, bytes]], next_waiting: str, last: bool = True
    ) -> list[Lease]:
        if self._index >= 0:  # a prefetched job: written with its batch (see _step, _flush)
            self.jobs_done += 1
            if not self._deferred:
                self._deferred_since = time.monotonic()
            self._deferred.append((lease, self._index, pairs, next_waiting))
            self.status.finished(Outcome.COMPLETED)  # recounted if the write finds it lost
            if not last and time.monotonic() - self._deferred_since >= DEFER_AT_MOST:
                return self._flush(lease_next=False)  # slow jobs: results not held back
            return []
        self.jobs_done += 1
        hold = not last or self.should_end() or self.status.pause_requested or self.turns.over
        k = self.prefetch
        next_token = "" if hold else self.tokens.next(k)
        self.status.completing(next_token, k)
        reply = self._redis(
            lambda: self.session.complete(lease.id, lease.token, pairs, next_waiting, next_token),
            lost_token=next_token,
            lost_count=k,
        )
        assert reply is not None
        status, following = reply
        self.turns.taken += bool(following)
        outcome = Outcome.COMPLETED if status == 1 else Outcome.LOST
        if len(following) == 1:  # held from the same write on: a kill now gives it back
            self.status.finished(outcome, following[0].id, following[0].token)
        else:
            self.status.finished(outcome)
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
        return following

    def _flush(self, lease_next: bool) -> list[Lease]:
        """Write the completions of the batch's jobs that ran (one call) and, with
        ``lease_next``, lease the next batch in it."""
        if not self._deferred:
            return []
        k = self.prefetch
        next_token = self.tokens.next(k) if lease_next else ""
        self.status.completing(next_token, k)  # a crash now: the next batch is given back
        entries = [(lease.id, lease.token, pairs, nxt) for lease, _, pairs, nxt in self._deferred]
        reply = self._redis(
            lambda: self.session.complete_many(entries, next_token),
            lost_token=next_token,
            lost_count=k,
        )
        assert reply is not None
        statuses, following = reply
        self.turns.taken += bool(following)
        lost = [
            lease
            for (lease, _, _, _), status in zip(self._deferred, statuses, strict=True)
            if status != 1
        ]
        self.status.written([index for _, index, _, _ in self._deferred], lost=len(lost))
        self._deferred.clear()
        for lease in lost:
            self.log.bind(job=lease.id).warning(
                "the lease on job {} was lost before its completion was written (its lock "
                "expired and the job was taken back, or the job vanished); this result was "
                "not written",
                lease.id,
            )
        if len(following) == 1:
            self.status.leasing(following[0].token, following[0].id)
        elif not following:
            self.status.waiting()  # holds nothing: the lease part found no job
        return following

    def _fail(
        self,
        lease: Lease,
        message: str,
        kind: str,
        tb: str | None = None,
        *,
        policy: RetryPolicy | None = None,
        final_fields: Sequence[tuple[str, str]] = (),
    ) -> list[Lease]:
        """Record one failed attempt (retry or fail per ``policy``, by default the queue's;
        ``final_fields`` written if it fails for good); the loop then leases its next job on
        its own, so this returns no lease."""
        self.jobs_done += 1
        record = FailureRecord.in_worker(
            message,
            kind,
            attempt=lease.attempts,
            worker=self.payload.worker,
            pid=self.pid,
            traceback=tb,
        )
        retry = policy or self.stage.retry_policy()
        result = self._redis(
            lambda: record_failure(
                self.session,
                lease.id,
                lease.token,
                record,
                retry,
                self.log,
                final_fields=final_fields,
            )
        )
        kind = (result.outcome if result is not None else None) or ""
        self.status.finished(_OUTCOMES.get(kind, Outcome.LOST))
        if self._index >= 0:
            self.status.release(self._index)
        return []

    # -- parent stages ---------------------------------------------------------------------

    def _process_parent(self, lease: Lease) -> list[Lease]:
        """Fan out once (create the children, park the parent); when the parent comes back
        with every child done, act on the stage's ``on_child_failure`` policy."""
        queue = self.stage.name
        jobs_field = self.keys.children_jobs_field
        failed_field = self.keys.children_failed_field.encode()
        policy = self.stage.spec.on_child_failure
        try:
            raw_params, raw_jobs = lease.values[0], lease.values[1]
            if raw_jobs is None:
                params_field = self.keys.children_params_field
                params = (
                    None
                    if raw_params is None
                    else decoded(self.keys, lease.id, params_field, raw_params)
                )
                plan = plan_children(queue, params, self.child_stages)
                if not plan.children:  # children:Q:jobs = [] as the TypeScript library writes
                    empty = [(jobs_field.encode(), b"[]")]
                    if policy != "continue":
                        empty.append((failed_field, b"[]"))
                    return self._complete(lease, empty, self.stage.next_waiting)
                ttl = self.payload.key_ttl
                status = self._redis(
                    lambda: self.session.spawn_children(
                        lease.id, lease.token, plan.children, plan.jobs_json, ttl
                    )
                )
                if status in (0, 1):
                    if status == 1 and self._debug:
                        self.log.bind(job=lease.id).debug(
                            "created {} child jobs; parent parked", len(plan.children)
                        )
                    if status == 0:
                        self.log.bind(job=lease.id).warning("lease on parent job {} lost", lease.id)
                    self.status.finished()
                    return []
                raw_jobs = self._redis(lambda: self.session.children_jobs(lease.id)) or b"[]"
            child_keys = child_keys_of(
                jobs_field, decoded(self.keys, lease.id, jobs_field, raw_jobs)
            )
        except (DecodeError, ParentError) as exc:
            return self._fail(lease, str(exc), "children")
        replies = self._redis(lambda: self.session.children_status(child_keys))
        assert replies is not None
        all_done, failed = children_state(child_keys, replies)
        if not all_done:
            self._redis(lambda: self.session.park(lease.id, lease.token))
            self.status.finished()
            return []
        if policy == "continue":  # as the TypeScript library's ParentWorker: nothing written
            return self._complete(lease, [], self.stage.next_waiting)
        failed_json = codec.encode(failed)
        if failed and policy == "fail":  # no retry: its children are done, and stay failed
            return self._fail(
                lease,
                children_failure_message(child_keys, replies, failed),
                "children",
                policy=RetryPolicy(max_attempts=1, max_stalls=0),
                final_fields=[(failed_field.decode(), failed_json)],
            )
        return self._complete(
            lease, [(failed_field, failed_json.encode())], self.stage.next_waiting
        )
