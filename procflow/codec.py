"""Job field encoding, exactly as JavaScript writes it.

Every job hash field holds the text ``JSON.stringify(value)`` would produce: compact
separators, UTF-8, no ASCII escaping, and numbers formatted the JavaScript way (``1.0`` is
``1``, ``1e-7`` is ``1e-7``, ``1e21`` is ``1e+21``). Lookup list names hold a value as
JavaScript's ``String(value)`` writes it. See docs/wire-format.md.

Three JavaScript rules need care beyond ``json.dumps``: numbers are doubles (so integers beyond
±(2**53 - 1) cannot be stored exactly and are refused, and floats are formatted as
``Number.prototype.toString`` does); object keys that are array indexes (``"0"``, ``"7"``,
``"10"``) come first, in ascending order; a lone UTF-16 surrogate in a string is escaped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import DecodeError, EncodeError

__all__ = [
    "decode",
    "decode_field",
    "encode",
    "encode_fields",
    "js_number",
    "js_string",
    "lookup_text",
    "lookup_texts",
]

_encode_str: Any = json.encoder.encode_basestring
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

#: Number.MAX_SAFE_INTEGER: larger integers lose precision in JavaScript
MAX_SAFE_INTEGER = 2**53 - 1
_MAX_INDEX = 2**32 - 2


def _is_index(key: str) -> bool:
    """An array-index key, which JavaScript objects list first, in ascending order."""
    return (
        key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX
    )


def _safe_int(value: int, where: str) -> str:
    """An integer's digits, when JavaScript (whose numbers are doubles) writes the same."""
    text = int.__repr__(value)
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return text
    try:
        as_js = js_number(float(value))
    except OverflowError:
        as_js = "Infinity" if value > 0 else "-Infinity"
    if as_js == text:  # the double holds the integer exactly and prints its digits
        return text
    raise EncodeError(
        where,
        f"the integer {value} cannot be stored as JavaScript stores numbers (it would read "
        f"{as_js}); store it as a string",
    )


def js_number(value: float) -> str:
    """``Number.prototype.toString()`` for a finite float."""
    if value == 0:
        return "0"  # JSON.stringify(-0) is "0" too
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    digits = (whole + fraction).lstrip("0")
    # position of the decimal point relative to the first significant digit
    point = len(whole) + (int(exponent) if exponent else 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    sign = "-" if value < 0 else ""
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exp = point - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if exp >= 0 else '-'}{abs(exp)}"


def _plain_float(value: float) -> bool:
    """True when Python's ``repr`` already equals JavaScript's text for this float."""
    if not math.isfinite(value):
        return False
    magnitude = abs(value)
    return not value.is_integer() and 1e-4 <= magnitude < 1e16


def _check(value: Any, where: str, depth: int) -> bool:
    """Raise EncodeError for what JSON cannot hold; return True if floats need JS formatting."""
    if depth > 500:
        raise EncodeError(where, "nested too deeply (a reference cycle?)")
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return False
    if isinstance(value, str | bool):
        return False
    if isinstance(value, int):
        _safe_int(value, where)
        return False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError(where, f"{value!r} is not a JSON number (JSON.stringify writes null)")
        return not _plain_float(value)
    special = False
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            special = _check(item, f"{where}[{index}]", depth + 1) or special
        return special
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodeError(
                    where, f"object key {key!r} is a {type(key).__name__}; JSON keys are strings"
                )
            special = _check(item, f"{where}.{key}", depth + 1) or special or _is_index(key)
        return special
    raise EncodeError(where, f"a {type(value).__name__} is not JSON-encodable ({value!r:.80})")


def _encode_js(value: Any) -> str:
    """Slow path: the whole value written with JavaScript number formatting."""
    if isinstance(value, str):
        return str(_encode_str(value))
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_js(item) for item in value) + "]"
    items = list(value.items())
    indexes = sorted((kv for kv in items if _is_index(kv[0])), key=lambda kv: int(kv[0]))
    if indexes:
        items = indexes + [kv for kv in items if not _is_index(kv[0])]
    return "{" + ",".join(f"{_encode_str(key)}:{_encode_js(item)}" for key, item in items) + "}"


