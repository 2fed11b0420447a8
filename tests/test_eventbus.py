"""EventBusService against real Redis: pub/sub fan-out and its failure modes; durable
streams, consumer groups, claims and dead letters; and every bad input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as pb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from cachet_server.app import running
from cachet_server.backend.keys import Kind, StreamKeys, redis_key
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from redis.crc import key_slot

from .conftest import bad_fields, error_reason, make_settings, rpc_error
from .redis_procs import ClusterGroup, RedisProcess, SentinelGroup
from .redis_waits import blocked_clients, until_blocked

MS = 1_000_000  # nanoseconds


def _ms(n: int) -> Duration:
    return Duration(seconds=n // 1000, nanos=(n % 1000) * MS)


class _UnaryNamespace(aio.UnaryUnaryClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = [*(details.metadata or []), ("cachet-namespace", self.namespace)]
        return await continuation(details._replace(metadata=metadata), request)


class _StreamNamespace(aio.UnaryStreamClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def intercept_unary_stream(self, continuation, details, request):
        metadata = [*(details.metadata or []), ("cachet-namespace", self.namespace)]
        return await continuation(details._replace(metadata=metadata), request)


@contextlib.asynccontextmanager
async def bus_for(
    port: int, namespace: str
) -> AsyncIterator[eventbus_pb2_grpc.EventBusServiceStub]:
    # One interceptor per call kind: grpc.aio files an interceptor under the first
    # kind it implements only.
    interceptors = [_UnaryNamespace(namespace), _StreamNamespace(namespace)]
    async with aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
        yield eventbus_pb2_grpc.EventBusServiceStub(channel)


@pytest.fixture
async def bus(cachet, namespace) -> AsyncIterator[eventbus_pb2_grpc.EventBusServiceStub]:
    async with bus_for(cachet.port, namespace) as stub:
        yield stub


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Until `check()` holds (Redis drops a closed connection's subscriptions when it
    reads the close, a moment after the server closed it)."""
    async with asyncio.timeout(5):
        while not await check():  # noqa: ASYNC110 (polling Redis, nothing to wait on)
            await asyncio.sleep(0.02)


async def _primaries(app: Any) -> list[Any]:
    await app.backend.redis.initialize()
    return list(app.backend.topology.primaries())


async def numsub(app: Any, channel: str) -> int:
    """Subscriptions to `channel` on every primary (Cluster counts per node)."""
    total = 0
    for node in await _primaries(app):
        ((_, count),) = await node.pubsub_numsub(channel)
        total += int(count)
    return total


async def numpat(app: Any) -> int:
    return sum([int(await node.pubsub_numpat()) for node in await _primaries(app)])


async def stream_error(call: Any) -> aio.AioRpcError:
    """The status a server stream ends with, reading (and dropping) what precedes it."""
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


async def read_message(call: Any) -> pb.TopicMessage:
    response = await asyncio.wait_for(call.read(), 5)
    assert response.WhichOneof("kind") == "message", response
    return response.message


async def subscribed(bus: Any, topics=(), patterns=()) -> Any:
    call = bus.Subscribe(pb.SubscribeRequest(topics=topics, patterns=patterns))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.WhichOneof("kind") == "active" and not first.active.reconnected
    return call


# -- pub/sub ---------------------------------------------------------------------


async def test_fan_out_reaches_every_topic_and_pattern_subscriber(bus, cachet, namespace):
    topic_subs = [await subscribed(bus, topics=["orders.created", "orders.paid"]) for _ in range(5)]
    # Distinct patterns, as PUBSUB NUMPAT counts distinct patterns, not subscriptions.
    patterns = ["orders.*", "orders*", "order*", "orde*", "ord*"]
    pattern_subs = [await subscribed(bus, patterns=[p]) for p in patterns]
    published = []
    for n in range(20):
        topic = "orders.created" if n % 2 else "orders.paid"
        reply = await bus.Publish(
            pb.PublishRequest(topic=topic, event=pb.Event(payload=b"%d" % n, type="t"))
        )
        assert reply.receivers == 10, "5 exact subscriptions + 5 pattern subscriptions"
        published.append((topic, reply.id, b"%d" % n))
    for call in topic_subs:
        got = [await read_message(call) for _ in published]
        assert [(m.topic, m.event.id, m.event.payload) for m in got] == published
        assert all(m.pattern == "" for m in got)
    for call, pattern in zip(pattern_subs, patterns, strict=True):
        got = [await read_message(call) for _ in published]
        assert [(m.topic, m.event.id, m.event.payload) for m in got] == published
        assert all(m.pattern == pattern for m in got)

    # A cancelled subscriber's Redis subscriptions go at once.
    created = redis_key(namespace, Kind.TOPIC, "orders.created")
    patterns_before = await numpat(cachet)
    assert await numsub(cachet, created) == 5
    for call in [*topic_subs[:2], *pattern_subs[:3]]:
        call.cancel()

    async def released() -> bool:
        # Each caller pattern is two Redis patterns (see backend/keys.scan_patterns).
        return await numsub(cachet, created) == 3 and await numpat(cachet) == patterns_before - 6

    await eventually(released)
    reply = await bus.Publish(pb.PublishRequest(topic="orders.paid", event=pb.Event()))
    assert reply.receivers == 5
    for call in [*topic_subs[2:], *pattern_subs[3:]]:
        call.cancel()

    async def all_released() -> bool:
        return await numsub(cachet, created) == 0 and await numpat(cachet) == patterns_before - 10

    await eventually(all_released)
    reply = await bus.Publish(pb.PublishRequest(topic="orders.paid", event=pb.Event()))
    assert reply.receivers == 0


