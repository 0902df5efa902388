"""The shared-memory status record through which a worker process tells its supervisor what
it holds.

The worker writes, the supervisor reads; a sequence number (odd while a write is under way)
lets the reader take a consistent copy. Writing costs a few attribute stores per job and no
system call, so the supervisor always knows which job and lease token a worker holds — also
after that worker was SIGKILLed. The supervisor writes two fields: ``stop`` and ``pause``.

For the cost model (``procflow/cost.py``) the writer also measures each job's CPU time, two
reads of the process's CPU clock (``time.process_time()``, a system call of about a
microsecond): around every job that follows one of ``CPU_EVERY_JOB_FROM`` seconds or more,
around every ``CPU_SAMPLE``-th job after shorter ones (where a microsecond would show).
"""

from __future__ import annotations

import bisect
import ctypes
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..cost import DURATION_BUCKETS
from ..definition import MAX_PREFETCH
from ..store.keys import token_at

__all__ = [
    "DURATION_BUCKETS",
    "Activity",
    "Outcome",
    "StatusRecord",
    "StatusView",
    "StatusWriter",
    "clear_status",
    "read_status",
]

TOKEN_BYTES = 160
JOB_BYTES = 96
#: a job id in the record's list of prefetched jobs (a UUID is 36 characters)
HELD_ID_BYTES = 40
#: after a job of this many seconds or more, the next job's CPU time is measured
CPU_EVERY_JOB_FROM = 0.001
#: after a shorter job, one job in this many has its CPU time measured
CPU_SAMPLE = 16


class Outcome(IntEnum):
    """How a job attempt in a worker ended, as its status record counts it."""

    COMPLETED = 0
    RETRIED = 1  # failed; another attempt is due
    FAILED = 2  # failed for good
    LOST = 3  # the lease was lost before the result was written

    @property
    def label(self) -> str:
        return self.name.lower()


class Activity(IntEnum):
    """What a worker process is doing, as its status record says."""

    IDLE = 0
    WAITING = 1  # blocked in BLMOVE, holding nothing
    LEASING = 2  # a lease call under ``token`` is in flight (the job may be known)
    RUNNING = 3  # running ``job`` under ``token`` since ``started``
    COMPLETING = 4  # completing ``job``; may lease the next under ``next_token``
    STOPPED = 5
    PAUSED = 6  # told by the core budget to hold its core free: takes no job until resumed

    @property
    def holds_job(self) -> bool:
        """Whether a job may be held: the supervisor must settle it if the worker dies."""
        return self in (Activity.LEASING, Activity.RUNNING, Activity.COMPLETING)


