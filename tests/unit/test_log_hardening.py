"""Hardening of the log path: LineWriter is linear and bounded, log lines show any text
literally, and a bad Redis URL's error never shows the password.

Every test leaves loguru as it found it: it removes only the handlers it added, and
"procflow" disabled (as importing procflow leaves it)."""

from __future__ import annotations

import io
import math
import random
import re
import tracemalloc
from collections.abc import Iterator

import pytest
from loguru import logger

from procflow import ConfigurationError, RedisSettings
from procflow.supervisor.logs import format_line, reemit
from procflow.worker import logs as worker_logs
from procflow.worker.logs import LineWriter


@pytest.fixture
def handlers() -> Iterator[list[int]]:
    """Handler ids a test adds; removed afterwards, and "procflow" disabled again."""
    added: list[int] = []
    yield added
    for handler_id in added:
        logger.remove(handler_id)
    logger.disable("procflow")


@pytest.fixture
def messages(handlers: list[int]) -> list[str]:
    """The message of every record emitted from now on, at any level ("procflow" enabled:
    LineWriter.flush names itself, in procflow's module, as the record's origin)."""
    logger.enable("procflow")
    captured: list[str] = []
    handlers.append(
        logger.add(
            lambda m: captured.append(m.record["message"]), level=0, format="{message}", catch=False
        )
    )
    return captured


def writer(limit: int | None = None) -> LineWriter:
    w = LineWriter("stdout", "INFO")
    if limit is not None:
        w.max_line = limit
    return w


def expected_records(written: str, limit: int) -> list[str]:
    """What a LineWriter with ``limit`` emits for ``written`` followed by flush(): each line
    (without its newline) in pieces of ``limit`` characters; the unterminated rest likewise."""
    *lines, rest = written.split("\n")
    out: list[str] = []
    for line in lines:
        out.extend(line[i : i + limit] for i in range(0, max(len(line), 1), limit))
    out.extend(rest[i : i + limit] for i in range(0, len(rest), limit))
    return out


# -- 7. LineWriter: linear and bounded ---------------------------------------------------


def test_limit_is_64_kib_of_characters_and_documented() -> None:
    assert worker_logs.MAX_LINE == 64 * 1024
    assert LineWriter.max_line == worker_logs.MAX_LINE
    assert "64 KiB" in (LineWriter.__doc__ or "")


def test_content_is_preserved_exactly(messages: list[str]) -> None:
    rng = random.Random(7)
    alphabet = "ab\n\n€ {}<x>"
    written = "".join(rng.choice(alphabet) for _ in range(5000)) + "x" * 95 + "\n" + "y" * 40
    w = writer(limit=16)
    position = 0
    while position < len(written):
        size = rng.choice([1, 1, 2, 3, 7, 16, 17, 33, 200])
        chunk = written[position : position + size]
        assert w.write(chunk) == len(chunk)
        position += size
    w.flush()
    assert messages == expected_records(written, 16)
    assert "".join(messages) == written.replace("\n", "")
    assert max(len(m) for m in messages) <= 16


def test_no_record_is_longer_than_the_default_limit(messages: list[str]) -> None:
    limit = getattr(worker_logs, "MAX_LINE", 64 * 1024)
    written = "a" * (3 * limit + 5) + "\n" + "b" * limit + "\n" + "c" * (limit + 1)
    w = writer()
    for i in range(0, len(written), 10_000):
        w.write(written[i : i + 10_000])
    w.flush()
    assert all(len(m) <= limit for m in messages)
    assert messages == expected_records(written, limit)


def test_pending_text_never_exceeds_the_limit(messages: list[str]) -> None:
    w = writer(limit=100)
    for i in range(10_000):
        w.write("z\n" if i % 777 == 776 else "z")
        assert w.pending <= 100
    w.flush()
    assert w.pending == 0
    assert all(len(m) <= 100 for m in messages)


def test_small_writes_without_a_newline_emit_one_record_per_limit(messages: list[str]) -> None:
    total = 10_500
    w = writer(limit=1000)
    for _ in range(total):
        w.write("q")
    assert messages == ["q" * 1000] * 10  # emitted while writing, not held back
    w.flush()
    assert len(messages) == math.ceil(total / 1000)
    assert messages[-1] == "q" * 500


def test_a_line_of_exactly_the_limit_is_one_record(messages: list[str]) -> None:
    w = writer(limit=10)
    w.write("0123456789")
    w.write("\n")
    w.write("0123456789" * 2)
    w.flush()
    assert messages == ["0123456789"] * 3


def test_flush_emits_the_partial_rest(messages: list[str]) -> None:
    w = writer(limit=10)
    w.write("one\ntw")
    assert messages == ["one"]
    w.flush()
    assert messages == ["one", "tw"]
    w.flush()  # nothing pending: nothing emitted
    assert messages == ["one", "tw"]


def test_work_per_write_is_bounded_not_growing_with_the_output(messages: list[str]) -> None:
    """Deterministic linearity check (no clock): the memory each write allocates (copies it
    makes) must not grow with how much was written before. Writing 100 KB one character at a
    time, a buffer-rebuilding writer allocates a copy of everything so far on every write."""
    w = writer(limit=1000)
    tracemalloc.start()
    try:
        worst = 0
        for _ in range(100_000):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            w.write("w")
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
            assert worst < 32 * 1024, f"one write allocated {worst} bytes"
    finally:
        tracemalloc.stop()
    w.flush()
    assert len(messages) == 100 and set(messages) == {"w" * 1000}


# -- 14a. log lines show any text literally ------------------------------------------------

