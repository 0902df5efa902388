"""The done hub of ``procflow.aio`` (``client/aio.py``): one subscription to a flow's (or a
partition's) ``procflow:F:done`` shared by every ``wait`` of an AsyncFlow (a second one, with
the progress channel, for the waits that show progress)."""

from __future__ import annotations

import asyncio

from ..errors import RedisRefusedError, RedisUnavailableError
from ..store.aio import AsyncStore

__all__ = ["DoneHub", "Waiter"]

#: the hub's longest reconnect back-off (seconds)
_MAX_BACKOFF = 2.0


class Waiter:
    """One ``wait`` call's share of the hub: the ids it waits for, those announced since it
    last looked (and their progress reports), and what the hub has to tell it. A wait on
    several partitions gives its waiters one ``event``."""

    __slots__ = ("arrived", "event", "ids", "problem", "ready", "recheck", "reports")

    def __init__(
        self, ids: set[str], loop: asyncio.AbstractEventLoop, event: asyncio.Event | None = None
    ) -> None:
        self.ids = ids
        self.arrived: set[str] = set()
        self.reports: dict[str, float] = {}
        self.event = event or asyncio.Event()
        #: resolved once the hub is subscribed (or fails with the error of its first try)
        self.ready: asyncio.Future[None] = loop.create_future()
        #: the subscription was lost (re-read now: announcements are missed meanwhile)
        self.problem: BaseException | None = None
        #: subscribed again after an outage (re-read now)
        self.recheck = False


class DoneHub:
    """One subscription to ``procflow:F:done`` shared by every ``wait`` of an AsyncFlow: a
    web app with a thousand requests waiting holds one subscriber connection, and each id
    announced goes to the waits that want it. The hub runs while some wait is waiting;
    after an outage it subscribes again with back-off and tells the waits to re-read."""

    def __init__(self, store: AsyncStore, flow: str, progress: bool = False) -> None:
        self._store = store
        self._flow = flow
        self._progress = progress
        self._waiters: set[Waiter] = set()
        self._by_id: dict[str, list[Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False

    def join(self, ids: set[str], event: asyncio.Event | None = None) -> Waiter:
        waiter = Waiter(ids, self._store.loop, event)
        self._waiters.add(waiter)
        for job_id in ids:
            self._by_id.setdefault(job_id, []).append(waiter)
        if self._subscribed:
            waiter.ready.set_result(None)
        if self._task is None or self._task.done():
            self._task = self._store.loop.create_task(self._run())
        return waiter

    def leave(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)
        for job_id in waiter.ids:
            waiting = self._by_id.get(job_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self._by_id[job_id]
        if not self._waiters:
            self.close()

    def close(self) -> None:
        """Stop the subscription (the next ``join`` starts it again)."""
        task, self._task = self._task, None
        self._subscribed = False
        if task is not None and self._store.loop.is_running():
            task.cancel()

    def _tell(self, problem: BaseException) -> None:
        for waiter in self._waiters:
            if not waiter.ready.done():
                waiter.ready.set_exception(problem)  # a wait that has not begun: it raises
            else:
                waiter.problem = problem
                waiter.event.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:  # until close() cancels it
            subscription = self._store.subscribe_done(self._flow, self._progress)
            try:
                await subscription.open()
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self._tell(exc)
                await asyncio.sleep(delay)
                delay = min(_MAX_BACKOFF, delay * 2)
                continue
            delay = 0.1
            self._subscribed = True
            for waiter in self._waiters:
                if waiter.ready.done():
                    waiter.recheck = True
                    waiter.event.set()
                else:
                    waiter.ready.set_result(None)
            try:
                while True:
                    for job_id in await subscription.messages():
                        for waiter in self._by_id.get(job_id, ()):
                            waiter.arrived.add(job_id)
                            waiter.event.set()
                    reports, subscription.reports = subscription.reports, {}
                    for job_id, fraction in reports.items():
                        for waiter in self._by_id.get(job_id, ()):
                            waiter.reports[job_id] = fraction
            except (RedisUnavailableError, RedisRefusedError) as exc:
                self._subscribed = False
                self._tell(exc)
            finally:
                subscription.close()
