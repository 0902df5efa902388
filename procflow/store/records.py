"""The store's data: a job ready to be written, and a leased job as a script returns it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Lease", "NewJob"]


@dataclass(frozen=True)
class NewJob:
    """A job ready to be written: every value already JSON text."""

    id: str
    key: str
    fields: Sequence[tuple[bytes, bytes]]
    lookup_keys: Sequence[str]
    waiting: str


@dataclass
class Lease:
    """A claimed job: its id, the attempt number in this stage, the raw field values (in the
    order of the fields asked for), and the lease token it is held under."""

    id: str
    attempts: int
    values: list[bytes | None]
    token: str = ""

    @classmethod
    def from_reply(cls, reply: Any, token: str = "") -> Lease:
        return cls(reply[0].decode(), int(reply[1]), list(reply[2:]), token)

    @property
    def vanished(self) -> bool:
        """The id was in the queue but its job hash had expired or been deleted."""
        return self.attempts < 0
