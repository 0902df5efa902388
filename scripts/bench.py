"""procflow's benchmark, side by side with multiprocessing.Pool (and huey when installed).

    python scripts/bench.py [--runs 3] [--jobs 10000] [--server PATH] [--no-huey]
                            [--only W1,W1e,W2,W3,W6] [--w6-jobs 20000]

Workloads (docs/benchmarks.md):
  W1   10,000 jobs whose task does one Redis INCR, all enqueued first, then 2 workers started;
       jobs/s from the first job's start to the last completion observed; procflow with
       prefetch 1, 16, 64 and "auto"; the server's CPU per job (INFO cpu, user + sys, from
       the workers' start to the last completion, the tasks' own INCR included)
  W1e  the same 10,000 jobs enqueued one call per job, and in batches of 1,000; jobs/s
  W2   200 jobs of a pure-Python loop calibrated to ~20 ms, 2 workers already running;
       parallel efficiency = (200 x single-job time) / (2 x wall), procflow and Pool measured
       in alternation, three pairs per run (the single-job time is measured in this process,
       so an efficiency can exceed 1; the procflow/Pool ratio is the comparable figure)
  W3   idle running workers, 200 no-op jobs enqueued 20 ms apart; p50/p99 of start - enqueue
  W4   during W1: PSS of the whole worker tree (supervisor or consumer, and 2 workers);
       procflow runs W1 under ``python -m procflow.supervisor``, huey under its consumer
  W6   20,000 jobs of a pure-Python loop calibrated to ~1 ms, 2 workers already running (and
       warmed up), the jobs enqueued while they run, as Pool.map hands its tasks over while
       its workers run; parallel efficiency = (20,000 x single-job time) / (2 x wall), wall
       from the enqueue to the driver seeing the last completion (``Supervisor.wait``);
       procflow at prefetch 1, 16 and "auto" (when this tree accepts
       ``QueueSpec(prefetch="auto")``; the table marks QueueSpec's default), Pool(2).map with
       chunksize 1 and with its default chunking (20,000 / (4 x 2) = 2,500), each measured
       once per run, in an order that rotates between runs; Pool only, no huey
Every figure is the median of --runs runs, each system measured in the same run on a private
server started here (never the machine's shared Redis). Not run in CI.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from procflow import ConfigurationError, Flow, QueueSpec, Supervisor
from procflow.server import RedisServer, find_server_binary

URL = ""
#: W6's jobs (``--w6-jobs``)
W6_JOBS = 20_000
#: this tree (its procflow is the one measured, also in the subprocesses)
ROOT = str(Path(__file__).resolve().parents[1])
_clients: dict[int, redis.Redis] = {}


def client() -> redis.Redis:
    c = _clients.get(os.getpid())
    if c is None:
        c = _clients[os.getpid()] = redis.Redis.from_url(URL)
    return c


# -- the tasks, shared by every system -----------------------------------------------------


def incr_task(_: Any = None) -> dict[str, Any]:
    """W1: one INCR; the first one notes the start time."""
    c = client()
    if c.incr("bench:count") == 1:
        c.set("bench:start", repr(time.time()))
    return {}


def burn(rounds: int) -> int:
    x = 0
    for i in range(rounds):
        x += i * i
    return x


def burn_task(job: dict[str, Any]) -> dict[str, Any]:
    burn(job["rounds"])
    return {}


def latency_task(job: dict[str, Any]) -> dict[str, Any]:
    client().rpush("bench:latency", repr(time.time() - job["t"]))
    return {}


# -- helpers -------------------------------------------------------------------------------


def flush() -> redis.Redis:
    r = redis.Redis.from_url(URL)
    r.flushall()
    return r


def wait_count(r: redis.Redis, n: int, timeout: float = 300) -> float:
    """Poll the INCR counter until it reaches n; the time it was seen there."""
    deadline = time.monotonic() + timeout
    while int(r.get("bench:count") or 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {r.get('bench:count')} of {n} jobs counted")
        time.sleep(0.002)  # the benchmark driver's polling interval
    return time.time()


class PssSampler:
    """Measures the PSS of a process tree once, when the run is half done: reading
    /proc/*/smaps costs CPU, so it is done once per run, the same way for every system."""

    def __init__(self, pids: Callable[[], list[int]], r: redis.Redis, half: int) -> None:
        self.pids = pids
        self.r = r
        self.half = half
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            if int(self.r.get("bench:count") or 0) >= self.half:
                for pid in self.pids():
                    with contextlib.suppress(psutil.Error):
                        self.peak += psutil.Process(pid).memory_full_info().pss / 2**20
                return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- procflow --------------------------------------------------------------------------------


def pf_flow(
    name: str,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    fields: list[str],
    prefetch: int | str | None = None,
) -> Flow:
    """A one-stage flow of 2 workers; ``prefetch`` None leaves QueueSpec's default."""
    options: dict[str, Any] = {} if prefetch is None else {"prefetch": prefetch}
    flow = Flow(name, [QueueSpec("work", attributes_to_get=fields, **options)], redis_url=URL)
    flow.create_workers("work", fn, count=2)
    return flow


APP_PRELUDE = """
import os, time, redis
URL = os.environ["BENCH_URL"]
_c = {}
def client():
    c = _c.get(os.getpid())
    if c is None:
        c = _c[os.getpid()] = redis.Redis.from_url(URL)
    return c
"""

PF_APP = (
    APP_PRELUDE
    + """
from procflow import Flow, QueueSpec
def incr(job):
    c = client()
    if c.incr("bench:count") == 1:
        c.set("bench:start", repr(time.time()))
    return {}
def flow():
    given = os.environ.get("BENCH_PREFETCH", "1")
    prefetch = given if given == "auto" else int(given)
    f = Flow("w1", [QueueSpec("work", prefetch=prefetch)], redis_url=URL)
    f.create_workers("work", incr, count=2)
    return f
"""
)


def redis_cpu(r: redis.Redis) -> float:
    """The server's CPU time so far (user + system seconds, INFO cpu)."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pf_w1(n: int, directory: str, prefetch: int | str = 1) -> tuple[float, float, float]:
    """W1 with the supervisor as operators run it (its own process), like huey's consumer:
    (jobs/s, PSS MiB, the server's CPU µs per job)."""
    r = flush()
    Flow("w1", [QueueSpec("work")], redis_url=URL).create_jobs([{"i": i} for i in range(n)])
    cpu = redis_cpu(r)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procflow.supervisor",
            "bench_pf_app:flow",
            "--log-level",
            "WARNING",
        ],
        cwd=directory,
        # this tree's procflow, whatever is installed (to compare two trees side by side)
        env={
            **os.environ,
            "BENCH_URL": URL,
            "BENCH_PREFETCH": str(prefetch),
            "PYTHONPATH": os.pathsep.join([directory, ROOT]),
        },
    )
    with PssSampler(
        lambda: [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))],
        r,
        n // 2,
    ) as pss:
        end = wait_count(r, n)
    used = redis_cpu(r) - cpu
    proc.terminate()
    proc.wait(60)
    return n / (end - float(r.get("bench:start") or 0)), pss.peak, used / n * 1e6


def pf_w1e(n: int) -> tuple[float, float]:
    flush()
    flow = Flow("w1e", [QueueSpec("work")], redis_url=URL)
    flow.create_job({"i": -1})
    t = time.perf_counter()
    for i in range(n):
        flow.create_job({"i": i})
    single = n / (time.perf_counter() - t)
    flush()
    options = [{"i": i} for i in range(n)]
    t = time.perf_counter()
    for start in range(0, n, 1000):
        flow.create_jobs(options[start : start + 1000])
    batch = n / (time.perf_counter() - t)
    return single, batch


def pf_w2(rounds: int) -> float:
    flush()
    flow = pf_flow("w2", burn_task, ["rounds"])
    with Supervisor(flow, log_level="WARNING") as sup:
        t = time.perf_counter()
        sup.wait(flow.create_jobs([{"rounds": rounds}] * 200), timeout=120)
        return time.perf_counter() - t


def pf_w6(rounds: int, n: int, prefetch: int | str) -> float:
    """W6's wall: 2 workers started and warmed up, then ``n`` jobs enqueued while they run,
    to the driver seeing the last one done (what ``Pool.map`` measures in ``pool_w6``)."""
    flush()
    flow = pf_flow("w6", burn_task, ["rounds"], prefetch)
    with Supervisor(flow, log_level="WARNING") as sup:
        sup.wait(flow.create_jobs([{"rounds": 1}] * 4), timeout=60)  # as Pool's warm-up
        t = time.perf_counter()
        sup.wait(flow.create_jobs([{"rounds": rounds}] * n), timeout=600)
        return time.perf_counter() - t


def auto_prefetch() -> bool:
    """Whether this tree accepts ``QueueSpec(prefetch="auto")`` (issue 19, part 1)."""
    auto: Any = "auto"
    try:
        QueueSpec("work", prefetch=auto)
    except ConfigurationError:
        return False
    return True


def pf_w3() -> list[float]:
    r = flush()
    flow = pf_flow("w3", latency_task, ["t"])
    with Supervisor(flow, log_level="WARNING"):
        for _ in range(200):
            flow.create_job({"t": time.time()})
            time.sleep(0.02)  # the workload: one job every 20 ms
        while r.llen("bench:latency") < 200:
            time.sleep(0.01)
    return [float(x) * 1000 for x in r.lrange("bench:latency", 0, -1)]


# -- multiprocessing.Pool ----------------------------------------------------------------


def pool_w1(n: int, chunksize: int | None) -> tuple[float, float, float]:
    r = flush()
    cpu = redis_cpu(r)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(burn, [1] * 4)  # workers up before the clock starts
        workers = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        with PssSampler(lambda: [os.getpid(), *workers], r, n // 2) as pss:
            if chunksize is None:
                pool.map(incr_task, range(n))
            else:
                for _ in pool.imap_unordered(incr_task, range(n), chunksize=chunksize):
                    pass
            end = time.time()
    start = float(r.get("bench:start") or 0)
    return n / (end - start), pss.peak, (redis_cpu(r) - cpu) / n * 1e6


def pool_w2(rounds: int) -> float:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(burn, [1] * 4)
        t = time.perf_counter()
        pool.map(burn, [rounds] * 200, chunksize=1)
        return time.perf_counter() - t


def pool_w6(rounds: int, n: int, chunksize: int | None) -> float:
    """W6's wall for Pool(2).map of the same task (a dict in, {} out); chunksize None: map's
    default chunking."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(burn, [1] * 4)  # workers up before the clock starts
        t = time.perf_counter()
        pool.map(burn_task, [{"rounds": rounds}] * n, chunksize=chunksize)
        return time.perf_counter() - t


# -- huey ----------------------------------------------------------------------------------

HUEY_APP = (
    APP_PRELUDE
    + """
from huey import RedisHuey
huey = RedisHuey("bench", url=URL)
@huey.task()
def incr():
    c = client()
    if c.incr("bench:count") == 1:
        c.set("bench:start", repr(time.time()))
@huey.task()
def burn(rounds):
    x = 0
    for i in range(rounds):
        x += i * i
    client().incr("bench:count")
@huey.task()
def latency(t):
    client().rpush("bench:latency", repr(time.time() - t))
"""
)


class Huey:
    def __init__(self, directory: str) -> None:
        Path(directory, "bench_huey_app.py").write_text(textwrap.dedent(HUEY_APP))
        self.directory = directory
        os.environ["BENCH_URL"] = URL
        sys.path.insert(0, directory)
        import bench_huey_app  # noqa: PLC0415 - written to a temp dir just above

        self.app = bench_huey_app

    def consumer(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "bench_huey_app.huey",
                "-w",
                "2",
                "-k",
                "process",
                "-q",
            ],
            cwd=self.directory,
            env={**os.environ, "BENCH_URL": URL},
        )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        proc.wait(30)

    def w1(self, n: int) -> tuple[float, float, float]:
        r = flush()
        for _ in range(n):
            self.app.incr()
        cpu = redis_cpu(r)
        proc = self.consumer()
        with PssSampler(
            lambda: [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))],
            r,
            n // 2,
        ) as pss:
            end = wait_count(r, n)
        used = redis_cpu(r) - cpu
        self.stop(proc)
        return n / (end - float(r.get("bench:start") or 0)), pss.peak, used / n * 1e6

    def w1e(self, n: int) -> float:
        flush()
        t = time.perf_counter()
        for _ in range(n):
            self.app.incr()
        return n / (time.perf_counter() - t)

    def w2(self, rounds: int) -> float:
        r = flush()
        proc = self.consumer()
        self.app.incr()
        wait_count(r, 1)  # consumer up
        r.set("bench:count", 0)
        t = time.perf_counter()
        for _ in range(200):
            self.app.burn(rounds)
        wait_count(r, 200)
        wall = time.perf_counter() - t
        self.stop(proc)
        return wall

    def w3(self) -> list[float]:
        r = flush()
        proc = self.consumer()
        self.app.incr()
        wait_count(r, 1)
        for _ in range(200):
            self.app.latency(time.time())
            time.sleep(0.02)
        while r.llen("bench:latency") < 200:
            time.sleep(0.01)
        self.stop(proc)
        return [float(x) * 1000 for x in r.lrange("bench:latency", 0, -1)]


# -- main ----------------------------------------------------------------------------------


def calibrate(target: float = 0.020, repeats: int = 7) -> tuple[int, float]:
    """Rounds of ``burn`` that take ``target`` seconds here, and the median time of
    ``repeats`` calls of it."""
    rounds = 100_000
    while True:
        t = time.perf_counter()
        burn(rounds)
        took = time.perf_counter() - t
        if took > 0.005:
            break
        rounds *= 2
    rounds = int(rounds * target / took)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        burn(rounds)
        times.append(time.perf_counter() - t)
    return rounds, statistics.median(times)


def print_w6(
    args: argparse.Namespace,
    figures: dict[str, dict[str, list[float]]],
    single: float,
    labels: dict[str, str],
) -> None:
    """W6's own table: each efficiency (median, and the runs' range) and procflow/Pool."""
    n = args.w6_jobs
    pool1, pool = figures.get("W6", {}).get("pool1", []), figures.get("W6", {}).get("pool", [])
    base1 = statistics.median(pool1) if pool1 else 0.0
    base = statistics.median(pool) if pool else 0.0
    chunk = -(-n // (2 * 4))  # Pool.map's default: ceil(n / (4 x processes))
    lines = [
        (labels[k][len("W6 parallel efficiency, ") :], figures.get(k, {}).get("procflow", []))
        for k in ("W6 p1", "W6 p16", "W6 auto")
    ]
    lines += [
        ("Pool(2).map, chunksize 1", pool1),
        (f"Pool(2).map, default chunksize ({chunk:,})", pool),
    ]
    print(
        f"\nW6: {n:,} jobs of {single * 1000:.2f} ms of CPU on 2 workers, parallel efficiency "
        f"= ({n:,} x single-job time) / (2 x wall); medians of {args.runs} runs"
    )
    table = [["", "efficiency", "runs' range", "/ Pool chunk 1", "/ Pool default chunks"]]
    for label, values in lines:
        if not values:
            table.append([label, "—", "", "", ""])
            continue
        m = statistics.median(values)
        table.append(
            [
                label,
                f"{m:.3f}",
                f"{min(values):.3f}-{max(values):.3f}",
                f"{m / base1:.3f}x" if base1 else "—",
                f"{m / base:.3f}x" if base else "—",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> int:
    global URL
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--server", default=None, help="server binary (default: redis-server)")
    parser.add_argument("--no-huey", action="store_true")
    parser.add_argument(
        "--only",
        default="W1,W1e,W2,W3,W6",
        help="workloads to run, comma-separated (W4 comes with W1; default: all)",
    )
    parser.add_argument("--w6-jobs", type=int, default=W6_JOBS, help="W6's jobs (20,000)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    try:
        import huey  # noqa: F401, PLC0415 - optional: compared only when installed

        use_huey = not args.no_huey
    except ImportError:
        use_huey = False
    server = RedisServer(args.server or find_server_binary())
    server.start()
    URL = server.url
    began = time.monotonic()
    figures: dict[str, dict[str, list[float]]] = {}

    def add(system: str, name: str, value: float) -> None:
        figures.setdefault(name, {}).setdefault(system, []).append(value)

    # W6's procflow variants: (figure name, prefetch); "auto" only where this tree has it
    w6_pf: list[tuple[str, int | str]] = [("W6 p1", 1), ("W6 p16", 16)]
    has_auto = auto_prefetch()
    if has_auto:
        w6_pf.append(("W6 auto", "auto"))
    w6_default = QueueSpec("work").prefetch
    w6_all: list[tuple[str, str, Callable[[], float]]] = []
    try:
        rounds, single = calibrate()
        w6_rounds, w6_single = calibrate(0.001, repeats=51) if "W6" in only else (0, 0.0)
        for name, prefetch in w6_pf:
            w6_all.append((name, "procflow", partial(pf_w6, w6_rounds, args.w6_jobs, prefetch)))
        w6_all.append(("W6", "pool1", partial(pool_w6, w6_rounds, args.w6_jobs, 1)))
        w6_all.append(("W6", "pool", partial(pool_w6, w6_rounds, args.w6_jobs, None)))
        hy = Huey(tempfile.mkdtemp(prefix="bench-huey-")) if use_huey else None
        pf_dir = tempfile.mkdtemp(prefix="bench-procflow-")
        Path(pf_dir, "bench_pf_app.py").write_text(textwrap.dedent(PF_APP))
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} …", file=sys.stderr)
            if "W1" in only:
                rate, pss, cpu = pf_w1(args.jobs, pf_dir)
                add("procflow", "W1", rate)
                add("procflow", "W4", pss)
                add("procflow", "W1 cpu", cpu)
                rate, _, cpu = pf_w1(args.jobs, pf_dir, prefetch=16)
                add("procflow", "W1 p16", rate)
                add("procflow", "W1 p16 cpu", cpu)
                rate, _, cpu = pf_w1(args.jobs, pf_dir, prefetch=64)
                add("procflow", "W1 p64", rate)
                add("procflow", "W1 p64 cpu", cpu)
                if has_auto:
                    rate, _, cpu = pf_w1(args.jobs, pf_dir, prefetch="auto")
                    add("procflow", "W1 pauto", rate)
                    add("procflow", "W1 pauto cpu", cpu)
                rate, pss, cpu = pool_w1(args.jobs, None)
                add("pool", "W1", rate)
                add("pool", "W4", pss)
                add("pool", "W1 cpu", cpu)
                add("pool1", "W1", pool_w1(args.jobs, 1)[0])
            if "W1e" in only:
                single_rate, batch_rate = pf_w1e(args.jobs)
                add("procflow", "W1e one", single_rate)
                add("procflow", "W1e batch", batch_rate)
            if "W2" in only:
                for _ in range(3):  # W2 is short and this machine noisy: three pairs per run
                    add("procflow", "W2", 200 * single / (2 * pf_w2(rounds)))
                    add("pool", "W2", 200 * single / (2 * pool_w2(rounds)))
            if "W6" in only:
                # each once per run (a measurement is ~10 s), the order rotated between runs
                shift = run % len(w6_all)
                for name, system, measure in w6_all[shift:] + w6_all[:shift]:
                    efficiency = args.w6_jobs * w6_single / (2 * measure())
                    add(system, name, efficiency)
            if "W3" in only:
                lat = pf_w3()
                add("procflow", "W3 p50", percentile(lat, 0.5))
                add("procflow", "W3 p99", percentile(lat, 0.99))
            if hy is not None:
                if "W1" in only:
                    rate, pss, cpu = hy.w1(args.jobs)
                    add("huey", "W1", rate)
                    add("huey", "W4", pss)
                    add("huey", "W1 cpu", cpu)
                if "W1e" in only:
                    add("huey", "W1e one", hy.w1e(args.jobs))
                if "W2" in only:
                    add("huey", "W2", 200 * single / (2 * hy.w2(rounds)))
                if "W3" in only:
                    lat = hy.w3()
                    add("huey", "W3 p50", percentile(lat, 0.5))
                    add("huey", "W3 p99", percentile(lat, 0.99))
        version = server.version().split()[2]
    finally:
        server.stop()

    def med(name: str, system: str) -> float | None:
        values = figures.get(name, {}).get(system)
        return statistics.median(values) if values else None

    def show(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    rows = [
        ("W1 jobs/s", "W1", ",.0f", "≥ 14,000", "pool"),
        ("W1 jobs/s, prefetch 16", "W1 p16", ",.0f", "≥ 0.9 x Pool, ≥ 2.5 x huey", "pool"),
        ("W1 Redis CPU µs/job", "W1 cpu", ".1f", "", "pool"),
        ("W1 Redis CPU µs/job, prefetch 16", "W1 p16 cpu", ".1f", "≤ 15", "pool"),
        ("W1 jobs/s, prefetch 64", "W1 p64", ",.0f", "", "pool"),
        ("W1 Redis CPU µs/job, prefetch 64", "W1 p64 cpu", ".1f", "", "pool"),
        ("W1 jobs/s, prefetch auto", "W1 pauto", ",.0f", "≥ 0.95 x best fixed", "pool"),
        ("W1 Redis CPU µs/job, prefetch auto", "W1 pauto cpu", ".1f", "", "pool"),
        ("W1e jobs/s, one call per job", "W1e one", ",.0f", "≥ 12,000", None),
        ("W1e jobs/s, batches of 1,000", "W1e batch", ",.0f", "≥ 60,000", None),
        ("W2 parallel efficiency", "W2", ".3f", "≥ 0.98 x Pool", "pool"),
        ("W3 p50 start latency, ms", "W3 p50", ".2f", "≤ 0.5", None),
        ("W3 p99 start latency, ms", "W3 p99", ".2f", "≤ 1.0", None),
        ("W4 PSS during W1, MiB", "W4", ".1f", "≤ 45", "pool"),
    ]
    w6_label = {
        name: f"W6 parallel efficiency, prefetch {prefetch}"
        + (" (default)" if prefetch == w6_default else "")
        for name, prefetch in [*w6_pf, ("W6 auto", "auto")]
    }
    if not has_auto:  # to be measured once QueueSpec(prefetch="auto") lands (issue 19, part 1)
        w6_label["W6 auto"] += ": NOT MEASURED, refused here"
    rows += [(w6_label[name], name, ".3f", "", "pool") for name in ("W6 p1", "W6 p16", "W6 auto")]
    print()
    print(
        f"procflow benchmark — {version}, {psutil.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, medians of {args.runs} runs, "
        f"{args.jobs:,} jobs, W2 job = {single * 1000:.1f} ms"
        + (f", W6 job = {w6_single * 1000:.2f} ms" if "W6" in only else "")
    )
    header = ["figure", "procflow", "Pool(2)", "huey", "procflow/huey", "target"]
    table = [header]
    for label, name, fmt, target, _ in rows:
        if ("W1" if name == "W4" else name.split()[0]) not in only:
            continue  # a workload left out by --only
        pf, pool, hy_v = med(name, "procflow"), med(name, "pool"), med(name, "huey")
        if name.startswith(("W1 p16", "W1 p64", "W1 pauto")):  # beside the others' plain W1
            base = name.replace(" p16", "").replace(" p64", "").replace(" pauto", "")
            pool, hy_v = med(base, "pool"), med(base, "huey")
        if name.startswith("W6"):  # Pool's W6 figures, beside each prefetch
            pool = med("W6", "pool")
        ratio = f"{pf / hy_v:.2f}x" if pf and hy_v else "—"
        pool_text = show(pool, fmt)
        if name in ("W1", "W1 p16", "W1 p64", "W1 pauto") or name.startswith("W6"):
            base = name.split()[0]
            pool_text += f" (chunk 1: {show(med(base, 'pool1'), fmt)})"
        table.append([label, show(pf, fmt), pool_text, show(hy_v, fmt), ratio, target])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    w2_ratio = (med("W2", "procflow") or 0) / (med("W2", "pool") or 1)
    print(
        f"\nW2 procflow/Pool efficiency ratio: {w2_ratio:.3f}   "
        f"(W1 Pool uses map's default chunking; 'chunk 1' dispatches one task at a time)"
        if "W2" in only
        else "\n(Pool uses map's default chunking; 'chunk 1' dispatches one task at a time)"
    )
    fixed = [med(f"W1 {p}", "procflow") for p in ("p16", "p64")] + [med("W1", "procflow")]
    auto = med("W1 pauto", "procflow")
    if "W1" in only and auto and any(fixed):
        best = max(f for f in fixed if f)
        print(f"W1 prefetch auto / best fixed prefetch (1, 16, 64): {auto / best:.3f}")
    if "W6" in only:
        print_w6(args, figures, w6_single, w6_label)
    print(f"total time {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
