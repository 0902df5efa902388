"""``procflow dashboard``: a web dashboard over ``procflow.operator.ops.Operator``.

The pages (a Starlette app served by uvicorn: ``routes.py``, behind ``guards.py``, showing
``views.py``'s data) show the flows, each flow's stages as a graph with live depths and
per-minute throughput, its nodes and workers, a stage's jobs a page at a time, one job in full,
and a search by lookup attribute; and act on them (retry, cancel, delete) unless
``--read-only``. They need the ``dashboard`` extra (starlette, uvicorn,
jinja2), imported only when the command runs: the rest of the command line works without.

It listens on 127.0.0.1 unless told otherwise, and refuses a non-loopback address without a
token (``--token`` or ``$PROCFLOW_DASHBOARD_TOKEN``): with a token, every page asks for it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from types import FrameType, ModuleType
from typing import Any

from ...errors import ConfigurationError
from ...settings import REDIS_URL_ENV
from ..ops import Operator

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "add_dashboard_command", "is_loopback", "run_dashboard"]

#: where the token comes from when ``--token`` is not given
TOKEN_ENV = "PROCFLOW_DASHBOARD_TOKEN"
DEFAULT_PORT = 8642


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address to bind) is this machine's loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _server_modules() -> tuple[ModuleType, ModuleType]:
    """uvicorn and the routes module (which imports starlette and jinja2): the optional
    ``dashboard`` extra, loaded only by this command."""
    try:
        # Lazy on purpose: `procflow status` and friends must work without the extra.
        import uvicorn  # noqa: PLC0415 - optional extra, loaded only when the dashboard runs

        from . import routes  # noqa: PLC0415 - imports starlette and jinja2 (the same extra)
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra: pip install 'procflow[dashboard]' ({exc})"
        ) from None
    return uvicorn, routes


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a kept-alive connection waits 40 ms for each reply's last segment (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _serve(server: Any, sock: socket.socket) -> None:
    """Run uvicorn's ``server`` on ``sock`` until SIGINT or SIGTERM. uvicorn stops gracefully
    on them, then raises the signal again for the handler it found: ours, which only asks
    for the stop (so one coming before uvicorn listens is not lost) and exits with 0."""

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until SIGINT or SIGTERM (the ``dashboard`` command)."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        print(
            f"error: refusing to serve on {args.host}, which is not a loopback address, without "
            f"a token: give --token or ${TOKEN_ENV}, or bind 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    uvicorn, web = _server_modules()
    op = Operator(args.redis_url)
    try:
        op.store.ping()  # an unreachable Redis is an error now, naming its address
        app = web.create_app(
            op,
            read_only=args.read_only,
            token=token,
            allowed_hosts=web.LOOPBACK_HOSTS if is_loopback(args.host) else None,
        )
        sock = _listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        mode = ", read-only" if args.read_only else ""
        print(
            f"procflow dashboard on http://{shown}:{port}/ (Redis {op.redis.url}{mode}"
            f"{', token required' if token else ''}); Ctrl-C stops it",
            flush=True,
        )
        config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off")
        _serve(uvicorn.Server(config), sock)
    finally:
        op.close()
    print("procflow dashboard stopped", flush=True)
    return 0


def add_dashboard_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], url_default: str | None
) -> None:
    """The ``dashboard`` subcommand."""
    text = "serve a web dashboard: flows, stages, nodes, jobs, search, and actions"
    cmd = sub.add_parser(
        "dashboard",
        help=text,
        description=f"Serve a web dashboard: flows, stages, nodes, jobs, search, and actions "
        f"(retry, cancel, delete) unless --read-only. Needs procflow[dashboard]. It binds "
        f"127.0.0.1 by default; on any other address it wants a token (--token or "
        f"${TOKEN_ENV}), which every page then asks for.",
    )
    cmd.add_argument(
        "--redis-url",
        default=url_default,
        metavar="URL",
        help=f"the Redis to look at (default: ${REDIS_URL_ENV}, else redis://127.0.0.1:6379/0)",
    )
    cmd.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    cmd.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default: {DEFAULT_PORT}; 0: any free one, printed at start)",
    )
    cmd.add_argument("--read-only", action="store_true", help="show, never act: no actions")
    cmd.add_argument(
        "--token",
        default=None,
        metavar="T",
        help=f"require this token (a login form, or 'Authorization: Bearer T'); "
        f"default ${TOKEN_ENV}",
    )
    cmd.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: warning)",
    )
    cmd.set_defaults(run=run_dashboard)
