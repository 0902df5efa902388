"""A fleet on one Redis: what idle and lightly loaded supervisors cost the server.

    python scripts/bench_fleet.py [--nodes 50] [--workers 2] [--fit 1,4] [--seconds 20]
                                  [--runs 3] [--rate 50] [--sample 10] [--server PATH]
                                  [--quiet-for scripts/test.py,scripts/bench]

Starts ``--nodes`` supervisors as operators run them (``python -m procflow.supervisor APP``,
one process each, ``--node-id fleet-NNN``, ``--workers work=W``) on one private server
started here (never the machine's shared Redis), with an app of one stage of no-op jobs. It
waits until every node's heartbeat shows it running with all of its workers idle (the
registry's node records, polled with a deadline), then measures windows of ``--seconds``:

- idle: nothing to do;
- load: a producer in this process creating one no-op job every 1/``--rate`` s (50 jobs/s:
  a steady, modest load), then waiting for the fleet to drain before the next window.

Per window, from ``INFO all`` at its two ends: the server's CPU (``used_cpu_user`` +
``used_cpu_sys``), its commands (``total_commands_processed``: Redis counts the commands a
script runs too) and, per command, ``INFO commandstats`` (calls and the µs spent in them);
this script's own INFO calls are left out. Also the CPU of the fleet's own processes
(psutil), the host's busy cores and its load average. A window on the server alone, before
the fleets of each run, gives its own CPU (its timers), which the per-node and per-worker
figures leave out. Each of ``--runs`` runs measures the server alone, then starts each fleet
in turn (the ``--workers`` one and the two of ``--fit``, in an order that rotates between
runs, so that drift hits every fleet alike), measures one idle window (and, for the
``--workers`` fleet, one under load) and stops it; the figures are the medians.

In the last run, ``--sample`` seconds of MONITOR (after the windows, never during one:
MONITOR costs the server) attribute the commands to who sends them: the supervisor holding
the monitor's leader lock, the other supervisors, the workers (by the client's port, mapped
to a pid with psutil), the producer, and the commands run inside scripts; an EVALSHA is
named by its script (the SHA1 of ``_lib.lua`` + the script, as ``procflow.store.wire``
computes it).

The model for 1,000 nodes x 16 workers: the idle cost of a fleet of N nodes of W workers is
the server alone + N x (a + b x W): a per-node part a (the supervisor: its heartbeat, its
leader-lock attempts, the monitor) and a per-worker part b (an idle worker: a lease call and
a BLMOVE timing out every ``block_timeout``). a and b are fitted from the idle windows of two
fleets of ``--nodes`` nodes with the two worker counts of ``--fit`` (1 and 4), for the CPU
and for the commands, and checked against the ``--workers`` fleet. The leader's chores (one
per fleet, not per node) are counted in a: with N nodes they add 1/N of their cost to it;
the MONITOR table shows them apart (the leader's lines). The per-job cost under
load is (load - idle) / rate.

Before each window the script waits until no test run or other benchmark runs on this machine
(a process whose command line has one of ``--quiet-for``; up to ``--quiet-timeout`` s) and
notes the load average; a high one is said in the output (the server's CPU time is CPU time,
not wall time, but a busy host still moves it: cold caches, migrations). Every process
it starts is stopped by its pid at the end, also on an error or Ctrl-C, and it checks that
none is left. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec
from procflow.server import RedisServer, find_server_binary
from procflow.store import keys
from procflow.store.registry import Registry
from procflow.store.wire import Script

#: this tree (its procflow is the one measured, also in the subprocesses)
ROOT = str(Path(__file__).resolve().parents[1])
FLOW = "fleet"
#: the extrapolation
BIG_NODES, BIG_WORKERS = 1000, 16
#: issue 19's targets for the idle cost (ms of Redis CPU per second)
TARGET_NODE_MS, TARGET_WORKER_MS = 0.05, 0.01

APP = """
import os
from procflow import Flow, QueueSpec

def noop(job):
    return {}

def flow():
    f = Flow("fleet", [QueueSpec("work")], redis_url=os.environ["PROCFLOW_REDIS_URL"])
    f.create_workers("work", noop, count=1)
    return f
