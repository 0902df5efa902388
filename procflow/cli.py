"""``python -m procflow``: demo, status and failed-job commands.

``python -m procflow.supervisor APP`` (see :mod:`procflow.supervisor.__main__`) is the
command that runs workers on a node; this one is for people looking at a flow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .app import load_app
from .definition import QueueSpec
from .errors import ProcflowError
from .flow import Flow
from .server import RedisServer, embedded_binary
from .settings import REDIS_URL_ENV
from .supervisor import Supervisor

__all__ = ["main"]


def _count_primes(limit: int) -> int:
    """A CPU-bound step: primes below ``limit`` by trial division (pure Python)."""
    count = 0
    for n in range(2, limit):
        f = 2
        while f * f <= n:
            if n % f == 0:
                break
            f += 1
        else:
            count += 1
    return count


def _collatz_longest(limit: int) -> int:
    best = 0
    for start in range(1, limit):
        n, steps = start, 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        best = max(best, steps)
    return best


def _prepare(job: dict[str, Any]) -> dict[str, Any]:
    size = int(job["size"])
    return {
        "children:analyze:params": [
            {"childName": "primes", "limit": size},
            {"childName": "collatz", "limit": size // 4},
        ]
    }


def demo_flow(redis_url: str) -> Flow:
    """The demo pipeline: prepare → analyze (fan-out: primes, collatz) → report."""
    flow = Flow(
        "demo",
        [
            QueueSpec("prepare", next_queue="analyze", attributes_to_get=["size"]),
            QueueSpec(
                "analyze",
                next_queue="report",
                children=[
                    QueueSpec("primes", attributes_to_get=["limit"]),
                    QueueSpec("collatz", attributes_to_get=["limit"]),
                ],
            ),
            QueueSpec("report", attributes_to_get=["children:analyze:jobs"]),
        ],
        lookup_attributes=["batch"],
        redis_url=redis_url,
    )
    cores = os.cpu_count() or 1
    flow.create_workers("prepare", _prepare, count=1)
    flow.create_parent_workers("analyze", count=1)
    flow.create_child_workers(
        "analyze", "primes", lambda j: {"primes": _count_primes(j["limit"])}, count=cores
    )
    flow.create_child_workers(
        "analyze", "collatz", lambda j: {"longest": _collatz_longest(j["limit"])}, count=cores
    )
    flow.create_workers(
        "report",
        lambda j: {"children": len(j["children:analyze:jobs"]), "reportedBy": os.getpid()},
        count=1,
    )
    return flow


def _demo(args: argparse.Namespace) -> int:
    server = None
    url = args.redis_url
    if not url:
        server = RedisServer(embedded_binary()).start()
        url = server.url
        print(f"embedded server: {server.version()} on {url}")
    try:
        flow = demo_flow(url)
        print(f"flow {flow.name!r}: prepare → analyze (primes, collatz) → report")
        started = time.perf_counter()
        with Supervisor(flow, log_level="WARNING") as sup:
            pids = sorted(sup.worker_pids())
            print(f"{len(pids)} worker processes: {', '.join(map(str, pids))}")
            batch = f"b{int(time.time())}"
            ids = flow.create_jobs(
                [{"size": 2000 + 10 * (n % 50), "batch": batch} for n in range(args.jobs)]
            )
            jobs = sup.wait(ids, timeout=args.timeout, progress=True)
        wall = time.perf_counter() - started
        failed = [j for j in jobs if j.get("failed")]
        sample = flow.get_jobs([ids[0]], resolve_children=True)[0]
        rows = [
            ("jobs", f"{len(jobs)}"),
            ("done", f"{sum(1 for j in jobs if j.get('done'))}"),
            ("failed", f"{len(failed)}"),
            ("child jobs", f"{2 * len(jobs)}"),
            ("worker processes", f"{len(pids)}"),
            ("wall time", f"{wall:.2f} s (with start and stop)"),
            ("jobs/s", f"{len(jobs) / wall:,.0f}"),
        ]
        width = max(len(k) for k, _ in rows)
        print()
        for key, value in rows:
            print(f"  {key:<{width}}  {value}")
        print("\nfirst job, children resolved:")
        print(json.dumps(sample, indent=2, ensure_ascii=False))
        return 1 if failed else 0
    finally:
        if server is not None:
            server.stop()


def _load(args: argparse.Namespace) -> Flow:
    flow = load_app(args.app)
    if args.redis_url:
        flow.use_redis(args.redis_url)
    return flow


def _status(args: argparse.Namespace) -> int:
    flow = _load(args)
    counts = flow.counts()
    names = ("waiting", "processing", "delayed", "parked", "failed")
    width = max(len(q) for q in counts)
    print(f"{'queue':<{width}}  " + "  ".join(f"{n:>10}" for n in names))
    for queue, c in counts.items():
        print(f"{queue:<{width}}  " + "  ".join(f"{c[n]:>10}" for n in names))
    return 0


def _failed(args: argparse.Namespace) -> int:
    flow = _load(args)
    if args.retry:
        moved = flow.retry_failed(args.queue, args.ids or None)
        print(f"put {len(moved)} job(s) back on {args.queue!r}")
        return 0
    for job in flow.get_jobs(flow.failed_jobs(args.queue)):
        print(f"{job['id']}  {job.get('failedErrorMsg', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m procflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run a small CPU-bound flow end to end (on an embedded server unless --redis-url)",
    )
    demo.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV))
    demo.add_argument("--jobs", type=int, default=200)
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.set_defaults(run=_demo)
    for name, fn, text in (
        ("status", _status, "waiting/processing/delayed/parked/failed counts per queue"),
        ("failed", _failed, "list a queue's failed jobs, or put them back (--retry)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("app", metavar="APP", help="module:attribute of a Flow (or a factory)")
        cmd.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV))
        if name == "failed":
            cmd.add_argument("queue")
            cmd.add_argument("ids", nargs="*", help="only these ids (with --retry)")
            cmd.add_argument("--retry", action="store_true")
        cmd.set_defaults(run=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ProcflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
