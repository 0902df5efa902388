"""``python -m procflow.supervisor APP``: run a flow's workers on this node.

Argument parsing lives here; loading the app is ``procflow.app``; the process work is the
Supervisor's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import setproctitle
from loguru import logger

from ..app import APP_FORMS, APP_HELP, VERSION, load_app, shown, unreachable_hint
from ..client.flow import Flow
from ..cpus import usable_cpus
from ..errors import ConfigurationError, ProcflowError, RedisUnavailableError
from ..settings import DEFAULT_DRAIN_TIMEOUT, REDIS_URL_ENV, RedisSettings
from .api import Supervisor
from .logs import format_line
from .rebalance import Limits

__all__ = ["main"]

DESCRIPTION = f"""\
Run the workers of a procflow Flow on this node until SIGTERM or SIGINT.

APP is {APP_FORMS} naming a Flow whose
workers are created (create_workers and friends), or a function without arguments returning
one. A module is looked up from the current directory and sys.path; a .py file is imported
under its own name, with its directory first on sys.path.

The supervisor forks one process per worker, connects them all before any starts, renews
the locks of running jobs, replaces workers that crash, hang past a queue's timeout or pass
its memory limit, and recovers their jobs.

SIGTERM or SIGINT stops gracefully: workers finish the job in hand (up to --drain-timeout
seconds), then disconnect. A second SIGINT stops at once: running jobs go straight back to
their waiting lists, neither lost nor failed.
"""

EPILOG = """\
examples:
  python -m procflow.supervisor myapp.flows:access_flow
  python -m procflow.supervisor ./myapp.py:flow
  python -m procflow.supervisor myapp.flows:make_flow --workers check=auto --workers prepare=2
  python -m procflow.supervisor myapp:flow --workers check=auto --pin --threads-per-worker 1
  PROCFLOW_REDIS_URL=rediss://user:pw@redis:6380/0 python -m procflow.supervisor myapp:flow