async def test_subscription_fills_in_id_and_time_and_keeps_the_publishers(bus):
    call = await subscribed(bus, topics=["t"])
    when = Timestamp(seconds=1_700_000_000, nanos=5)
    await bus.Publish(
        pb.PublishRequest(
            topic="t",
            event=pb.Event(
                id="mine",
                source="/src",
                type="x.y",
                time=when,
                content_type="text/plain",
                payload=b"p",
                attributes={"a.b": "c"},
            ),
        )
    )
    mine = (await read_message(call)).event
    assert (mine.id, mine.source, mine.type, mine.time, mine.content_type, mine.payload) == (
        "mine",
        "/src",
        "x.y",
        when,
        "text/plain",
        b"p",
    )
    assert dict(mine.attributes) == {"a.b": "c"}
    before = time.time()
    reply = await bus.Publish(pb.PublishRequest(topic="t", event=pb.Event()))
    filled = (await read_message(call)).event
    assert filled.id == reply.id and len(filled.id) == 36, "a UUID when the publisher names none"
    assert abs(filled.time.ToNanoseconds() / 1e9 - before) < 5, "Redis time at publish"
    call.cancel()


async def test_patterns_never_match_another_namespace(bus, cachet, namespace):
    call = await subscribed(bus, patterns=["*"], topics=["{shared}t"])
    async with bus_for(cachet.port, namespace + "-other") as other:
        assert (await other.Publish(pb.PublishRequest(topic="x", event=pb.Event()))).receivers == 0
        reply = await other.Publish(pb.PublishRequest(topic="{shared}t", event=pb.Event()))
        assert reply.receivers == 0
    reply = await bus.Publish(pb.PublishRequest(topic="{shared}t", event=pb.Event()))
    assert reply.receivers == 2, "the exact topic and the '*' pattern"
    got = {(m.topic, m.pattern) for m in [await read_message(call), await read_message(call)]}
    assert got == {("{shared}t", ""), ("{shared}t", "*")}
    call.cancel()


async def test_glob_patterns_match_like_redis(bus):
    call = await subscribed(bus, patterns=["a?c", "x[yz]", "lit\\*"])
    for topic, receivers in [
        ("abc", 1),
        ("abbc", 0),
        ("xy", 1),
        ("xw", 0),
        ("lit*", 1),
        ("lit!", 0),
        ("{tag}abc", 0),
    ]:
        reply = await bus.Publish(pb.PublishRequest(topic=topic, event=pb.Event()))
        assert reply.receivers == receivers, topic
    assert [(await read_message(call)).pattern for _ in range(3)] == ["a?c", "x[yz]", "lit\\*"]
    call.cancel()


