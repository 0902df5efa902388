"""A user module written the way the docs suggest: mypy --strict accepts it."""

from __future__ import annotations

from typing import Literal, TypedDict

from procflow import Flow, QueueSpec


class CreateAccessJob(TypedDict):
    userId: int
    roleIds: list[int]
    guildId: int


class PrepareParams(TypedDict):
    id: str
    userId: int


class PrepareResult(TypedDict):
    prepared: bool


class CheckParams(TypedDict):
    id: str
    userId: int
    roleIds: list[int]


class CheckResult(TypedDict):
    access: bool


class AccessJob(TypedDict, total=False):
    id: str
    userId: int
    roleIds: list[int]
    guildId: int
    prepared: bool
    access: bool
    done: bool


AccessLookup = Literal["userId", "roleIds", "guildId"]

prepare = QueueSpec[PrepareParams, PrepareResult](
    "prepare", next_queue="check", attributes_to_get=["userId"]
)
check = QueueSpec[CheckParams, CheckResult]("check", attributes_to_get=["userId", "roleIds"])

flow: Flow[AccessJob, CreateAccessJob, AccessLookup] = Flow(
    "access",
    [prepare, check],
    lookup_attributes=["userId", "roleIds", "guildId"],
    redis_url="redis://127.0.0.1:6379/0",
)


def prepare_job(job: PrepareParams) -> PrepareResult:
    return {"prepared": job["userId"] > 0}


def check_job(job: CheckParams) -> CheckResult:
    return {"access": bool(job["roleIds"])}


flow.create_workers(prepare, prepare_job, count=2, lock_time=30, block_timeout=3)
flow.create_workers(check, check_job)
flow.create_workers("check", lambda job: {"access": True})  # by name: not checked, allowed


def enqueue() -> list[AccessJob]:
    flow.create_job({"userId": 62, "roleIds": [1, 2], "guildId": 9})
    jobs = flow.get_jobs_by_key("userId", 62, resolve_children=True)
    first: AccessJob | None = flow.get_job("some-id")
    return jobs + ([first] if first else [])


untyped = Flow("plain", [QueueSpec("a")], lookup_attributes=["anything"])
untyped.get_jobs_by_key("anything", "x")
untyped.create_job({"free": {"form": [1, 2]}})
