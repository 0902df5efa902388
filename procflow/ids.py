"""Job ids: UUID version 7 strings (time-ordered), as the TypeScript library makes them."""

from __future__ import annotations

import os
import time

__all__ = ["created_at", "uuid7", "uuid7_batch"]


def _format(ms: int, rand: bytes) -> str:
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(rand, "big")
    # version 7 in bits 76-79, variant 0b10 in bits 62-63
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7() -> str:
    """A new UUIDv7 string: 48 bits of Unix milliseconds, then random bits."""
    return _format(time.time_ns() // 1_000_000, os.urandom(10))


def uuid7_batch(count: int) -> list[str]:
    """``count`` UUIDv7 strings sharing one clock reading and one read of the random source."""
    ms = time.time_ns() // 1_000_000
    rand = os.urandom(10 * count)
    return [_format(ms, rand[i * 10 : i * 10 + 10]) for i in range(count)]


def created_at(job_id: str) -> float | None:
    """When a UUIDv7 id was made (Unix seconds), or None for any other id (a version 4 id of
    the TypeScript library carries no time)."""
    hexa = job_id.replace("-", "")
    if len(hexa) != 32 or hexa[12] != "7":
        return None
    try:
        return int(hexa[:12], 16) / 1000
    except ValueError:
        return None
