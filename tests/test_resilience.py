"""Redis gone and back: UNAVAILABLE while it is gone, NOT_SERVING health, recovery
without restart. The faults under load, on every topology, are in test_faults.py."""

from __future__ import annotations

import asyncio
import time

import grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import running
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import error_reason, make_settings, rpc_error
from .redis_procs import RedisProcess


async def _health(channel: aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="cachet.cache.v1.CacheService"), timeout=2
    )
    return reply.status


async def _eventually(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_redis_killed_then_restarted():
    redis = RedisProcess().start()
    try:
        async with running(make_settings(redis.url)) as app:
            async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                cache = cache_pb2_grpc.CacheServiceStub(channel)
                await cache.Set(pb.SetRequest(key="before", value=b"1"))
                assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING

                redis.kill()
                error = await rpc_error(cache.Get(pb.GetRequest(key="before"), timeout=5))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(error) == "BACKEND_UNAVAILABLE"
                assert "Traceback" not in error.details()

                async def not_serving() -> bool:
                    return await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

                await _eventually(not_serving)
                error = await rpc_error(cache.Set(pb.SetRequest(key="during", value=b"x")))
                assert error.code() == grpc.StatusCode.UNAVAILABLE

                redis.start()  # same port, empty dataset; cachet is not restarted

                async def serving() -> bool:
                    return await _health(channel) == health_pb2.HealthCheckResponse.SERVING

                await _eventually(serving)
                stored = await cache.Set(pb.SetRequest(key="after", value=b"2"))
                assert stored.version > 0
                assert (await cache.Get(pb.GetRequest(key="after"))).value == b"2"
    finally:
        redis.stop()
