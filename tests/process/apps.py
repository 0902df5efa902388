"""Flows for the process tests and the CLI tests (importable by worker processes)."""

from __future__ import annotations

import os
import time
from typing import Any

from procflow import Flow, QueueSpec


def prepare(job: dict[str, Any]) -> dict[str, Any]:
    n = job["n"]
    return {
        "prepared": n * 2,
        "children:fanout:params": [
            {"childName": "alpha", "v": n},
            {"childName": "beta", "v": -n},
        ],
    }


def alpha(job: dict[str, Any]) -> dict[str, Any]:
    return {"alphaResult": job["v"] + 1, "finishedAt": time.time()}


def beta(job: dict[str, Any]) -> dict[str, Any]:
    return {"betaResult": job["v"] - 1, "finishedAt": time.time()}


def finish(job: dict[str, Any]) -> dict[str, Any]:
    return {"total": job["prepared"] + len(job["children:fanout:jobs"]), "finalAt": time.time()}


def three_stage_flow(redis_url: str | None = None, name: str = "three") -> Flow:
    return Flow(
        name,
        [
            QueueSpec("prepare", next_queue="fanout", attributes_to_get=["n"]),
            QueueSpec(
                "fanout",
                next_queue="finish",
                children=[
                    QueueSpec("alpha", attributes_to_get=["v"]),
                    QueueSpec("beta", attributes_to_get=["v"]),
                ],
            ),
            QueueSpec("finish", attributes_to_get=["prepared", "children:fanout:jobs"]),
        ],
        lookup_attributes=["n"],
        redis_url=redis_url,
    )


def with_workers(flow: Flow, count: int = 1) -> Flow:
    flow.create_workers("prepare", prepare, count=count)
    flow.create_parent_workers("fanout", count=1)
    flow.create_child_workers("fanout", "alpha", alpha, count=count)
    flow.create_child_workers("fanout", "beta", beta, count=count)
    flow.create_workers("finish", finish, count=count)
    return flow


def slow(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(job.get("sleep", 0.05))  # the job's own work, not synchronisation
    return {"pid": os.getpid()}


def cli_flow() -> Flow:
    """The CLI tests' app: a factory, reading $PROCFLOW_REDIS_URL like any default flow."""
    flow = Flow("cli", [QueueSpec("work", attributes_to_get=["sleep"])])
    flow.create_workers("work", slow, count=2, block_timeout=1)
    return flow


plain_flow = Flow("plainflow", [QueueSpec("work")])
