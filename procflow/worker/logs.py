"""Worker logs travel to the supervisor whole: the worker process's side.

In a worker process every loguru record (and every line written to stdout or stderr) goes to
the supervisor over the worker's pipe as one message (``("log", data)``); the supervisor
re-emits it (``procflow.supervisor.logs``). A record is never split, so lines from
different workers never interleave (a stdout/stderr line longer than :data:`MAX_LINE`
characters is sent as several records, see ``LineWriter``).
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

__all__ = ["LOG", "MAX_LINE", "LineWriter", "PipeSink", "install_child_logging"]

#: the kind of a log message on the worker's pipe
LOG = "log"

#: the longest record a LineWriter emits, in characters (64 KiB of them); longer lines are
#: split into pieces of this size, so a writer never holds more than this much text
MAX_LINE = 64 * 1024

#: pending pieces of one line before a LineWriter joins them into one (bounds the per-piece
#: overhead of many tiny writes; each join copies at most MAX_LINE characters)
_MAX_PIECES = 1024


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
    """Replaces sys.stdout / sys.stderr in a worker: complete lines become log records.

    Linear and bounded: each write looks for newlines only in the text it is given, and the
    unterminated rest of a line waits as a list of pieces joined once, when the line is
    emitted. A line longer than :attr:`max_line` characters (:data:`MAX_LINE`, 64 KiB of
    characters) is emitted in pieces of exactly ``max_line`` characters as it accumulates,
    the last piece when its newline comes (or at ``flush``), so at most ``max_line``
    characters ever wait in a writer. The pieces of a split line carry no newline between
    them: joining a writer's records with the newlines that ended lines gives back exactly
    what was written."""

    #: the longest record a writer emits, in characters (a longer line is split)
    max_line: int = MAX_LINE

    def __init__(self, stream: str, level: str) -> None:
        self.stream = stream
        self.level = level
        self._pieces: list[str] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        """How many characters of an unterminated line wait to be emitted."""
        return self._pending

    def writable(self) -> bool:
        return True

    def _add(self, piece: str) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        self._pending += len(piece)
        if len(self._pieces) > _MAX_PIECES:  # many tiny writes: keep the overhead bounded too
            self._pieces = ["".join(self._pieces)]

    def _take(self) -> str:
        line = "".join(self._pieces)
        self._pieces = []
        self._pending = 0
        return line

    def _emit(self, line: str, up: int) -> None:
        """One record naming the code ``up`` frames above _emit (fewer when there are no
        such Python frames, as when the interpreter itself flushes at exit)."""
        depth, frame = 0, sys._getframe()
        while depth < up and frame.f_back is not None:
            depth, frame = depth + 1, frame.f_back
        logger.bind(stream=self.stream).opt(depth=depth).log(self.level, "{}", line)

    def write(self, text: str) -> int:
        limit = max(1, self.max_line)
        start, end_of_text = 0, len(text)
        while True:
            newline = text.find("\n", start)
            end = end_of_text if newline < 0 else newline
            # text[start:end] continues the pending line: emit it in full pieces of `limit`
            # characters while it does not fit
            while end - start > (room := max(0, limit - self._pending)):
                cut = start + room
                self._add(text[start:cut])
                start = cut
                self._emit(self._take(), up=2)  # named as the code that wrote
            self._add(text[start:end])
            if newline < 0:
                return end_of_text
            self._emit(self._take(), up=2)
            start = newline + 1

    def flush(self) -> None:
        if self._pieces:
            self._emit(self._take(), up=2)  # named as the code that flushed


def install_child_logging(conn: Connection, level: str, **extra: Any) -> None:
    """In a new worker process: drop the inherited sinks, send records to the supervisor,
    turn stdout and stderr into records too."""
    logger.remove()
    logger.configure(extra=extra)
    logger.add(PipeSink(conn), level=level, format="{message}", backtrace=False, diagnose=False)
    logger.enable("procflow")
    sys.stdout = LineWriter("stdout", "INFO")
    sys.stderr = LineWriter("stderr", "WARNING")
