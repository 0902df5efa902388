"""``procflow server``: the embedded server for running your own app without Redis
installed: started in the foreground, its URL printed, its data kept in --dir across
restarts, stopped by SIGTERM or Ctrl-C with nothing left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from procflow import Flow, QueueSpec, Supervisor
from tests.conftest import wait_until
from tests.process.test_cli import Output, tree
from tests.process.test_cli_first_hour import ROOT, environment

pytestmark = pytest.mark.usefixtures("no_leaks")


def start(data: Path) -> tuple[subprocess.Popen[str], Output, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "procflow", "server", "--dir", str(data)],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    try:
        wait_until(
            lambda: output.has("redis://") or proc.poll() is not None, timeout=30, what="the URL"
        )
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    found = re.search(r"redis://\S+", "".join(output.lines))
    assert found, "".join(output.lines)
    return proc, output, found[0]


def stop(proc: subprocess.Popen[str], output: Output, sig: signal.Signals) -> str:
    servers = tree(proc.pid)
    assert servers, "the server process is not a child of procflow server"
    proc.send_signal(sig)
    try:
        code = proc.wait(30)
    finally:
        proc.kill()
    text = output.text()
    assert code == 0, text
    left = [p for p in servers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"server processes left behind: {left}\n{text}"
    return text


def double(job: dict[str, int]) -> dict[str, int]:
    return {"doubled": job["n"] * 2}


def test_procflow_server_runs_a_flow_and_keeps_its_data_in_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, output, url = start(data)
    flow = Flow("own", [QueueSpec("work", attributes_to_get=["n"])], redis_url=url)
    flow.create_workers("work", double, count=1, block_timeout=1)
    with Supervisor(flow, log_level="ERROR") as sup:
        ids = flow.create_jobs([{"n": n} for n in range(3)])
        sup.wait(ids, timeout=60)
    assert [j["doubled"] for j in flow.get_jobs(ids)] == [0, 2, 4]
    flow.disconnect()
    text = stop(proc, output, signal.SIGTERM)
    assert str(data) in text and "append-only file" in text, text

    proc, output, url = start(data)  # the same --dir: the jobs are still there
    again = Flow("own", [QueueSpec("work", attributes_to_get=["n"])], redis_url=url)
    assert [j["doubled"] for j in again.get_jobs(ids)] == [0, 2, 4]
    again.disconnect()
    stop(proc, output, signal.SIGINT)
