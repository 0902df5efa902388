"""Worker logs travel to the supervisor whole: the supervisor's side.

The supervisor re-emits each record a worker sent (``procflow.worker.logs``) to its own
sinks with the worker's module, function and line (and its own clock's time). The re-emitted
record keeps its original module name, so ``logger.disable("procflow")`` in the supervisor
silences procflow's own lines but not the user's.
"""

from __future__ import annotations

import re
from typing import Any

from loguru import logger

__all__ = ["format_line", "reemit"]


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


#: what loguru's colorizer takes for a markup tag (``<red>``, ``</>``, ``<bg red>``), with the
#: backslashes before it: loguru's own pattern (an odd number of backslashes escapes the tag),
#: except that a tag never holds a brace (loguru looks for tags between the format's fields
#: and ``{{``/``}}``, so ``<{x}>`` is no tag and needs no escaping)
_TAG = re.compile(r"(\\*)(</?(?:[fb]g\s)?[^<>\s{}]*>)")


def _literal(value: Any) -> str:
    """``value`` as text that a loguru format string shows as is: braces doubled, every
    markup tag escaped with a backslash (and the backslashes before it doubled)."""
    text = str(value).replace("{", "{{").replace("}", "}}")
    return _TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def format_line(record: Any) -> str:
    """The supervisor's log format: time, level, then flow/queue/worker/pid/job where known.

    Those values go into the format string itself, so they are escaped to show literally
    whatever they hold (``{}``, ``<red>``, ``</>``); the message is a field of the format,
    never parsed for markup."""
    extra = record["extra"]
    parts = []
    for name in ("flow", "queue", "worker", "pid", "job"):
        if name in extra and extra[name] not in (None, ""):
            parts.append(f"{name}={_literal(extra[name])}")
    where = " ".join(parts)
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        + where
        + (" | " if where else "")
        + "<level>{message}</level>\n{exception}"
    )