async def test_slow_subscriber_ends_with_resource_exhausted(cachet, namespace):
    settings = make_settings(cachet.settings.redis_url, eventbus={"subscriber_buffer": 4})
    async with running(settings) as app, bus_for(app.port, namespace) as bus:
        call = await subscribed(bus, topics=["firehose"])
        channel = redis_key(namespace, Kind.TOPIC, "firehose")
        sent = 0
        payload = b"x" * 64 * 1024
        # The client reads nothing: gRPC's flow-control window fills, then the 4-event
        # buffer, and the server gives the subscriber up (and its Redis subscription).
        while sent < 2000:
            reply = await bus.Publish(
                pb.PublishRequest(topic="firehose", event=pb.Event(payload=payload))
            )
            if reply.receivers == 0:
                break
            sent += 1
        assert sent < 2000, "the subscription was never dropped"
        assert await numsub(app, channel) == 0
        error = await stream_error(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "SUBSCRIBER_TOO_SLOW"
        print(f"\nslow subscriber dropped after {sent} events of 64 KiB")


async def test_subscribers_beyond_the_limit_are_refused(cachet, namespace):
    settings = make_settings(cachet.settings.redis_url, eventbus={"max_subscribers": 2})
    async with running(settings) as app, bus_for(app.port, namespace) as bus:
        first = await subscribed(bus, topics=["a"])
        second = await subscribed(bus, patterns=["b*"])
        error = await stream_error(bus.Subscribe(pb.SubscribeRequest(topics=["c"])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "TOO_MANY_SUBSCRIBERS"
        first.cancel()
        await asyncio.sleep(0.2)
        third = await subscribed(bus, topics=["c"])
        for call in (second, third):
            call.cancel()


async def _kill_subscriber_connections(app: Any) -> int:
    killed = 0
    for node in await _primaries(app):
        for client in await node.client_list(_type="pubsub"):
            if client.get("name") == "cachet-subscriber":
                await node.client_kill_filter(_id=client["id"])
                killed += 1
    return killed


async def test_dropped_redis_connection_is_restored(bus, cachet):
    call = await subscribed(bus, topics=["t"], patterns=["p.*"])
    assert await _kill_subscriber_connections(cachet) >= 1
    restored = await asyncio.wait_for(call.read(), 10)
    assert restored.WhichOneof("kind") == "active" and restored.active.reconnected
    assert (await bus.Publish(pb.PublishRequest(topic="t", event=pb.Event()))).receivers == 1
    assert (await bus.Publish(pb.PublishRequest(topic="p.q", event=pb.Event()))).receivers == 1
    assert [(await read_message(call)).topic for _ in range(2)] == ["t", "p.q"]
    call.cancel()


async def test_subscription_survives_a_redis_restart_within_the_window(namespace):
    redis = RedisProcess().start()
    try:
        settings = make_settings(redis.url, eventbus={"reconnect_window": "PT10S"})
        async with running(settings) as app, bus_for(app.port, namespace) as bus:
            call = await subscribed(bus, topics=["t"])
            redis.kill()
            await asyncio.sleep(0.5)
            redis = RedisProcess(port=redis.port).start()
            restored = await asyncio.wait_for(call.read(), 10)
            assert restored.active.reconnected
            assert (
                await bus.Publish(pb.PublishRequest(topic="t", event=pb.Event()))
            ).receivers == 1
            assert (await read_message(call)).topic == "t"
            call.cancel()
    finally:
        redis.stop()


@pytest.mark.parametrize("deployment", [SentinelGroup, ClusterGroup], ids=["sentinel", "cluster"])
async def test_subscription_follows_a_failover(deployment, namespace):
    group = deployment().start()
    try:
        async with running(make_settings(group.url)) as app, bus_for(app.port, namespace) as bus:
            call = await subscribed(bus, topics=["t"])
            if isinstance(group, ClusterGroup):
                # The primary that carries the namespace's pub/sub.
                client = group.client()
                primary = group.node(client.get_node_from_key(namespace).port)
                client.close()
            else:
                primary = group.master()
            primary.kill()
            restored = await asyncio.wait_for(call.read(), 30)
            assert restored.active.reconnected
            reply = await bus.Publish(pb.PublishRequest(topic="t", event=pb.Event(payload=b"p")))
            assert reply.receivers == 1, "counted on the new primary"
            assert (await read_message(call)).event.payload == b"p"
            call.cancel()
    finally:
        group.stop()


async def test_subscription_ends_unavailable_when_redis_stays_away(namespace):
    redis = RedisProcess().start()
    try:
        settings = make_settings(redis.url, eventbus={"reconnect_window": "PT1S"})
        async with running(settings) as app, bus_for(app.port, namespace) as bus:
            call = await subscribed(bus, topics=["t"])
            redis.kill()
            started = time.monotonic()
            error = await asyncio.wait_for(stream_error(call), 10)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert 0.9 <= time.monotonic() - started < 8
    finally:
        redis.stop()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.SubscribeRequest(), "topics"),
        (pb.SubscribeRequest(topics=[""]), "topics[0]"),
        (pb.SubscribeRequest(topics=["a"], patterns=["x", "dangling\\"]), "patterns[1]"),
        (pb.SubscribeRequest(patterns=["[unclosed"]), "patterns[0]"),
        (pb.SubscribeRequest(topics=["t"] * 1 + [str(n) for n in range(100)]), "topics"),
        (pb.SubscribeRequest(topics=["k" * 2000]), "topics[0]"),
    ],
)
async def test_subscribe_rejects_bad_requests(bus, request_, field):
    error = await stream_error(bus.Subscribe(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PublishRequest(event=pb.Event()), "topic"),
        (pb.PublishRequest(topic="t"), "event"),
        (pb.PublishRequest(topic="t", event=pb.Event(id="i" * 257)), "event.id"),
        (pb.PublishRequest(topic="t", event=pb.Event(delivery_count=1)), "event.delivery_count"),
        (
            pb.PublishRequest(topic="t", event=pb.Event(dead_letter=pb.DeadLetterInfo())),
            "event.dead_letter",
        ),
        (pb.PublishRequest(topic="t", event=pb.Event(source="s" * 1025)), "event.source"),
        (
            pb.PublishRequest(topic="t", event=pb.Event(content_type="c" * 257)),
            "event.content_type",
        ),
        (
            pb.PublishRequest(topic="t", event=pb.Event(attributes={"Upper": "v"})),
            "event.attributes[Upper]",
        ),
        (
            pb.PublishRequest(topic="t", event=pb.Event(attributes={"cachet.x": "v"})),
            "event.attributes[cachet.x]",
        ),
        (
            pb.PublishRequest(topic="t", event=pb.Event(attributes={"a": "v" * 4097})),
            "event.attributes[a]",
        ),
        (
            pb.PublishRequest(
                topic="t", event=pb.Event(attributes={f"k{n}": "" for n in range(65)})
            ),
            "event.attributes",
        ),
        (
            pb.PublishRequest(topic="t", event=pb.Event(time=Timestamp(seconds=-(10**12)))),
            "event.time",
        ),
        (pb.PublishRequest(topic="t", event=pb.Event(payload=b"x" * (1024 * 1024 + 1))), "event"),
    ],
)
async def test_publish_rejects_bad_requests(bus, request_, field):
    error = await rpc_error(bus.Publish(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


# -- durable streams -----------------------------------------------------------------


def test_a_stream_its_dead_letters_and_policies_share_a_slot():
    for name in ("orders", "{user:1}:orders", "a:b:c"):
        keys = StreamKeys.of("ns", name)
        assert keys.dead is not None and keys.policies is not None
        assert len({key_slot(k.encode()) for k in (keys.stream, keys.dead, keys.policies)}) == 1
        assert StreamKeys.of("ns", name + ":dead").stream == keys.dead
    dead = StreamKeys.of("ns", "orders:dead")
    assert dead.dead is None and dead.policies is None
    assert StreamKeys.of("ns", "orders").stream != StreamKeys.of("other", "orders").stream


async def append(bus: Any, stream: str, n: int, **event: Any) -> list[str]:
    return [
        (
            await bus.Append(
                pb.AppendRequest(stream=stream, event=pb.Event(payload=b"%d" % i, **event))
            )
        ).id
        for i in range(n)
    ]


async def test_append_read_and_range_round_trip_events(bus):
    when = Timestamp(seconds=1_700_000_000, nanos=123_456_789)
    first = await bus.Append(
        pb.AppendRequest(
            stream="s",
            event=pb.Event(
                source="/orders",
                type="order.created",
                time=when,
                content_type="application/json",
                payload=b'{"id": 1}',
                attributes={"tenant": "acme", "trace.id": "abc"},
            ),
        )
    )
    second = await bus.Append(pb.AppendRequest(stream="s", event=pb.Event()))
    read = await bus.Read(pb.ReadRequest(stream="s"))
    assert [e.id for e in read.events] == [first.id, second.id]
    assert read.last_id == second.id
    event = read.events[0]
    assert (event.source, event.type, event.time, event.content_type, event.payload) == (
        "/orders",
        "order.created",
        when,
        "application/json",
        b'{"id": 1}',
    )
    assert dict(event.attributes) == {"tenant": "acme", "trace.id": "abc"}
    assert event.delivery_count == 0 and not event.HasField("dead_letter")
    undated = read.events[1]
    assert undated.time.ToMilliseconds() == int(second.id.split("-")[0]), "dated by its id"
    after = await bus.Read(pb.ReadRequest(stream="s", after_id=first.id))
    assert [e.id for e in after.events] == [second.id]
    nothing = await bus.Read(pb.ReadRequest(stream="s", after_id=second.id))
    assert list(nothing.events) == [] and nothing.last_id == second.id
    missing = await bus.Read(pb.ReadRequest(stream="nothing-here"))
    assert list(missing.events) == [] and missing.last_id == "0-0"


async def test_range_pages_forward_and_backward(bus):
    ids = await append(bus, "s", 25)

    async def pages(**request: Any) -> list[list[str]]:
        found, token = [], ""
        while True:
            page = await bus.Range(
                pb.RangeRequest(stream="s", page_size=10, page_token=token, **request)
            )
            found.append([e.id for e in page.events])
            token = page.next_page_token
            if not token:
                return found

    assert await pages() == [ids[:10], ids[10:20], ids[20:]]
    assert await pages(reverse=True) == [ids[::-1][:10], ids[::-1][10:20], ids[::-1][20:]]
    assert await pages(start=ids[5], end=ids[14]) == [ids[5:15]]
    assert await pages(start="(" + ids[5], end="(" + ids[15]) == [ids[6:15]]
    exact = await bus.Range(pb.RangeRequest(stream="s", page_size=25))
    assert len(exact.events) == 25 and exact.next_page_token == ""
    assert (await bus.Range(pb.RangeRequest(stream="nothing-here"))).events == []


async def test_read_waits_for_the_next_event(bus, cachet):
    await append(bus, "s", 3)
    already_blocked = len(await blocked_clients(cachet))
    waiting = asyncio.ensure_future(
        bus.Read(pb.ReadRequest(stream="s", after_id="$", block=_ms(5000)))
    )
    # Appended before the read is in place, the event would come before its "$".
    await until_blocked(cachet, already_blocked + 1)
    assert not waiting.done()
    (new_id,) = await append(bus, "s", 1, type="late")
    read = await asyncio.wait_for(waiting, 5)
    assert [e.id for e in read.events] == [new_id] and read.events[0].type == "late"


async def test_read_wait_ends_empty_at_block_or_deadline(bus):
    (last,) = await append(bus, "s", 1)
    started = time.monotonic()
    read = await bus.Read(pb.ReadRequest(stream="s", after_id="$", block=_ms(300)))
    assert list(read.events) == [] and read.last_id == last
    assert 0.25 <= time.monotonic() - started < 3
    read = await bus.Read(pb.ReadRequest(stream="s", after_id=last, block=_ms(30_000)), timeout=2)
    assert list(read.events) == [], "an expired wait answers empty, not DEADLINE_EXCEEDED"


async def test_append_max_len_and_trim(bus):
    for _ in range(5):
        await asyncio.gather(
            *(
                bus.Append(pb.AppendRequest(stream="s", event=pb.Event(), max_len=100))
                for _ in range(200)
            )
        )
    info = await bus.Info(pb.InfoRequest(stream="s"))
    assert 100 <= info.length < 1000, "approximate: never fewer, maybe somewhat more"
    assert info.entries_added in (0, 1000)
    trimmed = await bus.Trim(pb.TrimRequest(stream="s", max_len=10))
    assert trimmed.trimmed == info.length - 10
    ids = [e.id for e in (await bus.Range(pb.RangeRequest(stream="s"))).events]
    assert len(ids) == 10
    trimmed = await bus.Trim(pb.TrimRequest(stream="s", min_id=ids[4]))
    assert trimmed.trimmed == 4
    assert (await bus.Info(pb.InfoRequest(stream="s"))).first_id == ids[4]
    assert (await bus.Trim(pb.TrimRequest(stream="gone", max_len=0))).trimmed == 0


async def test_consumer_group_lifecycle(bus):
    error = await rpc_error(bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "STREAM_NOT_FOUND"
    created = await bus.CreateGroup(
        pb.CreateGroupRequest(stream="s", group="g", create_stream=True)
    )
    assert created.created
    error = await rpc_error(bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "GROUP_EXISTS"
    again = await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", if_not_exists=True))
    assert not again.created
    assert (await bus.DeleteGroup(pb.DeleteGroupRequest(stream="s", group="g"))).deleted
    assert not (await bus.DeleteGroup(pb.DeleteGroupRequest(stream="s", group="g"))).deleted
    assert not (await bus.DeleteGroup(pb.DeleteGroupRequest(stream="none", group="g"))).deleted


async def test_calls_on_a_missing_group_fail_group_not_found(bus):
    await append(bus, "s", 1)
    for call in (
        bus.Ack(pb.AckRequest(stream="s", group="nope", ids=["1-0"])),
        bus.Pending(pb.PendingRequest(stream="s", group="nope")),
        bus.ListPending(pb.ListPendingRequest(stream="s", group="nope")),
        bus.Claim(pb.ClaimRequest(stream="s", group="nope", consumer="c", min_idle=_ms(1))),
        bus.Ack(pb.AckRequest(stream="missing", group="nope", ids=["1-0"])),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "GROUP_NOT_FOUND"
    error = await stream_error(
        bus.Consume(pb.ConsumeRequest(stream="s", group="nope", consumer="c"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "GROUP_NOT_FOUND"


async def test_a_deleted_group_ends_its_consumers(bus):
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", create_stream=True))
    call = bus.Consume(pb.ConsumeRequest(stream="s", group="g", consumer="c", block=_ms(200)))
    await asyncio.sleep(0.3)
    await bus.DeleteGroup(pb.DeleteGroupRequest(stream="s", group="g"))
    error = await asyncio.wait_for(stream_error(call), 5)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "GROUP_NOT_FOUND"


async def test_consume_delivers_batches_then_ack_empties_pending(bus):
    ids = await append(bus, "s", 25)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    call = bus.Consume(pb.ConsumeRequest(stream="s", group="g", consumer="c", batch_size=10))
    batches = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
    call.cancel()
    assert [len(b.events) for b in batches] == [10, 10, 5]
    delivered = [e.id for b in batches for e in b.events]
    assert delivered == ids
    assert all(e.delivery_count == 1 for b in batches for e in b.events)

    pending = await bus.Pending(pb.PendingRequest(stream="s", group="g"))
    assert (pending.count, pending.min_id, pending.max_id) == (25, ids[0], ids[-1])
    assert [(c.consumer, c.count) for c in pending.consumers] == [("c", 25)]
    listed, token = [], ""
    while True:
        page = await bus.ListPending(
            pb.ListPendingRequest(stream="s", group="g", page_size=10, page_token=token)
        )
        listed += list(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.id for e in listed] == ids
    assert all(e.consumer == "c" and e.delivery_count == 1 for e in listed)
    only_other = await bus.ListPending(pb.ListPendingRequest(stream="s", group="g", consumer="x"))
    assert list(only_other.entries) == []
    idle_long = await bus.ListPending(
        pb.ListPendingRequest(stream="s", group="g", min_idle=_ms(60_000))
    )
    assert list(idle_long.entries) == []

    acked = await bus.Ack(pb.AckRequest(stream="s", group="g", ids=ids[:20] + ids[:5]))
    assert acked.acked == 20
    assert (await bus.Ack(pb.AckRequest(stream="s", group="g", ids=ids))).acked == 5
    assert (await bus.Ack(pb.AckRequest(stream="s", group="g", ids=ids))).acked == 0
    pending = await bus.Pending(pb.PendingRequest(stream="s", group="g"))
    assert (pending.count, pending.min_id, list(pending.consumers)) == (0, "", [])


async def test_consume_redelivers_its_own_pending_events_first(bus):
    ids = await append(bus, "s", 4)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    # max_pending: else the server would already have sent (delivered) the next batch.
    call = bus.Consume(
        pb.ConsumeRequest(stream="s", group="g", consumer="c", batch_size=3, max_pending=3)
    )
    first = await asyncio.wait_for(call.read(), 5)
    call.cancel()
    assert [e.id for e in first.events] == ids[:3]
    later = await append(bus, "s", 1)
    call = bus.Consume(
        pb.ConsumeRequest(stream="s", group="g", consumer="c", batch_size=2, redeliver_pending=True)
    )
    batches = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
    call.cancel()
    assert [[(e.id, e.delivery_count) for e in b.events] for b in batches] == [
        [(ids[0], 2), (ids[1], 2)],
        [(ids[2], 2)],
        [(ids[3], 1), (later[0], 1)],
    ]


async def test_consume_auto_claims_events_a_dead_consumer_left(bus):
    ids = await append(bus, "s", 5)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    dead = bus.Consume(pb.ConsumeRequest(stream="s", group="g", consumer="dead", batch_size=5))
    assert len((await asyncio.wait_for(dead.read(), 5)).events) == 5
    dead.cancel()
    heir = bus.Consume(
        pb.ConsumeRequest(
            stream="s",
            group="g",
            consumer="heir",
            block=_ms(100),
            auto_claim_min_idle=_ms(300),
        )
    )
    started = time.monotonic()
    batch = await asyncio.wait_for(heir.read(), 5)
    heir.cancel()
    assert time.monotonic() - started >= 0.2, "only once idle for auto_claim_min_idle"
    assert [(e.id, e.delivery_count) for e in batch.events] == [(i, 2) for i in ids]
    pending = await bus.Pending(pb.PendingRequest(stream="s", group="g"))
    assert [(c.consumer, c.count) for c in pending.consumers] == [("heir", 5)]


async def test_consume_max_pending_pauses_until_acks(bus):
    ids = await append(bus, "s", 12)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    call = bus.Consume(
        pb.ConsumeRequest(
            stream="s", group="g", consumer="c", batch_size=10, max_pending=5, block=_ms(100)
        )
    )
    first = await asyncio.wait_for(call.read(), 5)
    assert [e.id for e in first.events] == ids[:5]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(second := asyncio.ensure_future(call.read())), 0.5)
    await bus.Ack(pb.AckRequest(stream="s", group="g", ids=ids[:3]))
    assert [e.id for e in (await asyncio.wait_for(second, 5)).events] == ids[5:8]
    call.cancel()


async def test_claim_by_sweep_and_by_ids(bus):
    ids = await append(bus, "s", 7)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    call = bus.Consume(pb.ConsumeRequest(stream="s", group="g", consumer="a", batch_size=7))
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    await asyncio.sleep(0.05)
    too_fresh = await bus.Claim(
        pb.ClaimRequest(stream="s", group="g", consumer="b", min_idle=_ms(60_000))
    )
    assert list(too_fresh.events) == [] and too_fresh.next_start_id == ""
    swept, start = [], ""
    while True:
        claimed = await bus.Claim(
            pb.ClaimRequest(
                stream="s", group="g", consumer="b", min_idle=_ms(10), count=3, start_id=start
            )
        )
        swept += [(e.id, e.delivery_count, e.payload) for e in claimed.events]
        start = claimed.next_start_id
        if not start:
            break
    assert swept == [(i, 2, b"%d" % n) for n, i in enumerate(ids)]
    await asyncio.sleep(0.05)
    by_id = await bus.Claim(
        pb.ClaimRequest(
            stream="s", group="g", consumer="c", min_idle=_ms(10), ids=[ids[6], ids[2], "1-1"]
        )
    )
    assert sorted((e.id, e.delivery_count) for e in by_id.events) == sorted(
        [(ids[6], 3), (ids[2], 3)]
    )
    assert by_id.next_start_id == ""
    pending = await bus.Pending(pb.PendingRequest(stream="s", group="g"))
    assert sorted((c.consumer, c.count) for c in pending.consumers) == [("b", 5), ("c", 2)]


async def test_claim_drops_pending_entries_of_trimmed_events(bus):
    ids = await append(bus, "s", 3)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    call = bus.Consume(pb.ConsumeRequest(stream="s", group="g", consumer="a", batch_size=3))
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    await bus.Trim(pb.TrimRequest(stream="s", min_id=ids[2]))
    await asyncio.sleep(0.02)
    claimed = await bus.Claim(pb.ClaimRequest(stream="s", group="g", consumer="b", min_idle=_ms(1)))
    assert list(claimed.deleted_ids) == ids[:2]
    assert [e.id for e in claimed.events] == ids[2:]
    assert (await bus.Pending(pb.PendingRequest(stream="s", group="g"))).count == 1


async def test_an_event_failing_max_deliveries_times_is_dead_lettered(bus):
    when = Timestamp(seconds=1_700_000_000)
    (poison,) = [
        (
            await bus.Append(
                pb.AppendRequest(
                    stream="jobs",
                    event=pb.Event(time=when, payload=b"poison", attributes={"try": "me"}),
                )
            )
        ).id
    ]
    (fine,) = await append(bus, "jobs", 1)
    await bus.CreateGroup(
        pb.CreateGroupRequest(
            stream="jobs",
            group="workers",
            start_id="0",
            dead_letter=pb.DeadLetterPolicy(max_deliveries=3, max_len=1000),
        )
    )
    call = bus.Consume(
        pb.ConsumeRequest(stream="jobs", group="workers", consumer="w1", batch_size=2)
    )
    first = await asyncio.wait_for(call.read(), 5)
    call.cancel()
    assert [(e.id, e.delivery_count) for e in first.events] == [(poison, 1), (fine, 1)]
    await bus.Ack(pb.AckRequest(stream="jobs", group="workers", ids=[fine]))
    # The worker keeps failing on it: two more deliveries through Claim...
    for attempt in (2, 3):
        await asyncio.sleep(0.02)
        claimed = await bus.Claim(
            pb.ClaimRequest(stream="jobs", group="workers", consumer=f"w{attempt}", min_idle=_ms(1))
        )
        assert [(e.id, e.delivery_count) for e in claimed.events] == [(poison, attempt)]
    # ...and the next takeover moves it to the dead-letter stream instead.
    await asyncio.sleep(0.02)
    heir = bus.Consume(
        pb.ConsumeRequest(
            stream="jobs",
            group="workers",
            consumer="w4",
            auto_claim_min_idle=_ms(1),
            block=_ms(100),
        )
    )
    report = await asyncio.wait_for(heir.read(), 5)
    heir.cancel()
    assert list(report.events) == [] and list(report.dead_lettered_ids) == [poison]
    assert (await bus.Pending(pb.PendingRequest(stream="jobs", group="workers"))).count == 0

    dead = (await bus.Range(pb.RangeRequest(stream="jobs:dead"))).events
    assert len(dead) == 1
    letter = dead[0]
    assert (letter.payload, dict(letter.attributes), letter.time) == (
        b"poison",
        {"try": "me"},
        when,
    )
    info = letter.dead_letter
    assert (info.original_stream, info.original_id, info.group, info.last_consumer) == (
        "jobs",
        poison,
        "workers",
        "w3",
    )
    assert info.delivery_count == 3
    assert abs(info.dead_lettered_time.ToSeconds() - time.time()) < 30
    described = await bus.Info(pb.InfoRequest(stream="jobs"))
    assert described.dead_letter_length == 1
    assert described.groups[0].dead_letter.max_deliveries == 3
    assert described.groups[0].dead_letter.max_len == 1000

    # The dead-letter stream is an ordinary stream, with groups of its own.
    await bus.CreateGroup(pb.CreateGroupRequest(stream="jobs:dead", group="triage", start_id="0"))
    triage = bus.Consume(pb.ConsumeRequest(stream="jobs:dead", group="triage", consumer="ops"))
    assert [
        e.dead_letter.original_id for e in (await asyncio.wait_for(triage.read(), 5)).events
    ] == [poison]
    triage.cancel()
    error = await rpc_error(
        bus.CreateGroup(
            pb.CreateGroupRequest(
                stream="jobs:dead", group="x", dead_letter=pb.DeadLetterPolicy(max_deliveries=1)
            )
        )
    )
    assert bad_fields(error) == ["dead_letter.max_deliveries"]


async def test_info_describes_groups_and_consumers(bus):
    ids = await append(bus, "s", 3)
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g1", start_id="0"))
    await bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g2"))
    call = bus.Consume(
        pb.ConsumeRequest(stream="s", group="g1", consumer="c", batch_size=2, max_pending=2)
    )
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    info = await bus.Info(pb.InfoRequest(stream="s", include_consumers=True))
    assert (info.length, info.first_id, info.last_id, info.last_generated_id) == (
        3,
        ids[0],
        ids[2],
        ids[2],
    )
    assert info.dead_letter_length == 0
    groups = {g.name: g for g in info.groups}
    assert (groups["g1"].consumer_count, groups["g1"].pending) == (1, 2)
    assert groups["g1"].last_delivered_id == ids[1]
    assert [(c.name, c.pending) for c in groups["g1"].consumers] == [("c", 2)]
    assert groups["g2"].last_delivered_id == ids[2] and groups["g2"].pending == 0
    assert groups["g2"].dead_letter.max_deliveries == 0
    bare = await bus.Info(pb.InfoRequest(stream="s"))
    assert all(len(g.consumers) == 0 for g in bare.groups)
    error = await rpc_error(bus.Info(pb.InfoRequest(stream="nothing-here")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "STREAM_NOT_FOUND"


async def test_streams_of_namespaces_are_apart(bus, cachet, namespace):
    await append(bus, "shared", 2)
    async with bus_for(cachet.port, namespace + "-other") as other:
        assert list((await other.Read(pb.ReadRequest(stream="shared"))).events) == []
        await append(other, "shared", 1)
    assert len((await bus.Read(pb.ReadRequest(stream="shared"))).events) == 2


async def test_a_key_of_another_type_is_wrong_type(bus, cachet, namespace):
    await cachet.backend.redis.set(StreamKeys.of(namespace, "s").stream, b"not a stream")
    for call in (
        bus.Append(pb.AppendRequest(stream="s", event=pb.Event())),
        bus.Read(pb.ReadRequest(stream="s")),
        bus.CreateGroup(pb.CreateGroupRequest(stream="s", group="g")),
        bus.Info(pb.InfoRequest(stream="s")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "WRONG_TYPE"


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Append", pb.AppendRequest(event=pb.Event()), "stream"),
        ("Append", pb.AppendRequest(stream=":dead", event=pb.Event()), "stream"),
        ("Append", pb.AppendRequest(stream="s"), "event"),
        ("Append", pb.AppendRequest(stream="s", event=pb.Event(id="1-1")), "event.id"),
        ("Append", pb.AppendRequest(stream="s", event=pb.Event(), max_len=0), "max_len"),
        ("Read", pb.ReadRequest(stream="s", after_id="abc"), "after_id"),
        ("Read", pb.ReadRequest(stream="s", after_id="1-2-3"), "after_id"),
        ("Read", pb.ReadRequest(stream="s", after_id="18446744073709551616"), "after_id"),
        ("Read", pb.ReadRequest(stream="s", count=1001), "count"),
        ("Read", pb.ReadRequest(stream="s", block=Duration(seconds=-1)), "block"),
        ("Range", pb.RangeRequest(stream="s", start="x"), "start"),
        ("Range", pb.RangeRequest(stream="s", end="(0-0"), "end"),
        ("Range", pb.RangeRequest(stream="s", page_token="garbage!"), "page_token"),
        ("Range", pb.RangeRequest(stream="s", page_size=-1), "page_size"),
        ("CreateGroup", pb.CreateGroupRequest(stream="s"), "group"),
        ("CreateGroup", pb.CreateGroupRequest(stream="s", group="g" * 257), "group"),
        ("CreateGroup", pb.CreateGroupRequest(stream="s", group="g", start_id="x"), "start_id"),
        (
            "CreateGroup",
            pb.CreateGroupRequest(
                stream="s", group="g", dead_letter=pb.DeadLetterPolicy(max_deliveries=10_001)
            ),
            "dead_letter.max_deliveries",
        ),
        (
            "CreateGroup",
            pb.CreateGroupRequest(
                stream="s", group="g", dead_letter=pb.DeadLetterPolicy(max_len=-1)
            ),
            "dead_letter.max_len",
        ),
        ("DeleteGroup", pb.DeleteGroupRequest(stream="s"), "group"),
        ("Ack", pb.AckRequest(stream="s", group="g"), "ids"),
        ("Ack", pb.AckRequest(stream="s", group="g", ids=["x"]), "ids[0]"),
        ("Ack", pb.AckRequest(stream="s", group="g", ids=["1-0"] * 1001), "ids"),
        ("Pending", pb.PendingRequest(stream="s"), "group"),
        ("ListPending", pb.ListPendingRequest(stream="s", group="g", page_size=1001), "page_size"),
        ("ListPending", pb.ListPendingRequest(stream="s", group="g", page_token="x"), "page_token"),
        ("Claim", pb.ClaimRequest(stream="s", group="g", consumer="c"), "min_idle"),
        ("Claim", pb.ClaimRequest(stream="s", group="g", min_idle=_ms(1)), "consumer"),
        (
            "Claim",
            pb.ClaimRequest(stream="s", group="g", consumer="c", min_idle=Duration()),
            "min_idle",
        ),
        (
            "Claim",
            pb.ClaimRequest(stream="s", group="g", consumer="c", min_idle=_ms(1), start_id="?"),
            "start_id",
        ),
        ("Trim", pb.TrimRequest(stream="s"), "strategy"),
        ("Trim", pb.TrimRequest(stream="s", max_len=-1), "max_len"),
        ("Trim", pb.TrimRequest(stream="s", min_id="x"), "min_id"),
        ("Info", pb.InfoRequest(stream=""), "stream"),
    ],
)
async def test_stream_calls_reject_bad_requests(bus, method, request_, field):
    error = await rpc_error(getattr(bus, method)(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ConsumeRequest(group="g", consumer="c"), "stream"),
        (pb.ConsumeRequest(stream="s", consumer="c"), "group"),
        (pb.ConsumeRequest(stream="s", group="g"), "consumer"),
        (pb.ConsumeRequest(stream="s", group="g", consumer="c", batch_size=1001), "batch_size"),
        (
            pb.ConsumeRequest(stream="s", group="g", consumer="c", auto_claim_min_idle=Duration()),
            "auto_claim_min_idle",
        ),
        (pb.ConsumeRequest(stream="s", group="g", consumer="c", max_pending=-1), "max_pending"),
    ],
)
async def test_consume_rejects_bad_requests(bus, request_, field):
    error = await stream_error(bus.Consume(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]
