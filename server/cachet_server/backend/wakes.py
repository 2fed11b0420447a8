"""Waking local waiters from Redis pub/sub: one pattern subscription per server process
and kind of wake, shared by every waiter of that kind, so waiting costs no Redis
connection per waiter and no polling.

A script PUBLISHes on `<prefix><name>` (or on one channel of the prefix, naming the
waiters in the message); the dispatcher sets the events of the local waiters
registered under that name. It reconnects by itself, and after every (re)subscription
it wakes every waiter once, since notifications sent while it was away are lost:
waiters must look again when woken, and on their own now and then as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Backend

log = logging.getLogger(__name__)

_RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)


class WakeDispatcher:
    """Wakes of one channel prefix. With `names_in_message`, a message names the
    waiters (space-separated: lock tickets); otherwise the channel after the prefix
    is the name (a fill lease key)."""

    def __init__(self, backend: Backend, prefix: str, *, names_in_message: bool, what: str) -> None:
        self.backend = backend
        self.prefix = prefix
        self.names_in_message = names_in_message
        self.what = what
        self._events: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def register(self, name: str) -> asyncio.Event:
        """An event set when `name` is woken; `unregister` it when done."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name=f"cachet-{self.what}-wakes")
        event = asyncio.Event()
        self._events.setdefault(name, set()).add(event)
        return event

    def unregister(self, name: str, event: asyncio.Event) -> None:
        events = self._events.get(name)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[name]

    async def subscribed(self) -> None:
        """Wait until the subscription is live (bound it with asyncio.timeout)."""
        await self._subscribed.wait()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    def _wake(self, name: str) -> None:
        for event in self._events.get(name, ()):
            event.set()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if self.names_in_message:
            for name in data.decode(errors="replace").split():
                self._wake(name)
        else:
            self._wake(channel.decode(errors="replace").removeprefix(self.prefix))

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            pubsub = self.backend.redis.pubsub()
            try:
                await pubsub.psubscribe(self.prefix + "*")
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "pmessage":
                        self._dispatch(message["channel"], message["data"])
                    elif message["type"] == "psubscribe":
                        failures = 0
                        self._subscribed.set()
                        self._wake_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                if failures == 0:
                    log.warning("%s wake subscription lost, reconnecting: %s", self.what, exc)
                failures += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if not self._closing:
                await asyncio.sleep(_RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)])

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake_all()
