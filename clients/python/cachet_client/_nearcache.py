"""A client-side near-cache kept correct by the server's WatchInvalidations stream.

The cache serves a read only while its stream is synced. Every invalidation advances a
sequence number; a read notes the number when it starts (`begin`) and its answer is
stored (`fill`) only if no invalidation of that key, and no flush, came after: a late
answer can never bring back a value that a newer write invalidated.

Thread-safe (the sync client fills it from calling threads while a stream thread
invalidates it); the lock is held for dictionary operations only.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc

from .proto.cachet.cache.v1.cache_pb2 import WatchInvalidationsResponse


@dataclass(frozen=True, slots=True)
class NearCacheStats:
    """Counters since the near-cache was made."""

    hits: int
    misses: int
    invalidations: int
    flushes: int
    evictions: int
    entries: int
    bytes: int
    synced: bool


@dataclass(slots=True)
class _Entry:
    value: bytes
    version: int
    expires_at: float


class NearCache:
    """A bounded LRU (by entries and by value bytes) of values read from the server.

    `max_ttl` caps how long an entry lives even when the server's TTL is longer (and an
    entry never outlives the server's TTL, which `fill` is given)."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_ttl <= 0:
            raise ValueError("max_entries, max_bytes and max_ttl must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._synced = False
        self._sequence = 0
        self._flushed_at = 0
        # Sequence of the last invalidation per key, kept only while reads are in flight.
        self._invalidated_at: dict[str, int] = {}
        self._reads_in_flight = 0
        self._hits = self._misses = self._invalidations = self._flushes = self._evictions = 0
        # Called (outside the lock, on the follower's thread) whenever the stream syncs.
        self.on_synced: Callable[[], None] | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, version) if the key is near-cached, fresh, and the stream is synced."""
        with self._lock:
            entry = self._entries.get(key) if self._synced else None
            if entry is not None and entry.expires_at <= self._clock():
                self._drop(key)
                entry = None
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.value, entry.version

    def begin(self) -> int:
        """Call before sending a read whose answer may be filled in; answers its ticket.
        Every `begin` must be followed by `fill` or `abandon` with that ticket."""
        with self._lock:
            self._reads_in_flight += 1
            return self._sequence

    def fill(self, ticket: int, key: str, value: bytes, version: int, ttl: float | None) -> bool:
        """Store what a read begun at `ticket` answered (`ttl`: the server's remaining
        TTL in seconds, None if it has none). False if it must not be cached: the stream
        is not synced, or the key was invalidated (or everything flushed) since."""
        return self.fill_many(ticket, [(key, value, version, ttl)]) == 1

    def fill_many(
        self, ticket: int, entries: Iterable[tuple[str, bytes, int, float | None]]
    ) -> int:
        """`fill` for the answers of one read of many keys (one ticket); answers how
        many were stored."""
        with self._lock:
            stored = 0
            for key, value, version, ttl in entries:
                if self._may_store(ticket, key, value, ttl):
                    lifetime = self.max_ttl if ttl is None else min(ttl, self.max_ttl)
                    self._drop(key)
                    self._entries[key] = _Entry(value, version, self._clock() + lifetime)
                    self._bytes += len(value)
                    stored += 1
            self._evict()
            self._end_read()
            return stored

    def abandon(self, ticket: int) -> None:
        """A read begun at `ticket` ended without an answer to store."""
        with self._lock:
            self._end_read()

    def invalidate(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._sequence += 1
            for key in keys:
                self._invalidations += 1
                self._drop(key)
                if self._reads_in_flight:
                    self._invalidated_at[key] = self._sequence

    def flush_all(self) -> None:
        """Drop everything and serve nothing until `mark_synced` (a gap in the stream)."""
        with self._lock:
            self._synced = False
            self._sequence += 1
            self._flushed_at = self._sequence
            self._entries.clear()
            self._invalidated_at.clear()
            self._bytes = 0
            self._flushes += 1

    def mark_synced(self) -> None:
        with self._lock:
            self._synced = True
        if self.on_synced is not None:
            self.on_synced()

    def stats(self) -> NearCacheStats:
        with self._lock:
            return NearCacheStats(
                hits=self._hits,
                misses=self._misses,
                invalidations=self._invalidations,
                flushes=self._flushes,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
                synced=self._synced,
            )

    # -- under the lock ------------------------------------------------------------

    def _may_store(self, ticket: int, key: str, value: bytes, ttl: float | None) -> bool:
        return (
            self._synced
            and ticket >= self._flushed_at
            and self._invalidated_at.get(key, -1) <= ticket
            and len(value) <= self.max_bytes
            and (ttl is None or ttl > 0)
        )

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.value)

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= len(entry.value)
            self._evictions += 1

    def _end_read(self) -> None:
        self._reads_in_flight -= 1
        if self._reads_in_flight == 0:
            # No read can still be affected by these; forget them so memory stays bounded.
            self._invalidated_at.clear()


def apply(cache: NearCache, event: WatchInvalidationsResponse) -> None:
    """Apply one event of the WatchInvalidations stream."""
    kind = event.WhichOneof("event")
    if kind == "synced":
        cache.mark_synced()
    elif kind == "keys":
        cache.invalidate(event.keys.keys)
    elif kind == "flush_all":
        cache.flush_all()


async def follow(
    cache: NearCache,
    open_stream: Callable[[], AsyncIterator[WatchInvalidationsResponse]],
    *,
    max_backoff: float = 5.0,
) -> None:
    """Keep `cache` in step with the server until cancelled: read the stream, and when it
    breaks, flush the cache (it serves nothing meanwhile) and open it again."""
    delay = 0.05
    while True:
        try:
            async for event in open_stream():
                apply(cache, event)
                delay = 0.05
        except grpc.RpcError:
            pass
        cache.flush_all()
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_backoff)


def follow_in_thread(
    cache: NearCache,
    open_stream: Callable[[], Iterator[WatchInvalidationsResponse]],
    stop: threading.Event,
    *,
    max_backoff: float = 5.0,
) -> None:
    """`follow` for the sync client, run in a thread of its own until `stop` is set (the
    caller also cancels the open stream, so the thread wakes)."""
    delay = 0.05
    while not stop.is_set():
        try:
            for event in open_stream():
                apply(cache, event)
                delay = 0.05
        except grpc.RpcError:
            pass
        cache.flush_all()
        stop.wait(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_backoff)