"""


# -- the fleet -------------------------------------------------------------------------------


class Fleet:
    """N supervisor processes of W workers; ``stop`` ends every process it started, by pid."""

    def __init__(self, url: str, directory: str, nodes: int, workers: int) -> None:
        self.url = url
        self.directory = directory
        self.nodes = nodes
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []
        #: every pid seen in the fleet (supervisors and their workers), for the final check
        self.seen: set[int] = set()
        self.logs: list[Path] = []

    def start(self) -> None:
        env = {
            **os.environ,
            "PROCFLOW_REDIS_URL": self.url,
            "PYTHONPATH": os.pathsep.join([self.directory, ROOT]),
        }
        for i in range(self.nodes):
            log = Path(self.directory, f"node-{self.workers}-{i:03d}.log")
            self.logs.append(log)
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "procflow.supervisor",
                        "fleet_app:flow",
                        "--redis-url",
                        self.url,
                        "--node-id",
                        f"fleet-{i:03d}",
                        "--workers",
                        f"work={self.workers}",
                        "--log-level",
                        "WARNING",
                    ],
                    cwd=self.directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches this script, which stops them
                )
            self.procs.append(proc)
            self.seen.add(proc.pid)

    def wait_ready(self, registry: Registry, timeout: float) -> float:
        """Poll the node records until every node runs with all its workers idle; the seconds
        it took."""
        began = time.monotonic()
        deadline = began + timeout
        ready = 0
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"supervisor {proc.pid} exited ({proc.returncode}):\n{tail}")
            records = [
                r for r in registry.nodes(FLOW) if str(r.get("node", "")).startswith("fleet-")
            ]
            ready = sum(
                1
                for r in records
                if r.get("state") == "running"
                and len(r.get("workers", [])) == self.workers
                and all(w.get("state") == "idle" for w in r["workers"])
            )
            if ready == self.nodes:
                self.note_pids()
                return time.monotonic() - began
            time.sleep(0.5)  # polling the heartbeats (written every 2 s)
        raise TimeoutError(f"only {ready} of {self.nodes} nodes ready after {timeout:.0f} s")

    def note_pids(self) -> None:
        for pid in self.pids():
            self.seen.add(pid)

    def pids(self) -> list[int]:
        """The supervisors' and their workers' pids now."""
        out = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                out.append(proc.pid)
                out += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        return out

    def roles(self) -> dict[int, str]:
        """pid → ``supervisor`` or ``worker``."""
        out = {}
        for proc in self.procs:
            out[proc.pid] = "supervisor"
            with contextlib.suppress(psutil.Error):
                for c in psutil.Process(proc.pid).children(recursive=True):
                    out[c.pid] = "worker"
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    def pss_mib(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_full_info().pss / 2**20
        return total

    def stop(self) -> None:
        """SIGTERM every supervisor (it stops its workers), then SIGKILL what is left, by pid."""
        self.note_pids()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in self.left():  # a worker its supervisor did not stop
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()

    def left(self) -> list[int]:
        """Pids of the fleet's processes still alive (not zombies of other parents)."""
        alive = []
        for pid in self.seen:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if (
                    p.status() != psutil.STATUS_ZOMBIE
                    and p.environ().get("PROCFLOW_REDIS_URL") == self.url
                ):
                    alive.append(pid)
        return alive


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    cpu: float
    commands: int
    calls: dict[str, tuple[int, int]]  # command → (calls, usec)
    fleet_cpu: float
    host_busy: float

    @classmethod
    def take(cls, r: redis.Redis, fleet: Fleet) -> Snapshot:
        fleet_cpu = fleet.cpu_seconds()
        host = psutil.cpu_times()
        info = r.info("all")
        calls = {
            k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for k, v in info.items()
            if k.startswith("cmdstat_")
        }
        return cls(
            at=time.monotonic(),
            cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            commands=int(info["total_commands_processed"]),
            calls=calls,
            fleet_cpu=fleet_cpu,
            host_busy=sum(host) - host.idle - getattr(host, "iowait", 0.0),
        )


@dataclass
class Window:
    """What one window cost: per second of wall time."""

    seconds: float
    cpu_ms: float  # Redis CPU, ms per s
    commands: float  # commands per s (this script's INFO calls left out)
    per_command: dict[str, tuple[float, float]]  # command → (calls/s, µs/s)
    fleet_cpu_ms: float
    host_busy: float  # cores busy on the host
    load: float  # 1-minute load average at the start
    jobs: int = 0
    backlog: int = 0

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot, load: float) -> Window:
        s = b.at - a.at
        per = {}
        for name, (calls, usec) in b.calls.items():
            c0, u0 = a.calls.get(name, (0, 0))
            if name != "info" and calls > c0:
                per[name] = ((calls - c0) / s, (usec - u0) / s)
        info_calls = b.calls.get("info", (0, 0))[0] - a.calls.get("info", (0, 0))[0]
        return cls(
            seconds=s,
            cpu_ms=(b.cpu - a.cpu) * 1000 / s,
            commands=(b.commands - a.commands - info_calls) / s,
            per_command=per,
            fleet_cpu_ms=(b.fleet_cpu - a.fleet_cpu) * 1000 / s,
            host_busy=(b.host_busy - a.host_busy) / s,
            load=load,
        )


