"""Helpers for test worker functions (importable without pytest)."""

from __future__ import annotations

import ctypes
import faulthandler
import os
from collections.abc import Callable

import redis


def lazy_client(url: str) -> Callable[[], redis.Redis]:
    """A Redis client made on first use in each process, for worker functions (a client must
    not cross fork, and cannot be pickled)."""
    cache: dict[int, redis.Redis] = {}

    def get() -> redis.Redis:
        client = cache.get(os.getpid())
        if client is None:
            client = cache[os.getpid()] = redis.Redis.from_url(url)
        return client

    return get


def segfault() -> None:
    """Crash this process with SIGSEGV, on purpose and quietly: the faulthandler that pytest
    enables (and a forked worker inherits) would print a "Fatal Python error" block for an
    expected crash, which reads like a broken build."""
    faulthandler.disable()
    ctypes.string_at(0)
