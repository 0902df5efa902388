"""The shared-memory slot through which a worker process tells its supervisor what it holds.

The worker writes, the supervisor reads; a sequence number (odd while a write is under way)
lets the reader take a consistent copy. Writing costs a few attribute stores per job, no
system call, so the supervisor always knows which job and lease token a worker holds — also
after that worker was SIGKILLed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMPLETING",
    "IDLE",
    "LEASING",
    "RUNNING",
    "STOPPED",
    "WAITING",
    "SlotData",
    "SlotView",
    "SlotWriter",
    "read_slot",
]

IDLE, WAITING, LEASING, RUNNING, COMPLETING, STOPPED = range(6)
STATE_NAMES = ("idle", "waiting", "leasing", "running", "completing", "stopped")


class SlotData(ctypes.Structure):
    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("state", ctypes.c_int32),
        ("stop", ctypes.c_int32),  # written by the supervisor: 1 = finish the job and stop
        ("started", ctypes.c_double),  # time.monotonic() when the job started
        ("jobs", ctypes.c_uint64),  # jobs finished by this process
        ("token", ctypes.c_char * 160),
        ("next_token", ctypes.c_char * 160),
        ("job", ctypes.c_char * 96),
    ]


@dataclass(frozen=True)
class SlotView:
    """A consistent copy of a slot."""

    state: int
    started: float
    jobs: int
    token: str
    next_token: str
    job: str

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if 0 <= self.state < len(STATE_NAMES) else "?"


def read_slot(raw: Any) -> SlotView:
    """A consistent copy: the sequence number is even and unchanged around the read. A writer
    that died mid-write leaves it odd; its fields are then taken as they are (every recovery
    step checks the lease token in Redis, so a mixed copy can only make one a no-op)."""
    for _ in range(1000):
        before = raw.seq
        view = SlotView(
            raw.state,
            raw.started,
            raw.jobs,
            raw.token.decode(),
            raw.next_token.decode(),
            raw.job.decode(),
        )
        if not before & 1 and raw.seq == before:
            break
    return view


class SlotWriter:
    """The worker side: one method per transition."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def waiting(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = WAITING
        raw.job = b""
        raw.token = b""
        raw.next_token = b""
        raw.seq += 1

    def leasing(self, token: str, job: str = "") -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = LEASING
        raw.token = token.encode()
        raw.next_token = b""
        raw.job = job.encode()
        raw.seq += 1

    def running(self, job: str, token: str, started: float) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = RUNNING
        raw.job = job.encode()
        raw.token = token.encode()
        raw.next_token = b""
        raw.started = started
        raw.seq += 1

    def completing(self, next_token: str) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = COMPLETING
        raw.next_token = next_token.encode()
        raw.seq += 1

    def finished(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = IDLE
        raw.jobs += 1
        raw.job = b""
        raw.token = b""
        raw.next_token = b""
        raw.seq += 1

    def stopped(self) -> None:
        raw = self.raw
        raw.seq += 1
        raw.state = STOPPED
        raw.seq += 1

    @property
    def stop_requested(self) -> bool:
        return bool(self.raw.stop)
