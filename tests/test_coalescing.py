"""Adaptive coalescing (backend/coalescing.py): under concurrency, scripts bound for one
node share a pipeline, and each call still gets exactly its own answer and its own
error; a lost script cache and a paused Redis are handled per call."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import Application
from cachet_server.backend.cache import _GET
from cachet_server.backend.keys import CacheKeys
from cachet_server.backend.scripts import Script
from grpc import aio
from redis.exceptions import ResponseError

from .conftest import channel_to

NAMESPACES = 12
KEYS_PER_NAMESPACE = 8


async def test_concurrent_calls_of_many_namespaces_each_read_exactly_their_own(
    cachet: Application, namespace: str
):
    """Many namespaces at once, on keys of many slots (and nodes, on Cluster), the same
    user keys in every namespace: each namespace reads back only its own values, both
    at whatever concurrency arises and when every read of a node is made to wait for
    one pipeline (its lane held busy until all 96 reads queue)."""
    backend = cachet.backend
    names = [f"{namespace}-{n}" for n in range(NAMESPACES)]
    channels = [channel_to(cachet.port, name) for name in names]
    stubs = [cache_pb2_grpc.CacheServiceStub(channel) for channel in channels]
    wanted = [
        (name, stub, i)
        for name, stub in zip(names, stubs, strict=True)
        for i in range(KEYS_PER_NAMESPACE)
    ]

    async def read_all() -> None:
        replies = await asyncio.gather(
            *(stub.Get(pb.GetRequest(key=f"k{i}")) for _, stub, i in wanted)
        )
        for (name, _, i), reply in zip(wanted, replies, strict=True):
            assert reply.found and reply.value == f"{name}/{i}".encode()

    try:
        await asyncio.gather(
            *(
                stub.Set(pb.SetRequest(key=f"k{i}", value=f"{name}/{i}".encode()))
                for name, stub, i in wanted
            )
        )
        await read_all()
        lanes = {
            id(lane): lane
            for name, _, i in wanted
            if (lane := backend._lane_of([CacheKeys.of(name, f"k{i}").data])) is not None
        }.values()
        assert lanes and not any(lane.busy for lane in lanes), "nothing else runs here"
        before = backend.coalescing.pipelines, backend.coalescing.batched
        for lane in lanes:
            lane.busy = True  # as while a round trip is in flight
        reading = asyncio.ensure_future(read_all())
        for _ in range(1000):
            if sum(len(lane.waiting) for lane in lanes) == len(wanted) or reading.done():
                break
            await asyncio.sleep(0.01)
        for lane in lanes:
            lane.pass_on()
        await reading
        pipelines = backend.coalescing.pipelines - before[0]
        batched = backend.coalescing.batched - before[1]
    finally:
        for channel in channels:
            await channel.close()
    assert (pipelines, batched) == (len(lanes), len(wanted))


async def test_a_failing_script_fails_only_its_own_call(cachet: Application, namespace: str, cache):
    """A script that errors (GET on a hash: WRONGTYPE) in the middle of concurrent reads:
    that call alone raises; its neighbours, in the same pipelines, get their values."""
    await cache.Set(pb.SetRequest(key="good", value=b"fine"))
    good = CacheKeys.of(namespace, "good")
    wrong = CacheKeys.of(namespace, "wrong")
    backend = cachet.backend
    await backend.redis.hset(wrong.data, "field", "x")
    before = backend.coalescing.batched

    async def read(keys: CacheKeys) -> object:
        try:
            return await backend.run(_GET, [keys.data, keys.meta], ["0"])
        except ResponseError as error:
            return error

    targets = [wrong if n % 5 == 2 else good for n in range(40)]
    answers = await asyncio.gather(*(read(keys) for keys in targets))
    for keys, answer in zip(targets, answers, strict=True):
        if keys is wrong:
            assert isinstance(answer, ResponseError) and "WRONGTYPE" in str(answer)
        else:
            assert isinstance(answer, list) and answer[0] == b"fine"
    assert backend.coalescing.batched > before, "the reads were not coalesced"


async def test_a_script_redis_does_not_know_goes_again_per_call(
    cachet: Application, namespace: str
):
    """A batch of EVALSHAs of a script Redis has never seen (as after a restart or
    SCRIPT FLUSH): each answers NOSCRIPT in the pipeline, and each call goes again on
    the ordinary path (EVAL) and gets its own answer."""
    backend = cachet.backend
    source = f"-- {uuid.uuid4()}\nreturn ARGV[1]"
    unknown = Script("echo", source, hashlib.sha1(source.encode()).hexdigest())
    key = CacheKeys.of(namespace, "noscript").data
    lane = backend._lane_of([key])
    assert lane is not None
    assert not lane.busy, "nothing else runs in this test"
    retried_before = backend.coalescing.retried_alone
    # Hold the lane as a call in flight would, so all of them queue into one batch.
    lane.busy = True
    calls = [asyncio.create_task(backend.run(unknown, [key], [str(n)])) for n in range(30)]
    await asyncio.sleep(0)
    lane.pass_on()
    answers = await asyncio.gather(*calls)
    assert answers == [str(n).encode() for n in range(30)]
    assert backend.coalescing.retried_alone - retried_before == 30


@pytest.mark.topologies("standalone", reason="the pause itself is the same on every topology")
async def test_paused_redis_ends_coalesced_calls_within_their_deadline_and_the_lane_recovers(
    topology, cachet: Application, cache
):
    """SIGSTOP on Redis while 40 calls with a 300 ms deadline wait in one lane (one in
    flight, the rest queued behind it): every call ends DEADLINE_EXCEEDED or
    UNAVAILABLE, none hangs, and after SIGCONT the lane is free again."""
    await cache.Set(pb.SetRequest(key="paused", value=b"v"))
    codes: list[str] = []

    async def one_call() -> None:
        try:
            await cache.Get(pb.GetRequest(key="paused"), timeout=0.3)
            codes.append("OK")
        except aio.AioRpcError as error:
            codes.append(error.code().name)

    topology.pause()
    try:
        # The client's own deadline ends every call; the bound here only keeps a hung
        # server from hanging the test.
        await asyncio.wait_for(asyncio.gather(*(one_call() for _ in range(40))), 10)
    finally:
        topology.resume()
    assert set(codes) <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, codes
    replies = await asyncio.gather(
        *(cache.Get(pb.GetRequest(key="paused"), timeout=5) for _ in range(20))
    )
    assert all(reply.value == b"v" for reply in replies)
    assert not cachet.backend._lane.waiting


async def test_coalescing_off_sends_every_script_alone(topology):
    """CACHET_REDIS_COALESCE=false: the same concurrent reads, no pipeline at all."""
    from cachet_server.app import running

    from .conftest import make_settings

    async with running(make_settings(topology.url, redis_coalesce=False)) as app:
        channel = channel_to(app.port, "coalesce-off")
        try:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Set(pb.SetRequest(key="k", value=b"v"))
            replies = await asyncio.gather(*(stub.Get(pb.GetRequest(key="k")) for _ in range(40)))
        finally:
            await channel.close()
        assert all(reply.value == b"v" for reply in replies)
        assert app.backend.coalescing.pipelines == 0
        assert app.backend.coalescing.alone == 0


async def test_scripts_without_keys_are_coalesced_or_sent_alone(cachet: Application):
    """A script with no keys (Publish without a request id is one) shares the lane
    outside Cluster and goes alone on Cluster; either way each gets its own answer."""
    echo = Script("echo_no_keys", "return ARGV[1]", hashlib.sha1(b"return ARGV[1]").hexdigest())
    answers = await asyncio.gather(*(cachet.backend.run(echo, [], [str(n)]) for n in range(30)))
    assert answers == [str(n).encode() for n in range(30)]