exit status: 0 after a clean stop, 2 for bad arguments or an app that cannot be loaded
(its import raised, for example), 1 when the workers could not start (for example Redis
unreachable).
"""


def _count(value: str, text: str) -> int:
    if text == "auto":
        return usable_cpus()
    if text.isdigit():
        return int(text)
    raise ConfigurationError(f"--workers {value!r}: {text!r} must be a number or 'auto'")


def _worker_counts(values: Sequence[str]) -> dict[str, int | Limits]:
    """``QUEUE=N`` (a count) or ``QUEUE=MIN:MAX`` (limits under a core budget)."""
    counts: dict[str, int | Limits] = {}
    for value in values:
        queue, sep, count = value.rpartition("=")
        if not sep or not queue:
            raise ConfigurationError(
                f"--workers takes QUEUE=N, QUEUE=auto or QUEUE=MIN:MAX, got {value!r}"
            )
        low, colon, high = count.partition(":")
        if colon:
            least, most = _count(value, low), _count(value, high)
            if least > most:
                raise ConfigurationError(f"--workers {value!r}: MIN is larger than MAX")
            counts[queue] = Limits(least, most)
        else:
            counts[queue] = _count(value, count)
    return counts


def _cores(value: str) -> int:
    if value == "auto":
        return usable_cpus()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a number >= 1 or 'auto', got {value!r}")


def _threads(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m procflow.supervisor",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=VERSION, help="show the version")
    parser.add_argument("app", metavar="APP", help=APP_HELP)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV),
        metavar="URL",
        help=f"Redis to use, overriding the flow's (default: ${REDIS_URL_ENV}); "
        "redis://, rediss:// (TLS) or unix://",
    )
    parser.add_argument(
        "--workers",
        action="append",
        default=[],
        metavar="QUEUE=N",
        help="number of worker processes for QUEUE (repeatable; N may be 'auto' = one per "
        "core this process may use: its CPU affinity, capped by its cgroup CPU quota); a "
        "child queue is PARENT:CHILD; with --cores, QUEUE=MIN:MAX bounds the stage and "
        "QUEUE=N fixes it",
    )
    parser.add_argument(
        "--cores",
        type=_cores,
        default=None,
        metavar="N",
        help="a core budget: at most N job-running processes, moved between stages by "
        "demand (waiting jobs x their measured time); N may be 'auto'",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin each worker process to one allowed core, round-robin in worker order",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=_threads,
        default=None,
        metavar="N",
        help="threads for the native math libraries (OpenMP, OpenBLAS, MKL, ...) of each "
        "worker (default: the app's, 1 unless it says otherwise); a variable such as "
        "OMP_NUM_THREADS set in this command's environment is left as it is",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("PROCFLOW_LOG_LEVEL", "INFO"),
        type=str.upper,
        metavar="LEVEL",
        choices=["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"],
        help="log level of the supervisor and its workers: TRACE, DEBUG, INFO, SUCCESS, "
        "WARNING, ERROR or CRITICAL (default: $PROCFLOW_LOG_LEVEL, else INFO)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="how long a graceful stop lets running jobs finish "
        f"(default: {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--node-id",
        default=None,
        metavar="NAME",
        help="this node's name in lock values (default: $PROCFLOW_NODE_ID or the host name)",
    )
    parser.add_argument(
        "--no-monitor",
        action="store_true",
        help="do not take part in expired-lock recovery (another node's monitor does it)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: a free port, logged)",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="the address the metrics endpoint binds (default: 0.0.0.0, every interface)",
    )
    return parser


def setup_logging(level: str) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level, format=format_line, backtrace=False, diagnose=False)
    logger.enable("procflow")


def _set_counts(flow: Flow, app: str, counts: dict[str, int | Limits], budget: bool) -> None:
    """Apply ``--workers``: the first group of each queue gets the count, the others 0; under
    a budget the counts become limits (the supervisor sizes the groups)."""
    for queue, count in counts.items():
        flow.stage(queue)
        groups = [g for g in flow.groups if g.stage.name == queue]
        if not groups:
            raise ConfigurationError(
                f"--workers {queue}={count}: {app} creates no workers for {queue!r}"
            )
        if isinstance(count, Limits) and not budget:
            raise ConfigurationError(
                f"--workers {queue}={count.min}:{count.max}: a range needs --cores"
            )
        if budget:
            continue
        assert isinstance(count, int)
        groups[0].set_count(count)
        for extra in groups[1:]:
            extra.set_count(0)


def _limits(counts: dict[str, int | Limits]) -> dict[str, Limits]:
    return {q: c if isinstance(c, Limits) else Limits(c, c) for q, c in counts.items()}


def _set_cpu_options(flow: Flow, pin: bool, threads: int | None) -> None:
    """Apply ``--pin`` and ``--threads-per-worker`` to every group."""
    for group in flow.groups:
        options = group.options
        group.options = dataclasses.replace(
            options,
            pin=pin or options.pin,
            threads_per_worker=options.threads_per_worker if threads is None else threads,
        )


def _load_flow(args: argparse.Namespace) -> Flow:
    """The app's Flow, with --redis-url and --workers applied (ConfigurationError if not)."""
    flow = load_app(args.app)
    if args.redis_url:
        flow.use_redis(RedisSettings.from_url(args.redis_url))
    _set_counts(flow, args.app, _worker_counts(args.workers), args.cores is not None)
    _set_cpu_options(flow, args.pin, args.threads_per_worker)
    if not flow.handles:
        raise ConfigurationError(f"{args.app} has no workers: call create_workers first")
    return flow


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.redis_url:
            RedisSettings.from_url(args.redis_url)  # a typo is told as one, not as the app's
            os.environ[REDIS_URL_ENV] = args.redis_url
        flow = _load_flow(args)
    except ConfigurationError as exc:
        parser.exit(2, shown(f"error: {exc}\n", lines=True))
    setproctitle.setproctitle(f"procflow: supervisor [flow {flow.name}] {args.app}")
    supervisor = Supervisor(
        flow,
        cores=args.cores,
        limits=_limits(_worker_counts(args.workers)) if args.cores else None,
        node_id=args.node_id,
        drain_timeout=args.drain_timeout,
        monitor=not args.no_monitor,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    try:
        return supervisor.run()
    except ProcflowError as exc:
        print(shown(f"error: {exc}", lines=True), file=sys.stderr)
        if isinstance(exc, RedisUnavailableError):
            print(unreachable_hint(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
