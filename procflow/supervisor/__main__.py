"""``python -m procflow.supervisor APP``: run a flow's workers on this node.

Argument parsing lives here; loading the app is ``procflow.app``; the process work is the
Supervisor's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import setproctitle
from loguru import logger

from ..app import APP_FORMS, load_app
from ..cli import APP_HELP, VERSION, unreachable_hint
from ..errors import ConfigurationError, ProcflowError, RedisUnavailableError
from ..flow import Flow
from ..settings import DEFAULT_DRAIN_TIMEOUT, REDIS_URL_ENV, RedisSettings
from .api import Supervisor
from .logs import format_line

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
  PROCFLOW_REDIS_URL=rediss://user:pw@redis:6380/0 python -m procflow.supervisor myapp:flow

exit status: 0 after a clean stop, 2 for bad arguments or an app that cannot be loaded
(its import raised, for example), 1 when the workers could not start (for example Redis
unreachable).
"""


def _worker_counts(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        queue, sep, count = value.rpartition("=")
        if not sep or not queue:
            raise ConfigurationError(f"--workers takes QUEUE=N or QUEUE=auto, got {value!r}")
        if count == "auto":
            counts[queue] = os.cpu_count() or 1
        elif count.isdigit():
            counts[queue] = int(count)
        else:
            raise ConfigurationError(f"--workers {value!r}: N must be a number or 'auto'")
    return counts


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
        "core); a child queue is PARENT:CHILD",
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
    return parser


def setup_logging(level: str) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level, format=format_line, backtrace=False, diagnose=False)
    logger.enable("procflow")


def _set_counts(flow: Flow, app: str, counts: dict[str, int]) -> None:
    """Apply ``--workers``: the first group of each queue gets the count, the others 0."""
    for queue, count in counts.items():
        flow.stage(queue)
        groups = [g for g in flow.groups if g.stage.name == queue]
        if not groups:
            raise ConfigurationError(
                f"--workers {queue}={count}: {app} creates no workers for {queue!r}"
            )
        groups[0].set_count(count)
        for extra in groups[1:]:
            extra.set_count(0)


def _load_flow(args: argparse.Namespace) -> Flow:
    """The app's Flow, with --redis-url and --workers applied (ConfigurationError if not)."""
    flow = load_app(args.app)
    if args.redis_url:
        flow.use_redis(RedisSettings.from_url(args.redis_url))
    _set_counts(flow, args.app, _worker_counts(args.workers))
    if not flow.handles:
        raise ConfigurationError(f"{args.app} has no workers: call create_workers first")
    return flow


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.redis_url:
        os.environ[REDIS_URL_ENV] = args.redis_url
    try:
        flow = _load_flow(args)
    except ConfigurationError as exc:
        parser.exit(2, f"error: {exc}\n")
    setproctitle.setproctitle(f"procflow: supervisor [flow {flow.name}] {args.app}")
    supervisor = Supervisor(
        flow,
        node_id=args.node_id,
        drain_timeout=args.drain_timeout,
        monitor=not args.no_monitor,
        log_level=args.log_level,
    )
    try:
        return supervisor.run()
    except ProcflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, RedisUnavailableError):
            print(unreachable_hint(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
