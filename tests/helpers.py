"""Helpers for test worker functions (importable without pytest)."""

from __future__ import annotations

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
