"""A real local Sentinel set-up for tests: a master, one replica and three sentinels watching
it as ``pfmaster``, all ``redis-server`` processes on loopback ports of their own, started
and stopped by pid."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import server_binary, wait_until


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SentinelSet:
    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        watched = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{watched}/pfmaster/0"

    @property
    def servers(self) -> tuple[int, int]:
        """The ports of the two data servers (the master and the replica, as started)."""
        return self.master_port, self.replica_port


def ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _start(binary: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _ready(s: SentinelSet) -> bool:
    """Every sentinel knows the replica and the other sentinels; the replica is in step."""
    for port in s.sentinel_ports:
        c = redis.Redis(port=port, decode_responses=True)
        if not c.sentinel_slaves("pfmaster") or len(c.sentinel_sentinels("pfmaster")) < 2:
            return False
    link = redis.Redis(port=s.replica_port).info("replication")
    return link.get("master_link_status") == "up"


@contextlib.contextmanager
def running_sentinels(tmp: Path, down_after_ms: int = 500) -> Iterator[SentinelSet]:
    """Start the set in ``tmp`` and wait until it is whole (a failover can then happen);
    every process is killed and reaped on the way out. The sentinels call the master down
    after ``down_after_ms`` of silence."""
    binary = server_binary("redis")
    s = SentinelSet(free_port(), free_port(), [free_port() for _ in range(3)])
    common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    try:
        for name, port, extra in (
            ("master", s.master_port, []),
            ("replica", s.replica_port, ["--replicaof", "127.0.0.1", str(s.master_port)]),
        ):
            d = tmp / name
            d.mkdir()
            args = ["--port", str(port), "--dir", str(d), *common, *extra]
            s.procs[name] = _start(binary, args, d)
        for n, port in enumerate(s.sentinel_ports):
            d = tmp / f"sentinel{n}"
            d.mkdir()
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor pfmaster 127.0.0.1 {s.master_port} 2\n"
                f"sentinel down-after-milliseconds pfmaster {down_after_ms}\n"
                "sentinel failover-timeout pfmaster 5000\n"
                "sentinel parallel-syncs pfmaster 1\n"
            )
            s.procs[f"sentinel{n}"] = _start(binary, [str(conf), "--sentinel"], d)
        for port in (s.master_port, s.replica_port, *s.sentinel_ports):
            wait_until(lambda port=port: ping(port), timeout=20, what=f"the server on {port}")
        wait_until(
            lambda: _ready(s), timeout=30, what="the sentinels to see the replica and each other"
        )
        yield s
    finally:
        for proc in s.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
