"""The supervisor's object graph and its typed values, without a server or a process: who
points at whom (a handle at its supervisor, never the flow at one it did not make), the kill
reasons and the commands on a worker's pipes."""

from __future__ import annotations

import os
from multiprocessing import Pipe
from typing import Any

import pytest

from procflow import Flow, QueueSpec, Supervisor, SupervisorStateError
from procflow.handles import PARENT, WORKER, WorkerHandle
from procflow.supervisor.process import REPORTED, SHUTDOWN, KillKind, KillReason, WorkerState
from procflow.worker.main import Command, Commands, Report
from procflow.worker.payload import WorkerKind

URL = "redis://127.0.0.1:1/0"  # never connected to in these tests


class FakeSupervisor:
    """What a handle asks of a supervisor, recorded."""

    def __init__(self, running: bool = False) -> None:
        self.running = running
        self.calls: list[tuple[str, str]] = []

    def worker_state(self, handle: WorkerHandle) -> str:
        return "fake"

    def worker_pid(self, handle: WorkerHandle) -> int | None:
        return None

    def connect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        handle.adopt(self)
        self.calls.append(("connect", handle.name))

    def start_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        self.calls.append(("start", handle.name))

    def stop_worker(self, handle: WorkerHandle, timeout: float | None = None) -> None:
        self.calls.append(("stop", handle.name))

    def disconnect_worker(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        self.calls.append(("disconnect", handle.name))


def _flow(name: str = "graph") -> Flow[Any, Any, Any]:
    flow = Flow(name, [QueueSpec("w")], redis_url=URL)
    flow.create_workers("w", lambda job: {}, count=2)
    return flow


def test_a_handle_asks_the_supervisor_it_was_given_and_the_flow_learns_nothing() -> None:
    flow = _flow()
    handle = flow.handles[0]
    assert handle.supervisor is None and handle.state == "new"
    sup = FakeSupervisor()
    handle.connect(supervisor=sup)
    handle.start()
    handle.stop()
    handle.disconnect()
    assert handle.supervisor is sup and handle.state == "fake"
    assert [what for what, _ in sup.calls] == ["connect", "start", "stop", "disconnect"]
    assert flow.supervisor is None and flow.handles[1].supervisor is None


def test_a_handle_with_no_supervisor_never_makes_one_except_by_the_deprecated_connect() -> None:
    flow = _flow()
    handle = flow.handles[0]
    for step in (handle.start, handle.stop, handle.disconnect):
        with pytest.raises(SupervisorStateError, match="has no supervisor"):
            step()
    assert flow.supervisor is None
    made = FakeSupervisor()
    flow.supervisor = made  # type: ignore[assignment]  # the flow's own, as start_all sets it
    with pytest.warns(DeprecationWarning, match="has no supervisor"):
        handle.connect()
    assert handle.supervisor is made and made.calls == [("connect", handle.name)]


def test_a_supervisor_adopts_the_flows_workers_without_registering_in_the_flow() -> None:
    flow = _flow()
    sup = Supervisor(flow, heartbeat=False, monitor=False)
    assert flow.supervisor is None
    assert all(h.supervisor is sup for h in flow.handles)
    assert not flow.supervised


def test_a_handle_refuses_a_second_supervisor_while_the_first_runs() -> None:
    flow = _flow()
    handle = flow.handles[0]
    first, second = FakeSupervisor(running=True), FakeSupervisor()
    handle.adopt(first)
    assert flow.supervised
    with pytest.raises(SupervisorStateError, match="another supervisor"):
        handle.adopt(second)
    with pytest.raises(SupervisorStateError, match="already has a running supervisor"):
        Supervisor(flow, heartbeat=False, monitor=False)
    assert handle.supervisor is first
    first.running = False
    handle.adopt(second)
    assert handle.supervisor is second


def test_kill_reasons_are_a_kind_and_a_text() -> None:
    reason = KillReason(KillKind.TIMEOUT, "the job ran longer than its 1 s time limit")
    assert reason.kind is KillKind.TIMEOUT
    assert str(reason) == "timeout: the job ran longer than its 1 s time limit"
    assert SHUTDOWN.kind is KillKind.SHUTDOWN and str(SHUTDOWN) == "shutdown"
    assert {k.value for k in KillKind} == {"shutdown", "cancel", "timeout", "memory"}


def test_a_worker_hears_only_commands_and_reports_map_to_states() -> None:
    theirs, ours = Pipe(duplex=False)
    commands = Commands(theirs, os.getppid())
    ours.send(Command.CONNECT)
    ours.send("bogus")
    ours.send("start")  # the value is what travels
    for _ in range(3):
        assert commands.take(1.0)
    assert commands.said == {Command.CONNECT, Command.START}
    assert commands.wait_for(Command.START)
    assert {state.value for state in REPORTED.values()} == {
        r.value for r in (Report.CONNECTED, Report.STARTED, Report.STOPPED, Report.DISCONNECTED)
    }
    assert WorkerState.CONNECTED is REPORTED[Report.CONNECTED]
    assert str(Command.STOP) == "stop" and str(Report.LOG) == "log"


def test_worker_kinds_are_an_enum() -> None:
    assert WORKER is WorkerKind.WORKER and PARENT is WorkerKind.PARENT
    flow = _flow()
    assert flow.groups[0].kind is WorkerKind.WORKER
