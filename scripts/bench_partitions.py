"""Partitioned flows on a local Redis Cluster: how a flow's Redis work spreads over shards.

    python scripts/bench_partitions.py [--jobs 20000] [--workers 2] [--prefetch 16]
                                       [--partitions 1,3,6] [--runs 3]

Starts a cluster of three masters (no replicas) on loopback ports of its own, then for each
partition count K runs ``--jobs`` tiny jobs (the function returns ``{}``) through
``Flow("bench", …, partitions=K)`` with ``--workers`` worker processes already running. Every
master's ``INFO cpu`` (user + sys) and ``INFO commandstats`` are read before the jobs are
created and after the last one is done (found by polling ``counts`` every 50 ms, which costs
the servers next to nothing; ``wait(ids)`` would add reads per job, more with more
partitions). Prints, per K: jobs/s (creation to the last done), the Redis CPU per job summed
over the masters, and per master the partitions it serves, its CPU per job and its time in
commands per job. Medians over ``--runs``. Not run in CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec, Supervisor
from procflow.server import find_server_binary
from procflow.store.connect import slot_master
from tests.clusters import Cluster


def nothing(job: dict[str, Any]) -> dict[str, Any]:
    return {}


def cpu_seconds(cluster: Cluster, port: int) -> float:
    info = cluster.client(port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_usec(cluster: Cluster, port: int) -> int:
    stats = cluster.client(port).info("commandstats")
    return sum(int(v["usec"]) for v in stats.values())


def run(cluster: Cluster, k: int, jobs: int, workers: int, prefetch: int) -> dict[str, Any]:
    flow = Flow(
        "bench",
        [QueueSpec("w", prefetch=prefetch)],
        redis_url=cluster.url,
        partitions=k,
    )
    flow.create_workers("w", nothing, count=workers)
    ports = cluster.master_ports
    served = [slot_master(part.redis)[1] for part in flow.parts]
    with Supervisor(flow, heartbeat=False) as sup:
        sup.wait([flow.create_job({"n": -1})], timeout=60)  # connected and warm
        cpu0 = {p: cpu_seconds(cluster, p) for p in ports}
        usec0 = {p: command_usec(cluster, p) for p in ports}
        start = time.perf_counter()
        flow.create_jobs([{"n": n} for n in range(jobs)])
        while any(c["waiting"] or c["processing"] for c in flow.counts().values()):
            time.sleep(0.05)  # a light poll: wait(ids) would add its own reads per job
        took = time.perf_counter() - start
        cpu = {p: cpu_seconds(cluster, p) - cpu0[p] for p in ports}
        usec = {p: command_usec(cluster, p) - usec0[p] for p in ports}
    for port in ports:  # the next run starts from an empty cluster
        cluster.client(port).flushall()
    return {
        "rate": jobs / took,
        "cpu_per_job": {p: cpu[p] / jobs * 1e6 for p in ports},
        "usec_per_job": {p: usec[p] / jobs for p in ports},
        "partitions": {p: served.count(p) for p in ports},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--partitions", default="1,3,6")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    counts = [int(k) for k in args.partitions.split(",")]
    with tempfile.TemporaryDirectory(prefix="procflow-cluster-") as folder:
        cluster = Cluster(find_server_binary(), Path(folder), replicas_each=0).start()
        try:
            results = {
                k: [
                    run(cluster, k, args.jobs, args.workers, args.prefetch)
                    for _ in range(args.runs)
                ]
                for k in counts
            }
        finally:
            cluster.stop()
    ports = cluster.master_ports
    print(
        f"\n{args.jobs} tiny jobs, {args.workers} workers, prefetch {args.prefetch}, "
        f"3 masters; medians of {args.runs} runs"
    )
    head = f"{'K':>3} {'jobs/s':>8} {'Redis µs/job':>13}"
    for n in range(len(ports)):
        head += f" | {'master ' + str(n) + ': parts':>15} {'µs/job':>7} {'cmd µs':>7}"
    print(head)
    for k, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        per = {p: statistics.median(r["cpu_per_job"][p] for r in runs) for p in ports}
        cmd = {p: statistics.median(r["usec_per_job"][p] for r in runs) for p in ports}
        line = f"{k:>3} {rate:>8,.0f} {sum(per.values()):>13.1f}"
        for p in ports:
            line += f" | {runs[0]['partitions'][p]:>15} {per[p]:>7.1f} {cmd[p]:>7.1f}"
        print(line)


if __name__ == "__main__":
    main()
