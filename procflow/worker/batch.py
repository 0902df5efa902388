"""A prefetched batch: the jobs one lease call took, held until each has run and its
completion is written.

A stage with ``prefetch`` > 1 leases that many jobs in one call. The loop runs them in
order; their completions wait (``deferred``) to be written in one call with the batch's last
one — which leases the next batch in the same round trip — unless the first of them has
waited ``DEFER_AT_MOST`` seconds (slow jobs: their results are not held back). The status
record lists the batch (``StatusWriter.hold``), so a supervisor can account for every entry
whatever kills the worker. A job leased alone is held here too, at index -1 (not a batch's).
The loop makes the Redis calls; this is what it holds.

How many jobs a lease call takes is ``BatchSize``'s: a stage's fixed ``prefetch``, or, with
``prefetch="auto"``, a number sized from the stage's measured job time.
"""

from __future__ import annotations

import collections
import time

from ..definition import MAX_PREFETCH, Prefetch
from ..store.records import Lease
from .status import Outcome, StatusWriter

__all__ = [
    "AUTO_BATCH_SECONDS",
    "AUTO_OVERDUE_SECONDS",
    "DEFER_AT_MOST",
    "BatchSize",
    "Completion",
    "PrefetchBatch",
]

#: how long the results of a prefetched batch's jobs may wait to be written with the batch's
#: last one (seconds); past it they are written at once
DEFER_AT_MOST = 0.05

#: ``prefetch="auto"``: how much work (seconds of the stage's jobs, by their measured mean) a
#: batch holds at most: a batch of 1 ms jobs is 16 (a round trip per 16 jobs), a job of 20 ms
#: or more goes alone; at the end of a stage a worker holds at most this much that another,
#: idle, could have run
AUTO_BATCH_SECONDS = 0.02
#: ``prefetch="auto"``: a batch still holding jobs not started after this long (ten times
#: what it was sized for) gives them back: its jobs turned slow after it was leased
AUTO_OVERDUE_SECONDS = 10 * AUTO_BATCH_SECONDS
#: ``prefetch="auto"``: the weight of the latest job in the decayed mean (a change of job time
#: is followed within a few jobs; one odd job moves it less than a third of the way)
AUTO_WEIGHT = 0.3

#: a prefetched job run, its completion not yet written: (lease, its index in the batch,
#: result fields, the waiting list it goes to)
Completion = tuple[Lease, int, list[tuple[bytes, bytes]], str]


class PrefetchBatch:
    """The jobs held: ``leased`` (not started, in order, with their place in the batch),
    ``running`` (the running job's place, -1: none or not a batch's) and ``deferred`` (run,
    their completions to be written with the batch's last one)."""

    __slots__ = ("deferred", "deferred_since", "leased", "running", "status", "taken_at")

    def __init__(self, status: StatusWriter) -> None:
        self.status = status
        self.leased: collections.deque[tuple[Lease, int]] = collections.deque()
        self.running = -1
        self.deferred: list[Completion] = []
        self.deferred_since = 0.0
        #: when the jobs held were leased (monotonic seconds)
        self.taken_at = 0.0

    def take(self, leases: list[Lease]) -> None:
        """Hold newly leased jobs (several: a batch, recorded for the supervisor)."""
        if leases:
            self.taken_at = time.monotonic()
        if len(leases) > 1:
            self.status.hold([lease.id for lease in leases], leases[0].token)
            self.leased.extend((lease, i) for i, lease in enumerate(leases))
        elif leases:
            self.leased.append((leases[0], -1))

    def defer(
        self, lease: Lease, pairs: list[tuple[bytes, bytes]], next_waiting: str, last: bool
    ) -> bool:
        """The running prefetched job completed: its completion waits for the batch's last
        one. True when the completions waiting must be written now: other jobs of the batch
        are still to run (not ``last``) and the first completion has waited
        ``DEFER_AT_MOST`` (slow jobs: their results are not held back)."""
        if not self.deferred:
            self.deferred_since = time.monotonic()
        self.deferred.append((lease, self.running, pairs, next_waiting))
        self.status.finished(Outcome.COMPLETED)  # recounted if the write finds it lost
        return not last and time.monotonic() - self.deferred_since >= DEFER_AT_MOST

    def completions(self) -> list[tuple[str, str, list[tuple[bytes, bytes]], str]]:
        """The deferred completions, as one ``complete_many`` call writes them."""
        return [(lease.id, lease.token, pairs, nxt) for lease, _, pairs, nxt in self.deferred]

    def written(self, statuses: list[int]) -> list[Lease]:
        """The deferred completions were written (``statuses``: each one's, 1 = written);
        returns the jobs whose lease was found lost."""
        lost = [
            lease
            for (lease, _, _, _), status in zip(self.deferred, statuses, strict=True)
            if status != 1
        ]
        self.status.written([index for _, index, _, _ in self.deferred], lost=len(lost))
        self.deferred.clear()
        return lost

    def released(self) -> None:
        """The running job's failure was written: its entry is no longer held."""
        if self.running >= 0:
            self.status.release(self.running)

    def drop(self) -> list[Lease]:
        """Let go of the jobs not started (the loop gives them back); the status record
        says so when ``dropped`` is called, after they were."""
        leases = [lease for lease, _ in self.leased]
        self.leased.clear()
        return leases

    def dropped(self) -> None:
        """The jobs not started were given back: nothing is held."""
        self.status.release_held()
        self.status.finished()


class BatchSize:
    """How many jobs the next lease call takes. A fixed ``prefetch`` is that number. With
    ``"auto"`` it follows the stage's job time, measured by this worker (each job's function
    run, wall clock, its mean decayed by ``AUTO_WEIGHT``): the largest power of two whose jobs
    fit in ``AUTO_BATCH_SECONDS`` (at least 1, at most ``MAX_PREFETCH``); one before any job
    was measured. Tiny jobs are leased many at a time (one script call for many jobs);
    CPU-heavy ones one by one, so no worker holds work another could run."""

    __slots__ = ("auto", "count", "mean")

    def __init__(self, prefetch: Prefetch) -> None:
        self.auto = prefetch == "auto"
        #: the number the next lease call takes
        self.count = 1 if prefetch == "auto" else int(prefetch)
        #: the decayed mean job time (seconds; None: nothing measured yet)
        self.mean: float | None = None

    def observe(self, seconds: float) -> None:
        """A job of the stage took ``seconds``: the count follows (``auto`` only)."""
        if not self.auto:
            return
        mean = self.mean
        mean = seconds if mean is None else mean + AUTO_WEIGHT * (seconds - mean)
        self.mean = mean
        fits = int(AUTO_BATCH_SECONDS / mean) if mean > 0 else MAX_PREFETCH
        self.count = 1 << (min(max(fits, 1), MAX_PREFETCH).bit_length() - 1)

    def overdue(self, taken_at: float, now: float) -> bool:
        """Whether a batch leased at ``taken_at`` whose jobs are not all started has run for
        more than ``AUTO_OVERDUE_SECONDS`` — ten times the work it was sized for: its jobs
        turned slow after it was leased, and ``auto`` gives the rest back, so that a worker
        that is free can run them (one slow job among fast ones does not do it)."""
        return self.auto and now - taken_at > AUTO_OVERDUE_SECONDS