def median_window(windows: list[Window]) -> Window:
    names = sorted({n for w in windows for n in w.per_command})
    med = statistics.median
    return Window(
        seconds=med(w.seconds for w in windows),
        cpu_ms=med(w.cpu_ms for w in windows),
        commands=med(w.commands for w in windows),
        per_command={
            n: (
                med(w.per_command.get(n, (0.0, 0.0))[0] for w in windows),
                med(w.per_command.get(n, (0.0, 0.0))[1] for w in windows),
            )
            for n in names
        },
        fleet_cpu_ms=med(w.fleet_cpu_ms for w in windows),
        host_busy=med(w.host_busy for w in windows),
        load=max(w.load for w in windows),
        jobs=round(med(w.jobs for w in windows)),
        backlog=max(w.backlog for w in windows),
    )


class Producer:
    """Creates one no-op job every 1/rate s (on a schedule: a late job does not shift the
    ones after it) until stopped."""

    def __init__(self, flow: Flow, rate: float) -> None:
        self.flow = flow
        self.rate = rate
        self.created = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("the producer failed") from self.error

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # told by __exit__, in the measuring thread
            self.error = exc

    def _run(self) -> None:
        step = 1 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            self.flow.create_job({"i": self.created})
            self.created += 1
            due += step
            self._stop.wait(max(0.0, due - time.monotonic()))


#: command lines that make the machine too busy to measure (``--quiet-for``)
BUSY = ["scripts/test.py", "scripts/bench"]


def busy_processes() -> list[tuple[int, str]]:
    """Other processes running a test run or a benchmark (this one left out)."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] != me and any(b in cmd for b in BUSY):
            found.append((p.info["pid"], cmd[:60]))
    return found


def wait_quiet(timeout: float, notes: list[str]) -> None:
    """Wait while a test run or another benchmark uses the machine, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    said = False
    while (found := busy_processes()) and time.monotonic() < deadline:
        if not said:
            print(f"waiting for {found} to end …", file=sys.stderr)
            said = True
        time.sleep(5)  # polling for the test run to end
    if found:
        notes.append(f"measured while these ran: {found}")


