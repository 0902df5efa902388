"""A real local Redis Cluster for tests and benchmarks: ``redis-server --cluster-enabled yes``
processes on loopback ports of their own, joined with CLUSTER ADDSLOTSRANGE / MEET /
REPLICATE (what ``redis-cli --cluster create`` does), started and stopped by pid."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 40000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port


def _until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # polling the servers' state


@dataclass
class Cluster:
    """``masters`` masters, each with ``replicas_each`` replicas; ``ports`` lists the
    masters first."""

    binary: str
    folder: Path
    masters: int = 3
    replicas_each: int = 1
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def master_ports(self) -> list[int]:
        return self.ports[: self.masters]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def start(self) -> Cluster:
        taken: set[int] = set()
        self.ports = [free_port(taken) for _ in range(self.masters * (1 + self.replicas_each))]
        for port in self.ports:
            d = self.folder / str(port)
            d.mkdir()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)]
            args += ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]
            args += ["--cluster-config-file", str(d / "nodes.conf")]
            args += ["--save", "", "--appendonly", "no"]
            self.procs[port] = subprocess.Popen(
                [self.binary, *args], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        try:
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self) -> None:
        for port in self.ports:
            _until(lambda port=port: self._ping(port), 20, f"node {port}")
        masters, replicas = self.master_ports, self.ports[self.masters :]
        for n, port in enumerate(masters):
            first, last = n * SLOTS // self.masters, (n + 1) * SLOTS // self.masters - 1
            self.client(port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in self.ports[1:]:
            self.client(port).execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        everyone = len(self.ports)
        _until(
            lambda: all(len(self.client(p).cluster("nodes")) == everyone for p in self.ports),
            20,
            "every node to know the others",
        )
        for n, replica in enumerate(replicas):
            master = masters[n % self.masters]
            node_id = self.client(master).execute_command("CLUSTER", "MYID").decode()
            self.client(replica).execute_command("CLUSTER", "REPLICATE", node_id)
        _until(self._healthy, 30, "cluster_state ok")
        _until(
            lambda: all(
                self.client(r).info("replication").get("master_link_status") == "up"
                for r in replicas
            ),
            30,
            "the replicas in sync",
        )

    def _ping(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def _healthy(self) -> bool:
        try:
            return all(self.client(p).cluster("info")["cluster_state"] == "ok" for p in self.ports)
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
