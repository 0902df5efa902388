"""The operator's commands of ``procflow``: flows, status, job, jobs, retry, cancel, delete,
purge. They work from a Redis URL alone — the flows describe themselves in Redis when their
supervisors start — and print tables for people (``rich``) or JSON for scripts (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..app import APP_FORMS, load_app, report_retried, shown
from ..client.flow import Flow
from ..cost import seconds_text
from ..errors import ConfigurationError
from ..settings import REDIS_URL_ENV
from .ops import PAGE_STATES, Operator, StageStatus, as_json, flow_eta, where_now

__all__ = ["add_operator_commands", "looks_like_app", "operator_for"]

#: the most jobs one ``jobs`` command reads (a page, or a lookup's newest)
MAX_LIMIT = 500

_URL_HELP = f"the Redis to look at (default: ${REDIS_URL_ENV}, else redis://127.0.0.1:6379/0)"


def looks_like_app(target: str) -> bool:
    """Whether a command-line target names an app (``module:attr``, ``file.py:attr``) rather
    than a registered flow."""
    return ":" in target or target.endswith(".py")


def operator_for(args: argparse.Namespace) -> Operator:
    return Operator(args.redis_url)


def _print_json(value: Any) -> None:
    print(json.dumps(as_json(value), indent=2, ensure_ascii=False, default=str))


def _console() -> Console:
    """Tables as wide as the terminal; at least 160 columns when the output is not one (a
    pipe or a file would otherwise get 80 and truncated cells). Nothing printed is read as
    markup or emoji codes: the names and messages are data (``[/x]``, ``:smile:``)."""
    console = _plain_console()
    if not console.is_terminal:
        console = _plain_console(width=max(160, console.width))
    return console


def _plain_console(width: int | None = None) -> Console:
    return Console(highlight=False, soft_wrap=False, markup=False, emoji=False, width=width)


def _data(value: Any) -> Text:
    """A value from Redis as a table cell or title: its control characters escaped, its
    brackets literal."""
    return Text(shown(value))


def _took(seconds: float | None) -> str:
    """A job time, a backlog or an ETA, short: ``0.4 ms``, ``12 ms``, ``1.5 s``, ``12 min``."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0 s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return seconds_text(seconds)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{_took(a)}/{_took(b)}"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- flows ---------------------------------------------------------------------------------


def _flows_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE, title="flows")
    for name in ("flow", "stages", "waiting", "processing", "failed", "done/min", "nodes"):
        table.add_column(name, justify="left" if name == "flow" else "right")
    table.add_column("workers", justify="right")
    table.add_column("ETA", justify="right")
    for r in rows:
        table.add_row(
            _data(r["flow"]),
            *(
                str(r[k])
                for k in ("stages", "waiting", "processing", "failed", "done_per_min", "nodes")
            ),
            str(r["workers"]),
            _took(r.get("eta_seconds")),
        )
    if not rows:
        table.caption = "no flow registered yet: a flow registers when its supervisor starts"
    return table


