"""Reading what a worker function returned: its result fields as JSON, and where the job
goes next. Anything unusable raises (the loop counts it as a failed attempt of kind
``result``).

Two keys of a result are read and never stored, as the TypeScript library's workers return
them: ``nextQueue`` (where the job goes next) and ``done`` (a result's ``done`` is accepted
whatever its value; the job's own ``done`` is written by the completion when the job leaves
its flow, and at no other time: ``keys.is_reserved_in_result``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import codec
from ..definition import Stage
from ..settings import RedisSettings
from ..store import keys

__all__ = ["read_result"]

#: result keys read, never written as fields
_NOT_STORED = (keys.NEXT_QUEUE, keys.DONE)


def read_result(
    result: Any,
    stage: Stage,
    routes: Mapping[str, str],
    flow: str,
    redis: RedisSettings,
    renames: Mapping[str, str] | None = None,
) -> tuple[list[tuple[bytes, bytes]], str]:
    """The result's fields as JSON, and the waiting list the job goes to next (a result's
    ``nextQueue`` names a queue of ``routes``, else the stage's next queue); ``renames``:
    field names the user writes → the partition's own."""
    if not isinstance(result, Mapping):
        hint = " (return {} for no result fields)" if result is None else ""
        raise ValueError(
            f"worker function returned {type(result).__name__}, not a mapping of result "
            f"fields{hint}"
        )
    bad = [k for k in result if not isinstance(k, str)]
    if bad:
        raise ValueError(
            f"result field names must be strings, got {bad[0]!r} ({type(bad[0]).__name__})"
        )
    next_waiting = stage.next_waiting
    if result.get(keys.NEXT_QUEUE) is not None:
        name = result[keys.NEXT_QUEUE]
        if not isinstance(name, str) or name not in routes:
            raise ValueError(
                f"result nextQueue {name!r} is not a queue of flow {flow!r} "
                f"(its queues: {', '.join(routes)})"
            )
        next_waiting = routes[name]
    fields = {(renames or {}).get(k, k): v for k, v in result.items() if k not in _NOT_STORED}
    reserved = [k for k in fields if keys.is_reserved_in_result(k)]
    if reserved:
        raise ValueError(
            f"result field {reserved[0]!r} is procflow's bookkeeping; a worker function "
            "cannot set it"
        )
    return codec.encode_fields(fields, "result field", redis.max_value_bytes), next_waiting
