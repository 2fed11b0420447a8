"""Invalidation feeds for near-caches: Redis client tracking turned into one stream of
changed keys per process and namespace, fanned out to every WatchInvalidations call.

Underneath, per namespace and per primary, one RESP2 connection enables
`CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX cachet:<ns>:k NOLOOP` and subscribes
to `__redis__:invalidate`. In BCAST mode Redis reports every change of a key under the
prefix whoever makes it: writes, deletes, expiry, eviction, and a FLUSHALL (as a
null message). Redirecting to itself means the tracking state and the subscription
live and die together, so a lost connection can never silently stop the reports; the
connection is also pinged, and the topology compared, every `check_interval`.

Keyspace notifications were the alternative: they need `notify-keyspace-events`
changed on the operator's Redis and deliver one message per key event (no batching);
tracking needs no configuration and sends the keys of one command together.

Every gap (a lost connection, a failover or new Cluster primaries, a watcher too slow
for its buffer) is reported as `flush_all`, and `synced` follows once every primary is
tracked again: a watcher that trusts only what it read between `synced` and the next
`flush_all` is never stale longer than the stream's delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import ResourceExhausted
from .core import Backend
from .keys import Kind, kind_prefix, user_key

log = logging.getLogger(__name__)

_CHANNEL = b"__redis__:invalidate"
CLIENT_NAME = "cachet-invalidations"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One event for a watcher: `synced`, `flush_all`, or the user keys that changed."""

    keys: tuple[str, ...] = ()
    synced: bool = False
    flush_all: bool = False


SYNCED = Invalidation(synced=True)
FLUSH_ALL = Invalidation(flush_all=True)


class Watcher:
    """One WatchInvalidations call's queue: bounded; when it overflows, what it held is
    replaced by `flush_all` (and `synced`, if the feed is live), so a slow reader loses
    its near-cache, never an invalidation."""

    def __init__(self, prefixes: Sequence[str], capacity: int) -> None:
        self.prefixes = tuple(prefixes)
        self.capacity = capacity
        self._events: deque[Invalidation] = deque()
        self._ready = asyncio.Event()

    def wanted(self, key: str) -> bool:
        return not self.prefixes or key.startswith(self.prefixes)

    def put(self, event: Invalidation, *, live: bool) -> None:
        if event.keys:
            keys = tuple(key for key in event.keys if self.wanted(key))
            if not keys:
                return
            event = Invalidation(keys=keys)
        if len(self._events) >= self.capacity:
            self._events.clear()
            self._events.append(FLUSH_ALL)
            if live:
                self._events.append(SYNCED)
        else:
            self._events.append(event)
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Invalidation]:
        while True:
            await self._ready.wait()
            while self._events:
                yield self._events.popleft()
            self._ready.clear()