MARKUP = {"flow": "<red>x</red>", "queue": "<x>", "worker": "{w}", "pid": "</>", "job": "\\<b>"}


@pytest.mark.parametrize("colorize", [True, False])
def test_format_line_shows_markup_in_extra_literally(
    handlers: list[int], capsys: pytest.CaptureFixture[str], colorize: bool
) -> None:
    out = io.StringIO()
    handlers.append(logger.add(out, format=format_line, colorize=colorize, level="INFO"))
    logger.bind(**MARKUP).info("hello {}", "<blue>there</blue>")
    logger.bind(flow="a < b", queue="c > d", worker="\\\\<i>", job="<bg red>").info("second")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, out.getvalue()
    assert "flow=<red>x</red> queue=<x> worker={w} pid=</> job=\\<b>" in lines[0]
    assert "hello <blue>there</blue>" in lines[0]
    assert "flow=a < b queue=c > d worker=\\\\<i> job=<bg red>" in lines[1]
    assert ("\x1b[" in out.getvalue()) is colorize
    assert "Logging error" not in capsys.readouterr().err


TRICKY = [
    "<{j}>",
    "<a{>",
    "\\{<red>",
    "{<red>}",
    "{{<x>}}",
    "\\",
    "\\\\<red>",
    "<<red>>",
    "<red",
    "{time}",
    "<bg red>a</bg red>",
    "<level>",
    "a\\\\\\<b>c",
    "<>",
    "<lvl>\\",
]


@pytest.mark.parametrize("colorize", [True, False])
def test_format_line_shows_tricky_values_literally(
    handlers: list[int], capsys: pytest.CaptureFixture[str], colorize: bool
) -> None:
    """Braces next to or inside tags, backslashes before them, tags that are not tags."""
    out = io.StringIO()
    handlers.append(logger.add(out, format=format_line, colorize=colorize, level="INFO"))
    for value in TRICKY:
        logger.bind(flow=value, queue=value, worker="w").info("m")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().splitlines()]
    assert len(lines) == len(TRICKY), out.getvalue()
    for value, line in zip(TRICKY, lines, strict=True):
        assert f"flow={value} queue={value} worker=w | m" in line
    assert "Logging error" not in capsys.readouterr().err


def test_reemit_shows_markup_and_braces_in_a_workers_record_literally(
    handlers: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    handlers.append(logger.add(out, format=format_line, colorize=True, level="INFO"))
    reemit(
        {
            "level": "WARNING",
            "message": "{} {0} {x} <red>oops</red> </> <level>",
            "time": 0.0,
            "name": "tests.user_module",
            "function": "work",
            "line": 1,
            "extra": dict(MARKUP, stream="stdout"),
            "exception": 'Traceback:\n  File "x.py", line 1, in <module>\nValueError: {}',
        }
    )
    text = out.getvalue()
    assert "flow=<red>x</red> queue=<x> worker={w} pid=</> job=\\<b>" in text
    assert "{} {0} {x} <red>oops</red> </> <level>" in text
    assert "in <module>" in text and "ValueError: {}" in text
    assert "Logging error" not in capsys.readouterr().err


# -- 14b. a bad URL's error never shows the password ---------------------------------------


@pytest.mark.parametrize(
    ("url", "secrets", "shown"),
    [
        ("redis://u:Zq1@Zq2@host:x", ["Zq1", "Zq2"], "redis://u:***@host:x"),
        ("redis://u:Zq1@Zq2@Zq3@host/notadb", ["Zq1", "Zq2", "Zq3"], "@host/notadb"),
        ("redis://u:Zq1:Zq2@host:x", ["Zq1", "Zq2"], "redis://u:***@host:x"),
        ("redis://:Zq1@Zq2:Zq3@host/0?bogus=a@b", ["Zq1", "Zq2", "Zq3"], "@host/0?bogus=a@b"),
        ("REDIS://u:Zq1@Zq2@host:x", ["Zq1", "Zq2"], "@host:x"),
        ("rediss://user:Zq1@Zq2@host:6380/db", ["Zq1", "Zq2"], "rediss://user:***@host:6380"),
        ("unix://u:Zq1@Zq2@/tmp/redis.sock?db=x", ["Zq1", "Zq2"], "@/tmp/redis.sock?db=x"),
        ("unix://:Zq1@/tmp/redis.sock?bogus=1", ["Zq1"], "unix://:***@/tmp/redis.sock"),
        ("redis://u:@host:x", [], "redis://u:***@host:x"),
        ("redis://justuser@host:x", [], "redis://justuser@host:x"),
        ("redis://host:x", [], "redis://host:x"),
        ("unix:///tmp/s?db=x", [], "unix:///tmp/s?db=x"),
    ],
)
def test_bad_url_error_hides_the_whole_password(
    url: str, secrets: list[str], shown: str | None
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisSettings.from_url(url)
    message = str(info.value)
    for secret in secrets:
        assert secret not in message
    if shown is not None:
        assert shown in message


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://u:Zq1@Zq2@host/0", "Zq1@Zq2"),
        ("redis://:Zq1:Zq2@host:6400/1", "Zq1:Zq2"),
        ("rediss://user:Zq1%40Zq2@host", "Zq1@Zq2"),
        ("unix://u:Zq1@Zq2@/tmp/redis.sock?db=2", "Zq1@Zq2"),
    ],
)
def test_display_url_never_includes_the_password(url: str, password: str) -> None:
    settings = RedisSettings.from_url(url)
    assert settings.password == password
    for part in ("Zq1", "Zq2"):
        assert part not in settings.url
        assert part not in repr(settings)
