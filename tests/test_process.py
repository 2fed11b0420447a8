"""The real `cachet-server` process: grpcurl against it, and SIGTERM draining."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from grpc import aio

from .redis_procs import RedisProcess
from .server_procs import CachetProcess

SET = "cachet.cache.v1.CacheService/Set"


def test_grpcurl_lists_every_service_and_round_trips(redis_standalone):
    server = CachetProcess(redis_standalone.url).start()
    try:
        listed = server.grpcurl("list")
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) == {
            "cachet.cache.v1.CacheService",
            "cachet.lock.v1.LockService",
            "cachet.ratelimit.v1.RateLimitService",
            "cachet.eventbus.v1.EventBusService",
            "cachet.admin.v1.AdminService",
            "envoy.service.ratelimit.v3.RateLimitService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        described = server.grpcurl("describe", "cachet.cache.v1.SetRequest")
        assert "google.protobuf.Duration ttl" in described.stdout
        value = base64.b64encode(b"hello from grpcurl").decode()
        stored = server.grpcurl(
            "cachet.cache.v1.CacheService/Set",
            data={"key": "greeting", "value": value, "ttl": "60s"},
            namespace="demo",
        )
        assert stored.returncode == 0, stored.stderr
        got = server.grpcurl(
            "cachet.cache.v1.CacheService/Get", data={"key": "greeting"}, namespace="demo"
        )
        assert got.returncode == 0, got.stderr
        answer = json.loads(got.stdout)
        assert (
            answer["found"] is True and base64.b64decode(answer["value"]) == b"hello from grpcurl"
        )
        other = server.grpcurl(
            "cachet.cache.v1.CacheService/Get", data={"key": "greeting"}, namespace="elsewhere"
        )
        assert json.loads(other.stdout or "{}").get("found") is None
        bad = server.grpcurl("cachet.cache.v1.CacheService/Get", data={"key": ""})
        assert bad.returncode != 0 and "InvalidArgument" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        server.stop()


async def test_sigterm_drains_in_flight_calls_and_exits_zero():
    redis = RedisProcess().start()
    server = CachetProcess(redis.url, CACHET_SHUTDOWN_GRACE="PT10S").start()
    try:
        async with aio.insecure_channel(server.address) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Set(pb.SetRequest(key="warm", value=b"up"))
            # Redis frozen, these calls stay in flight until it resumes.
            redis.pause()
            calls = [
                asyncio.ensure_future(stub.Set(pb.SetRequest(key=f"k{i}", value=b"v"), timeout=20))
                for i in range(50)
            ]
            await server.until_in_flight(SET, 50)
            assert server.process is not None
            server.process.send_signal(15)
            await server.until_draining()
            await asyncio.sleep(0.5)
            assert server.process.poll() is None, "exited before its calls finished"
            assert server.active_calls(SET) == 50, "the drain let go of calls in flight"
            redis.resume()
            results = await asyncio.gather(*calls)
            assert all(r.version > 0 for r in results)
        started = time.monotonic()
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 15
        assert redis.client().exists("cachet:default:k#:{k49}") == 1
    finally:
        redis.resume()
        server.stop()
        redis.stop()


async def test_new_calls_are_refused_while_draining():
    redis = RedisProcess().start()
    server = CachetProcess(redis.url, CACHET_SHUTDOWN_GRACE="PT5S").start()
    try:
        async with aio.insecure_channel(server.address) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            redis.pause()
            in_flight = asyncio.ensure_future(stub.Set(pb.SetRequest(key="k", value=b"v")))
            await server.until_in_flight(SET, 1)
            assert server.process is not None
            server.process.send_signal(15)
            await server.until_draining()
            # Redis is paused, so a Get the server took would hang to its deadline:
            # only UNAVAILABLE says the server refused it.
            async with aio.insecure_channel(server.address) as fresh:
                with pytest.raises(aio.AioRpcError) as refused:
                    await cache_pb2_grpc.CacheServiceStub(fresh).Get(
                        pb.GetRequest(key="k"), timeout=2
                    )
            redis.resume()
            assert (await in_flight).version > 0
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
        assert server.process.wait(timeout=15) == 0
    finally:
        redis.resume()
        server.stop()
        redis.stop()


def test_make_run_default_uses_an_embedded_redis():
    """With no CACHET_REDIS_URL, the process starts and stops its own redis-server."""
    server = CachetProcess(None).start()
    try:
        stored = server.grpcurl(
            "cachet.cache.v1.CacheService/Set", data={"key": "k", "value": "dg=="}
        )
        assert stored.returncode == 0, stored.stderr
        assert server.terminate() == 0
        log = server.output()
        assert "embedded redis-server" in log
    finally:
        server.stop()
