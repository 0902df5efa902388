"""A subscription to a flow's ``done`` channel: the ids of jobs as they leave the flow.

The scripts that mark a job done PUBLISH its id. A subscriber misses what was published
while it was disconnected, so its users re-read the jobs now and then (``client/waiting.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex

from .. import codec
from ..errors import RedisUnavailableError
from ..settings import RedisSettings
from .connect import make_client

__all__ = ["DoneSubscription", "note_progress"]


def note_progress(progress: dict[str, float], data: bytes) -> None:
    """Fold one progress announcement into ``progress`` (job id → its last fraction, while
    its function runs): a report with a fraction sets it; the end of the function's run in
    a stage (``ended``) drops the job. The sync and async subscriptions read them alike."""
    try:
        report = codec.decode(data)
        job_id, fraction = str(report["id"]), report["fraction"]
        if report.get("ended"):
            progress.pop(job_id, None)
        elif fraction is not None:
            progress[job_id] = float(fraction)
    except (ValueError, KeyError, TypeError, AttributeError):  # not ours to read
        pass


class DoneSubscription:
    """Subscribed on ``open`` to ``channels`` (done channels); ``take`` returns the ids
    announced so far. With ``progress_channels``, the jobs' progress reports are followed
    too: ``progress`` holds the last fraction announced per job id."""

    def __init__(
        self,
        settings: RedisSettings,
        channels: Sequence[str],
        progress_channels: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.channels = list(channels)
        self.progress_channels = list(progress_channels)
        self._done = {c.encode() for c in self.channels}
        self.progress: dict[str, float] = {}
        # Any: redis-py annotates Redis.close and pubsub in some releases and not in others
        client: Any = make_client(
            settings,
            socket_timeout=settings.socket_timeout,
            health_check_interval=max(1.0, settings.socket_timeout / 2),
        )
        self._client = client
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        self._subscribed = False

    def open(self) -> DoneSubscription:
        try:
            self._pubsub.subscribe(*self.channels, *self.progress_channels)
        except rex.RedisError as exc:
            raise RedisUnavailableError(self.settings.address, exc) from None
        self._subscribed = True
        return self

    def take(self, timeout: float) -> list[str]:
        """Ids announced, waiting up to ``timeout`` seconds for the first. A broken
        connection raises RedisUnavailableError; the next call reconnects and subscribes
        again (what was announced meanwhile is lost)."""
        ids: list[str] = []
        if not self._subscribed:  # the server was away when the subscription began
            self.open()
        try:
            message = self._pubsub.get_message(timeout=max(0.0, timeout))
            while message is not None:
                if message.get("type") == "message":
                    if message["channel"] in self._done:
                        ids.append(message["data"].decode())
                    else:
                        note_progress(self.progress, message["data"])
                message = self._pubsub.get_message(timeout=0)
        except rex.RedisError as exc:
            raise RedisUnavailableError(self.settings.address, exc) from None
        return ids

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()

    def __enter__(self) -> DoneSubscription:
        """Subscribe now if the server answers; else the first ``take`` tries again."""
        with contextlib.suppress(RedisUnavailableError):
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
