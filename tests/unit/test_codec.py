"""Field encoding must match JavaScript's JSON.stringify byte for byte. The expected texts
below were produced by Node 20 (JSON.stringify and template strings)."""

from __future__ import annotations

import json
import math

import pytest

from procflow import EncodeError
from procflow.codec import (
    decode_field,
    encode,
    encode_fields,
    js_number,
    js_string,
    lookup_text,
    lookup_texts,
)
from procflow.errors import DecodeError

# [value, JSON.stringify(value)] from Node 20
JS_FLOATS = [
    (0.1, "0.1"),
    (1.5, "1.5"),
    (-2.25, "-2.25"),
    (1e-7, "1e-7"),
    (0.0000015, "0.0000015"),
    (123.456, "123.456"),
    (1e21, "1e+21"),
    (1e20, "100000000000000000000"),
    (1.2345678901234568e20, "123456789012345680000"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (0.000123, "0.000123"),
    (1e-4, "0.0001"),
    (123456789.125, "123456789.125"),
    (-0.0, "0"),
    (2.0, "2"),
    (100.0, "100"),
    (1e16, "10000000000000000"),
    (3.14159, "3.14159"),
    (0.30000000000000004, "0.30000000000000004"),
    (-1e-10, "-1e-10"),
    (4.35e-5, "0.0000435"),
]


@pytest.mark.parametrize(("value", "expected"), JS_FLOATS)
def test_floats_are_written_as_javascript_writes_them(value: float, expected: str) -> None:
    assert js_number(value) == expected
    assert encode(value) == expected
    assert encode([value]) == f"[{expected}]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("joe", '"joe"'),
        ("héllo wörld ✓", '"héllo wörld ✓"'),
        ({"a": 1, "b": [1, 2, {"c": None}]}, '{"a":1,"b":[1,2,{"c":null}]}'),
        ([1, "x", True, None], '[1,"x",true,null]'),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ('quote"back\\slash\nnl\ttab', '"quote\\"back\\\\slash\\nnl\\ttab"'),
        ("\u0001ctl", '"\\u0001ctl"'),
        ("emoji 😀", '"emoji 😀"'),
        ("\u2028sep", '"\u2028sep"'),
        ({"nested": {"deep": [1.0, 2.5, 1e-7]}}, '{"nested":{"deep":[1,2.5,1e-7]}}'),
        (62, "62"),
        (-7, "-7"),
        (2**53, "9007199254740992"),
        (-(2**53), "-9007199254740992"),
        ((1, 2), "[1,2]"),
    ],
)
def test_values_match_json_stringify(value: object, expected: str) -> None:
    assert encode(value) == expected


@pytest.mark.parametrize("value", [2**53 + 1, 2**60, 10**21, -(10**30), 10**400, [1, 2**63]])
def test_integers_javascript_would_change_are_refused(value: object) -> None:
    # JavaScript reads 2**60 as 1152921504606847000 and writes 10**21 as 1e+21 (Node 20)
    with pytest.raises(EncodeError, match="cannot be stored as JavaScript stores numbers"):
        encode_fields({"n": value})


def test_integer_like_object_keys_come_first_as_in_javascript() -> None:
    # JSON.stringify({b: 1, 10: 2, 2: 3}) in Node 20
    assert encode({"b": 1, "10": 2, "2": 3}) == '{"2":3,"10":2,"b":1}'
    assert encode({"b": 1, "02": 2, "-1": 3, "4294967295": 4}) == (
        '{"b":1,"02":2,"-1":3,"4294967295":4}'
    )  # not array indexes: insertion order
    assert encode({"x": {"1": "a", "0": "b"}}) == '{"x":{"0":"b","1":"a"}}'


def test_lookup_text_of_a_lone_surrogate_is_what_node_redis_sends() -> None:
    assert lookup_text("\ud800x") == "\ufffdx"


def test_lone_surrogates_are_escaped_like_javascript() -> None:
    assert encode_fields({"s": "a\ud800b"}) == [(b"s", b'"a\\ud800b"')]
    # a surrogate pair is one character, written as such
    assert encode_fields({"s": "\ud83d\ude00"}) == [(b"s", '"😀"'.encode())]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1, 2}, "set is not JSON-encodable"),
        (b"raw", "bytes is not JSON-encodable"),
        (object(), "object is not JSON-encodable"),
        (math.nan, "not a JSON number"),
        (math.inf, "not a JSON number"),
        ({"x": [1, {2}]}, "set is not JSON-encodable"),
        ({1: "a"}, "JSON keys are strings"),
    ],
)
def test_unencodable_values_name_the_problem(value: object, problem: str) -> None:
    with pytest.raises(EncodeError, match=problem):
        encode_fields({"field": value})


def test_error_names_the_path_inside_the_value() -> None:
    with pytest.raises(EncodeError) as info:
        encode_fields({"opts": {"list": [1, 2, {3}]}})
    assert "option 'opts'.list[2]" in str(info.value)


def test_reference_cycle_is_an_encode_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="nested too deeply"):
        encode(loop)


def test_field_names_must_be_non_empty_strings() -> None:
    with pytest.raises(EncodeError, match="not a string"):
        encode_fields({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(EncodeError, match="empty"):
        encode_fields({"": 1})
    with pytest.raises(EncodeError, match="expected a mapping"):
        encode_fields([("a", 1)])  # type: ignore[arg-type]


def test_decode_roundtrip_and_errors() -> None:
    for value, text in JS_FLOATS:
        assert decode_field("k", "f", text.encode()) == pytest.approx(value)
    assert decode_field("k", "f", b'{"a":[1,"\xc3\xa9"]}') == {"a": [1, "é"]}
    with pytest.raises(DecodeError) as info:
        decode_field("job:F:1", "userId", b"not json")
    assert info.value.key == "job:F:1"
    assert info.value.field == "userId"
    assert info.value.raw == b"not json"
    assert "b'not json'" in str(info.value)
    with pytest.raises(DecodeError):
        decode_field("k", "f", b"NaN")  # JSON.parse rejects it too


# `${v}` for each element, from Node 20
def test_lookup_text_is_javascript_string_conversion() -> None:
    values = [1, "a", True, None, 2.5, [1, 2], {"x": 1}, 1e21]
    assert [js_string(v) for v in values] == [
        "1",
        "a",
        "true",
        "null",
        "2.5",
        "1,2",
        "[object Object]",
        "1e+21",
    ]


def test_lookup_texts_follow_the_typescript_rules() -> None:
    assert list(lookup_texts("joe")) == ["joe"]
    assert list(lookup_texts(62)) == ["62"]
    assert list(lookup_texts(2.0)) == ["2"]
    assert list(lookup_texts([1, 2, "x"])) == ["1", "2", "x"]
    for ignored in (True, False, None, {"a": 1}):
        assert list(lookup_texts(ignored)) == []


def test_fast_and_slow_paths_agree_with_json_module_where_python_matches_js() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": "é"}}
    assert encode(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