class StatusRecord(ctypes.Structure):
    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("state", ctypes.c_int32),
        ("stop", ctypes.c_int32),  # written by the supervisor: 1 = finish the job and stop
        ("pause", ctypes.c_int32),  # written by the supervisor: 1 = take no job until 0
        ("started", ctypes.c_double),  # time.monotonic() when the job started
        ("jobs", ctypes.c_uint64),  # jobs finished by this process
        ("busy", ctypes.c_double),  # seconds this process spent running jobs, in all
        ("token", ctypes.c_char * TOKEN_BYTES),
        ("next_token", ctypes.c_char * TOKEN_BYTES),
        ("job", ctypes.c_char * JOB_BYTES),
        ("outcomes", ctypes.c_uint64 * len(Outcome)),
        ("durations", ctypes.c_uint64 * (len(DURATION_BUCKETS) + 1)),
        ("duration_sum", ctypes.c_double),
        # the CPU time of this process (all its threads) while the jobs measured ran: when the
        # job in hand started (time.process_time(); -1: not measured), a histogram over
        # DURATION_BUCKETS (its total: the jobs measured) and the sum
        ("cpu_started", ctypes.c_double),
        ("cpu_durations", ctypes.c_uint64 * (len(DURATION_BUCKETS) + 1)),
        ("cpu_sum", ctypes.c_double),
        ("redis_errors", ctypes.c_uint64),  # Redis calls that failed and were tried again
        # a lease call for several jobs (prefetch): its tokens are ``token`` (LEASING) or
        # ``next_token`` (COMPLETING) and the ``lease_count - 1`` that follow it
        ("lease_count", ctypes.c_int32),
        # prefetched jobs: ``held_count`` ids, leased under the tokens numbered from
        # ``held_first``; bit i of ``held_mask`` set: entry i is still held (not started, or run
        # and its completion not yet written)
        ("held_count", ctypes.c_int32),
        ("held_mask", ctypes.c_uint64),
        ("held_first", ctypes.c_uint64),
        ("held_prefix", ctypes.c_char * TOKEN_BYTES),  # the tokens' common start
        ("held", ctypes.c_char * (HELD_ID_BYTES * MAX_PREFETCH)),
        # which partition of a partitioned flow the worker is in (what it holds is there)
        ("partition", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class StatusView:
    """A consistent copy of a status record."""

    activity: Activity
    started: float
    jobs: int
    token: str
    next_token: str
    job: str
    busy: float = 0.0
    outcomes: tuple[int, ...] = (0,) * len(Outcome)
    durations: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    duration_sum: float = 0.0
    redis_errors: int = 0
    lease_count: int = 1
    #: prefetched jobs still held besides ``job`` (not started, or run and their completion
    #: not yet written): (id, lease token)
    pending: tuple[tuple[str, str], ...] = ()
    #: the partition everything above is in
    partition: int = 0
    #: the CPU time of the process while its jobs ran: histogram and sum, as ``durations``
    #: (of the jobs measured: every one, or a sample of very short ones)
    cpu_durations: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    cpu_sum: float = 0.0

    def lost_tokens(self) -> list[str]:
        """The tokens of a lease call in flight whose reply may never have been seen."""
        first = self.token if self.activity is Activity.LEASING else self.next_token
        if not first or self.activity not in (Activity.LEASING, Activity.COMPLETING):
            return []
        if self.activity is Activity.LEASING and self.job:  # a claim of a known job
            return [first]
        return [first] + [token_at(first, i) for i in range(1, max(1, self.lease_count))]


def _activity(value: int) -> Activity:
    try:
        return Activity(value)
    except ValueError:  # a torn write: take it as holding, so recovery checks the token
        return Activity.LEASING


def _pending(raw: Any, current: str) -> tuple[tuple[str, str], ...]:
    """The prefetched jobs still held, but ``current`` (the one in hand), with their tokens."""
    count = max(0, min(int(raw.held_count), MAX_PREFETCH))
    mask = int(raw.held_mask)
    if not count or not mask:
        return ()
    ids = bytes(raw.held).decode(errors="replace")
    first = int(raw.held_first)
    prefix = raw.held_prefix.decode(errors="replace")
    out = []
    for i in range(count):
        if mask >> i & 1:
            job = ids[i * HELD_ID_BYTES : (i + 1) * HELD_ID_BYTES].rstrip("\x00 ")
            if job != current:
                out.append((job, f"{prefix}{first + i}"))
    return tuple(out)


def read_status(raw: Any) -> StatusView:
    """A consistent copy: the sequence number is even and unchanged around the read. A writer
    that died mid-write leaves it odd; its fields are then taken as they are (every recovery
    step checks the lease token in Redis, so a mixed copy can only make one a no-op)."""
    for _ in range(1000):
        before = raw.seq
        token = raw.token.decode(errors="replace")
        job = raw.job.decode(errors="replace")
        view = StatusView(
            _activity(raw.state),
            raw.started,
            raw.jobs,
            token,
            raw.next_token.decode(errors="replace"),
            job,
            raw.busy,
            tuple(raw.outcomes),
            tuple(raw.durations),
            raw.duration_sum,
            raw.redis_errors,
            raw.lease_count,
            _pending(raw, job),
            raw.partition,
            tuple(raw.cpu_durations),
            raw.cpu_sum,
        )
        if not before & 1 and raw.seq == before:
            break
    return view


def clear_status(raw: Any) -> None:
    """Zero a record before a new process uses it."""
    ctypes.memset(ctypes.addressof(raw), 0, ctypes.sizeof(raw))


class StatusWriter:
    """The worker side: one method per transition."""

    __slots__ = ("_cpu_every", "_cpu_turn", "raw")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._cpu_every = 1  # measure the CPU time of every job, or of one in CPU_SAMPLE
        self._cpu_turn = 0

    def waiting(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.WAITING
        raw.job = b""
        raw.token = b""
        raw.next_token = b""
        raw.seq += 1

    def leasing(self, token: str, job: str = "", count: int = 1) -> None:
        """A lease call under ``token`` (and, for ``count`` jobs, the tokens after it)."""
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.LEASING
        raw.lease_count = count
        raw.token = token.encode()
        raw.next_token = b""
        raw.job = job.encode()
        raw.seq += 1

    def hold(self, ids: list[str], first_token: str) -> None:
        """Prefetched jobs, leased under ``first_token`` and the tokens after it, all held."""
        raw = self.raw
        raw.seq += 1
        prefix, _, n = first_token.rpartition("|")
        raw.held_prefix = f"{prefix}|".encode()
        raw.held_first = int(n)
        raw.held = b"".join(i.encode().ljust(HELD_ID_BYTES, b" ") for i in ids)
        raw.held_count = len(ids)
        raw.held_mask = (1 << len(ids)) - 1
        raw.seq += 1

    def release(self, index: int) -> None:
        """Entry ``index`` of the prefetched batch is no longer held (its completion or its
        failure was written)."""
        raw = self.raw
        raw.seq += 1
        raw.held_mask &= ~(1 << index)
        raw.seq += 1

    def written(self, indices: list[int], lost: int = 0) -> None:
        """The completions of these prefetched entries were written (``lost`` of them found
        their lease gone: counted as lost, not completed)."""
        raw = self.raw
        raw.seq += 1
        for index in indices:
            raw.held_mask &= ~(1 << index)
        if lost:
            raw.outcomes[Outcome.COMPLETED] -= lost
            raw.outcomes[Outcome.LOST] += lost
        raw.seq += 1

    def release_held(self) -> None:
        """No prefetched job is held any more (all written, or given back)."""
        raw = self.raw
        raw.seq += 1
        raw.held_count = 0
        raw.held_mask = 0
        raw.seq += 1

    def in_partition(self, index: int) -> None:
        """The worker moved to partition ``index`` (it holds nothing when it moves)."""
        raw = self.raw
        raw.seq += 1
        raw.partition = index
        raw.seq += 1

    def running(self, job: str, token: str, started: float) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.RUNNING
        raw.job = job.encode()
        raw.token = token.encode()
        raw.next_token = b""
        raw.started = started
        self._cpu_turn += 1
        if self._cpu_turn >= self._cpu_every:
            self._cpu_turn = 0
            raw.cpu_started = time.process_time()
        else:
            raw.cpu_started = -1.0
        raw.seq += 1

    def completing(self, next_token: str, count: int = 1) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.COMPLETING
        raw.lease_count = count
        raw.next_token = next_token.encode()
        raw.seq += 1

    def finished(
        self, outcome: Outcome | None = None, next_job: str = "", next_token: str = ""
    ) -> None:
        """The job in hand is finished with; ``outcome`` counts an attempt that ran. Given
        the job its completion leased (``next_job`` under ``next_token``), the record says it
        is held in the same write: no moment in which a kill would leave it unaccounted."""
        raw = self.raw
        raw.seq += 1
        if raw.state in (Activity.RUNNING, Activity.COMPLETING):
            took = time.monotonic() - raw.started
            raw.busy += took
            if outcome is not None:
                raw.outcomes[outcome] += 1
                raw.durations[bisect.bisect_left(DURATION_BUCKETS, took)] += 1
                raw.duration_sum += took
                if raw.cpu_started >= 0:
                    cpu = max(0.0, time.process_time() - raw.cpu_started)
                    raw.cpu_durations[bisect.bisect_left(DURATION_BUCKETS, cpu)] += 1
                    raw.cpu_sum += cpu
                self._cpu_every = 1 if took >= CPU_EVERY_JOB_FROM else CPU_SAMPLE
        raw.jobs += 1
        raw.next_token = b""
        if next_job:
            raw.state = Activity.LEASING
            raw.lease_count = 1
            raw.token = next_token.encode()
            raw.job = next_job.encode()
        else:
            raw.state = Activity.IDLE
            raw.job = b""
            raw.token = b""
        raw.seq += 1

    def paused(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.PAUSED
        raw.seq += 1

    def redis_error(self) -> None:
        self.raw.redis_errors += 1  # a counter the supervisor only reads: no sequence needed

    @property
    def pause_requested(self) -> bool:
        return bool(self.raw.pause)

    def stopped(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = Activity.STOPPED
        raw.seq += 1

    @property
    def stop_requested(self) -> bool:
        return bool(self.raw.stop)
