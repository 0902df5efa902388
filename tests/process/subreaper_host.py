"""A host program that imports the Supervisor (a batch pipeline, a web app), for the tests of
what a supervisor leaves in the process that imported it: its subreaper setting, zombies, and
the host's own children. Run as ``python -m tests.process.subreaper_host CASE REDIS_URL``, in a
process of its own, so the test runner's own setting is never touched; it prints one JSON
object of what it saw.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from procflow import Flow, QueueSpec, Supervisor, WorkerStartError
from tests.helpers import lazy_client

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def subreaper() -> int:
    value = ctypes.c_int(-1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_GET_CHILD_SUBREAPER)")
    return value.value


def set_subreaper(on: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children() -> list[dict[str, Any]]:
    """This process's children now: pid, status, command line."""
    out = []
    for p in psutil.Process().children():
        try:
            seen = {"pid": p.pid, "status": p.status(), "cmd": ""}
        except psutil.NoSuchProcess:
            continue
        with contextlib.suppress(psutil.Error):  # a zombie has no command line left
            seen["cmd"] = " ".join(p.cmdline())
        out.append(seen)
    return out


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def simple_flow(url: str, name: str, fn: Callable[[dict[str, Any]], Any]) -> Flow:
    flow = Flow(name, [QueueSpec("w")], redis_url=url)
    flow.create_workers("w", fn, count=1)
    return flow


def case_restore(url: str) -> dict[str, Any]:
    """The setting around start/stop, from 0 and from 1, with two supervisors, and after a
    failed start."""
    seen: dict[str, Any] = {"before": subreaper()}
    sup = Supervisor(simple_flow(url, "sr-a", lambda j: {}))
    sup.start()
    seen["running"] = subreaper()
    sup.stop()
    seen["after"] = subreaper()

    first = Supervisor(simple_flow(url, "sr-b", lambda j: {}))
    second = Supervisor(simple_flow(url, "sr-c", lambda j: {}))
    first.start()
    second.start()
    first.stop()
    seen["one_of_two_stopped"] = subreaper()
    second.stop()
    seen["both_stopped"] = subreaper()

    class Unloadable:
        def __reduce__(self) -> Any:
            return (_refuse, ())

    bad = Unloadable()
    failing = Supervisor(simple_flow(url, "sr-d", lambda j: {"x": str(bad)}))
    try:
        failing.start(timeout=20)
        seen["failed_start"] = "started"
    except WorkerStartError:
        seen["failed_start"] = subreaper()

    set_subreaper(1)  # a host that is a subreaper of its own keeps being one
    own = Supervisor(simple_flow(url, "sr-e", lambda j: {}))
    own.start()
    own.stop()
    seen["host_own_setting_kept"] = subreaper()
    set_subreaper(0)
    return seen


def _refuse() -> None:
    raise ImportError("the worker function cannot be loaded")


#: what a job started, kept referenced in its worker (an unreferenced Popen is reaped by the
#: next one the worker makes): ended ones stay zombies until the worker is gone
KEEP: list[subprocess.Popen[bytes]] = []


def _ended(args: list[str], **kw: Any) -> int:
    """Start a process that ends at once; return its pid once it is a zombie."""
    proc = subprocess.Popen(args, **kw)
    KEEP.append(proc)
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 10, "it to end")
    return proc.pid


def case_grandchild(url: str) -> dict[str, Any]:
    """Jobs leave processes behind that outlive their worker, running or ended (zombies of
    the worker, re-parented to the host with it), in the worker's process group and in a
    session of their own: one job kills its worker, the other returns and its worker ends
    with the stop."""
    client = lazy_client(url)

    def job(j: dict[str, Any]) -> dict[str, Any]:
        running = subprocess.Popen(["sleep", "600"])
        running_own = subprocess.Popen(["sleep", "601"], start_new_session=True)
        KEEP.extend((running, running_own))
        pids = [running.pid, running_own.pid, _ended(["true"])]
        if not j["crash"]:  # found as its worker stops
            pids.append(_ended(["true"], start_new_session=True))
        client().rpush("grandchildren", *pids)
        if j["crash"]:
            os._exit(3)
        return {}

    flow = Flow("sr-g", [QueueSpec("w", attributes_to_get=["crash"])], redis_url=url)
    flow.create_workers("w", job, count=1)
    with Supervisor(flow) as sup:
        sup.wait([flow.create_job({"crash": True})], timeout=30)
        sup.wait([flow.create_job({"crash": False})], timeout=30)
    pids = [int(p) for p in client().lrange("grandchildren", 0, -1)]
    return {"grandchildren": pids, "children": children(), "subreaper": subreaper()}


def case_popen(url: str) -> dict[str, Any]:
    """The host's own children, one running and two ended (in its process group and in a
    session of their own) but not waited for yet, are the host's: a supervisor that starts
    and stops meanwhile, with a job killing its worker, reaps none of them."""
    running = subprocess.Popen(["sleep", "600"])
    ended = subprocess.Popen(["sh", "-c", "exit 7"])
    ended_own = subprocess.Popen(["sh", "-c", "exit 9"], start_new_session=True)
    for p in (ended, ended_own):
        pid = p.pid
        wait_for(
            lambda pid=pid: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
            10,
            f"pid {pid} to end",
        )

    def job(j: dict[str, Any]) -> dict[str, Any]:
        subprocess.Popen(["sleep", "602"])
        os._exit(3)

    flow = simple_flow(url, "sr-p", job)
    with Supervisor(flow) as sup:
        sup.wait([flow.create_job({"a": 1})], timeout=30)
        # the adopted processes are scanned for again while the host's children are there
        wait_for(lambda: len(sup.worker_pids()) == 1, 10, "the worker replaced")
    seen = {
        "running_alive": running.poll() is None,
        "ended": ended.wait(5),
        "ended_own": ended_own.wait(5),
    }
    running.kill()
    seen["running"] = running.wait(5)
    seen["children"] = children()
    return seen


CASES = {"restore": case_restore, "grandchild": case_grandchild, "popen": case_popen}

if __name__ == "__main__":
    case, url = sys.argv[1], sys.argv[2]
    print(json.dumps(CASES[case](url)))
