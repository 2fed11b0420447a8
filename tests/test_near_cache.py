"""The Python near-cache (cachet_client._nearcache) against a live server: filled by
reads, invalidated by the WatchInvalidations stream, never serving while unsynced, and
never keeping a late answer that a newer write invalidated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from cachet_client._nearcache import NearCache, follow
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc

from .conftest import channel_to


async def _eventually(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def followed(cache: cache_pb2_grpc.CacheServiceStub, near: NearCache) -> AsyncIterator[None]:
    task = asyncio.create_task(
        follow(near, lambda: cache.WatchInvalidations(pb.WatchInvalidationsRequest()))
    )
    try:
        await _eventually(lambda: near.synced)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _settled(near: NearCache, write: Any) -> None:
    """Run `write` and wait for its own invalidation, so that a read made afterwards is
    not dropped later by that (late) invalidation."""
    seen = near.stats().invalidations
    await write
    await _eventually(lambda: near.stats().invalidations > seen)


async def _read(cache: cache_pb2_grpc.CacheServiceStub, near: NearCache, key: str) -> bytes | None:
    """What the client's get does with a near-cache."""
    cached = near.get(key)
    if cached is not None:
        return cached[0]
    ticket = near.begin()
    try:
        reply = await cache.Get(pb.GetRequest(key=key, include_ttl=True))
    except BaseException:
        near.abandon(ticket)
        raise
    if not reply.found:
        near.abandon(ticket)
        return None
    ttl = reply.ttl.ToTimedelta().total_seconds() if reply.HasField("ttl") else None
    near.fill(ticket, key, reply.value, reply.version, ttl)
    return reply.value


async def test_a_write_by_another_client_invalidates_the_near_cached_key(cachet, cache, namespace):
    near = NearCache()
    async with followed(cache, near), channel_to(cachet.port, namespace) as other:
        writer = cache_pb2_grpc.CacheServiceStub(other)
        await _settled(near, writer.Set(pb.SetRequest(key="user:1", value=b"v1")))
        assert await _read(cache, near, "user:1") == b"v1"
        assert near.get("user:1") == (b"v1", near.get("user:1")[1])  # type: ignore[index]
        await writer.Set(pb.SetRequest(key="user:1", value=b"v2"))
        await _eventually(lambda: near.get("user:1") is None)
        assert await _read(cache, near, "user:1") == b"v2"
        stats = near.stats()
        assert stats.invalidations >= 1 and stats.hits >= 1 and stats.misses >= 2


async def test_a_late_answer_never_overwrites_a_newer_invalidation(cachet, cache, namespace):
    """The classic race, forced: a read starts, another client writes, the invalidation
    arrives, then the old read's answer arrives. It must not be cached."""
    near = NearCache()
    async with followed(cache, near), channel_to(cachet.port, namespace) as other:
        writer = cache_pb2_grpc.CacheServiceStub(other)
        await _settled(near, writer.Set(pb.SetRequest(key="k", value=b"old")))
        ticket = near.begin()
        stale = await cache.Get(pb.GetRequest(key="k"))  # the read, answered "old"
        invalidations = near.stats().invalidations
        await writer.Set(pb.SetRequest(key="k", value=b"new"))
        await _eventually(lambda: near.stats().invalidations > invalidations)
        assert not near.fill(ticket, "k", stale.value, stale.version, 60.0)
        assert near.get("k") is None
        assert await _read(cache, near, "k") == b"new"
        assert near.get("k") is not None and near.get("k")[0] == b"new"  # type: ignore[index]


async def test_nothing_is_served_while_the_stream_is_not_synced(cachet, cache):
    near = NearCache()
    ticket = near.begin()
    assert not near.fill(ticket, "k", b"v", 1, 60.0), "not synced yet: nothing is kept"
    async with followed(cache, near):
        await _settled(near, cache.Set(pb.SetRequest(key="k", value=b"v")))
        assert await _read(cache, near, "k") == b"v"
        assert near.get("k") is not None
        ticket = near.begin()
        near.flush_all()  # what a gap does
        assert near.get("k") is None and not near.synced
        assert not near.fill(ticket, "k", b"v", 1, 60.0), "began before the flush"
    assert near.stats().flushes >= 1


def test_bounded_by_entries_bytes_and_ttl():
    now = [0.0]
    near = NearCache(max_entries=3, max_bytes=10, max_ttl=5.0, clock=lambda: now[0])
    near.mark_synced()
    for key in "abcd":
        near.fill(near.begin(), key, b"x", 1, None)
    assert [k for k in "abcd" if near.get(k)] == ["b", "c", "d"], "LRU by entries"
    near.fill(near.begin(), "big", b"y" * 9, 1, None)
    assert near.stats().bytes <= 10 and near.get("big") is not None
    near.fill(near.begin(), "short", b"z", 1, 1.0)
    now[0] = 1.5
    assert near.get("short") is None, "never longer than the server's TTL"
    assert near.get("big") is not None
    now[0] = 6.0
    assert near.get("big") is None, "never longer than max_ttl"
    assert not near.fill(near.begin(), "huge", b"h" * 11, 1, None), "larger than the cache"
    stats = near.stats()
    assert stats.evictions >= 2 and stats.entries == 0
    assert near._invalidated_at == {} and near._reads_in_flight == 0
