"""A subscription to a flow's ``done`` channel: the ids of jobs as they leave the flow.

The scripts that mark a job done PUBLISH its id. A subscriber misses what was published
while it was disconnected, so its users re-read the jobs now and then (``waiting.py``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.exceptions as rex

from .. import codec
from ..errors import RedisUnavailableError
from ..settings import RedisSettings
from .connect import make_client

__all__ = ["DoneSubscription"]


class DoneSubscription:
    """Subscribed on ``open``; ``take`` returns the ids announced so far. With a
    ``progress_channel``, the jobs' progress reports are followed too: ``progress`` holds
    the last fraction announced per job id."""

    def __init__(
        self, settings: RedisSettings, channel: str, progress_channel: str | None = None
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.progress_channel = progress_channel
        self.progress: dict[str, float] = {}
        self._client = make_client(
            settings,
            socket_timeout=settings.socket_timeout,
            health_check_interval=max(1.0, settings.socket_timeout / 2),
        )
        # Any: PubSub is annotated in some redis-py releases and not in others
        client: Any = self._client
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        self._subscribed = False

    def open(self) -> DoneSubscription:
        channels = [self.channel, *([self.progress_channel] if self.progress_channel else [])]
        try:
            self._pubsub.subscribe(*channels)
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
                    if message["channel"] == self.channel.encode():
                        ids.append(message["data"].decode())
                    else:
                        self._note_progress(message["data"])
                message = self._pubsub.get_message(timeout=0)
        except rex.RedisError as exc:
            raise RedisUnavailableError(self.settings.address, exc) from None
        return ids

    def _note_progress(self, data: bytes) -> None:
        try:
            report = codec.decode(data)
            fraction = report["fraction"]
            if fraction is not None:
                self.progress[str(report["id"])] = float(fraction)
        except (ValueError, KeyError, TypeError):  # someone else's message: not ours to read
            pass

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
