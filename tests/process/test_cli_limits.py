"""``procflow jobs --limit/--start``: a bad number is one error line and a non-zero exit,
never a silently different list."""

from __future__ import annotations

import json

import pytest

from procflow import Flow, QueueSpec
from tests.process.test_cli_first_hour import PROCFLOW, run
from tests.process.test_cli_shows_data_as_it_is import register

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "user=1", "--limit", "0"], "--limit must be a whole number from 1 to 500"),
        (["--by", "user=1", "--limit", "-1"], "--limit must be a whole number from 1 to 500"),
        (["--by", "user=1", "--limit", "501"], "--limit must be a whole number from 1 to 500"),
        (["--queue", "check", "--limit", "0"], "--limit must be a whole number from 1 to 500"),
        (["--queue", "check", "--limit", "-5"], "--limit must be a whole number from 1 to 500"),
        (["--queue", "check", "--limit", "1000"], "--limit must be a whole number from 1 to 500"),
        (["--queue", "check", "--start", "-1"], "--start must be a whole number from 0"),
    ],
)
def test_bad_limits_and_starts_are_one_error_line(
    redis_url: str, args: list[str], message: str
) -> None:
    flow = Flow("shop", [QueueSpec("check")], lookup_attributes=["user"], redis_url=redis_url)
    register(redis_url, flow)
    flow.create_jobs([{"user": 1} for _ in range(3)])
    out = run(PROCFLOW, "jobs", "shop", *args, url=redis_url)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.splitlines() == [f"error: {message}, got {args[-1]}"], out.stderr
    flow.disconnect()


def test_the_limit_bounds_what_jobs_by_returns(redis_url: str) -> None:
    flow = Flow("shop", [QueueSpec("check")], lookup_attributes=["user"], redis_url=redis_url)
    register(redis_url, flow)
    ids = flow.create_jobs([{"user": 1, "n": n} for n in range(3)])
    out = run(PROCFLOW, "jobs", "shop", "--by", "user=1", "--limit", "1", "--json", url=redis_url)
    assert out.returncode == 0, out.stderr
    assert [j["id"] for j in json.loads(out.stdout)] == ids[-1:]
    flow.disconnect()
