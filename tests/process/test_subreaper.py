"""What an imported Supervisor leaves in its host process: the subreaper setting the host had,
no zombies, and the host's own children untouched. Each case runs in a host process of its
own (tests/process/subreaper_host.py), so this test runner's setting is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.usefixtures("no_leaks")

ROOT = Path(__file__).resolve().parents[2]


def host(case: str, redis_url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.process.subreaper_host", case, redis_url],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONFAULTHANDLER": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux prctl")
def test_the_host_gets_back_the_subreaper_setting_it_had(redis_url: str) -> None:
    seen = host("restore", redis_url)
    assert seen == {
        "before": 0,
        "running": 1,
        "after": 0,
        "one_of_two_stopped": 1,  # the other supervisor still runs
        "both_stopped": 0,
        "failed_start": 0,
        "host_own_setting_kept": 1,
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux prctl")
def test_processes_jobs_left_behind_are_reaped_when_the_supervisor_stops(
    redis_url: str,
) -> None:
    seen = host("grandchild", redis_url)
    assert len(seen["grandchildren"]) == 7
    assert seen["children"] == [], "left under the host after stop()"
    assert seen["subreaper"] == 0
    assert not any(psutil.pid_exists(p) for p in seen["grandchildren"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux prctl")
def test_the_hosts_own_children_are_left_for_the_host_to_wait_for(redis_url: str) -> None:
    seen = host("popen", redis_url)
    assert seen == {
        "running_alive": True,
        "ended": 7,  # 0 if the supervisor had reaped it (Popen's ECHILD fallback)
        "ended_own": 9,
        "running": -9,
        "children": [],
    }
