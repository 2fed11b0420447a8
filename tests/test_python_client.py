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
