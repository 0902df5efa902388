"""``python -m procflow.supervisor`` with a flow and a queue whose names hold loguru markup:
every log line shows them literally, none is lost to "Logging error in Loguru Handler"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from procflow import Flow, QueueSpec
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("no_leaks")

FLOW = "<red>flow</red>"
QUEUE = "<x>"

APP = f"""
from loguru import logger

from procflow import Flow, QueueSpec


def work(job):
    logger.info("worker handled {{}} <blue>literally</blue>", job["n"])
    print("printed {{braces}} and </> too")
    return {{"handled": job["n"]}}


def make_flow():
    flow = Flow({FLOW!r}, [QueueSpec({QUEUE!r}, attributes_to_get=["n"])])
    flow.create_workers({QUEUE!r}, work, count=1, block_timeout=1)
    return flow
"""


def test_markup_in_flow_and_queue_names_is_logged_literally(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "markup_app.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if k != "PROCFLOW_REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    flow = Flow(FLOW, [QueueSpec(QUEUE, attributes_to_get=["n"])], redis_url=redis_url)
    job_id = flow.create_job({"n": 7})
    with (tmp_path / "stderr.txt").open("w+") as err, (tmp_path / "stdout.txt").open("w+") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "procflow.supervisor",
                "markup_app:make_flow",
                "--redis-url",
                redis_url,
                "--log-level",
                "DEBUG",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        try:
            wait_until(
                lambda: (flow.get_job(job_id) or {}).get("done"), timeout=60, what="the job done"
            )
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            flow.disconnect()
        err.seek(0)
        stderr = err.read()
    assert returncode == 0, stderr
    assert "Logging error" not in stderr, stderr
    job = flow.get_job(job_id)
    assert job is not None and job.get("handled") == 7
    supervisor_lines = [line for line in stderr.splitlines() if "worker=supervisor" in line]
    assert supervisor_lines, stderr
    assert all(f"flow={FLOW} " in line for line in supervisor_lines), stderr
    assert any("SIGTERM received" in line for line in supervisor_lines), stderr
    assert any("supervisor stopped" in line for line in supervisor_lines), stderr
    worker_lines = [line for line in stderr.splitlines() if f"flow={FLOW} queue={QUEUE} " in line]
    assert any("worker handled 7 <blue>literally</blue>" in line for line in worker_lines), stderr
    assert any("printed {braces} and </> too" in line for line in worker_lines), stderr
