"""request_id: a retried non-idempotent write is applied once and answers the first
result, within CACHET_IDEMPOTENCY_WINDOW, on every topology."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as ebpb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from cachet_server.app import running

from .conftest import bad_fields, channel_to, make_settings, rpc_error


@pytest.fixture
def events(channel) -> eventbus_pb2_grpc.EventBusServiceStub:
    return eventbus_pb2_grpc.EventBusServiceStub(channel)


async def test_a_retried_increment_with_the_same_request_id_is_applied_once(cache):
    request_id = str(uuid.uuid4())
    first = await cache.Increment(pb.IncrementRequest(key="hits", by_int=5, request_id=request_id))
    assert first.int_value == 5 and first.created
    for _ in range(3):
        retry = await cache.Increment(
            pb.IncrementRequest(key="hits", by_int=5, request_id=request_id)
        )
        assert (retry.int_value, retry.created, retry.version) == (5, True, first.version)
    got = await cache.Get(pb.GetRequest(key="hits"))
    assert got.value == b"5"
    # Another id, or none, is another call.
    other = await cache.Increment(pb.IncrementRequest(key="hits", by_int=5, request_id="other"))
    plain = await cache.Increment(pb.IncrementRequest(key="hits", by_int=5))
    assert (other.int_value, plain.int_value) == (10, 15)
    # The same id on another key is another call too.
    elsewhere = await cache.Increment(
        pb.IncrementRequest(key="{tagged}:hits", by_float=0.5, request_id=request_id)
    )
    again = await cache.Increment(
        pb.IncrementRequest(key="{tagged}:hits", by_float=0.5, request_id=request_id)
    )
    assert elsewhere.float_value == again.float_value == 0.5


async def test_concurrent_retries_are_applied_once(cache):
    """A client that gave up waiting and retried while the first call still ran."""
    request_id = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(
            cache.Increment(pb.IncrementRequest(key="raced", by_int=1, request_id=request_id))
            for _ in range(20)
        )
    )
    assert {a.int_value for a in answers} == {1}
    assert (await cache.Get(pb.GetRequest(key="raced"))).value == b"1"


async def test_collection_writes_with_a_request_id_are_applied_once(cache):
    for _ in range(3):
        hashed = await cache.HashIncrement(
            pb.HashIncrementRequest(key="h", field="f", by_int=2, request_id="h-1")
        )
        assert hashed.int_value == 2
        scored = await cache.SortedSetIncrement(
            pb.SortedSetIncrementRequest(key="z", member=b"m", delta=1.5, request_id="z-1")
        )
        assert scored.score == 1.5
        pushed = await cache.ListPush(
            pb.ListPushRequest(
                key="l", values=[b"a", b"b"], end=pb.LIST_END_RIGHT, request_id="l-1"
            )
        )
        assert pushed.length == 2
    listed = await cache.ListRange(
        pb.ListRangeRequest(key="l", range=pb.IndexRange(start=0, end=-1))
    )
    assert list(listed.values) == [b"a", b"b"]
    pushed = await cache.ListPush(
        pb.ListPushRequest(key="l", values=[b"c"], end=pb.LIST_END_RIGHT, request_id="l-2")
    )
    assert pushed.length == 3


async def test_append_and_publish_with_a_request_id_happen_once(events):
    event = ebpb.Event(payload=b"order-1")
    first = await events.Append(ebpb.AppendRequest(stream="orders", event=event, request_id="a1"))
    retry = await events.Append(ebpb.AppendRequest(stream="orders", event=event, request_id="a1"))
    assert retry.id == first.id
    entries = await events.Range(ebpb.RangeRequest(stream="orders"))
    assert [e.id for e in entries.events] == [first.id]
    published = await events.Publish(
        ebpb.PublishRequest(topic="news", event=ebpb.Event(payload=b"x"), request_id="p1")
    )
    repeated = await events.Publish(
        ebpb.PublishRequest(topic="news", event=ebpb.Event(payload=b"x"), request_id="p1")
    )
    assert repeated.id == published.id and repeated.receivers == published.receivers
    other_topic = await events.Publish(
        ebpb.PublishRequest(topic="sport", event=ebpb.Event(payload=b"x"), request_id="p1")
    )
    assert other_topic.id != published.id


async def test_a_retried_publish_reaches_subscribers_once(events):
    stream = events.Subscribe(ebpb.SubscribeRequest(topics=["live"]))
    received: list[bytes] = []

    async def read() -> None:
        async for message in stream:
            if message.HasField("message"):
                received.append(message.message.event.payload)

    reader = asyncio.ensure_future(read())
    try:
        for _ in range(100):
            probe = await events.Publish(
                ebpb.PublishRequest(topic="live", event=ebpb.Event(payload=b"probe"))
            )
            if probe.receivers:
                break
            await asyncio.sleep(0.05)
        for payload in (b"one", b"one", b"one"):
            await events.Publish(
                ebpb.PublishRequest(
                    topic="live", event=ebpb.Event(payload=payload), request_id="pub-1"
                )
            )
        await events.Publish(ebpb.PublishRequest(topic="live", event=ebpb.Event(payload=b"end")))
        for _ in range(200):
            if b"end" in received:
                break
            await asyncio.sleep(0.01)
        assert [p for p in received if p != b"probe"] == [b"one", b"end"]
    finally:
        stream.cancel()
        reader.cancel()


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "slash/y", "é"])
async def test_a_bad_request_id_is_refused(cache, events, bad):
    error = await rpc_error(cache.Increment(pb.IncrementRequest(key="k", request_id=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]
    error = await rpc_error(
        events.Append(
            ebpb.AppendRequest(stream="s", event=ebpb.Event(payload=b"x"), request_id=bad)
        )
    )
    assert bad_fields(error) == ["request_id"]


@pytest.mark.topologies("standalone", reason="the window is topology-neutral")
async def test_a_retry_after_the_window_is_applied_again(redis_url):
    settings = make_settings(redis_url, idempotency_window="PT0.2S")
    async with running(settings) as app, channel_to(app.port, "window") as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        key = f"w-{uuid.uuid4().hex}"
        first = await cache.Increment(pb.IncrementRequest(key=key, request_id="r"))
        second = await cache.Increment(pb.IncrementRequest(key=key, request_id="r"))
        assert first.int_value == second.int_value == 1
        await asyncio.sleep(0.3)
        third = await cache.Increment(pb.IncrementRequest(key=key, request_id="r"))
        assert third.int_value == 2


async def test_a_request_id_reused_by_an_integer_increment_after_a_float_one_is_invalid(cache):
    """Found by the fuzzer: the remembered float result cannot answer an integer call."""
    first = await cache.Increment(pb.IncrementRequest(key="k", by_float=1.5, request_id="r-1"))
    assert first.float_value == 1.5
    error = await rpc_error(
        cache.Increment(pb.IncrementRequest(key="k", by_int=1, request_id="r-1"))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]
    await cache.HashIncrement(
        pb.HashIncrementRequest(key="h", field="f", by_float=0.5, request_id="r-2")
    )
    error = await rpc_error(
        cache.HashIncrement(pb.HashIncrementRequest(key="h", field="f", by_int=1, request_id="r-2"))
    )
    assert bad_fields(error) == ["request_id"]


async def test_a_request_id_reused_after_a_float_result_without_a_decimal_point_is_invalid(cache):
    """Found by the fuzzer: Redis stores 1e300 as a 301-digit number, which parses as an
    integer but no int64 holds; it answered INTERNAL."""
    await cache.Increment(pb.IncrementRequest(key="big", by_float=1e300, request_id="r-3"))
    error = await rpc_error(
        cache.Increment(pb.IncrementRequest(key="big", by_int=1, request_id="r-3"))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]
    await cache.HashIncrement(
        pb.HashIncrementRequest(key="hb", field="f", by_float=1e300, request_id="r-4")
    )
    error = await rpc_error(
        cache.HashIncrement(
            pb.HashIncrementRequest(key="hb", field="f", by_int=1, request_id="r-4")
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]
