"""The reply classifier and the route the sync wire and the async link share (no Redis):
what each error reply means, where a redirect sends the next connection, and what goes to a
slot's importing node after an ASK (an ASKING before each command, one before a MULTI for
its whole transaction)."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from procflow import CreateJobsError, RedisRefusedError, RedisUnavailableError
from procflow.settings import RedisSettings
from procflow.store.plans import Request, checked
from procflow.store.replies import (
    ASKING,
    ASKING_FOR,
    Kind,
    Route,
    classify,
    follow,
    with_asking,
)
from procflow.store.wire import pack

CLUSTER = RedisSettings.from_url("redis+cluster://127.0.0.1:7000").with_options(cluster_key="{p}")
SENTINEL = RedisSettings.from_url("redis+sentinel://127.0.0.1:26379/m/0")
PLAIN = RedisSettings.from_url("redis://127.0.0.1:7000/0")


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("NOSCRIPT No matching script. Please use EVAL.", Kind.SCRIPT_MISSING, None),
        ("LOADING Redis is loading the dataset in memory", Kind.NOT_READY, None),
        ("MASTERDOWN Link with MASTER is down", Kind.NOT_READY, None),
        ("TRYAGAIN Multiple keys request during rehashing of slot", Kind.NOT_READY, None),
        ("MOVED 3999 127.0.0.1:6381", Kind.MOVED, ("127.0.0.1", 6381)),
        ("ASK 3999 10.0.0.2:7002", Kind.ASK, ("10.0.0.2", 7002)),
        ("MOVED 3999 :6381", Kind.MOVED, None),  # no host: the slot map says where
        ("READONLY You can't write against a read only replica.", Kind.REFUSED, None),
        ("OOM command not allowed when used memory > 'maxmemory'.", Kind.REFUSED, None),
        ("ERR unknown command 'FOO'", Kind.REFUSED, None),
    ],
)
def test_each_error_reply_has_one_kind(
    text: str, kind: Kind, target: tuple[str, int] | None
) -> None:
    reply = classify(text)
    assert (reply.kind, reply.target, reply.text) == (kind, target, text)


def test_a_moved_sends_the_next_connection_there_and_then_back_to_the_slot_map() -> None:
    route = Route(CLUSTER)
    assert route.note(classify("MOVED 1 127.0.0.1:7001")) is True
    assert route.next_hop(100.0) == ("127.0.0.1", 7001) and not route.asking
    assert route.next_hop(101.0) is None  # the next connect after that: the slot map


def test_an_ask_opens_a_window_on_the_importing_node() -> None:
    route = Route(CLUSTER)
    assert route.note(classify("ASK 1 127.0.0.1:7002")) is True
    assert route.next_hop(100.0) == ("127.0.0.1", 7002)
    assert route.asking and not route.window_over(100.0 + ASKING_FOR / 2)
    assert route.window_over(100.0 + ASKING_FOR + 0.01)
    route.left()
    assert not route.asking and route.next_hop(102.0) is None


def test_redirects_count_only_on_a_cluster_and_readonly_only_under_sentinel() -> None:
    assert Route(PLAIN).note(classify("MOVED 1 127.0.0.1:7001")) is False
    assert Route(SENTINEL).note(classify("MOVED 1 127.0.0.1:7001")) is False
    assert Route(SENTINEL).note(classify("READONLY replica")) is True
    assert Route(CLUSTER).note(classify("READONLY replica")) is False
    assert Route(CLUSTER).finds_master and Route(SENTINEL).finds_master
    assert not Route(PLAIN).finds_master


def test_which_refusals_are_sent_again() -> None:
    moved = RedisRefusedError("a", "MOVED 1 127.0.0.1:7001")
    assert follow(moved, CLUSTER) and not follow(moved, PLAIN)
    assert follow(RedisRefusedError("a", "ASK 1 127.0.0.1:7001"), CLUSTER)
    assert not follow(RedisRefusedError("a", "OOM full"), CLUSTER)
    assert not follow(RedisUnavailableError("a", "gone"), CLUSTER)
    assert follow(CreateJobsError(moved, [], ["x"]), CLUSTER)
    assert not follow(CreateJobsError(moved, ["w"], ["x"]), CLUSTER)  # part written: no


def test_every_command_gets_an_asking_and_a_transaction_gets_one() -> None:
    commands = [
        pack("EVALSHA", "abc", 1, "queue:{p}.w:waiting", "x"),
        pack("MULTI"),
        pack("HSET", "job:{p}:1", "a", "1"),
        pack("RPUSH", "queue:{p}.w:waiting", "1"),
        pack("EXEC"),
        pack("LLEN", "queue:{p}.w:waiting"),
    ]
    sent, flags = with_asking(b"".join(commands))
    assert sent == b"".join([ASKING, commands[0], ASKING, *commands[1:5], ASKING, commands[5]])
    # replies: ASKING's before the EVALSHA's, the MULTI's and the LLEN's
    assert flags == [True, True, False, False, False, True]


def test_binary_values_with_crlf_inside_are_passed_through_whole() -> None:
    packed = pack("HSET", "job:{p}:1", "f", b"a\r\n*1\r\n$4\r\nPING\r\n")
    sent, flags = with_asking(packed)
    assert sent == ASKING + packed and flags == [True]


def test_a_transaction_discarded_for_a_redirect_raises_the_redirect() -> None:
    """A MULTI whose queued commands were answered ASK (the slot moving under it) is
    discarded whole by EXEC: the redirect is what is raised, so the call is sent again where
    it points, not reported as EXECABORT."""
    raised: list[str] = []

    def check(reply: object) -> object:
        if isinstance(reply, rex.ResponseError):
            raised.append(str(reply))
            raise RedisRefusedError("127.0.0.1:7000", str(reply))
        return reply

    request = Request([pack("MULTI"), pack("DEL", "a"), pack("EXEC")], check="last")
    ask = rex.ResponseError("ASK 3999 127.0.0.1:7002")
    aborted = rex.ResponseError("EXECABORT Transaction discarded because of previous errors.")
    with pytest.raises(RedisRefusedError):
        checked(request, [b"OK", ask, aborted], check)
    assert raised == ["ASK 3999 127.0.0.1:7002"]
    other = rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(RedisRefusedError):
        checked(request, [b"OK", other, aborted], check)  # not a redirect: EXECABORT
    assert raised[-1].startswith("EXECABORT")
    assert checked(request, [b"OK", b"QUEUED", [1]], check) == [b"OK", b"QUEUED", [1]]
