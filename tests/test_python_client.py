"""The Python client wrapper against a live server."""

from __future__ import annotations

from datetime import timedelta

import cachet_client
import grpc
import pytest


async def test_client_round_trip_and_cas(cachet, namespace):
    async with cachet_client.connect(f"127.0.0.1:{cachet.port}", namespace=namespace) as client:
        assert await client.cache.get("user:1") is None
        version = await client.cache.set("user:1", b"alice", ttl=timedelta(minutes=1))
        value = await client.cache.get("user:1")
        assert value is not None and value.data == b"alice" and value.version == version
        await client.cache.set("user:1", b"bob", if_version=value.version)
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await client.cache.set("user:1", b"carol", if_version=value.version)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        assert await client.cache.increment("hits", 5) == 5
        assert set(await client.cache.get_many(["user:1", "hits", "nope"])) == {"user:1", "hits"}
        assert await client.cache.delete("user:1", "hits", "nope") == 2


async def test_client_hold_keeps_the_lock_and_fences_writes(cachet, namespace):
    async with cachet_client.connect(f"127.0.0.1:{cachet.port}", namespace=namespace) as client:
        async with client.locks.hold("invoice:7", ttl=timedelta(seconds=2)) as lease:
            assert lease.fencing_token > 0 and not lease.lost.is_set()
            with pytest.raises(grpc.aio.AioRpcError) as held:
                await client.locks.acquire("invoice:7", ttl=timedelta(seconds=1))
            assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            await client.cache.set("invoice:7", b"paid", fencing_token=lease.fencing_token)
        # Released when the block ended: the next holder gets a newer token.
        later = await client.locks.acquire(
            "invoice:7", ttl=timedelta(seconds=1), wait=timedelta(seconds=2)
        )
        assert later.fencing_token > lease.fencing_token
        await client.cache.set("invoice:7", b"refunded", fencing_token=later.fencing_token)
        await client.locks.release(later)
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await client.cache.set("invoice:7", b"late", fencing_token=lease.fencing_token)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        current = await client.cache.get("invoice:7")
        assert current is not None and current.data == b"refunded"


async def test_client_rate_limit_check(cachet, namespace):
    async with cachet_client.connect(f"127.0.0.1:{cachet.port}", namespace=namespace) as client:
        verdicts = [
            await client.rate_limits.check("api:alice", limit=3, period=timedelta(minutes=1))
            for _ in range(4)
        ]
        assert [v.allowed for v in verdicts] == [True, True, True, False]
        assert verdicts[2].remaining == 0 and verdicts[3].retry_after is not None
        peek = await client.rate_limits.check(
            "api:alice", limit=3, period=timedelta(minutes=1), hits=0
        )
        assert not peek.allowed
