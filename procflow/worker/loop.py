"""The loop that runs inside a worker process: lease → run → complete or fail, until told to
stop or due for recycling.

On the hot path a job costs one script call: completing a job leases the next one in the same
round trip. When nothing waits, the worker blocks in BLMOVE and claims what it gets with a
second call. The worker writes what it holds into its status record before every call, so
its supervisor can clean up after it whatever kills it. Every Redis call goes through the
session of the partition the loop is in (a fake one in unit tests).

What the loop works with lives beside it, one module per concept: ``partition.py`` the
partition it is in (moving is changing one reference; ``turns.py`` decides when),
``batch.py`` the prefetched jobs it holds and their completions waiting to be written,
``fanout.py`` a parent stage's step, ``ending.py`` why it ended.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import DecodeError, EncodeError, RedisRefusedError, RedisUnavailableError
from ..failures import FailureRecord, RetryPolicy, record_failure
from ..store.keys import TokenSeries
from ..store.records import Lease
from . import reporting
from .batch import BatchSize, PrefetchBatch
from .ending import STOP, Ending, EndReason
from .fanout import FailParent, ParentStep, PassOn
from .partition import ServedPartition
from .payload import WorkerPayload
from .session import JobSession, Retrier
from .status import Outcome, StatusWriter
from .turns import Turns, index_of

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["JobSession", "WorkerLoop"]  # JobSession is worker.session's, re-exported

#: what fail.lua reported → how the status record counts the attempt
_OUTCOMES = {"retry": Outcome.RETRIED, "failed": Outcome.FAILED}
#: how often the workers of a paused stage look whether it was resumed (seconds)
PAUSED_LOOK = 0.5


class WorkerLoop:
    """One worker: connects, then takes jobs until told to stop or due for recycling.
    ``session`` and ``more_sessions``: one stage session per partition of the payload, in
    order."""

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
        self.options = payload.options
        self.status = status
        self.log = log
        self._external_stop = stop_flag
        #: blocks while the supervisor has paused this worker; False when it must end instead
        self._gate = gate
        self._sleep = sleep
        #: the partition whose BLMOVE last came back empty (None: the last wait found a job)
        self._blocked_empty: int | None = None
        self.pid = os.getpid() if pid is None else pid
        self.tokens = TokenSeries(payload.holder, self.pid)
        sessions = [session, *more_sessions]
        if len(sessions) != len(payload.partitions):
            raise ValueError(f"{len(payload.partitions)} partitions need as many sessions")
        #: every partition the worker serves, each on its own session
        self.partitions = [
            ServedPartition(i, where, s, Retrier(s, status, log, sleep, self.should_end))
            for i, (where, s) in enumerate(zip(payload.partitions, sessions, strict=True))
        ]
        #: the partition the loop is in, and its turn there
        self.partition = self.partitions[0]
        self.turns = Turns(len(self.partitions), index_of(payload.worker))
        #: how many jobs one lease call takes (1 for a parent stage; sized by job time: auto)
        self.size = BatchSize(self.partition.stage.prefetch)
        self.batch = PrefetchBatch(status)
        self._debug = payload.log_level in ("DEBUG", "TRACE")
        self.parent = ParentStep(payload.key_ttl, log, self._debug) if payload.is_parent else None
        self.jobs_done = 0
        self.born = time.monotonic()
        self.client_id: int | None = None
        #: why the loop ends (None: it has not)
        self.ending: Ending | None = None

    @property
    def session(self) -> JobSession:
        """The session of the partition the loop is in."""
        return self.partition.session

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open the sessions' connections and load the scripts; raises
        RedisUnavailableError."""
        self.client_id = self.partitions[0].session.connect()
        for partition in self.partitions[1:]:
            partition.session.connect()

    def disconnect(self) -> None:
        for partition in self.partitions:
            partition.session.close()

    def should_end(self) -> bool:
        """Told to stop, or due for recycling (sets ``ending``)."""
        if self.status.stop_requested or self._external_stop():
            self.ending = STOP
            return True
        limit = self.options.max_jobs_per_child
        if limit is not None and self.jobs_done >= limit:
            self.ending = Ending(EndReason.RECYCLE_JOBS, f"{self.jobs_done} jobs done")
            return True
        age = self.options.max_age
        if age is not None and time.monotonic() - self.born >= age:
            self.ending = Ending(EndReason.RECYCLE_AGE, f"older than {age:g} s")
            return True
        return False

    def run(self) -> Ending:
        """Take jobs until told to stop or due for recycling; returns why it ended."""
        batch = self.batch
        while True:
            if not batch.leased:
                if self.status.pause_requested and not self._hold():
                    if self.ending is None:
                        self.ending = STOP
                    break
                if self.should_end():
                    break
                batch.take(self._next_leases())
                continue
            if self.should_end():
                self._flush(lease_next=False)  # what ran is written …
                self._give_back_batch()  # … what never started goes back uncounted
                break
            self._step()
        self.status.stopped()
        return self.ending if self.ending is not None else STOP

    def _step(self) -> None:
        """Run the next held job; after a batch's last one, write the batch's completions
        and lease the next batch in the same call."""
        batch = self.batch
        lease, index = batch.leased.popleft()
        following = self._process(lease, index, last=not batch.leased)
        if following:  # none while a batch's jobs run: their completions wait
            batch.take(following)
        elif batch.leased and self.size.overdue(batch.taken_at, time.monotonic()):
            self._flush(lease_next=False)  # the jobs turned slow: not ours to hoard
            self._give_back_batch()
        if not batch.leased and batch.deferred:
            hold = self.should_end() or self.status.pause_requested or self.turns.over
            batch.take(self._flush(lease_next=not hold))

    def _give_back_batch(self) -> None:
        where = self.partition
        for lease in self.batch.drop():
            where.retrier.call(functools.partial(where.session.requeue, lease.id, lease.token))
        self.batch.dropped()

    def run_available(self, limit: int | None = None) -> int:
        """Take the jobs waiting now, without blocking for more (at most ``limit``), and
        return how many were processed — for running a flow's logic inline, in a test
        process (``procflow.testing``). Each one goes through the same calls as in a worker
        process, so fields make the same JSON round trip."""
        done = 0
        batch = self.batch
        while limit is None or done < limit:
            batch.take(self._lease_any())
            if not batch.leased:
                self.status.waiting()
                return done
            while batch.leased:
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

    # -- leasing -------------------------------------------------------------------------

    def _count(self) -> int:
        """How many jobs the next lease call takes (told to the session, whose calls carry
        it)."""
        k = self.size.count
        self.partition.session.prefetch = k
        return k

    def _use(self, index: int) -> None:
        """Move to partition ``index`` (only while holding nothing)."""
        if self.turns.move(index):
            self.partition = self.partitions[index]
            self.status.in_partition(index)

    def _lease_now(self, abort_on_stop: bool = False) -> list[Lease]:
        """Lease what waits now (up to ``prefetch`` jobs, one call), without blocking."""
        k = self._count()
        token = self.tokens.next(k)
        self.status.leasing(token, count=k)
        session, call = self.partition.session, self.partition.retrier.call
        if k == 1:
            lease = call(
                lambda: session.lease(token), lost_token=token, abort_on_stop=abort_on_stop
            )
            return [lease] if lease is not None else []
        leases = call(
            lambda: session.lease_many(token),
            lost_token=token,
            abort_on_stop=abort_on_stop,
            lost_count=k,
        )
        return leases or []

    def _lease_any(self, abort_on_stop: bool = False, skip: int | None = None) -> list[Lease]:
        """What waits now in this partition — or, its turn over or nothing there, in the
        next partition that has work (``turns.Turns``); not in partition ``skip`` (a BLMOVE
        there just found nothing: a job that came since is the next BLMOVE's)."""
        for index in self.turns.order():
            if index == skip:
                continue
            self._use(index)
            leases = self._lease_now(abort_on_stop)
            if leases:
                self.turns.taken += 1
                return leases
            if abort_on_stop and (self.should_end() or self.status.pause_requested):
                break
        return []

    def _next_leases(self) -> list[Lease]:
        """What waits now; else block in BLMOVE for the next job and claim it (a partitioned
        stage waits on its partitions in turn: ``turns.Turns.idle_partition``)."""
        leases = self._lease_any(abort_on_stop=True, skip=self._blocked_empty)
        self._blocked_empty = None
        if leases or self.should_end() or self.status.pause_requested:
            return leases
        if all(p.session.paused for p in self.partitions):
            self._wait_paused()  # flow.pause: no BLMOVE, look again soon
            return []
        self.status.waiting()
        index, timeout = self.turns.idle_partition(self.options.block_timeout)
        self._use(index)
        session, call = self.partition.session, self.partition.retrier.call
        job_id = call(lambda: session.wait_for_job(timeout), abort_on_stop=True)
        if job_id is None:
            self._blocked_empty = index  # an idle worker: one round trip per block_timeout
            return []
        token = self.tokens.next()
        self.status.leasing(token, job_id)
        lease = call(lambda: session.claim(job_id, token), lost_token=token)
        if lease is None:
            self.status.waiting()
            return []
        self.turns.taken = 1
        return [lease]

    def _wait_paused(self) -> None:
        """The stage is paused (``flow.pause``): wait ``PAUSED_LOOK`` seconds before leasing
        again (less when told to end)."""
        self.status.waiting()
        until = time.monotonic() + PAUSED_LOOK
        while time.monotonic() < until and not (self.should_end() or self.status.pause_requested):
            self._sleep(0.05)

    # -- one job ---------------------------------------------------------------------------

    def _process(self, lease: Lease, index: int = -1, last: bool = True) -> list[Lease]:
        """Run one job (``index``: its place in a prefetched batch); ``last``: no other job
        is held, so its completion leases the next ones. Returns what that leased."""
        where = self.partition
        self.batch.running = index
        if lease.vanished:
            self.log.bind(job=lease.id).warning(
                "job {} was in {} but its hash is gone (expired or deleted); dropped",
                lease.id,
                where.keys.waiting,
            )
            self.status.running(lease.id, lease.token, time.monotonic())
            self.batch.released()
            self.status.finished()
            return []
        self.status.running(lease.id, lease.token, time.monotonic())
        if self.parent is not None:
            return self._process_parent(self.parent, lease, where)
        fn = self.payload.fn
        assert fn is not None
        try:
            params = where.params(lease)
        except DecodeError as exc:
            return self._fail(lease, str(exc), "decode")
        reporter = reporting.Reporter(lease.id, where.stage.name, self._progress_sender(lease))
        reporting.begin(reporter)
        began = time.perf_counter()
        try:
            result = fn(params)
        except (Exception, SystemExit) as exc:
            return self._fail(
                lease, f"{type(exc).__name__}: {exc}", "exception", traceback.format_exc()
            )
        finally:
            self.size.observe(time.perf_counter() - began)
            reporting.end()
            reporter.finish()
        try:
            pairs, next_waiting = where.read(result, self.payload.flow)
            if reporter.reported:  # the last report, written with the completion
                pairs.append((where.keys.progress_field.encode(), reporter.value_json().encode()))
        except (EncodeError, ValueError) as exc:
            return self._fail(lease, str(exc), "result")
        except Exception as exc:  # any result that cannot be read is the attempt's failure
            return self._fail(lease, f"unusable result: {type(exc).__name__}: {exc}", "result")
        return self._complete(lease, pairs, next_waiting, last)

    def _progress_sender(self, lease: Lease) -> Callable[[str, str], None]:
        session = self.partition.session

        def send(value_json: str, announce: str) -> None:
            try:  # progress is news, not state: one try, never held up by an outage
                session.report_progress(lease.id, lease.token, value_json, announce)
            except (RedisUnavailableError, RedisRefusedError) as exc:
                if self._debug:
                    self.log.bind(job=lease.id).debug("progress not written: {}", exc)

        return send

    def _complete(
        self, lease: Lease, pairs: list[tuple[bytes, bytes]], next_waiting: str, last: bool = True
    ) -> list[Lease]:
        batch = self.batch
        if batch.running >= 0:  # a prefetched job: written with its batch (see _step, _flush)
            self.jobs_done += 1
            if batch.defer(lease, pairs, next_waiting, last):
                return self._flush(lease_next=False)  # slow jobs: results not held back
            return []
        self.jobs_done += 1
        hold = not last or self.should_end() or self.status.pause_requested or self.turns.over
        k = self._count()
        next_token = "" if hold else self.tokens.next(k)
        self.status.completing(next_token, k)
        where = self.partition
        session = where.session
        reply = where.retrier.call(
            lambda: session.complete(lease.id, lease.token, pairs, next_waiting, next_token),
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
        batch = self.batch
        if not batch.deferred:
            return []
        k = self._count()
        next_token = self.tokens.next(k) if lease_next else ""
        self.status.completing(next_token, k)  # a crash now: the next batch is given back
        entries = batch.completions()
        where = self.partition
        session = where.session
        reply = where.retrier.call(
            lambda: session.complete_many(entries, next_token),
            lost_token=next_token,
            lost_count=k,
        )
        assert reply is not None
        statuses, following = reply
        self.turns.taken += bool(following)
        for lease in batch.written(statuses):
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
        where = self.partition
        retry = policy or where.stage.retry_policy()
        result = where.retrier.call(
            lambda: record_failure(
                where.session,
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
        self.batch.released()
        return []

    def _process_parent(
        self, step: ParentStep, lease: Lease, where: ServedPartition
    ) -> list[Lease]:
        """A parent stage's job (``fanout.ParentStep``): completed, failed, or parked to
        wait for its children."""
        verdict = step.run(lease, where)
        if isinstance(verdict, PassOn):
            return self._complete(lease, verdict.fields, where.stage.next_waiting)
        if isinstance(verdict, FailParent):
            return self._fail(
                lease,
                verdict.message,
                "children",
                policy=verdict.policy,
                final_fields=verdict.final_fields,
            )
        self.status.finished()
        return []