def wait_drained(flow: Flow, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = flow.counts()["work"]
        if c["waiting"] == 0 and c["processing"] == 0:
            return
        time.sleep(0.2)  # polling the queue
    raise TimeoutError(f"the fleet did not drain the queue in {timeout:.0f} s: {c}")


def measure(
    r: redis.Redis,
    fleet: Fleet,
    seconds: float,
    notes: list[str],
    quiet_timeout: float,
    producer: tuple[Flow, float] | None = None,
) -> Window:
    wait_quiet(quiet_timeout, notes)
    load = os.getloadavg()[0]
    if producer is None:
        a = Snapshot.take(r, fleet)
        time.sleep(seconds)  # the measurement window itself
        b = Snapshot.take(r, fleet)
        return Window.between(a, b, load)
    flow, rate = producer
    with Producer(flow, rate) as p:
        time.sleep(1.0)  # the load reaches its steady state before the window opens
        a = Snapshot.take(r, fleet)
        created = p.created
        time.sleep(seconds)  # the measurement window itself
        b = Snapshot.take(r, fleet)
        created = p.created - created
        backlog = flow.counts()["work"]["waiting"]
    wait_drained(flow)
    window = Window.between(a, b, load)
    window.jobs, window.backlog = created, backlog
    return window


# -- MONITOR: who sends what --------------------------------------------------------------

_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?(?: "[^"]*" "([^"]*)")?')


#: EVALSHA's SHA1 → the script's name, as the tree's files read at each fleet start and sample
SHAS: dict[str, str] = {}


def note_scripts() -> None:
    """Name the SHA1s of the scripts as they read now (``procflow.store.wire.script``: the
    script with ``_lib.lua`` in front), in case the files change while the fleet runs."""
    folder = Path(ROOT, "procflow", "store", "lua")
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    for path in folder.glob("*.lua"):
        if not path.stem.startswith("_"):
            source = lib + "\n" + path.read_text(encoding="utf-8")
            SHAS[Script(path.stem, source).sha] = path.stem


def monitor_sample(
    url_port: int, seconds: float, fleet: Fleet, leader_pid: int | None, bench_ports: set[int]
) -> dict[tuple[str, str], int]:
    """(who, command) → count over ``seconds`` of MONITOR."""
    note_scripts()
    sock = socket.create_connection(("127.0.0.1", url_port))
    sock.settimeout(0.2)
    lines: list[bytes] = []
    try:
        sock.sendall(b"MONITOR\r\n")
        buf = b""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\r\n")
            lines += done
    finally:
        sock.close()
    # the clients' ports → who: a worker holds its supervisor's sockets too (inherited at
    # the fork, unused), so a port the supervisor has is the supervisor's
    port_role: dict[int, str] = {}
    for pid, role in sorted(fleet.roles().items(), key=lambda kv: kv[1] != "supervisor"):
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == url_port:
                    who = "leader" if pid == leader_pid else role
                    port_role.setdefault(c.laddr.port, who)
    counts: dict[tuple[str, str], int] = {}
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        addr, command, first = m.group(1), m.group(2).decode().upper(), m.group(3)
        if command == "MONITOR":
            continue
        if addr == b"lua":
            who = "in scripts"
        else:
            port = int(addr.rsplit(b":", 1)[-1])
            who = "bench" if port in bench_ports else port_role.get(port, "other")
        if command == "EVALSHA" and first is not None:
            sha = first.decode()
            # a script not found in the tree's files: its SHA and its first key
            known = SHAS.get(sha) or f"{sha[:8]} on {(m.group(4) or b'').decode()}"
            command = f"EVALSHA {known}"
        counts[(who, command)] = counts.get((who, command), 0) + 1
    return counts


def leader_pid(r: redis.Redis) -> int | None:
    holder = r.get(keys.monitor_leader(FLOW))
    if holder is None:
        return None
    parts = holder.decode().split("|")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def local_ports(r: redis.Redis) -> set[int]:
    """The ports of this process's connections to the server (INFO, the producer)."""
    port = int(r.connection_pool.connection_kwargs["port"])
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }


# -- printing ----------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(
                x.ljust(w) if i == 0 else x.rjust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def print_windows(title: str, w: Window, base: Window, nodes: int, workers: int) -> None:
    print(f"\n{title}")
    procs = nodes * workers
    fleet_ms = w.cpu_ms - base.cpu_ms
    rows = [
        ["Redis CPU, ms/s", f"{w.cpu_ms:.2f}", "", ""],
        [
            "  less the server alone",
            f"{fleet_ms:.2f}",
            f"{fleet_ms / nodes:.4f}",
            f"{fleet_ms / procs:.4f}",
        ],
        [
            "commands/s",
            f"{w.commands:.1f}",
            f"{w.commands / nodes:.2f}",
            f"{w.commands / procs:.2f}",
        ],
        [
            "fleet's own CPU, ms/s",
            f"{w.fleet_cpu_ms:.1f}",
            f"{w.fleet_cpu_ms / nodes:.2f}",
            f"{w.fleet_cpu_ms / procs:.2f}",
        ],
    ]
    table(rows, ["figure (median)", "fleet", "per node", "per worker"])


def print_commands(w: Window, nodes: int, title: str) -> None:
    print(f"\n{title}")
    total_us = sum(u for _, u in w.per_command.values()) or 1.0
    rows = [
        [
            name.upper(),
            f"{calls:.1f}",
            f"{calls / nodes:.3f}",
            f"{usec / calls:.1f}" if calls else "-",
            f"{usec / 1000:.3f}",
            f"{usec / total_us:.0%}",
        ]
        for name, (calls, usec) in sorted(w.per_command.items(), key=lambda kv: -kv[1][1])
        if calls > 0
    ]
    table(rows, ["command", "calls/s", "per node", "µs/call", "ms/s in it", "share"])
    print(
        f"(time inside commands {total_us / 1000:.3f} ms/s of the {w.cpu_ms:.3f} ms/s of CPU: "
        "the rest is the event loop, reading and writing sockets, blocking and unblocking)"
    )


def print_sample(
    counts: dict[tuple[str, str], int], seconds: float, nodes: int, workers: int
) -> None:
    per_who = {"leader": 1, "supervisor": max(1, nodes - 1), "worker": nodes * workers}
    rows = []
    for (who, command), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        rate = n / seconds
        each = per_who.get(who)
        rows.append([who, command, f"{rate:.2f}", f"{rate / each:.3f}" if each else "-"])
    table(rows, ["who", "command", "calls/s", "per process"])


# -- main ----------------------------------------------------------------------------------


@dataclass
class Config:
    workers: int
    idle: list[Window] = field(default_factory=list)
    load: list[Window] = field(default_factory=list)
    samples: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)
    pss: float = 0.0