class NamespaceFeed:
    """The tracking connections of one namespace (one per primary) and its watchers."""

    def __init__(self, backend: Backend, namespace: str, check_interval: float) -> None:
        self.backend = backend
        self.namespace = namespace
        self.check_interval = check_interval
        self.prefix = kind_prefix(namespace, Kind.DATA)
        self.watchers: set[Watcher] = set()
        self.live = False
        self._topology_moved = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"cachet-invalidations-{self.namespace}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _broadcast(self, event: Invalidation) -> None:
        for watcher in self.watchers:
            watcher.put(event, live=self.live)

    def _gap(self, reason: str) -> bool:
        """Tell every watcher to drop its near-cache, once per gap (a watcher that joined
        since has not been told `synced`, so it holds nothing yet). True if the feed had
        been live."""
        if not self.live:
            return False
        log.warning("invalidation feed of %s lost (%s): flush_all", self.namespace, reason)
        self.live = False
        self._broadcast(FLUSH_ALL)
        return True

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._track_every_primary()
            except (RedisError, OSError, ConnectionError, TimeoutError) as exc:
                was_live = self._gap(type(exc).__name__)
                if not was_live:
                    log.warning("invalidation feed of %s cannot start: %s", self.namespace, exc)
            except Exception:
                # Not a Redis fault: still a gap, and the feed must not die with watchers.
                log.exception("invalidation feed of %s failed", self.namespace)
                was_live = self._gap("internal error")
            # A feed that was live reconnects at once; one that keeps failing backs off.
            delay = 0.05 if was_live else min(delay * 2, 2.0)
            await asyncio.sleep(delay)

    async def _track_every_primary(self) -> None:
        topology = self.backend.topology
        if self._topology_moved:
            await topology.refresh()
            self._topology_moved = False
        primaries = await self.backend.primaries()
        signature = topology.signature()
        connections = []
        try:
            for client in primaries:
                connections.append(await self._tracking_connection(client))
            self.live = True
            self._broadcast(SYNCED)
            readers = [asyncio.create_task(self._read(conn)) for conn in connections]
            watchdog = asyncio.create_task(self._watch_topology(signature))
            try:
                done, _ = await asyncio.wait(
                    [*readers, watchdog], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # raises what ended it
                raise ConnectionError("topology changed")
            finally:
                for task in [*readers, watchdog]:
                    task.cancel()
                await asyncio.gather(*readers, watchdog, return_exceptions=True)
        finally:
            for conn in connections:
                with contextlib.suppress(Exception):
                    await conn.disconnect()

    async def _tracking_connection(self, client: Any) -> Any:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # redis-py's maintenance notifications need RESP3; tracking redirected to a
        # subscription needs RESP2.
        kwargs.pop("maint_notifications_pool_handler", None)
        kwargs.update(
            maint_notifications_config=None,
            protocol=2,
            client_name=CLIENT_NAME,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=max(self.check_interval * 2, 1.0),
        )
        conn = pool.connection_class(**kwargs)
        await conn.connect()
        await conn.send_command("CLIENT", "ID")
        own_id = await conn.read_response()
        await conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", "PREFIX", self.prefix, "NOLOOP"
        )
        await conn.read_response()
        await conn.send_command("SUBSCRIBE", _CHANNEL)
        await conn.read_response()
        return conn

    async def _read(self, conn: Any) -> None:
        pinged = False
        while True:
            reply = await conn.read_response(timeout=self.check_interval)
            if reply is None:
                if pinged:
                    raise TimeoutError("no answer to PING")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if not isinstance(reply, list) or len(reply) < 3 or reply[0] != b"message":
                continue  # a pong, or our own subscribe confirmation
            payload = reply[2]
            if payload is None:
                # FLUSHALL / FLUSHDB: every key went, and the feed itself is still live.
                self._broadcast(FLUSH_ALL)
                self._broadcast(SYNCED)
                continue
            keys = []
            for raw in payload:
                key = user_key(self.namespace, Kind.DATA, raw.decode("utf-8", "replace"))
                if key is not None:
                    keys.append(key)
            if keys:
                self._broadcast(Invalidation(keys=tuple(keys)))

    async def _watch_topology(self, signature: object) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            if await self.backend.topology.primaries_moved(signature):
                self._topology_moved = True
                return


class InvalidationHub:
    """One NamespaceFeed per namespace being watched in this process."""

    def __init__(
        self, backend: Backend, *, watcher_buffer: int, check_interval: float, max_watchers: int
    ) -> None:
        self.backend = backend
        self.watcher_buffer = watcher_buffer
        self.check_interval = check_interval
        self.max_watchers = max_watchers
        self._feeds: dict[str, NamespaceFeed] = {}
        self.watching = 0

    @contextlib.asynccontextmanager
    async def watch(self, namespace: str, prefixes: Sequence[str]) -> AsyncIterator[Watcher]:
        if self.watching >= self.max_watchers:
            raise ResourceExhausted(
                f"this server process already serves {self.max_watchers} invalidation "
                "streams (CACHET_INVALIDATIONS__MAX_WATCHERS)",
                reason="TOO_MANY_WATCHERS",
                retry_after=timedelta(seconds=1),
            )
        feed = self._feeds.get(namespace)
        if feed is None:
            feed = self._feeds[namespace] = NamespaceFeed(
                self.backend, namespace, self.check_interval
            )
            feed.start()
        watcher = Watcher(prefixes, self.watcher_buffer)
        feed.watchers.add(watcher)
        self.watching += 1
        if feed.live:
            watcher.put(SYNCED, live=True)
        try:
            yield watcher
        finally:
            self.watching -= 1
            feed.watchers.discard(watcher)
            if not feed.watchers and self._feeds.get(namespace) is feed:
                del self._feeds[namespace]
                await feed.stop()

    async def aclose(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await feed.stop()
