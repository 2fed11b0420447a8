"""Rate limits while Redis is unreachable: fail-closed answers UNAVAILABLE, fail-open admits
(marked and counted); a policy may override the server's mode; service resumes by itself."""

from __future__ import annotations

import asyncio
import time

import grpc
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as pb
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc
from cachet_client.proto.envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from cachet_server.app import running
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from .conftest import error_reason, make_settings, rpc_error
from .redis_procs import RedisProcess

INLINE = pb.RateLimitTarget(
    inline_limit=pb.InlineLimit(
        key="{t}:k",  # one hash tag with policy(): all-or-nothing needs one slot
        limit=pb.Limit(algorithm=pb.ALGORITHM_GCRA, limit=5, period=Duration(seconds=60)),
    )
)
RULES = {
    "policies": [
        {"name": "open", "rate_limit": {"requests_per_unit": 2, "unit": "minute"},
         "fail_mode": "fail_open"},
        {"name": "closed", "rate_limit": {"requests_per_unit": 2, "unit": "minute"}},
    ],
    "domains": [
        {
            "domain": "mesh",
            "descriptors": [
                {"key": "ip", "rate_limit": {"requests_per_unit": 2, "unit": "minute"}},
            ],
        }
    ],
}  # fmt: skip
ENVOY_REQUEST = rls_pb2.RateLimitRequest(
    domain="mesh",
    descriptors=[
        common.RateLimitDescriptor(entries=[common.RateLimitDescriptor.Entry(key="ip", value="1")])
    ],
)


def policy(name: str) -> pb.RateLimitTarget:
    return pb.RateLimitTarget(policy=pb.PolicyRef(name=name, key="{t}:k"))


async def _eventually_allowed(stub) -> pb.CheckResult:
    deadline = time.monotonic() + 10
    while True:
        try:
            result = (await stub.Check(pb.CheckRequest(target=INLINE), timeout=2)).result
            if not result.fail_open:
                return result
        except aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_fail_closed_answers_unavailable_then_recovers():
    redis = RedisProcess().start()
    try:
        async with running(make_settings(redis.url, ratelimit=RULES)) as app:
            async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
                envoy = rls_pb2_grpc.RateLimitServiceStub(channel)
                assert (await stub.Check(pb.CheckRequest(target=INLINE))).result.allowed
                redis.kill()
                for call in [
                    stub.Check(pb.CheckRequest(target=INLINE), timeout=5),
                    stub.Check(pb.CheckRequest(target=policy("closed")), timeout=5),
                    stub.CheckMany(
                        pb.CheckManyRequest(
                            items=[
                                pb.CheckItem(target=policy("open")),
                                pb.CheckItem(target=policy("closed")),
                            ]
                        ),
                        timeout=5,
                    ),
                    stub.Reset(pb.ResetRequest(targets=[policy("open")]), timeout=5),
                    envoy.ShouldRateLimit(ENVOY_REQUEST, timeout=5),
                ]:
                    error = await rpc_error(call)
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert error_reason(error) == "BACKEND_UNAVAILABLE"
                stats = app.servicers[0].deps.stats
                assert stats.ratelimit_fail_open == 0

                redis.start()
                result = await _eventually_allowed(stub)
                assert result.allowed and result.HasField("server_time")
    finally:
        redis.stop()


async def test_fail_open_admits_unchecked_and_counts():
    redis = RedisProcess().start()
    try:
        rules = {**RULES, "fail_mode": "fail_open"}
        async with running(make_settings(redis.url, ratelimit=rules)) as app:
            async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
                envoy = rls_pb2_grpc.RateLimitServiceStub(channel)
                for _ in range(5):
                    await stub.Check(pb.CheckRequest(target=INLINE))
                assert not (await stub.Check(pb.CheckRequest(target=INLINE))).result.allowed
                stats = app.servicers[0].deps.stats
                redis.kill()

                result = (await stub.Check(pb.CheckRequest(target=INLINE), timeout=5)).result
                assert result.allowed and result.fail_open
                assert result.remaining == result.limit == 5
                assert not result.HasField("server_time")
                many = await stub.CheckMany(
                    pb.CheckManyRequest(
                        items=[pb.CheckItem(target=policy("closed")), pb.CheckItem(target=INLINE)],
                        mode=pb.CHECK_MANY_MODE_ALL_OR_NOTHING,
                    ),
                    timeout=5,
                )
                assert many.allowed and all(r.fail_open for r in many.results)
                assert not many.HasField("server_time")
                answer = await envoy.ShouldRateLimit(ENVOY_REQUEST, timeout=5)
                assert answer.overall_code == rls_pb2.RateLimitResponse.OK
                assert stats.ratelimit_fail_open == 4

                error = await rpc_error(stub.Reset(pb.ResetRequest(targets=[INLINE]), timeout=5))
                assert error.code() == grpc.StatusCode.UNAVAILABLE, "Reset never fails open"

                redis.start()  # empty: the state is gone with the old process
                result = await _eventually_allowed(stub)
                assert result.allowed and result.remaining == 4
    finally:
        redis.stop()


async def test_a_policy_can_fail_open_on_a_fail_closed_server():
    redis = RedisProcess().start()
    try:
        async with running(make_settings(redis.url, ratelimit=RULES)) as app:
            async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
                redis.kill()
                opened = (
                    await stub.Check(pb.CheckRequest(target=policy("open")), timeout=5)
                ).result
                assert opened.allowed and opened.fail_open and opened.matched_policy == "open"
                error = await rpc_error(stub.Check(pb.CheckRequest(target=INLINE), timeout=5))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert app.servicers[0].deps.stats.ratelimit_fail_open == 1
    finally:
        redis.stop()
