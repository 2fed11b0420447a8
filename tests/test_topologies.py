"""One CACHET_REDIS_URL per topology, end to end: authentication, TLS, routing by key
on Cluster, and the replica-acknowledgement mode."""

from __future__ import annotations

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import running

from .conftest import channel_to, error_reason, make_settings, rpc_error


@pytest.mark.topologies("sentinel", "cluster", reason="a standalone Redis has no replica")
async def test_replica_acknowledged_writes_succeed_while_replicas_keep_up(redis_url, namespace):
    settings = make_settings(redis_url, redis_min_replicas_acked=1)
    async with running(settings) as app, channel_to(app.port, namespace) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        keys = [f"k{i}" for i in range(30)]  # spread over every Cluster primary
        for key in keys:
            await cache.Set(pb.SetRequest(key=key, value=key.encode()))
        await cache.SetMany(
            pb.SetManyRequest(entries=[pb.SetManyEntry(key=k, value=b"m") for k in keys])
        )
        await cache.Increment(pb.IncrementRequest(key="n", by_int=2))
        got = await cache.GetMany(pb.GetManyRequest(keys=keys))
        assert [e.value for e in got.entries] == [b"m"] * len(keys)
        assert (await cache.Delete(pb.DeleteRequest(keys=keys))).deleted == len(keys)


async def test_more_acknowledgements_than_replicas_is_unavailable_not_enough_replicas(
    redis_url, namespace
):
    settings = make_settings(
        redis_url, redis_min_replicas_acked=2, redis_replica_ack_timeout="PT0.05S"
    )
    async with running(settings) as app, channel_to(app.port, namespace) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        error = await rpc_error(cache.Set(pb.SetRequest(key="k", value=b"v")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "NOT_ENOUGH_REPLICAS"
        assert "may not survive a failover" in error.details()
        # Reads never wait for replicas.
        got = await cache.Get(pb.GetRequest(key="k"))
        assert got.found, "the write did happen on the primary; only its durability is unsure"
