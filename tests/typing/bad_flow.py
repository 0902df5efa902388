"""Misuse that a type checker must reject: every line marked ``# wrong`` is an error."""

from __future__ import annotations

from typing import Literal, TypedDict

from procflow import Flow, QueueSpec


class Options(TypedDict):
    userId: int


class PrepareParams(TypedDict):
    id: str
    userId: int


class PrepareResult(TypedDict):
    prepared: bool


class OtherParams(TypedDict):
    id: str
    guildId: int


Job = dict[str, object]
Lookup = Literal["userId"]

prepare = QueueSpec[PrepareParams, PrepareResult]("prepare", attributes_to_get=["userId"])
flow: Flow[Job, Options, Lookup] = Flow("f", [prepare], lookup_attributes=["userId"])


def wrong_params(job: OtherParams) -> PrepareResult:
    return {"prepared": True}


def wrong_result(job: PrepareParams) -> dict[str, int]:
    return {"n": 1}


flow.get_jobs_by_key("notALookupKey", 1)  # wrong
flow.create_job({"userId": "sixty-two"})  # wrong
flow.create_job({"guildId": 1})  # wrong
flow.create_workers(prepare, wrong_params)  # wrong
flow.create_workers(prepare, wrong_result)  # wrong
bad_lookup: Flow[Job, Options, Lookup] = Flow("g", [prepare], lookup_attributes=["nope"])  # wrong
