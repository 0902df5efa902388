"""The partition a worker loop is in: its stage session, and the stage as it is there.

A worker serves its stage in every partition of the flow (an unpartitioned flow has one).
Each partition has a connection of its own (a partitioned flow's partitions may live on
different servers), so each has its own ``Retrier``: an outage is one server's. Moving the
loop to another partition is changing one reference (``turns.py`` decides when). What is
read by a partition's names is read here: a leased job's fields, under the names the worker
function knows them by, and a result, by the partition's routes and renames.
"""

from __future__ import annotations

from typing import Any

from ..store.records import Lease
from ..store.session import decoded
from .payload import PartitionStage
from .results import read_result
from .session import JobSession, Retrier

__all__ = ["ServedPartition"]


class ServedPartition:
    """Partition ``index`` as a worker loop serves it: ``session`` (calls go through
    ``retrier``), the ``stage`` there and its ``keys``, ``routes`` for a result's
    ``nextQueue``, ``child_stages`` of a parent stage, ``renames`` of result fields, and
    ``names``: what the worker function calls each of the stage's fields."""

    __slots__ = (
        "child_stages",
        "index",
        "keys",
        "names",
        "redis",
        "renames",
        "retrier",
        "routes",
        "session",
        "stage",
    )

    def __init__(
        self, index: int, where: PartitionStage, session: JobSession, retrier: Retrier
    ) -> None:
        self.index = index
        self.session = session
        self.retrier = retrier
        self.stage = where.stage
        self.keys = where.stage.keys
        self.redis = where.redis
        self.routes = where.routes
        self.child_stages = where.child_stages
        self.renames = where.renames
        self.names = where.names or where.stage.fields  # a partition's: as the user wrote

    def params(self, lease: Lease) -> dict[str, Any]:
        """A leased job's fields, decoded, under the names the worker function knows (and
        ``id``); raises DecodeError."""
        params: dict[str, Any] = {"id": lease.id}
        keys = self.keys
        for field, name, raw in zip(self.stage.fields, self.names, lease.values, strict=False):
            params[name] = None if raw is None else decoded(keys, lease.id, field, raw)
        return params

    def read(self, result: Any, flow: str) -> tuple[list[tuple[bytes, bytes]], str]:
        """``read_result`` here: the result's fields as this partition names them, and the
        waiting list the job goes to next."""
        return read_result(result, self.stage, self.routes, flow, self.redis, self.renames)
