"""Which partition a worker leases from next.

A worker serves every partition of its stage. It takes at most ``TURN`` lease calls in a row
from one partition that has work, then moves on to the next that has some — so every
partition with jobs waiting gets its turn, whatever the worker count. With nothing anywhere it
waits on each partition in turn for ``block_timeout / K``, starting at its own index, so a
stage's workers spread over the partitions. An unpartitioned stage has one partition and
never moves. Pure policy: the loop does the leasing.
"""

from __future__ import annotations

__all__ = ["TURN", "Turns", "index_of"]

#: the most lease calls in a row a worker takes from one partition while others have work
TURN = 8


class Turns:
    """The partition in use and its turn; ``count`` partitions, idle waits starting at
    ``start``."""

    __slots__ = ("count", "partition", "taken", "waits")

    def __init__(self, count: int, start: int = 0) -> None:
        self.count = count
        self.partition = 0
        #: lease calls that found work in this partition since the worker moved to it
        self.taken = 0
        self.waits = start

    @property
    def over(self) -> bool:
        """This partition has had its turn (a single partition's never ends)."""
        return self.count > 1 and self.taken >= TURN

    def order(self) -> list[int]:
        """The partitions to try now, in order: this one first, or, its turn over, the
        next."""
        first = (self.partition + 1) % self.count if self.over else self.partition
        return [(first + step) % self.count for step in range(self.count)]

    def move(self, partition: int) -> bool:
        """Go to ``partition``; True if that is a move (its turn starts afresh)."""
        if partition == self.partition:
            return False
        self.partition, self.taken = partition, 0
        return True

    def idle_partition(self, block_timeout: float) -> tuple[int, float]:
        """Where to wait for work when none was found anywhere, and for how long."""
        if self.count == 1:
            return self.partition, block_timeout
        partition = self.waits % self.count
        self.waits += 1
        return partition, max(0.05, block_timeout / self.count)


def index_of(worker: str) -> int:
    """A worker's index in its group, from its name (``queue#3``); 0 when it has none."""
    tail = worker.rpartition("#")[2]
    return int(tail) if tail.isdigit() else 0
