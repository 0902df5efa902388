"""What the wire sends to a slot's importing node after an ASK: an ASKING before each
command, one before a MULTI for its whole transaction."""

from __future__ import annotations

from procflow.store.wire import _ASKING, pack, with_asking


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
    assert sent == b"".join([_ASKING, commands[0], _ASKING, *commands[1:5], _ASKING, commands[5]])
    # replies: ASKING's before the EVALSHA's, the MULTI's and the LLEN's
    assert flags == [True, True, False, False, False, True]


def test_binary_values_with_crlf_inside_are_passed_through_whole() -> None:
    packed = pack("HSET", "job:{p}:1", "f", b"a\r\n*1\r\n$4\r\nPING\r\n")
    sent, flags = with_asking(packed)
    assert sent == _ASKING + packed and flags == [True]