def _cmd_flows(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        rows = op.overview()
    finally:
        op.close()
    if args.json:
        _print_json(rows)
    else:
        _console().print(_flows_table(rows))
    return 0


# -- status --------------------------------------------------------------------------------


#: the stage table's counters: (header, header when the table must be narrow)
_STAGE_COLUMNS = (
    ("waiting", "waiting"),
    ("processing", "processing"),
    ("delayed", "delayed"),
    ("parked", "parked"),
    ("failed", "failed"),
    ("done/min", "done/\nmin"),
    ("oldest waiting", "oldest\nwaiting"),
    ("completed", "completed"),
)


def _fits(console: Console, options: ConsoleOptions, table: Table) -> bool:
    """Whether ``table`` fits the width on one line per row, nothing wrapped or cut."""
    unbounded = options.update(max_width=10_000)
    return Measurement.get(console, unbounded, table).maximum <= options.max_width


def _stages_table(flow: str, stages: list[StageStatus], narrow: bool = False) -> Table:
    """Per stage its counts; ``narrow``: no padding and headers on two lines, every column
    exactly as wide as its longest line, so that at 80 columns the names (never cut) and
    the numbers fit."""
    rows = [
        [
            str(s.waiting),
            str(s.processing),
            str(s.delayed),
            str(s.parked),
            str(s.failed),
            f"{s.done_per_min:g}",
            seconds_text(s.oldest_waiting_s),
            str(s.totals.get("completed", 0)),
        ]
        for s in stages
    ]
    return _grid(f"flow {flow}", _STAGE_COLUMNS, stages, rows, narrow)


#: the work table's columns: (header, header when the table must be narrow)
_WORK_COLUMNS = (
    ("jobs/s", "jobs/s"),
    ("workers", "workers"),
    ("job p50/p95", "job\np50/p95"),
    ("cpu mean/p95", "cpu\nmean/p95"),
    ("backlog", "backlog"),
    ("ETA", "ETA"),
)


def _work_table(flow: str, stages: list[StageStatus], narrow: bool = False) -> Table:
    """Per stage what its jobs cost (the live nodes' figures, ``procflow/cost.py``): the
    throughput, the workers on it, job wall time p50/p95, CPU time mean/p95, the backlog in
    work-seconds and its ETA; the flow's ETA is the caption."""
    rows = [
        [
            f"{s.throughput_per_s:g}",
            str(s.workers),
            _pair(s.job_seconds_p50, s.job_seconds_p95),
            _pair(s.cpu_seconds_mean, s.cpu_seconds_p95),
            _took(s.backlog_seconds),
            _took(s.eta_seconds),
        ]
        for s in stages
    ]
    table = _grid(f"work of {flow}", _WORK_COLUMNS, stages, rows, narrow)
    table.caption = f"ETA of the flow: {_took(flow_eta(stages))}"
    return table


def _grid(
    title: str,
    columns: tuple[tuple[str, str], ...],
    stages: list[StageStatus],
    cells: list[list[str]],
    narrow: bool,
) -> Table:
    """A table of one row per stage (its name first, then ``cells``), laid out as
    ``_stages_table`` says."""
    table = Table(
        box=box.SIMPLE,
        title=_data(title),
        padding=(0, 0 if narrow else 1),
        show_edge=not narrow,
    )
    rows = [
        [shown(("  " if s.parent else "") + s.name + (" (paused)" if s.paused else "")), *row]
        for s, row in zip(stages, cells, strict=True)
    ]
    headers = ["stage", *(short if narrow else wide for wide, short in columns)]
    for n, header in enumerate(headers):
        longest = max(
            len(line) for text in [header, *(r[n] for r in rows)] for line in text.split("\n")
        )
        table.add_column(
            header,
            justify="left" if n == 0 else "right",
            overflow="fold",
            width=longest if narrow else None,
            min_width=longest if n == 0 else None,
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _node_heading(n: dict[str, Any]) -> Text:
    return _data(f"node {n.get('node')}  ({n.get('host')}, pid {n.get('pid')}, {n.get('state')})")


def _workers_table(workers: list[dict[str, Any]], with_job: bool) -> Table:
    """A node's workers, one row each; ``with_job``: the job in hand and for how long in
    the row (else the caller lists them under the table)."""
    table = Table(box=box.SIMPLE, pad_edge=False)
    names = ["worker", "stage", "pid", "state", *(["job", "for"] if with_job else [])]
    for name in [*names, "rss", "cpu %", "jobs"]:
        right = name in ("pid", "rss", "cpu %", "jobs", "for")
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    now = time.time()
    for w in workers:
        since = w.get("since")
        rss = w.get("rss")
        busy: list[Text | str] = [
            _data(w.get("job") or "-"),
            seconds_text(now - since) if since else "-",
        ]
        table.add_row(
            _data(w.get("name")),
            _data(w.get("stage")),
            _data(w.get("pid") or "-"),
            _data(w.get("state")),
            *(busy if with_job else []),
            f"{rss / 2**20:.0f} MiB" if rss else "-",
            f"{w['cpu']:g}" if w.get("cpu") is not None else "-",
            str(w.get("jobs", 0)),
        )
    return table


def _in_hand(workers: list[dict[str, Any]]) -> list[Text]:
    """The jobs the workers hold, a line each (under a table too narrow for them)."""
    now = time.time()
    lines = []
    for w in workers:
        if w.get("job"):
            since = w.get("since")
            held = f" for {seconds_text(now - since)}" if since else ""
            lines.append(_data(f"  {w.get('name')} holds job {w.get('job')}{held}"))
    return lines


class _StatusView:
    """What ``procflow status`` shows, read once and laid out for the width it is drawn at
    (a live view redraws it when the terminal is resized): nothing is cut, and at 80
    columns a node's heading is one line and a worker's row another."""

    def __init__(self, op: Operator, flows: list[str]) -> None:
        self.warnings = [p.message() for p in op.eviction() if p.unsafe]
        self.flows = []
        for name in flows:
            nodes = op.nodes(name)
            self.flows.append((name, op.status(name, nodes=nodes), nodes))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for warning in self.warnings:
            yield Text(f"WARNING: {warning}", style="bold red")
        for name, stages, nodes in self.flows:
            for make in (_stages_table, _work_table):
                table = make(name, stages)
                yield table if _fits(console, options, table) else make(name, stages, True)
            yield Text("nodes and workers", style="italic")
            if not nodes:
                yield Text("no node is running this flow", style="dim")
            for n in nodes:
                workers = list(n.get("workers") or [])
                yield _node_heading(n)
                table = _workers_table(workers, with_job=True)
                if _fits(console, options, table):
                    yield table
                else:
                    yield _workers_table(workers, with_job=False)
                    yield from _in_hand(workers)


def _status_view(op: Operator, flows: list[str]) -> _StatusView:
    return _StatusView(op, flows)


def _status_targets(op: Operator, target: str | None) -> list[str]:
    if target is None:
        return op.flows()
    if looks_like_app(target) and target not in op.flows():
        flow = load_app(target)
        flow.use_redis(op.redis)
        op.adopt(flow)
        return [flow.name]
    op.known(target)  # UnknownFlowError lists the registered ones
    return [target]


def _cmd_status(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        flows = _status_targets(op, args.flow)
        if args.json:
            servers = [p.as_dict() for p in op.eviction()]
            shown_flows = []
            for f in flows:
                nodes = op.nodes(f)
                stages = op.status(f, nodes=nodes)
                shown_flows.append(
                    {
                        "flow": f,
                        "eta_seconds": flow_eta(stages),
                        "stages": stages,
                        "nodes": nodes,
                        "redis": servers,
                    }
                )
            _print_json(shown_flows)
            return 0
        console = _console()
        if not flows:
            console.print(_flows_table([]))
            return 0
        if not args.watch:
            console.print(_status_view(op, flows))
            return 0
        try:
            if not console.is_terminal:  # a pipe or a log: one view after the other
                while True:
                    console.print(f"-- {_when(time.time())}")
                    console.print(_status_view(op, flows))
                    time.sleep(args.interval)  # the refresh period of the view
            with Live(_status_view(op, flows), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(args.interval)  # the refresh period of a live view
                    live.update(_status_view(op, flows), refresh=True)
        except KeyboardInterrupt:
            return 0
    finally:
        op.close()


# -- one job, and searching ----------------------------------------------------------------


def _job_view(detail: dict[str, Any]) -> Group:
    fields = detail["fields"]
    head = Table(box=box.SIMPLE, show_header=False, title=_data(f"job {detail['id']}"))
    head.add_column("", style="bold")
    head.add_column("")
    head.add_row(
        "flow",
        _data(detail["flow"] + (f" (child queue {detail['queue']})" if detail["queue"] else "")),
    )
    head.add_row("state", _data(detail["state"]))
    head.add_row("created", _when(detail.get("createdAt")))
    body = Table(box=box.SIMPLE, title="fields")
    body.add_column("field")
    body.add_column("value")
    history = Table(box=box.SIMPLE, title="attempts and errors")
    for name in ("stage", "attempt", "kind", "at", "error"):
        history.add_column(name)
    children = Table(box=box.SIMPLE, title="children")
    for name in ("queue", "id", "state", "error"):
        children.add_column(name)
    for name, value in sorted(fields.items()):
        if name.startswith("errors:") and isinstance(value, list):
            for n, e in enumerate(value, 1):
                if isinstance(e, dict):
                    at = e.get("at")
                    history.add_row(
                        _data(name[7:]),
                        str(n),
                        _data(e.get("kind", "")),
                        _when(at / 1000 if isinstance(at, int | float) else None),
                        _data(e.get("error", "")),
                    )
            continue
        if name.startswith("children:") and name.endswith(":jobs") and isinstance(value, list):
            for child in value:
                if isinstance(child, dict):
                    state = (
                        "failed"
                        if child.get("failed")
                        else "done"
                        if child.get("done")
                        else "pending"
                    )
                    children.add_row(
                        _data(child.get("failedQueue") or child.get("completed-queue") or ""),
                        _data(child.get("id", "")),
                        state,
                        _data(child.get("failedErrorMsg", "")),
                    )
            continue
        text = shown(json.dumps(value, ensure_ascii=False), in_json=True)
        body.add_row(_data(name), Text(text if len(text) <= 200 else text[:200] + " …"))
    parts: list[Any] = [head, body]
    if history.row_count:
        parts.append(history)
    if children.row_count:
        parts.append(children)
    return Group(*parts)


def _cmd_job(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        detail = op.job(args.id, args.flow)
    finally:
        op.close()
    if args.json:
        _print_json(detail)
    else:
        _console().print(_job_view(detail))
    return 0


def _jobs_table(
    title: str, jobs: list[dict[str, Any]], flow: Flow, start: str | None, caption: str = ""
) -> Table:
    """Jobs with where each one is now (derived from its fields: ``ops.where_now``) and the
    last stage that completed it (its ``completed-queue``, as stored)."""
    table = Table(box=box.SIMPLE, title=_data(title), caption=_data(caption) if caption else None)
    for name in ("id", "where now", "last completed stage", "error"):
        table.add_column(name)
    for j in jobs:
        table.add_row(
            _data(j.get("id")),
            _data(where_now(flow, j, start)),
            _data(j.get("completed-queue") or "-"),
            _data(j.get("failedErrorMsg") or ""),
        )
    return table


def _check_range(args: argparse.Namespace) -> None:
    """``--limit`` from 1 to MAX_LIMIT and ``--start`` from 0, or a ConfigurationError: a
    bad number is refused, never read as some other list."""
    if not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigurationError(
            f"--limit must be a whole number from 1 to {MAX_LIMIT}, got {args.limit}"
        )
    if args.start < 0:
        raise ConfigurationError(f"--start must be a whole number from 0, got {args.start}")


def _cmd_jobs(args: argparse.Namespace) -> int:
    _check_range(args)
    op = operator_for(args)
    try:
        if args.by:
            attribute, sep, value = args.by.partition("=")
            if not sep or not attribute:
                raise ConfigurationError(f"--by wants ATTR=VALUE, got {args.by!r}")
            jobs = op.jobs_by(args.flow, attribute, value, args.limit)
            title, caption = f"jobs of {args.flow} with {attribute} = {value}", f"{len(jobs)} found"
            payload: Any = jobs
            start = None
        else:
            if args.queue is None:
                raise ConfigurationError("give --by ATTR=VALUE, or --queue Q (with --state)")
            page = op.page(args.flow, args.queue, args.state, args.start, args.limit)
            jobs = page.jobs
            end = page.start + len(jobs)
            title = f"{args.flow} · {args.queue} · {args.state}"
            caption = f"{page.start + 1 if jobs else 0}-{end} of {page.total}"
            payload = page
            start = args.queue if op.flow(args.flow).stage(args.queue).parent else None
        if args.json:
            _print_json(payload)
            return 0
        flow = op.flow(args.flow)
        table = _jobs_table(title, jobs, flow, start, caption)
    finally:
        op.close()
    _console().print(table)
    return 0


# -- actions -------------------------------------------------------------------------------


def _cmd_retry(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        moved = op.retry(args.flow, args.queue, args.ids or None)
    finally:
        op.close()
    return report_retried(args.queue, args.ids, moved)


def _cmd_pause(args: argparse.Namespace) -> int:
    """``procflow pause FLOW QUEUE`` / ``procflow resume FLOW QUEUE``."""
    op = operator_for(args)
    try:
        op.pause(args.flow, args.queue, args.pause)
        flow = op.flow(args.flow)
        counts = flow.counts().get(args.queue, {})
        if args.pause and args.drain is not None:
            deadline = time.monotonic() + args.drain
            while counts.get("processing", 0) and time.monotonic() < deadline:
                time.sleep(0.2)  # the workers finish what they hold; each poll one round trip
                counts = flow.counts().get(args.queue, {})
    finally:
        op.close()
    if args.pause and args.drain is not None:
        running = counts.get("processing", 0)
        if running:
            print(
                shown(
                    f"error: {running} job(s) of {args.queue!r} still running after "
                    f"{args.drain:g} s (the stage stays paused)"
                ),
                file=sys.stderr,
            )
            return 1
        print(shown(f"paused and drained {args.queue!r} of {args.flow}: nothing runs there"))
        return 0
    if args.pause:
        print(
            shown(
                f"paused {args.queue!r} of {args.flow}: no worker leases from it now; "
                f"{counts.get('processing', 0)} running, {counts.get('waiting', 0)} waiting"
            )
        )
    else:
        print(shown(f"resumed {args.queue!r} of {args.flow}: its workers lease within 0.5 s"))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        outcome, queue = op.cancel(args.id, args.flow)
    finally:
        op.close()
    if outcome == "cancelled":
        print(shown(f"cancelled job {args.id} (it was pending in {queue!r})"))
        return 0
    if outcome == "running":
        print(
            shown(
                f"job {args.id} is running in {queue!r}: its node will stop that worker and "
                "mark the job cancelled within a heartbeat (about 2 s); a new worker takes its "
                "place"
            )
        )
        return 0
    print(
        shown(f"error: job {args.id} is not waiting, delayed, parked or running (done already?)"),
        file=sys.stderr,
    )
    return 1


def _cmd_delete(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        op.delete(args.id, args.flow)
    finally:
        op.close()
    print(shown(f"deleted job {args.id} with its child jobs and lookup entries"))
    return 0


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print("error: refusing without --yes (no terminal to ask)", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _cmd_purge(args: argparse.Namespace) -> int:
    op = operator_for(args)
    try:
        op.flow(args.flow)
        if args.failed is not None:
            what = shown(f"every failed job of {args.flow} · {args.failed}")
            if not _confirm(f"delete {what}?", args.yes):
                return 1
            print(f"deleted {op.purge_failed(args.flow, args.failed)} failed job(s)")
            return 0
        if not _confirm(
            shown(f"delete EVERYTHING of flow {args.flow} (jobs, queues, records)?"), args.yes
        ):
            return 1
        print(shown(f"deleted {op.purge_flow(args.flow)} key(s) of flow {args.flow}"))
        return 0
    finally:
        op.close()


# -- the parser ----------------------------------------------------------------------------


def add_operator_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], url_default: str | None
) -> None:
    """The operator's subcommands, each with ``--redis-url`` and (where it reads) ``--json``."""

    def command(
        name: str, text: str, run: Callable[[argparse.Namespace], int], json_out: bool = True
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        cmd.add_argument("--redis-url", default=url_default, metavar="URL", help=_URL_HELP)
        if json_out:
            cmd.add_argument("--json", action="store_true", help="print JSON, for scripts")
        cmd.set_defaults(run=run)
        return cmd

    def flow_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--flow", metavar="FLOW", help="the job's flow (default: look in every registered flow)"
        )

    command("flows", "list the flows registered in this Redis with their totals", _cmd_flows)
    status = command(
        "status",
        "show per stage the waiting, processing, delayed, parked and failed jobs, the done "
        "rate and the oldest waiting job's age, then the nodes and their workers",
        _cmd_status,
    )
    status.add_argument(
        "flow",
        nargs="?",
        metavar="FLOW",
        help=f"a registered flow, or an app ({APP_FORMS}); default: every registered flow",
    )
    status.add_argument("--watch", action="store_true", help="a live view, until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="--watch refresh (default 2)"
    )
    job = command("job", "show one job: its fields, state, attempts, errors and children", _cmd_job)
    job.add_argument("id", metavar="ID", help="the job id")
    flow_option(job)
    jobs = command(
        "jobs",
        "find a flow's jobs by a lookup attribute, or list a page of one stage's jobs",
        _cmd_jobs,
    )
    jobs.add_argument("flow", metavar="FLOW", help="a registered flow")
    jobs.add_argument(
        "--by", metavar="ATTR=VALUE", help="jobs whose lookup attribute ATTR is VALUE"
    )
    jobs.add_argument("--queue", metavar="QUEUE", help="list this stage's jobs (with --state)")
    jobs.add_argument(
        "--state",
        choices=PAGE_STATES,
        default="waiting",
        help="which of the stage's lists (default: waiting)",
    )
    jobs.add_argument(
        "--start", type=int, default=0, metavar="N", help="with --queue: skip the first N"
    )
    jobs.add_argument(
        "--limit",
        type=int,
        default=50,
        metavar="N",
        help=f"at most N, from 1 to {MAX_LIMIT} (default 50; with --by: the newest N)",
    )
    retry = command(
        "retry", "put failed jobs back on their stage's waiting list", _cmd_retry, json_out=False
    )
    retry.add_argument("flow", metavar="FLOW", help="a registered flow")
    retry.add_argument("queue", metavar="QUEUE", help="the stage (a child queue: PARENT:CHILD)")
    retry.add_argument("ids", nargs="*", metavar="ID", help="only these jobs (default: all failed)")
    for name, text in (
        ("pause", "pause a stage on every node: its workers lease nothing, finish what they hold"),
        ("resume", "let a paused stage's workers lease again"),
    ):
        paused = command(name, text, _cmd_pause, json_out=False)
        paused.add_argument("flow", metavar="FLOW", help="a registered flow")
        paused.add_argument(
            "queue", metavar="QUEUE", help="the stage (a child queue: PARENT:CHILD)"
        )
        paused.set_defaults(pause=name == "pause", drain=None)
        if name == "pause":
            paused.add_argument(
                "--drain",
                type=float,
                metavar="SECONDS",
                help="then wait until no job of the stage runs, at most SECONDS (exit 1 if some "
                "still do)",
            )
    cancel = command(
        "cancel",
        "cancel a job: a pending one is removed at once; a running one's worker is stopped and "
        "replaced",
        _cmd_cancel,
        json_out=False,
    )
    cancel.add_argument("id", metavar="ID", help="the job id")
    flow_option(cancel)
    delete = command(
        "delete", "delete a job with its child jobs and lookup entries", _cmd_delete, json_out=False
    )
    delete.add_argument("id", metavar="ID", help="the job id")
    flow_option(delete)
    purge = command(
        "purge",
        "delete a stage's failed jobs, or a whole flow (asks first unless --yes)",
        _cmd_purge,
        json_out=False,
    )
    purge.add_argument("flow", metavar="FLOW", help="a registered flow")
    purge.add_argument("--failed", metavar="QUEUE", help="only this stage's failed jobs")
    purge.add_argument("--yes", action="store_true", help="do not ask")
