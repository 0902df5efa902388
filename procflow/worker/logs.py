"""Worker logs travel to the supervisor whole: the worker process's side.

In a worker process every loguru record (and every line written to stdout or stderr) goes to
the supervisor over the worker's pipe as one message (``("log", data)``); the supervisor
re-emits it (``procflow.supervisor.logs``). A record is never split, so lines from
different workers never interleave.
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

__all__ = ["LOG", "LineWriter", "PipeSink", "install_child_logging"]

#: the kind of a log message on the worker's pipe
LOG = "log"


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
            self.conn.send((LOG, data))


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
