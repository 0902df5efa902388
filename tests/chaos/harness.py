"""The chaos suite's flow, killers and audit.

Every worker function counts its own executions (HINCRBY exec:<queue> <id>), so the audit can
report how many ran twice; the audit then checks every job: lost (neither done nor failed for
a stated reason), an id in two places, anything left in a waiting, processing, delayed or
parked structure.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from procflow import Backoff, Flow, QueueSpec
from tests.helpers import lazy_client

RETRY = Backoff(base=0.05, factor=2.0, max=0.5)
STAGES = ("prepare", "fanout", "fanout:alpha", "fanout:beta", "finish")


def _counter(url: str) -> Callable[[str, str], None]:
    get = lazy_client(url)

    def count(queue: str, job_id: str) -> None:
        get().hincrby(f"exec:{queue}", job_id, 1)

    return count


def _work(rounds: int) -> int:
    return sum(i * i for i in range(rounds))  # a little CPU, like a real stage


def chaos_flow(
    url: str,
    *,
    workers: int = 2,
    max_attempts: int = 10,
    prefetch: int = 1,
    lock_time: float = 180,
    partitions: int | None = None,
) -> Flow:
    """3 stages, the middle one fanning out to two child queues; every stage counted.
    ``prefetch``: for every stage but the parent (which takes one job at a time);
    ``partitions``: the flow spread over that many partitions (``{chaos#i}``)."""
    count = _counter(url)

    def prepare(job: dict[str, Any]) -> dict[str, Any]:
        count("prepare", job["id"])
        return {
            "prepared": _work(2000) + job["n"],
            "children:fanout:params": [
                {"childName": "alpha", "v": job["n"]},
                {"childName": "beta", "v": -job["n"]},
            ],
        }

    def alpha(job: dict[str, Any]) -> dict[str, Any]:
        count("fanout:alpha", job["id"])
        return {"a": job["v"] + _work(1000) * 0}

    def beta(job: dict[str, Any]) -> dict[str, Any]:
        count("fanout:beta", job["id"])
        return {"b": job["v"] - 1}

    def finish(job: dict[str, Any]) -> dict[str, Any]:
        count("finish", job["id"])
        return {"total": len(job["children:fanout:jobs"])}

    def spec(name: str, **kw: Any) -> QueueSpec:
        kw.setdefault("prefetch", prefetch)
        return QueueSpec(name, max_attempts=max_attempts, retry_backoff=RETRY, **kw)

    flow = Flow(
        "chaos",
        [
            spec("prepare", next_queue="fanout", attributes_to_get=["n"]),
            spec(
                "fanout",
                prefetch=1,
                next_queue="finish",
                children=[
                    spec("alpha", attributes_to_get=["v"]),
                    spec("beta", attributes_to_get=["v"]),
                ],
            ),
            spec("finish", attributes_to_get=["children:fanout:jobs"]),
        ],
        redis_url=url,
        partitions=partitions,
    )
    flow.create_workers("prepare", prepare, count=workers, block_timeout=1, lock_time=lock_time)
    flow.create_parent_workers("fanout", count=1, block_timeout=1, lock_time=lock_time)
    flow.create_child_workers(
        "fanout", "alpha", alpha, count=workers, block_timeout=1, lock_time=lock_time
    )
    flow.create_child_workers(
        "fanout", "beta", beta, count=workers, block_timeout=1, lock_time=lock_time
    )
    flow.create_workers("finish", finish, count=1, block_timeout=1, lock_time=lock_time)
    return flow


def chaos_app() -> Flow:
    """For ``python -m procflow.supervisor tests.chaos.harness:chaos_app`` (locks of
    ``$CHAOS_LOCK_TIME`` seconds, default 180)."""
    lock_time = float(os.environ.get("CHAOS_LOCK_TIME", "180"))
    return chaos_flow(os.environ["PROCFLOW_REDIS_URL"], lock_time=lock_time)


@dataclass
class Audit:
    jobs: int = 0
    done: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)
    duplicates: int = 0
    unstated: list[str] = field(default_factory=list)


def audit(flow: Flow, ids: list[str]) -> Audit:
    """Count every job: done / failed for a stated reason / lost, where each id sits, and
    how many stage executions ran more than once."""
    r = redis.Redis(host=flow.redis.host, port=flow.redis.port, password=flow.redis.password)
    result = Audit(jobs=len(ids))
    places: Counter[str] = Counter()
    for stage in (s for part in flow.partitions for s in part.definition.stages.values()):
        k = stage.keys
        for key in (k.waiting, k.processing, k.failed):
            for member in r.lrange(key, 0, -1):
                places[member.decode()] += 1
                if key != k.failed:
                    result.misplaced.append(f"{member.decode()} in {key}")
        for key in (k.delayed, k.parked):
            for member in r.zrange(key, 0, -1):
                places[member.decode()] += 1
                result.misplaced.append(f"{member.decode()} in {key}")
    for job_id, n in places.items():
        if n > 1:
            result.misplaced.append(f"{job_id} in {n} places")
    for job in flow.get_jobs(ids, resolve_children=True):
        if job.get("failed"):
            result.failed += 1
            if not job.get("failedErrorMsg"):
                result.unstated.append(job["id"])
        elif job.get("done"):
            result.done += 1
            for child in job.get("children:fanout:jobs", []):
                if not child.get("done"):
                    result.lost.append(f"child {child['id']} of {job['id']}")
        else:
            result.lost.append(job["id"])
    result.lost += sorted(set(ids) - {j["id"] for j in flow.get_jobs(ids)})
    for queue in STAGES:
        result.duplicates += sum(max(0, int(v) - 1) for v in r.hvals(f"exec:{queue}"))
    r.close()
    return result


class Killer:
    """SIGKILLs a random pid from ``pids()`` every ``interval`` seconds, in a thread."""

    def __init__(self, pids: Callable[[], list[int]], interval: float, seed: int = 7) -> None:
        self.pids = pids
        self.interval = interval
        self.kills = 0
        self.random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            pids = self.pids()
            if not pids:
                continue
            try:
                os.kill(self.random.choice(pids), signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass


def timed() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start
