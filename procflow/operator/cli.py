"""``python -m procflow`` (and ``procflow``): the demo, and the operator's commands.

``python -m procflow.supervisor APP`` (see ``procflow.supervisor.__main__``) is the
command that runs workers on a node; this one is for people looking at a flow.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..app import (
    APP_FORMS,
    APP_HELP,
    VERSION,
    load_app,
    report_retried,
    shown,
    unreachable_hint,
)
from ..client.flow import Flow
from ..cpus import usable_cpus
from ..definition import QueueSpec
from ..errors import ProcflowError, RedisUnavailableError, ServerStartError
from ..server import RedisServer, embedded_binary
from ..settings import REDIS_URL_ENV, RedisSettings
from ..store import keys
from ..supervisor import Supervisor
from .commands import add_operator_commands
from .dashboard import add_dashboard_command

__all__ = ["APP_HELP", "VERSION", "build_parser", "main", "unreachable_hint"]


DESCRIPTION = f"""\
Operate procflow flows from a Redis URL alone: every flow describes itself in Redis when
its supervisor starts, so these commands need no app code. See what runs (flows, status),
look at jobs (job, jobs), and act (retry, cancel, delete, purge); or run the demo. To run a
flow's workers on a node, use: python -m procflow.supervisor APP

Where a command takes APP, it is {APP_FORMS}: a Flow, or a function without arguments
returning one. A module is looked up from the current directory and sys.path; a .py file is
imported under its own name.
"""

EPILOG = f"""\
examples:
  procflow demo
  procflow server --dir ./redis-data
  procflow flows --redis-url redis://127.0.0.1:6379/0
  procflow status access --watch
  procflow job 01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b
  procflow jobs access --by userId=62
  procflow retry access check
  procflow dashboard --redis-url redis://127.0.0.1:6379/0
  procflow failed ./myapp.py:flow render --retry

The Redis URL is --redis-url, else ${REDIS_URL_ENV}, else redis://127.0.0.1:6379/0 (for an
APP: the flow's own).
exit status: 0 ok, 1 a failed demo job, an unknown job or flow, a refused action or a Redis
error, 2 bad arguments or an app that cannot be loaded.
"""

#: the demo's job sizes: primes below 2000-2490, the longest Collatz chain below a quarter
_DEMO_SIZES = (2000, 10, 50)


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
    cores = usable_cpus()
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


def _demo_redis(args: argparse.Namespace) -> tuple[str | None, str]:
    """The Redis URL the demo uses and where it came from (None: the embedded server)."""
    if args.redis_url:
        return args.redis_url, "--redis-url"
    if os.environ.get(REDIS_URL_ENV):
        return os.environ[REDIS_URL_ENV], f"${REDIS_URL_ENV}"
    return None, ""


def _demo(args: argparse.Namespace) -> int:
    url, source = _demo_redis(args)
    if url is not None:
        print(f"using Redis at {RedisSettings.from_url(url).url} (from {source})", flush=True)
        return _run_demo(args, url, shared=True)
    with RedisServer(embedded_binary()) as server:
        version = server.version().split(" sha=")[0]
        print(f"embedded server: {version} on {server.url} (stopped at the end)")
        return _run_demo(args, server.url, shared=False)


def _worker_plan(flow: Flow) -> str:
    heavy = [g for g in flow.groups if g.stage.parent is not None]
    light = [g.stage.name for g in flow.groups if g.stage.parent is None]
    per_core = heavy[0].count if heavy else 0
    return (
        f"starting {sum(g.count for g in flow.groups)} worker processes:\n"
        f"  {per_core} (one per core) for each CPU-bound child stage: "
        f"{', '.join(g.stage.name for g in heavy)}\n"
        f"  1 each for the light stages: {', '.join(light)}"
    )


def _create(flow: Flow, count: int, batch: str) -> list[str]:
    if count == 0:
        return []
    base, step, spread = _DEMO_SIZES
    return flow.create_jobs(
        [{"size": base + step * (n % spread), "batch": batch} for n in range(count)]
    )


def _run_demo(args: argparse.Namespace, url: str, shared: bool) -> int:
    """The demo on ``url``; on a ``shared`` server its jobs are removed afterwards unless
    ``--keep``."""
    flow = demo_flow(url)
    flow.connect()  # a Redis problem shows before anything is started or written
    print("flow 'demo': prepare → analyze (fan-out: primes, collatz) → report")
    print(_worker_plan(flow), flush=True)
    batch = f"demo-{uuid.uuid4().hex[:12]}"
    ids: list[str] = []
    try:
        with Supervisor(flow, log_level="WARNING") as sup:
            started = time.perf_counter()
            ids = _create(flow, args.jobs, batch)
            print(f"created {len(ids)} jobs (batch {batch})", flush=True)
            sup.wait(ids, timeout=args.timeout, progress=True)
            wall = time.perf_counter() - started
        jobs = flow.get_jobs(ids, resolve_children=True)
        _report(flow, jobs, wall)
        return 1 if any(j.get(keys.FAILED) for j in jobs) else 0
    finally:
        if shared:
            _keep_or_remove(flow, ids, batch, args.keep)
        flow.disconnect()


def _children(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        child
        for name, value in job.items()
        if keys.is_children_jobs_field(name) and isinstance(value, list)
        for child in value
        if isinstance(child, dict)
    ]


def _pipeline_order(flow: Flow) -> list[str]:
    """Stage names in pipeline order: each top stage followed by its child stages."""
    top = [stage for stage in flow.stages.values() if stage.parent is None]
    return [name for stage in top for name in (stage.name, *stage.children.values())]


def _stage_rows(flow: Flow, jobs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Per stage, measured from the jobs and their children: (stage, completed, failed)."""
    everything = jobs + [child for job in jobs for child in _children(job)]
    rows = []
    for name in _pipeline_order(flow):
        ran = [j for j in everything if keys.attempts_field(name) in j]
        failed = sum(1 for j in ran if j.get(keys.FAILED_QUEUE) == name)
        rows.append((name, len(ran) - failed, failed))
    return rows


