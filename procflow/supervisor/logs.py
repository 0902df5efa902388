"""Worker logs travel to the supervisor whole.

In a worker process every loguru record (and every line written to stdout or stderr) goes to
the supervisor over the worker's pipe as one message; the supervisor re-emits it to its own
sinks with the worker's module, function and line (and its own clock's time). A record is
never split, so lines from different workers never interleave. The re-emitted record keeps
its original module name, so ``logger.disable("procflow")`` in the supervisor silences
procflow's own lines but not the user's.
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["LineWriter", "PipeSink", "format_line", "install_child_logging", "reemit"]


def _safe(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class PipeSink:
    """A loguru sink in a worker process: the record, as plain data, onto the pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __call__(self, message: Message) -> None:
        r = message.record
        exc_text = None
        if r["exception"] is not None:
            kind, value, tb = r["exception"]
            exc_text = "".join(traceback.format_exception(kind, value, tb))
        data = {
            "level": r["level"].name,
            "message": r["message"],
            "time": r["time"].timestamp(),
            "name": r["name"],
            "function": r["function"],
            "line": r["line"],
            "extra": {k: _safe(v) for k, v in r["extra"].items()},
            "exception": exc_text,
        }
        with contextlib.suppress(OSError, ValueError):  # the supervisor is gone: nobody to tell
            self.conn.send(("log", data))


class LineWriter(io.TextIOBase):
    """Replaces sys.stdout / sys.stderr in a worker: complete lines become log records."""

    def __init__(self, stream: str, level: str) -> None:
        self.stream = stream
        self.level = level
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        if "\n" in self._buffer:
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                logger.bind(stream=self.stream).opt(depth=1).log(self.level, "{}", line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            logger.bind(stream=self.stream).log(self.level, "{}", line)


def install_child_logging(conn: Connection, level: str, **extra: Any) -> None:
    """In a new worker process: drop the inherited sinks, send records to the supervisor,
    turn stdout and stderr into records too."""
    logger.remove()
    logger.configure(extra=extra)
    logger.add(PipeSink(conn), level=level, format="{message}", backtrace=False, diagnose=False)
    logger.enable("procflow")
    sys.stdout = LineWriter("stdout", "INFO")
    sys.stderr = LineWriter("stderr", "WARNING")


_emitters: dict[str, Any] = {}


def _emitter(module: str) -> Any:
    """A function whose module name is ``module``: loguru's enable/disable sees the record's
    original module, not this one."""
    emit = _emitters.get(module)
    if emit is None:
        namespace: dict[str, Any] = {"__name__": module}
        exec("def emit(lg, level, text):\n    lg.log(level, text)\n", namespace)
        emit = _emitters[module] = namespace["emit"]
    return emit


def reemit(data: dict[str, Any]) -> None:
    """Emit a record received from a worker through this process's sinks."""

    def patch(record: Any) -> None:
        record["function"] = data["function"]
        record["line"] = data["line"]

    text = data["message"]
    if data.get("exception"):
        text = f"{text}\n{data['exception'].rstrip()}"
    level = data["level"]
    try:
        logger.level(level)
    except ValueError:
        level = "INFO"
    lg = logger.patch(patch).bind(**data["extra"]).opt(depth=0)
    _emitter(data["name"] or "procflow.worker")(lg, level, text)


def format_line(record: Any) -> str:
    """The supervisor's log format: time, level, then flow/queue/worker/pid/job where known."""
    extra = record["extra"]
    parts = []
    for name in ("flow", "queue", "worker", "pid", "job"):
        if name in extra and extra[name] not in (None, ""):
            parts.append(f"{name}={extra[name]}")
    where = " ".join(parts)
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        + where.replace("{", "{{").replace("}", "}}")
        + (" | " if where else "")
        + "<level>{message}</level>\n{exception}"
    )