def run_config(
    args: argparse.Namespace,
    server: RedisServer,
    directory: str,
    config: Config,
    with_load: bool,
    sample: bool,
    notes: list[str],
) -> None:
    """Start a fleet, measure one idle window (and one under load), sample if asked, stop it."""
    workers = config.workers
    r = redis.Redis.from_url(server.url)
    r.flushall()
    flow = Flow(FLOW, [QueueSpec("work")], redis_url=server.url)
    registry = Registry(flow.store)
    fleet = Fleet(server.url, directory, args.nodes, workers)
    print(f"{args.nodes} nodes x {workers} workers: starting …", file=sys.stderr)
    try:
        wait_quiet(args.quiet_timeout, notes)
        note_scripts()
        fleet.start()
        config.ready_s.append(fleet.wait_ready(registry, 60 + 2.0 * args.nodes * (1 + workers)))
        print(f"  ready in {config.ready_s[-1]:.1f} s; idle …", file=sys.stderr)
        time.sleep(3 * 2.0)  # let the start-up's stragglers (first beats, trims) pass
        config.idle.append(measure(r, fleet, args.seconds, notes, args.quiet_timeout))
        if with_load:
            print(f"  {args.rate:g} jobs/s …", file=sys.stderr)
            config.load.append(
                measure(r, fleet, args.seconds, notes, args.quiet_timeout, (flow, args.rate))
            )
        config.pss = fleet.pss_mib()
        if sample and args.sample > 0:
            print("  MONITOR sample, idle …", file=sys.stderr)
            ports = local_ports(r)
            config.samples["idle"] = monitor_sample(
                server.port, args.sample, fleet, leader_pid(r), ports
            )
            if with_load:
                print("  MONITOR sample, load …", file=sys.stderr)
                with Producer(flow, args.rate):
                    time.sleep(0.5)  # the load reaches its steady state
                    ports = local_ports(r)
                    config.samples["load"] = monitor_sample(
                        server.port, args.sample, fleet, leader_pid(r), ports
                    )
                wait_drained(flow)
    finally:
        print("  stopping the fleet …", file=sys.stderr)
        fleet.stop()
        flow.disconnect()
        r.close()
        left = fleet.left()
        if left:
            notes.append(f"processes left behind after {workers}-worker fleet: {left}")
            for pid in left:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="workers per node (headline)")
    parser.add_argument(
        "--fit", default="1,4", help="two worker counts for the per-node/per-worker fit ('' none)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="jobs/s under load")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds of MONITOR (0: none)")
    parser.add_argument(
        "--quiet-for",
        default=",".join(BUSY),
        help="wait while a process whose command line has one of these runs",
    )
    parser.add_argument("--quiet-timeout", type=float, default=3600.0)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    fit = [int(x) for x in args.fit.split(",") if x.strip()]
    if fit and (len(fit) != 2 or fit[0] == fit[1]):
        parser.error("--fit takes two different worker counts, e.g. 1,4")
    BUSY[:] = [b for b in args.quiet_for.split(",") if b]
    signal.signal(signal.SIGTERM, _interrupted)  # stops the fleet as Ctrl-C does
    notes: list[str] = []
    cores = os.cpu_count() or 1
    configs: dict[int, Config] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory:
        Path(directory, "fleet_app.py").write_text(textwrap.dedent(APP))
        with RedisServer(args.server or find_server_binary()) as server:
            version = server.version().split()[2]
            r = redis.Redis.from_url(server.url)
            counts = list(dict.fromkeys([args.workers, *fit]))
            configs = {w: Config(w) for w in counts}
            alone: list[Window] = []
            for run in range(args.runs):  # alternating, so drift hits every fleet alike
                print(f"run {run + 1}/{args.runs}: the server alone …", file=sys.stderr)
                r.flushall()
                alone.append(
                    measure(
                        r,
                        Fleet(server.url, directory, 0, 0),
                        args.seconds,
                        notes,
                        args.quiet_timeout,
                    )
                )
                shift = run % len(counts)
                for w in counts[shift:] + counts[:shift]:
                    last = run == args.runs - 1
                    run_config(args, server, directory, configs[w], w == args.workers, last, notes)
            r.close()
            base = median_window(alone)
    report(args, base, configs, fit, notes, version, cores)


