"""Which partition a worker of a partitioned flow leases from next.

A worker serves every partition (lane) of its stage. It takes at most ``TURN`` lease calls
in a row from one partition that has work, then moves on to the next that has some — so every
partition with jobs waiting gets its turn, whatever the worker count. With nothing anywhere it
waits on each partition in turn for ``block_timeout / K``, starting at its own index, so a
stage's workers spread over the partitions. An unpartitioned stage has one lane and never
moves. Pure policy: the loop does the leasing.
"""

from __future__ import annotations

__all__ = ["TURN", "Turns"]

#: the most lease calls in a row a worker takes from one partition while others have work
TURN = 8


class Turns:
    """The lane in use and its turn; ``count`` lanes, idle waits starting at ``start``."""

    __slots__ = ("count", "lane", "taken", "waits")

    def __init__(self, count: int, start: int = 0) -> None:
        self.count = count
        self.lane = 0
        #: lease calls that found work in this lane since the worker moved to it
        self.taken = 0
        self.waits = start

    @property
    def over(self) -> bool:
        """This lane has had its turn (a single lane's never ends)."""
        return self.count > 1 and self.taken >= TURN

    def order(self) -> list[int]:
        """The lanes to try now, in order: this one first, or, its turn over, the next."""
        first = (self.lane + 1) % self.count if self.over else self.lane
        return [(first + step) % self.count for step in range(self.count)]

    def move(self, lane: int) -> bool:
        """Go to ``lane``; True if that is a move (its turn starts afresh)."""
        if lane == self.lane:
            return False
        self.lane, self.taken = lane, 0
        return True

    def idle_lane(self, block_timeout: float) -> tuple[int, float]:
        """Where to wait for work when none was found anywhere, and for how long."""
        if self.count == 1:
            return self.lane, block_timeout
        lane = self.waits % self.count
        self.waits += 1
        return lane, max(0.05, block_timeout / self.count)


def index_of(worker: str) -> int:
    """A worker's index in its group, from its name (``queue#3``); 0 when it has none."""
    tail = worker.rpartition("#")[2]
    return int(tail) if tail.isdigit() else 0
