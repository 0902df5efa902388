"""Lock values name who holds a lease: ``NODE|PID|START|WORKER_PID|N``. Values procflow did
not write (the TypeScript library's, which are arbitrary strings) must never parse."""

from __future__ import annotations

import pytest

from procflow.store.keys import Holder, LeaseToken, TokenSeries, safe_node_id, split_job_key


def test_a_holder_is_written_node_pid_start_with_two_decimals() -> None:
    assert str(Holder("web-1", 1234, 1712345678.128)) == "web-1|1234|1712345678.13"
    assert str(Holder("n", 1, 5.0)) == "n|1|5.00"


def test_a_lease_token_adds_the_worker_pid_and_its_count() -> None:
    token = LeaseToken(Holder("web-1", 1234, 5.25), 4242, 17)
    assert str(token) == "web-1|1234|5.25|4242|17"


def test_a_holder_parses_back_from_its_text() -> None:
    holder = Holder("web-1.example", 1234, 1712345678.25)
    assert Holder.parse(str(holder)) == holder


def test_a_lease_token_parses_back_from_its_text() -> None:
    token = LeaseToken(Holder("web-1", 1234, 5.25), 4242, 17)
    parsed = LeaseToken.parse(str(token))
    assert parsed == token
    assert parsed is not None
    assert parsed.holder.node == "web-1"
    assert parsed.holder.pid == 1234
    assert parsed.worker_pid == 4242
    assert parsed.n == 17


def test_parsing_keeps_the_start_time_to_its_two_decimals() -> None:
    parsed = Holder.parse(str(Holder("n", 1, 1712345678.128)))
    assert parsed == Holder("n", 1, 1712345678.13)


@pytest.mark.parametrize(
    "text",
    [
        "0b7c3f0e-9d5e-4a4f-8a57-3c1d2b9f6e10",  # a UUID, as the TypeScript library writes
        "",
        "a|b",
        "a|b|c",
        "n|x|1.0|2|3",  # pid not a number
        "n|1|x|2|3",  # start not a number
        "n|1|1.0|x|3",  # worker pid not a number
        "n|1|1.0|2|x",  # count not a number
        "n|1|1.0|2",  # a part missing
        "n|1|1.0|2|3|4",  # a part too many
        "|||",
        "1",
    ],
)
def test_values_procflow_did_not_write_are_no_lease_token(text: str) -> None:
    assert LeaseToken.parse(text) is None


@pytest.mark.parametrize("text", ["", "a|b", "a|b|c", "n|x|1.0", "n|1|1.0|2", "uuid-ish-value"])
def test_values_that_are_not_node_pid_start_are_no_holder(text: str) -> None:
    assert Holder.parse(text) is None


def test_a_series_counts_from_one_under_the_holder_and_worker_pid() -> None:
    series = TokenSeries("node|1|1.00", 4242)
    assert [series.next() for _ in range(3)] == [
        "node|1|1.00|4242|1",
        "node|1|1.00|4242|2",
        "node|1|1.00|4242|3",
    ]


def test_each_token_of_a_series_parses_to_its_holder_worker_and_count() -> None:
    holder = Holder("node", 1, 1.0)
    series = TokenSeries(str(holder), 4242)
    for n in range(1, 4):
        assert LeaseToken.parse(series.next()) == LeaseToken(holder, 4242, n)


def test_two_series_of_one_holder_never_make_the_same_token() -> None:
    first, second = TokenSeries("node|1|1.00", 10), TokenSeries("node|1|1.00", 11)
    assert {first.next() for _ in range(5)}.isdisjoint({second.next() for _ in range(5)})


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("web-1.example_2", "web-1.example_2"),
        ("a|b", "a_b"),
        ("has space", "has_space"),
        ("名前", "__"),
        ("", "node"),
        ("x" * 61, "x" * 60),
    ],
)
def test_a_node_name_is_made_safe_for_lock_values(name: str, safe: str) -> None:
    assert safe_node_id(name) == safe


def test_a_holder_on_a_made_safe_node_name_round_trips() -> None:
    holder = Holder(safe_node_id("host|with|bars"), 99, 2.5)
    assert Holder.parse(str(holder)) == holder
    token = LeaseToken(holder, 100, 1)
    assert LeaseToken.parse(str(token)) == token


@pytest.mark.parametrize(
    ("key", "split"),
    [
        ("job:F:ID", ("job:F:", "ID")),
        ("job:p:c1:ID", ("job:p:c1:", "ID")),
        (
            "job:F:0190a1b2-0000-7000-8000-000000000000",
            ("job:F:", "0190a1b2-0000-7000-8000-000000000000"),
        ),
    ],
)
def test_a_job_key_splits_into_its_prefix_and_id(key: str, split: tuple[str, str]) -> None:
    assert split_job_key(key) == split


@pytest.mark.parametrize("text", ["lock:q:ID", "queue:q:waiting", "job:F", "job", "", "ID"])
def test_text_that_is_not_a_job_key_does_not_split(text: str) -> None:
    assert split_job_key(text) is None