def _report(flow: Flow, jobs: list[dict[str, Any]], wall: float) -> None:
    rows = _stage_rows(flow, jobs)
    width = max(len("stage"), *(len(name) for name, _, _ in rows))
    print(f"\n  {'stage':<{width}}  completed  failed")
    for name, completed, failed in rows:
        print(f"  {name:<{width}}  {completed:>9}  {failed:>6}")
    failed_jobs = sum(1 for j in jobs if j.get(keys.FAILED))
    rate = f"{len(jobs) / wall:,.0f}" if jobs and wall > 0 else "n/a"
    summary = [
        ("jobs", f"{len(jobs)}, {failed_jobs} failed"),
        (
            "child jobs",
            f"{sum(len(_children(j)) for j in jobs)} (counted in the jobs' children:Q:jobs)",
        ),
        ("wall time", f"{wall:.2f} s from the first create to the last done"),
        ("jobs/s", f"{rate}  (jobs/s = jobs / wall time from the first create to the last done)"),
    ]
    print()
    for key, value in summary:
        print(f"  {key:<{width}}  {value}")


def _keep_or_remove(flow: Flow, ids: list[str], batch: str, keep: bool) -> None:
    """Remove this run's jobs (hashes, child jobs, lookup entries, places in the queues);
    never another run's. A list emptied by that is gone: Redis keeps no empty lists."""
    if not keep:
        flow.forget()  # the demo's registry entry and counts: a demo leaves nothing behind
    if not ids:
        return
    if keep:
        print(
            f"\nkept the {len(ids)} jobs of batch {batch}: "
            f"flow.get_jobs_by_key('batch', {batch!r}) finds them; they expire after "
            f"{flow.key_ttl} s"
        )
        return
    removed = sum(1 for job_id in ids if flow.delete_job(job_id))
    print(
        f"\nremoved the {removed} jobs of batch {batch} with their child jobs and lookup "
        "entries (--keep keeps them)"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server the way Ctrl-C does


def _server(args: argparse.Namespace) -> int:
    """The embedded server in the foreground until Ctrl-C or SIGTERM: its URL printed, its
    data kept in ``--dir`` (append-only file) or in a temporary directory removed at exit."""
    directory = os.path.abspath(args.dir) if args.dir else None
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    server = RedisServer(
        embedded_binary(), port=args.port, appendonly=directory is not None, directory=directory
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.start()
        assert server.process is not None
        version = server.version().split(" sha=")[0]
        print(f"procflow server: {version}, pid {server.pid}, listening on 127.0.0.1 only")
        if directory is None:
            print("data: in a temporary directory, removed when it stops (--dir DIR keeps it)")
        else:
            print(
                f"data: kept in {directory} (append-only file, written to disk every second; "
                "the same --dir loads it back)"
            )
        print(f"  export {REDIS_URL_ENV}={server.url}")
        print("Ctrl-C stops it", flush=True)
        code = server.process.wait()
        raise ServerStartError(f"the server exited with code {code}; its log: {server.logfile}")
    except KeyboardInterrupt:
        print("stopping the server", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server.stop()


def _add_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser(
        "server",
        help="run the embedded Redis-compatible server until Ctrl-C, for your own app",
        description="Run the embedded server (Valkey, from procflow[embedded]) in the "
        "foreground until Ctrl-C or SIGTERM, listening on 127.0.0.1; print its redis:// URL "
        f"to use as --redis-url or ${REDIS_URL_ENV}. With --dir its data is kept there in an "
        "append-only file and loaded back by the next start with the same --dir; without, "
        "it lives in a temporary directory removed when the server stops.",
    )
    server.add_argument(
        "--dir",
        metavar="DIR",
        default=None,
        help="keep the data in DIR (created if missing) across restarts (default: nothing kept)",
    )
    server.add_argument(
        "--port", type=int, default=None, metavar="PORT", help="port (default: a free one)"
    )
    server.set_defaults(run=_server)


def _load(args: argparse.Namespace) -> Flow:
    settings = RedisSettings.from_url(args.redis_url) if args.redis_url else None
    flow = load_app(args.app)
    if settings is not None:
        flow.use_redis(settings)
    return flow


def _retry(flow: Flow, queue: str, wanted: list[str]) -> int:
    """Put failed jobs back: all of them, or ``wanted``; 1 when some id was not failed."""
    return report_retried(queue, wanted, flow.retry_failed(queue, wanted or None))


def _failed(args: argparse.Namespace) -> int:
    flow = _load(args)
    if args.retry is not None:
        return _retry(flow, args.queue, [*args.ids, *args.retry])
    ids = flow.failed_jobs(args.queue)
    if not ids:
        print(shown(f"no failed jobs in {args.queue}"))
    for job in flow.get_jobs(ids):
        print(shown(f"{job['id']}  {job.get(keys.FAILED_ERROR_MSG, '')}"))
    return 0


def _add_redis_url(parser: argparse.ArgumentParser, default: str | None, text: str) -> None:
    parser.add_argument("--redis-url", default=default, metavar="URL", help=text)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run a small CPU-bound flow end to end and print what it did",
        description="Run the demo flow end to end: prepare → analyze (fan-out to primes and "
        "collatz) → report, with one worker process per core for each CPU-bound stage, and "
        "print per stage how many jobs completed and failed.",
    )
    _add_redis_url(
        demo,
        None,
        f"Redis to use (default: ${REDIS_URL_ENV}, else an embedded server); the demo's "
        "jobs are removed afterwards unless --keep",
    )
    demo.add_argument(
        "--jobs", type=int, default=200, metavar="N", help="how many jobs (default: 200)"
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long (default: 300)",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the demo's jobs in Redis (with --redis-url)"
    )
    demo.set_defaults(run=_demo)


def _add_flow_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    cmd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
    cmd.add_argument("app", metavar="APP", help=APP_HELP)
    _add_redis_url(
        cmd,
        os.environ.get(REDIS_URL_ENV),
        f"Redis to use, overriding the flow's (default: ${REDIS_URL_ENV})",
    )
    return cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m procflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=VERSION, help="show the version")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="COMMAND --help tells more"
    )
    _add_demo(sub)
    _add_server(sub)
    add_operator_commands(sub, os.environ.get(REDIS_URL_ENV))
    add_dashboard_command(sub, os.environ.get(REDIS_URL_ENV))
    failed = _add_flow_command(sub, "failed", "list a queue's failed jobs, or put them back")
    failed.add_argument("queue", metavar="QUEUE", help="the queue (a child queue: PARENT:CHILD)")
    failed.add_argument("ids", nargs="*", metavar="ID", help="with --retry: only these jobs")
    failed.add_argument(
        "--retry",
        nargs="*",
        default=None,
        metavar="ID",
        help="put the failed jobs back on waiting: all of them, or only the IDs given",
    )
    failed.set_defaults(run=_failed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ProcflowError as exc:
        print(shown(f"error: {exc}", lines=True), file=sys.stderr)
        if isinstance(exc, RedisUnavailableError):
            print(unreachable_hint(demo=args.command == "demo"), file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
