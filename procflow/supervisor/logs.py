"""Worker logs travel to the supervisor whole: the supervisor's side.

The supervisor re-emits each record a worker sent (``procflow.worker.logs``) to its own
sinks with the worker's module, function and line (and its own clock's time). The re-emitted
record keeps its original module name, so ``logger.disable("procflow")`` in the supervisor
silences procflow's own lines but not the user's.
"""

from __future__ import annotations

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
