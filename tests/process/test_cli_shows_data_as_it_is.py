"""Issue 17, "trust what you see": what the operator commands print is the data as it is.

Control characters from Redis reach no terminal (they are shown escaped), and names holding
rich markup are printed literally (never parsed, never crashing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from procflow import Flow, QueueSpec
from procflow.operator.ops import Operator
from tests.process.test_cli_first_hour import PROCFLOW, SUPERVISOR, run

pytestmark = pytest.mark.usefixtures("no_leaks")

#: a flow, a stage and a field name that try to clear the screen, retitle the window and
#: ring the bell, and a message that tries to move the cursor (C0, C1 and bidi controls)
EVIL_FLOW = "evil\x1b[2J"
EVIL_QUEUE = "stage\x1b]0;pwned\x07"
EVIL_FIELD = "field\x1b[31m"
EVIL_MESSAGE = "boom\x1b[1A\x9b2K\u202etxt"
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


def register(url: str, flow: Flow) -> None:
    """Register ``flow`` as a supervisor would (no supervisor needed to look at it)."""
    op = Operator(url)
    op.registry.register(flow.name, flow.definition.describe())
    op.close()


def failed_job(r: redis.Redis, flow: Flow, queue: str, message: str, **fields: Any) -> str:
    """A job failed in ``queue`` as any writer of the wire format could leave it."""
    job_id = flow.create_job({"user": 1, **fields})
    encoded = {"done": True, "failed": True, "failedQueue": queue, "failedErrorMsg": message}
    r.hset(flow.job_key(job_id), mapping={k: json.dumps(v) for k, v in encoded.items()})
    r.lrem(f"queue:{queue}:waiting", 0, job_id)
    r.rpush(f"queue:{queue}:failed", job_id)
    return job_id


def assert_no_controls(text: str) -> None:
    for char in CONTROLS:
        assert char not in text, f"{char!r} reached the terminal in:\n{text!r}"


def test_control_characters_from_redis_are_shown_escaped(redis_url: str, r: redis.Redis) -> None:
    flow = Flow(
        EVIL_FLOW,
        [QueueSpec(EVIL_QUEUE, attributes_to_get=["user"])],
        lookup_attributes=["user"],
        redis_url=redis_url,
    )
    register(redis_url, flow)
    job_id = failed_job(r, flow, EVIL_QUEUE, EVIL_MESSAGE, **{EVIL_FIELD: "v\x1b[0m"})
    commands = [
        ["flows"],
        ["status"],
        ["status", EVIL_FLOW],
        ["job", job_id],
        ["jobs", EVIL_FLOW, "--by", "user=1"],
        ["jobs", EVIL_FLOW, "--queue", EVIL_QUEUE, "--state", "failed"],
    ]
    for argv in commands:
        out = run(PROCFLOW, *argv, url=redis_url)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        assert_no_controls(out.stdout + out.stderr)
        assert "evil\\x1b[2J" in out.stdout, (argv, out.stdout)
    shown = run(PROCFLOW, "job", job_id, url=redis_url).stdout
    assert "field\\x1b[31m" in shown, shown  # a name, escaped as Python would
    assert '"boom\\u001b[1A\\u009b2K\\u202etxt"' in shown, shown  # a value, as JSON
    listed = run(PROCFLOW, "jobs", EVIL_FLOW, "--by", "user=1", url=redis_url).stdout
    assert "boom\\x1b[1A\\x9b2K\\u202etxt" in listed, listed

    # error lines: the registered flows an unknown name is told about, a refused retry
    out = run(PROCFLOW, "status", "nope", url=redis_url)
    assert out.returncode == 2
    assert_no_controls(out.stderr)
    assert "registered flows: evil\\x1b[2J" in out.stderr, out.stderr
    out = run(PROCFLOW, "retry", EVIL_FLOW, EVIL_QUEUE, "id\x1b[2J", url=redis_url)
    assert out.returncode == 1
    assert_no_controls(out.stdout + out.stderr)
    assert "id\\x1b[2J" in out.stderr and "stage\\x1b]0;pwned\\x07" in out.stderr, out.stderr
    flow.disconnect()


@pytest.mark.parametrize("name", ["shop[/oops]", "shop[bold]B[/bold]", "shop:smile:"])
def test_brackets_in_names_are_printed_as_they_are(
    redis_url: str, r: redis.Redis, name: str
) -> None:
    queue = f"q-{name}"
    flow = Flow(
        name,
        [QueueSpec(queue, attributes_to_get=["user"])],
        lookup_attributes=["user"],
        redis_url=redis_url,
    )
    register(redis_url, flow)
    job_id = failed_job(r, flow, queue, f"failed in [red]{name}[/red]")
    commands = [
        ["flows"],
        ["status", name],
        ["job", job_id],
        ["jobs", name, "--by", "user=1"],
        ["jobs", name, "--queue", queue, "--state", "failed"],
    ]
    for argv in commands:
        out = run(PROCFLOW, *argv, url=redis_url)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        assert name in out.stdout, (argv, out.stdout)
    shown = run(PROCFLOW, "job", job_id, url=redis_url).stdout
    assert f"failed in [red]{name}[/red]" in shown and f"q-{name}" in shown, shown
    flow.disconnect()


@pytest.mark.parametrize("command", [[SUPERVISOR], [PROCFLOW, "status"], [PROCFLOW, "failed"]])
def test_error_lines_show_control_characters_escaped(
    tmp_path: Path, redis_url: str, command: list[str]
) -> None:
    (tmp_path / "noisy.py").write_text('raise RuntimeError("read \\x1b[2Jfrom Redis")\n')
    queue = ["work"] if command[-1] == "failed" else []
    out = run(*command, "noisy.py:flow", *queue, url=redis_url, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert_no_controls(out.stderr)
    assert "RuntimeError: read \\x1b[2Jfrom Redis" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) > 3  # the traceback keeps its lines
