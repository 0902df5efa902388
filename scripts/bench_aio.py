"""Job creation rates of the sync API and of procflow.aio, side by side (docs/async.md).

    python scripts/bench_aio.py [--jobs 10000] [--runs 3] [--concurrency 100] [--server PATH]

Rows, each over --jobs jobs (the README's job shape: three lookup attributes, one a list):
  sync create_job        Flow.create_job, one call after another
  async create_job       AsyncFlow.create_job, each awaited before the next
  async create_job xN    AsyncFlow.create_job from N tasks at once (N in flight, pipelined on
                         the AsyncFlow's one connection)
  sync / async create_jobs   every job in one create_jobs call, for scale
Every figure is the median of --runs runs, all modes measured in the same run on a private
server started here (its own port, never the machine's Redis on 6379), flushed before each
measurement; connections are opened before the clock starts. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec
from procflow.aio import AsyncFlow
from procflow.server import RedisServer, find_server_binary


def make_flow(url: str) -> Flow:
    return Flow(
        "bench",
        [QueueSpec("prepare", next_queue="check"), QueueSpec("check")],
        lookup_attributes=["userId", "roleIds", "guildId"],
        redis_url=url,
    )


def options(jobs: int) -> list[dict[str, Any]]:
    return [{"userId": n, "roleIds": [n % 10, 7], "guildId": 9} for n in range(jobs)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def _one_by_one(af: AsyncFlow, items: list[dict[str, Any]]) -> None:
    for item in items:
        await af.create_job(item)


async def _in_flight(af: AsyncFlow, items: list[dict[str, Any]], concurrency: int) -> None:
    shared: Iterator[dict[str, Any]] = iter(items)

    async def task() -> None:
        for item in shared:  # each task takes the next job: `concurrency` calls in flight
            await af.create_job(item)

    await asyncio.gather(*(task() for _ in range(concurrency)))


def async_timed(url: str, body: Callable[[AsyncFlow], Any]) -> float:
    async def main() -> float:
        async with AsyncFlow(make_flow(url)) as af:
            await af.connect()
            start = time.perf_counter()
            await body(af)
            return time.perf_counter() - start

    return asyncio.run(main())


def one_run(url: str, jobs: int, concurrency: int) -> dict[str, float]:
    """Seconds per mode, each on a flushed server."""
    client = redis.Redis.from_url(url)
    items = options(jobs)
    out: dict[str, float] = {}

    def fresh() -> None:
        client.flushall()

    def sync_one_by_one() -> float:
        flow = make_flow(url)
        flow.connect()
        seconds = timed(lambda: [flow.create_job(item) for item in items])
        flow.disconnect()
        return seconds

    def sync_batch() -> float:
        flow = make_flow(url)
        flow.connect()
        seconds = timed(lambda: flow.create_jobs(items))
        flow.disconnect()
        return seconds

    modes: dict[str, Callable[[], float]] = {
        "sync create_job": sync_one_by_one,
        "async create_job": lambda: async_timed(url, lambda af: _one_by_one(af, items)),
        f"async create_job x{concurrency}": lambda: async_timed(
            url, lambda af: _in_flight(af, items, concurrency)
        ),
        "sync create_jobs": sync_batch,
        "async create_jobs": lambda: async_timed(url, lambda af: af.create_jobs(items)),
    }
    for name, measure in modes.items():
        fresh()
        out[name] = measure()
        created = client.llen("queue:prepare:waiting")
        if created != jobs:
            raise SystemExit(f"{name}: {created} jobs on the waiting list, expected {jobs}")
    client.flushall()
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--server", help="redis-server / valkey-server binary")
    args = parser.parse_args()
    binary = args.server or find_server_binary()
    with RedisServer(binary) as server:
        assert server.port != 6379, "a private server, never the machine's Redis"
        print(f"server: {binary} {server.version()} on port {server.port}; ", end="")
        print(f"{args.jobs:,} jobs per mode, median of {args.runs} runs")
        runs = [one_run(server.url, args.jobs, args.concurrency) for _ in range(args.runs)]
    names = list(runs[0])
    rows = []
    for name in names:
        rates = sorted(args.jobs / r[name] for r in runs)
        median = statistics.median(rates)
        rows.append(
            (
                name,
                f"{median:,.0f}",
                f"{rates[0]:,.0f}",
                f"{rates[-1]:,.0f}",
                f"{1e6 / median:,.1f}",
            )
        )
    head = ("mode", "jobs/s (median)", "min", "max", "µs/job")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        cells = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