def _utf8_safe(text: str) -> str:
    """The text with any lone surrogate escaped, so that it encodes to UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return _escape_surrogates(text)
    return text


def encode(value: Any, where: str = "value") -> str:
    """The JSON text ``JSON.stringify(value)`` writes, or EncodeError naming ``where``."""
    kind = type(value)
    if kind is str:
        return _utf8_safe(_encode_str(value))
    if kind is int:
        return _safe_int(value, where)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    try:
        if _check(value, where, 0):
            return _utf8_safe(_encode_js(value))
        return _utf8_safe(_dumps(value))
    except ValueError as exc:  # e.g. an int with more digits than Python will print
        raise EncodeError(where, str(exc)) from None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    """JSON.stringify escapes a lone UTF-16 surrogate as ``\\udXXX``; a pair is a character."""
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


#: the largest single value Redis takes by default (its ``proto-max-bulk-len``, 512 MiB)
MAX_VALUE_BYTES = 512 * 1024 * 1024


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def encode_fields(
    values: Mapping[str, Any], what: str = "option", max_bytes: int = MAX_VALUE_BYTES
) -> list[tuple[bytes, bytes]]:
    """Every field of a mapping as (name, JSON text) in UTF-8, ready to send; the first bad
    one raises before anything is written. A name or value longer than ``max_bytes`` (the
    server's ``proto-max-bulk-len``) is refused here, with its size, rather than by the
    server, which would drop the connection."""
    if not isinstance(values, Mapping):
        raise EncodeError(what + "s", f"expected a mapping, got a {type(values).__name__}")
    encoded: list[tuple[bytes, bytes]] = []
    for field, value in values.items():
        if not isinstance(field, str):
            raise EncodeError(what + "s", f"field name {field!r} is not a string")
        if not field:
            raise EncodeError(what + "s", "a field name is empty")
        try:
            name = field.encode()
        except UnicodeEncodeError:
            raise EncodeError(what + "s", f"field name {field!r} is not valid UTF-8") from None
        data = encode(value, f"{what} {field!r}").encode()
        for part, size in (("name", len(name)), ("value", len(data))):
            if size > max_bytes:
                raise EncodeError(
                    f"{what} {field!r}",
                    f"its {part} is {_size(size)} as JSON, over the {_size(max_bytes)} Redis "
                    "takes in one value (proto-max-bulk-len); store large data elsewhere and "
                    "put a reference in the job",
                )
        encoded.append((name, data))
    return encoded


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(raw: bytes | str) -> Any:
    """Parse stored JSON text (ValueError if it is not JSON, or nested deeper than Python's
    parser can go; NaN/Infinity are not JSON)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def decode_field(key: str, field: str, raw: bytes | str) -> Any:
    """Parse one stored field; a bad one raises DecodeError with the key, field and raw bytes."""
    try:
        return decode(raw)
    except ValueError as exc:
        data = raw if isinstance(raw, bytes) else raw.encode()
        raise DecodeError(key, field, data, str(exc)) from None


def js_string(value: Any) -> str:
    """``String(value)`` in JavaScript, for the value part of a lookup list name."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return js_number(value)
    if isinstance(value, list | tuple):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def lookup_text(value: Any) -> str:
    """The value part of a lookup list's name: ``String(value)``, sent as UTF-8 the way
    node-redis sends it (a lone surrogate becomes U+FFFD)."""
    text = js_string(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
            text = _LONE_SURROGATE.sub("\ufffd", text)
    return text


def lookup_texts(value: Any) -> Iterable[str]:
    """The lookup list values a job option yields: one for a string or number, one per
    element for a list, none for anything else (booleans, objects, null)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return (lookup_text(value),)
    if isinstance(value, list | tuple):
        return [lookup_text(item) for item in value]
    return ()
