"""Helpers for test worker functions (importable without pytest)."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import re
import urllib.request
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


def scrape(port: int) -> str:
    """The text a supervisor's metrics endpoint serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels``, in ``text``."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in:\n{text}")