def report(
    args: argparse.Namespace,
    base: Window,
    configs: dict[int, Config],
    fit: list[int],
    notes: list[str],
    version: str,
    cores: int,
) -> None:
    n = args.nodes
    head = configs[args.workers]
    idle = median_window(head.idle)
    print(
        f"\nFleet on one Redis ({version}): {n} supervisors x {args.workers} workers, "
        f"windows of {args.seconds:g} s, medians of {args.runs}; {cores} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; fleet PSS {head.pss:.0f} MiB "
        f"({head.pss / n:.1f} MiB per node), ready {statistics.median(head.ready_s):.1f} s "
        "after the start (median)"
    )
    print(
        f"\nThe server alone (no client but this script's INFO): {base.cpu_ms:.3f} ms/s of CPU "
        "(its own timers: serverCron at hz 10)"
    )
    print_windows("Idle", idle, base, n, args.workers)
    print("(commands: those run inside scripts included, as INFO counts them)")
    print_commands(idle, n, "Idle, per command (INFO commandstats)")
    if head.load:
        load = median_window(head.load)
        print_windows(f"Load: {args.rate:g} no-op jobs/s", load, base, n, args.workers)
        print(
            f"per job (load - idle): Redis CPU "
            f"{(load.cpu_ms - idle.cpu_ms) / args.rate * 1000:.1f} µs, "
            f"{(load.commands - idle.commands) / args.rate:.1f} commands "
            f"(jobs created per window {load.jobs}, most waiting at a window's end {load.backlog})"
        )
        print_commands(load, n, "Load, per command")
    for phase, counts in head.samples.items():
        print(
            f"\nWho sends what ({phase}, {args.sample:g} s of MONITOR; leader = the supervisor "
            "holding the monitor's lock, 'supervisor' = each of the others)"
        )
        print_sample(counts, args.sample, n, args.workers)
    if len(fit) == 2:
        w1, w2 = fit
        c1, c2 = median_window(configs[w1].idle), median_window(configs[w2].idle)
        print(
            "\nModel: idle cost = server alone + nodes x (a + b x workers), fitted from "
            f"{n} nodes x {w1} and x {w2}"
        )
        rows = []
        for name, x0, x1, x2, xh, unit, target in (
            ("Redis CPU", base.cpu_ms, c1.cpu_ms, c2.cpu_ms, idle.cpu_ms, "ms/s", True),
            ("commands", base.commands, c1.commands, c2.commands, idle.commands, "/s", False),
        ):
            b = (x2 - x1) / n / (w2 - w1)
            a = (x1 - x0) / n - b * w1
            big = x0 + BIG_NODES * (a + BIG_WORKERS * b)
            predicted = x0 + n * (a + b * args.workers)
            rows.append(
                [
                    f"{name}, {unit}",
                    f"{x1:.2f}",
                    f"{x2:.2f}",
                    f"{a:.4f}",
                    f"{b:.4f}",
                    f"{predicted:.2f} / {xh:.2f}",
                    f"{big:,.0f}" + (f" ({big / 1000:.0%} of a core)" if target else ""),
                ]
            )
        table(
            rows,
            [
                "figure",
                f"x{w1} fleet",
                f"x{w2} fleet",
                "a per node",
                "b per worker",
                f"x{args.workers}: model / measured",
                f"{BIG_NODES:,} x {BIG_WORKERS}",
            ],
        )
        print(
            f"target: a <= {TARGET_NODE_MS} ms/s per node, b <= {TARGET_WORKER_MS} ms/s per "
            f"worker, i.e. {BIG_NODES * (TARGET_NODE_MS + BIG_WORKERS * TARGET_WORKER_MS):.0f} "
            f"ms/s for {BIG_NODES:,} x {BIG_WORKERS}"
        )
    loads = [w.load for c in configs.values() for w in c.idle + c.load]
    busy = [w.host_busy for c in configs.values() for w in c.idle + c.load]
    high = max(loads) > cores
    print(
        f"\nhost: 1-min load average at the windows' start {min(loads):.2f} to {max(loads):.2f}"
        f"{' (HIGH: above the core count; figures less sure)' if high else ''}, the fleet's "
        f"start-up included; cores busy during the windows {min(busy):.2f} to {max(busy):.2f} "
        f"of {cores}, the fleet and Redis included"
    )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
