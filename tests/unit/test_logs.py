"""Worker log records travel whole over the worker's pipe and are re-emitted by the
supervisor; all in one process here. Every test leaves loguru as it found it: it removes only
the handlers it added, and "procflow" disabled (as importing procflow leaves it)."""

from __future__ import annotations

import inspect
import io
import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from procflow.supervisor.logs import format_line, reemit
from procflow.worker.logs import LOG, LineWriter, PipeSink


@pytest.fixture
def handlers() -> Iterator[list[int]]:
    """Handler ids a test adds; removed afterwards, and "procflow" disabled again."""
    added: list[int] = []
    yield added
    for handler_id in added:
        logger.remove(handler_id)
    logger.disable("procflow")


@pytest.fixture
def records(handlers: list[int]) -> list[dict[str, Any]]:
    """Every record the global logger emits from now on, at any level."""
    captured: list[dict[str, Any]] = []
    handlers.append(
        logger.add(lambda m: captured.append(m.record), level=0, format="{message}", catch=False)
    )
    return captured


@pytest.fixture
def pipe(handlers: list[int]) -> Iterator[tuple[Any, Any]]:
    """(receiving end, sending end) with a PipeSink on the sending end."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    handlers.append(logger.add(PipeSink(sender), level=0, format="{message}", catch=False))
    yield receiver, sender
    receiver.close()
    sender.close()


def received(receiver: Any) -> list[Any]:
    out = []
    while receiver.poll(0):
        out.append(receiver.recv())
    return out


# -- the worker's side: PipeSink -----------------------------------------------------------


def test_a_record_arrives_whole_with_where_it_was_logged(pipe: tuple[Any, Any]) -> None:
    receiver, _ = pipe
    line = inspect.currentframe().f_lineno + 1
    logger.warning("hello {}", "world")

    (message,) = received(receiver)
    kind, data = message
    assert kind == LOG == "log"
    assert data["level"] == "WARNING"
    assert data["message"] == "hello world"
    assert data["name"] == __name__
    assert data["function"] == "test_a_record_arrives_whole_with_where_it_was_logged"
    assert data["line"] == line
    assert data["exception"] is None
    assert isinstance(data["time"], float)


def test_extras_that_are_not_plain_values_travel_as_text(pipe: tuple[Any, Any]) -> None:
    receiver, _ = pipe

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    logger.bind(
        text="x", number=3, ratio=1.5, flag=True, nothing=None, thing=Thing(), items=[1, 2]
    ).info("with extras")

    ((_, data),) = received(receiver)
    assert data["extra"] == {
        "text": "x",
        "number": 3,
        "ratio": 1.5,
        "flag": True,
        "nothing": None,
        "thing": "a thing",
        "items": "[1, 2]",
    }


def test_an_exception_travels_as_its_formatted_traceback(pipe: tuple[Any, Any]) -> None:
    receiver, _ = pipe
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("it broke")

    ((_, data),) = received(receiver)
    assert data["level"] == "ERROR"
    assert data["message"] == "it broke"
    assert data["exception"].startswith("Traceback (most recent call last)")
    assert "ZeroDivisionError: division by zero" in data["exception"]


def test_each_record_is_one_message(pipe: tuple[Any, Any]) -> None:
    receiver, _ = pipe
    logger.info("one")
    logger.info("two\nlines")
    logger.info("three")
    assert [data["message"] for _, data in received(receiver)] == ["one", "two\nlines", "three"]


def test_a_sink_whose_pipe_is_closed_drops_the_record_quietly(pipe: tuple[Any, Any]) -> None:
    _, sender = pipe
    sender.close()
    logger.info("nobody listens")  # the sink was added with catch=False: an error would raise


# -- the worker's side: LineWriter -----------------------------------------------------------


def test_a_partial_write_waits_for_its_newline(records: list[dict[str, Any]]) -> None:
    writer = LineWriter("stdout", "INFO")
    assert writer.write("hel") == 3
    assert records == []
    assert writer.write("lo\n") == 3
    assert [r["message"] for r in records] == ["hello"]
    assert records[0]["level"].name == "INFO"
    assert records[0]["extra"]["stream"] == "stdout"


def test_several_lines_in_one_write_become_several_records(
    records: list[dict[str, Any]],
) -> None:
    writer = LineWriter("stderr", "WARNING")
    writer.write("one\ntwo\n\nthree\nfour")
    assert [r["message"] for r in records] == ["one", "two", "", "three"]
    assert {r["level"].name for r in records} == {"WARNING"}
    assert {r["extra"]["stream"] for r in records} == {"stderr"}


def test_flush_emits_what_is_left_and_nothing_when_nothing_is(
    records: list[dict[str, Any]],
) -> None:
    logger.enable("procflow")
    writer = LineWriter("stdout", "INFO")
    writer.write("done\nleft")
    writer.flush()
    assert [r["message"] for r in records] == ["done", "left"]
    writer.flush()
    assert len(records) == 2


def test_braces_in_a_line_are_not_taken_as_a_format(records: list[dict[str, Any]]) -> None:
    writer = LineWriter("stdout", "INFO")
    writer.write("{not a field} {0}\n")
    assert [r["message"] for r in records] == ["{not a field} {0}"]


def test_printed_lines_are_logged_as_the_printing_code(records: list[dict[str, Any]]) -> None:
    logger.disable("procflow")
    writer = LineWriter("stdout", "INFO")
    print("from user code", file=writer)
    assert [r["message"] for r in records] == ["from user code"]
    assert records[0]["name"] == __name__
    assert records[0]["function"] == "test_printed_lines_are_logged_as_the_printing_code"


def test_a_flushed_unterminated_line_is_logged_as_the_printing_code(
    records: list[dict[str, Any]],
) -> None:
    logger.disable("procflow")
    writer = LineWriter("stdout", "INFO")
    print("no newline", end="", file=writer, flush=True)
    assert [r["message"] for r in records] == ["no newline"]
    assert records[0]["name"] == __name__


# -- the supervisor's side: reemit -------------------------------------------------------------


def worker_record(**overrides: Any) -> dict[str, Any]:
    data = {
        "level": "INFO",
        "message": "from the worker",
        "time": 0.0,
        "name": "usercode",
        "function": "work",
        "line": 42,
        "extra": {"queue": "q", "worker": "q#0", "pid": 7},
        "exception": None,
    }
    data.update(overrides)
    return data


def test_a_reemitted_record_keeps_the_workers_module_function_line_and_extra(
    records: list[dict[str, Any]],
) -> None:
    reemit(worker_record(level="WARNING"))
    (record,) = records
    assert record["message"] == "from the worker"
    assert record["level"].name == "WARNING"
    assert record["name"] == "usercode"
    assert record["function"] == "work"
    assert record["line"] == 42
    assert record["extra"] == {"queue": "q", "worker": "q#0", "pid": 7}


def test_disabling_procflow_silences_procflows_worker_lines_but_not_the_users(
    records: list[dict[str, Any]],
) -> None:
    logger.disable("procflow")
    reemit(worker_record(name="procflow.worker.loop", message="procflow's own"))
    reemit(worker_record(name="usercode", message="the user's"))
    assert [r["message"] for r in records] == ["the user's"]


def test_enabling_procflow_lets_its_worker_lines_through(records: list[dict[str, Any]]) -> None:
    logger.enable("procflow")
    reemit(worker_record(name="procflow.worker.loop", message="procflow's own"))
    assert [(r["name"], r["message"]) for r in records] == [
        ("procflow.worker.loop", "procflow's own")
    ]


def test_a_level_the_supervisor_does_not_know_falls_back_to_info(
    records: list[dict[str, Any]],
) -> None:
    reemit(worker_record(level="NOTICE_FROM_A_PLUGIN"))
    assert [r["level"].name for r in records] == ["INFO"]


def test_a_reemitted_exception_is_appended_to_the_message(
    records: list[dict[str, Any]],
) -> None:
    tb = "Traceback (most recent call last):\n  ...\nValueError: bad\n"
    reemit(worker_record(level="ERROR", message="it broke", exception=tb))
    assert records[0]["message"] == "it broke\n" + tb.rstrip()


def test_braces_in_a_reemitted_message_are_kept_as_they_are(
    records: list[dict[str, Any]],
) -> None:
    reemit(worker_record(message="value {x} and {}"))
    assert records[0]["message"] == "value {x} and {}"


def test_a_record_without_a_module_name_is_reemitted_as_procflows_worker(
    records: list[dict[str, Any]],
) -> None:
    logger.enable("procflow")
    reemit(worker_record(name=None))
    assert records[0]["name"] == "procflow.worker"


# -- the supervisor's format -----------------------------------------------------------------


def formatted(handlers: list[int], extra: dict[str, Any], message: str = "hello") -> str:
    out = io.StringIO()
    handlers.append(logger.add(out, format=format_line, colorize=False, catch=False))
    logger.bind(**extra).info(message)
    return out.getvalue()


def test_the_format_names_flow_queue_worker_pid_and_job_in_that_order(
    handlers: list[int],
) -> None:
    line = formatted(
        handlers, {"job": "j1", "pid": 7, "worker": "q#0", "queue": "q", "flow": "F", "x": 1}
    )
    assert " | INFO    | flow=F queue=q worker=q#0 pid=7 job=j1 | hello\n" in line
    assert "x=1" not in line


def test_the_format_leaves_out_missing_and_empty_names(handlers: list[int]) -> None:
    line = formatted(handlers, {"queue": "q", "job": "", "pid": None})
    assert line.endswith(" | INFO    | queue=q | hello\n")
    assert "job=" not in line and "pid=" not in line


def test_without_any_names_the_format_has_no_empty_column(handlers: list[int]) -> None:
    line = formatted(handlers, {})
    assert line.endswith(" | INFO    | hello\n")


def test_braces_in_extra_values_do_not_break_the_format(handlers: list[int]) -> None:
    line = formatted(handlers, {"queue": "a{b}c", "job": "{0}"})
    assert "queue=a{b}c job={0} | hello\n" in line


def test_format_line_escapes_braces_for_loguru() -> None:
    fmt = format_line({"extra": {"queue": "a{b}c"}})
    assert "queue=a{{b}}c" in fmt


def test_angle_brackets_in_extra_values_do_not_break_the_format(handlers: list[int]) -> None:
    line = formatted(handlers, {"queue": "a<red>c"})
    assert "queue=a<red>c | hello\n" in line
