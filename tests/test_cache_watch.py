"""CacheService/WatchInvalidations: `synced` first, then every change of a key of the
caller's namespace, and `flush_all` after any gap, on every topology."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import running
from cachet_server.backend.invalidations import CLIENT_NAME
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from .conftest import channel_to, error_reason, make_settings, rpc_error
from .redis_procs import ClusterGroup, Deployment, RedisProcess, SentinelGroup, standalone

WAIT = 10.0  # generous: a loaded CI machine; the delay itself is measured in make bench


class Watch:
    """A WatchInvalidations stream read in the background into a queue."""

    def __init__(self, cache: Any, prefixes: list[str] | None = None) -> None:
        self.call = cache.WatchInvalidations(pb.WatchInvalidationsRequest(prefixes=prefixes or []))
        self.events: asyncio.Queue[pb.WatchInvalidationsResponse] = asyncio.Queue()
        self.seen: list[str] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.call:
            await self.events.put(event)

    async def next(self, within: float = WAIT) -> pb.WatchInvalidationsResponse:
        return await asyncio.wait_for(self.events.get(), within)

    async def synced(self) -> None:
        event = await self.next()
        assert event.WhichOneof("event") == "synced", event

    async def until(self, what: str, within: float = WAIT) -> pb.WatchInvalidationsResponse:
        """Skip events until one of kind `what` (synced, keys, flush_all)."""
        deadline = time.monotonic() + within
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event.WhichOneof("event") == "keys":
                self.seen.extend(event.keys.keys)
            if event.WhichOneof("event") == what:
                return event

    async def invalidated(self, key: str, within: float = WAIT) -> None:
        """Wait until `key` was reported changed (skipping other keys)."""
        deadline = time.monotonic() + within
        while key not in self.seen:
            await self.until("keys", max(0.01, deadline - time.monotonic()))
        self.seen.remove(key)

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


@contextlib.asynccontextmanager
async def watching(cache: Any, prefixes: list[str] | None = None) -> AsyncIterator[Watch]:
    watch = Watch(cache, prefixes)
    try:
        await watch.synced()
        yield watch
    finally:
        await watch.close()


async def test_every_kind_of_change_is_reported(cachet, channel, cache, namespace):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    async with watching(cache) as watch:
        await cache.Set(pb.SetRequest(key="written", value=b"1"))
        await watch.invalidated("written")
        await cache.Delete(pb.DeleteRequest(keys=["written"]))
        await watch.invalidated("written")
        await cache.Increment(pb.IncrementRequest(key="counter", by_int=1))
        await watch.invalidated("counter")
        await cache.Set(pb.SetRequest(key="{user:1}:name", value=b"a"))
        await watch.invalidated("{user:1}:name")
        await cache.Set(pb.SetRequest(key="short", value=b"1", ttl=Duration(nanos=200_000_000)))
        await watch.invalidated("short")
        # Its expiry: Redis expires keys by sampling, which a busy keyspace makes slow, or
        # when they are next touched, as here (a near-cache entry never outlives its TTL
        # anyway).
        await asyncio.sleep(0.3)
        assert not (await cache.Get(pb.GetRequest(key="short"))).found
        await watch.invalidated("short")
        await cache.Set(pb.SetRequest(key="tagged", value=b"1", tags=["t1"]))
        await watch.invalidated("tagged")
        await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["t1"]))
        await watch.invalidated("tagged")
        await cache.Set(pb.SetRequest(key="pat:1", value=b"1"))
        await watch.invalidated("pat:1")
        await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="pat:*"))
        await watch.invalidated("pat:1")
        await cache.Txn(
            pb.TxnRequest(
                success=[pb.TxnOp(set=pb.TxnSet(key="txn", value=b"1"))],
            )
        )
        await watch.invalidated("txn")
        await cache.HashSet(
            pb.HashSetRequest(key="hash", fields=[pb.HashField(field="f", value=b"v")])
        )
        await watch.invalidated("hash")
        await cache.ListPush(pb.ListPushRequest(key="list", values=[b"a"], end=pb.LIST_END_RIGHT))
        await watch.invalidated("list")
        await cache.Set(pb.SetRequest(key="flushed", value=b"1"))
        await watch.invalidated("flushed")
        await admin.FlushNamespace(admin_pb2.FlushNamespaceRequest(confirm=namespace))
        await watch.invalidated("flushed")


async def test_only_the_callers_namespace_and_prefixes_are_reported(cachet, cache):
    async with (
        channel_to(cachet.port, "watch-other-tenant") as other,
        watching(cache, prefixes=["user:"]) as watch,
    ):
        others = cache_pb2_grpc.CacheServiceStub(other)
        await others.Set(pb.SetRequest(key="user:1", value=b"theirs"))
        await cache.Set(pb.SetRequest(key="order:1", value=b"not watched"))
        await cache.Set(pb.SetRequest(key="user:2", value=b"mine"))
        event = await watch.until("keys")
        assert list(event.keys.keys) == ["user:2"], "nothing of the other tenant or prefix"


async def test_bad_prefixes_are_invalid(cache):
    error = await rpc_error(
        cache.WatchInvalidations(pb.WatchInvalidationsRequest(prefixes=[""])).read()
    )
    assert error_reason(error) == "INVALID_ARGUMENT"


def _kill_tracking_connections(topology: Deployment) -> int:
    """CLIENT KILL every invalidation connection on every data node; answers how many."""
    if isinstance(topology, ClusterGroup):
        nodes = topology.masters()
    elif isinstance(topology, SentinelGroup):
        nodes = [topology.master()]
    else:
        nodes = [topology]
    killed = 0
    for node in nodes:
        client = node.client()
        try:
            for entry in client.client_list():
                if entry.get("name") == CLIENT_NAME:
                    client.client_kill_filter(_id=entry["id"])
                    killed += 1
        finally:
            client.close()
    return killed


async def test_a_killed_redis_connection_sends_flush_all_then_synced(topology, cachet, cache):
    async with watching(cache) as watch:
        assert await asyncio.to_thread(_kill_tracking_connections, topology) >= 1
        await watch.until("flush_all")
        await watch.until("synced")
        # ...and the feed works again.
        await cache.Set(pb.SetRequest(key="after-gap", value=b"1"))
        await watch.invalidated("after-gap")


async def test_two_watchers_share_one_redis_subscription(topology, cachet, channel, cache):
    async with watching(cache) as first, watching(cache) as second:
        await cache.Set(pb.SetRequest(key="shared", value=b"1"))
        await first.invalidated("shared")
        await second.invalidated("shared")
        tracked = await asyncio.to_thread(_count_tracking_connections, topology)
        primaries = 3 if isinstance(topology, ClusterGroup) else 1
        assert tracked == primaries, "one connection per primary for the namespace, not per watcher"


def _count_tracking_connections(topology: Deployment) -> int:
    nodes = (
        topology.masters()
        if isinstance(topology, ClusterGroup)
        else [topology.master()]
        if isinstance(topology, SentinelGroup)
        else [topology]
    )
    count = 0
    for node in nodes:
        client = node.client()
        try:
            count += sum(1 for c in client.client_list() if c.get("name") == CLIENT_NAME)
        finally:
            client.close()
    return count


# ---------------------------------------------------------------- on private deployments


@pytest.fixture
def private_redis() -> Any:
    with standalone() as proc:
        yield proc


async def test_flushall_eviction_and_a_slow_watcher(private_redis: RedisProcess, namespace):
    """Things the shared fixtures must not suffer: FLUSHALL, eviction, a tiny buffer."""
    settings = make_settings(private_redis.url, invalidations={"watcher_buffer": 4})
    async with running(settings) as app, channel_to(app.port, namespace) as chan:
        cache = cache_pb2_grpc.CacheServiceStub(chan)
        async with watching(cache) as watch:
            direct = private_redis.client()
            try:
                direct.flushall()
                await watch.until("flush_all")
                await watch.until("synced")
                direct.config_set("maxmemory-policy", "allkeys-random")
                used = int(direct.info("memory")["used_memory"])
                direct.config_set("maxmemory", str(used + 2_000_000))
                for i in range(40):
                    await cache.Set(pb.SetRequest(key=f"big-{i}", value=b"x" * 100_000))
                    await watch.invalidated(f"big-{i}")
                assert int(direct.info("stats")["evicted_keys"]) > 0
                present = {
                    f"big-{i}" for i in range(40) if direct.exists(_data_key(namespace, f"big-{i}"))
                }
                evicted = {f"big-{i}" for i in range(40)} - present
                for key in sorted(evicted):
                    await watch.invalidated(key)
            finally:
                direct.config_set("maxmemory", "0")
                direct.close()
        # A watcher that stops reading: once gRPC's flow-control window is full its
        # buffer of 4 overflows, and it gets flush_all then synced instead of the keys.
        reader = aio.insecure_channel(
            f"127.0.0.1:{app.port}",
            options=[("grpc.http2.bdp_probe", 0)],  # keep the window at its initial 64 KiB
        )
        slow = cache_pb2_grpc.CacheServiceStub(reader).WatchInvalidations(
            pb.WatchInvalidationsRequest(), metadata=[("cachet-namespace", namespace)]
        )
        try:
            assert (await slow.read()).WhichOneof("event") == "synced"
            long_name = "k" * 1000
            for i in range(400):
                await cache.Set(pb.SetRequest(key=f"{long_name}-{i}", value=b"1"))
            kinds = []
            while True:
                try:
                    event = await asyncio.wait_for(slow.read(), 2.0)
                except TimeoutError:
                    break
                kinds.append(event.WhichOneof("event"))
            assert "flush_all" in kinds, kinds[:10]
            assert kinds[kinds.index("flush_all") + 1] == "synced"
            assert kinds.count("keys") < 400
        finally:
            slow.cancel()
            await reader.close()


def _data_key(namespace: str, key: str) -> str:
    from cachet_server.backend.keys import Kind, redis_key

    return redis_key(namespace, Kind.DATA, key)


@pytest.mark.reliability
async def test_a_sentinel_failover_sends_flush_all(namespace):
    group = SentinelGroup(down_after_ms=1000, failover_timeout_ms=4000).start()
    try:
        async with running(make_settings(group.url)) as app, channel_to(app.port, namespace) as c:
            cache = cache_pb2_grpc.CacheServiceStub(c)
            async with watching(cache) as watch:
                group.sentinels[0].client().execute_command(
                    "SENTINEL", "FAILOVER", group.MASTER_NAME
                )
                await watch.until("flush_all", within=30)
                await watch.until("synced", within=30)
                await _write_until_reported(cache, watch, "after-failover")
    finally:
        group.stop()


@pytest.mark.reliability
async def test_a_cluster_failover_sends_flush_all_and_tracks_the_new_primary(namespace):
    group = ClusterGroup().start()
    try:
        async with running(make_settings(group.url)) as app, channel_to(app.port, namespace) as c:
            cache = cache_pb2_grpc.CacheServiceStub(c)
            async with watching(cache) as watch:
                master = group.masters()[0]
                replica = group.replica_of(master)
                replica.client().execute_command("CLUSTER", "FAILOVER")
                await watch.until("flush_all", within=30)
                await watch.until("synced", within=30)
                await asyncio.to_thread(group.wait_healthy)
                # Keys on every primary, the promoted one included, are reported again.
                for i in range(12):
                    await _write_until_reported(cache, watch, f"after-failover-{i}")
    finally:
        group.stop()


async def _write_until_reported(cache: Any, watch: Watch, key: str) -> None:
    """Write `key` (retrying while the deployment settles) until its change is reported."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await cache.Set(pb.SetRequest(key=key, value=b"1"), timeout=2)
            await watch.invalidated(key, within=3)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_watchers_count_against_the_namespace_quota(private_redis: RedisProcess, namespace):
    settings = make_settings(private_redis.url, quotas={"max_watch_streams": 2})
    async with running(settings) as app, channel_to(app.port, namespace) as chan:
        cache = cache_pb2_grpc.CacheServiceStub(chan)
        async with watching(cache), watching(cache):
            refused = await rpc_error(
                cache.WatchInvalidations(pb.WatchInvalidationsRequest()).read()
            )
            assert error_reason(refused) == "QUOTA_EXCEEDED"
            async with channel_to(app.port, f"{namespace}-other") as other:
                async with watching(cache_pb2_grpc.CacheServiceStub(other)):
                    pass  # another namespace's quota is its own
        async with watching(cache):
            pass  # the slots come back when the streams end
