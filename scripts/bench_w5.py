"""W5: an unbalanced pipeline with a fan-out — a core budget against fixed splits.

    python scripts/bench_w5.py [--runs 3] [--parents 100] [--children 2] [--server PATH]

The flow: stage ``a`` (~2 ms of pure-Python CPU per job) → ``fan`` (a parent stage: each job
fans out to ``--children`` child jobs of ~20 ms) → ``c`` (~5 ms). The makespan is the time
from creating the parents to the last one done, with the workers already running. Measured:

- ``budget``: ``Supervisor(flow, cores=N)`` (N = the cores this process may use), every stage
  free to take what the work needs;
- every fixed split of ``a``/children/``c`` processes (each >= 1, at most N + 2 in all), the
  best of them, and the equal split (one each) — the parent stage has one light worker in
  every configuration.

Prints the medians and the ratios, and for each budget run how many processes the budget
moved (moves per minute of makespan); runs on a private server it starts. Not run in CI.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec, Supervisor
from procflow.cpus import usable_cpus
from procflow.server import RedisServer, find_server_binary


def spin(seconds: float) -> int:
    """Pure-Python CPU work for ``seconds`` of this process's CPU time (not wall time: a
    process sharing its core with others must still do all of its work)."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def stage_a(job: dict[str, Any]) -> dict[str, Any]:
    spin(0.002)
    return {"children:fan:params": [{"childName": "kid", "i": i} for i in range(job["k"])]}


def kid(job: dict[str, Any]) -> dict[str, Any]:
    return {"spins": spin(0.020)}


def stage_c(job: dict[str, Any]) -> dict[str, Any]:
    return {"spins": spin(0.005)}


def make_flow(url: str, split: tuple[int, int, int] | None) -> Flow:
    flow = Flow(
        "w5",
        [
            QueueSpec("a", next_queue="fan", attributes_to_get=["k"]),
            QueueSpec("fan", next_queue="c", children=[QueueSpec("kid")]),
            QueueSpec("c"),
        ],
        redis_url=url,
    )
    a, k, c = split or (1, 1, 1)
    flow.create_workers("a", stage_a, count=a, block_timeout=0.5)
    flow.create_parent_workers("fan", count=1, block_timeout=0.5)
    flow.create_child_workers("fan", "kid", kid, count=k, block_timeout=0.5)
    flow.create_workers("c", stage_c, count=c, block_timeout=0.5)
    return flow


def makespan(
    url: str, split: tuple[int, int, int] | None, parents: int, children: int
) -> tuple[float, int]:
    """The makespan, and how many processes the budget moved meanwhile (0 without one)."""
    flow = make_flow(url, split)
    cores = usable_cpus() if split is None else None
    with Supervisor(flow, cores=cores, log_level="WARNING") as sup:
        budget = sup.manager.budget
        before = budget.moves if budget is not None else 0
        started = time.perf_counter()
        ids = flow.create_jobs([{"k": children} for _ in range(parents)])
        sup.wait(ids, timeout=600)
        took = time.perf_counter() - started
        moved = budget.moves - before if budget is not None else 0
    flow.store.flush_db()
    flow.disconnect()
    return took, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parents", type=int, default=100)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    cores = usable_cpus()
    splits = [s for s in itertools.product(range(1, cores + 2), repeat=3) if sum(s) <= cores + 2]
    configs: list[tuple[str, tuple[int, int, int] | None]] = [("budget", None)]
    configs += [(f"fixed a={a} kid={k} c={c}", (a, k, c)) for a, k, c in splits]
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    moves: list[tuple[float, int]] = []
    with RedisServer(args.server or find_server_binary()) as server:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} …", file=sys.stderr)
            for name, split in configs:  # alternating, so drift hits every config alike
                took, moved = makespan(server.url, split, args.parents, args.children)
                times[name].append(took)
                if split is None:
                    moves.append((took, moved))
    median = {name: statistics.median(t) for name, t in times.items()}
    fixed = {name: m for name, m in median.items() if name != "budget"}
    best = min(fixed, key=lambda n: fixed[n])
    equal = "fixed a=1 kid=1 c=1"
    work = args.parents * (0.002 + args.children * 0.020 + 0.005)
    print(
        f"\nW5 — {args.parents} parents x {args.children} children, {cores} cores, "
        f"~{work:.1f} s of CPU work; makespan, medians of {args.runs}"
    )
    print(f"{'configuration':<24}{'makespan s':>12}{'vs budget':>11}")
    for name in ["budget", *sorted(fixed, key=lambda n: fixed[n])]:
        print(f"{name:<24}{median[name]:>12.2f}{median[name] / median['budget']:>10.2f}x")
    print(
        f"\nbudget / best fixed ({best}): {median['budget'] / median[best]:.2f}  (target <= 1.05)"
        f"\nbudget / equal split: {median['budget'] / median[equal]:.2f}  (target <= 0.75)"
        "\nbudget moves per run: "
        + ", ".join(f"{n} in {t:.2f} s ({n / t * 60:.0f}/min)" for t, n in moves)
    )


if __name__ == "__main__":
    main()
