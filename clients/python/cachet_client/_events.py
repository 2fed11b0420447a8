"""EventBusService: pub/sub, durable streams, consumer groups, dead letters."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc

from ._core import Async, F, Service, Steps, Sync, duration, procedure, rpc, seconds
from .errors import from_rpc_error
from .proto.cachet.eventbus.v1 import eventbus_pb2 as pb
from .serializers import BYTES, Serializer

_SERVICE = "cachet.eventbus.v1.EventBusService"
PUBLISH = rpc(_SERVICE, "Publish", pb.PublishResponse, idempotent=False)
APPEND = rpc(_SERVICE, "Append", pb.AppendResponse, idempotent=False)
READ = rpc(_SERVICE, "Read", pb.ReadResponse, idempotent=True)
RANGE = rpc(_SERVICE, "Range", pb.RangeResponse, idempotent=True)
CREATE_GROUP = rpc(_SERVICE, "CreateGroup", pb.CreateGroupResponse, idempotent=False)
DELETE_GROUP = rpc(_SERVICE, "DeleteGroup", pb.DeleteGroupResponse, idempotent=True)
ACK = rpc(_SERVICE, "Ack", pb.AckResponse, idempotent=True)
PENDING = rpc(_SERVICE, "Pending", pb.PendingResponse, idempotent=True)
LIST_PENDING = rpc(_SERVICE, "ListPending", pb.ListPendingResponse, idempotent=True)
CLAIM = rpc(_SERVICE, "Claim", pb.ClaimResponse, idempotent=False)
TRIM = rpc(_SERVICE, "Trim", pb.TrimResponse, idempotent=True)
INFO = rpc(_SERVICE, "Info", pb.InfoResponse, idempotent=True)
SUBSCRIBE_PATH = f"/{_SERVICE}/Subscribe"
CONSUME_PATH = f"/{_SERVICE}/Consume"

Ttl = timedelta | float


@dataclass(frozen=True)
class Event:
    """An event (CloudEvents-like). `payload` is its bytes, `value` the payload decoded
    by the client's serializer; `dead_letter` is set in dead-letter streams."""

    id: str
    payload: bytes
    type: str = ""
    source: str = ""
    content_type: str = ""
    time: datetime | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    delivery_count: int = 0
    dead_letter: pb.DeadLetterInfo | None = None
    topic: str = ""
    serializer: Serializer = field(default=BYTES, repr=False, compare=False)

    @property
    def value(self) -> Any:
        """`payload` decoded by the client's serializer."""
        return self.serializer.loads(self.payload)


@dataclass(frozen=True)
class Claimed:
    """What Claim took over, which ids went to the dead-letter stream or were gone,
    and where to continue a sweep ("" when done)."""

    events: list[Event]
    dead_lettered_ids: list[str]
    deleted_ids: list[str]
    next_start_id: str


class Events(Service[F]):
    """EventBusService calls for one namespace."""

    def _event(self, message: pb.Event, topic: str = "") -> Event:
        return Event(
            id=message.id,
            payload=message.payload,
            type=message.type,
            source=message.source,
            content_type=message.content_type,
            time=message.time.ToDatetime() if message.HasField("time") else None,
            attributes=dict(message.attributes),
            delivery_count=message.delivery_count,
            dead_letter=message.dead_letter if message.HasField("dead_letter") else None,
            topic=topic,
            serializer=self._serializer,
        )

    def _message(
        self,
        value: Any,
        type: str,
        source: str,
        content_type: str,
        attributes: Mapping[str, str] | None,
    ) -> pb.Event:
        return pb.Event(
            payload=self._encode(value),
            type=type,
            source=source,
            content_type=content_type,
            attributes=dict(attributes or {}),
        )

    @procedure
    def publish(
        self,
        topic: str,
        value: Any,
        *,
        type: str = "",
        source: str = "",
        content_type: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> Steps[int]:
        """Fire-and-forget: send `value` to the topic's current subscribers; answers how
        many received it."""
        event = self._message(value, type, source, content_type, attributes)
        request = pb.PublishRequest(topic=topic, event=event)
        reply = yield from self._call(PUBLISH, request, idempotent=self._deduplicated(request))
        return reply.receivers

    @procedure
    def append(
        self,
        stream: str,
        value: Any,
        *,
        type: str = "",
        source: str = "",
        content_type: str = "",
        attributes: Mapping[str, str] | None = None,
        max_len: int | None = None,
    ) -> Steps[str]:
        """Append to a durable stream (trimmed to about `max_len`); answers the id."""
        event = self._message(value, type, source, content_type, attributes)
        request = pb.AppendRequest(stream=stream, event=event, max_len=max_len)
        reply = yield from self._call(APPEND, request, idempotent=self._deduplicated(request))
        return reply.id

    @procedure
    def read(
        self, stream: str, *, after_id: str = "0", count: int = 0, block: Ttl | None = None
    ) -> Steps[tuple[list[Event], str]]:
        """Events after `after_id`, oldest first, waiting up to `block` for new ones;
        answers them and the id to pass as the next `after_id`."""
        request = pb.ReadRequest(
            stream=stream, after_id=after_id, count=count, block=duration(block)
        )
        reply = yield from self._call(READ, request, blocks_for=seconds(block))
        return [self._event(e) for e in reply.events], reply.last_id

    @procedure
    def range(
        self,
        stream: str,
        *,
        start: str = "-",
        end: str = "+",
        reverse: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> Steps[tuple[list[Event], str]]:
        """One page of a stream between two ids, and the next page's token ("" when done)."""
        request = pb.RangeRequest(
            stream=stream,
            start=start,
            end=end,
            reverse=reverse,
            page_size=page_size,
            page_token=page_token,
        )
        reply = yield from self._call(RANGE, request)
        return [self._event(e) for e in reply.events], reply.next_page_token

    @procedure
    def dead_letters(
        self, stream: str, *, page_size: int = 0, page_token: str = ""
    ) -> Steps[tuple[list[Event], str]]:
        """One page of the stream's dead letters (`<stream>:dead`), each with
        `dead_letter` saying where it came from, and the next page's token."""
        request = pb.RangeRequest(
            stream=f"{stream}:dead", page_size=page_size, page_token=page_token
        )
        reply = yield from self._call(RANGE, request)
        return [self._event(e) for e in reply.events], reply.next_page_token

    @procedure
    def create_group(
        self,
        stream: str,
        group: str,
        *,
        start_id: str = "$",
        create_stream: bool = True,
        if_not_exists: bool = True,
        max_deliveries: int = 0,
        dead_letter_max_len: int = 0,
    ) -> Steps[bool]:
        """Create a consumer group reading from `start_id` ("$": new events only, "0":
        everything); with `max_deliveries`, an event delivered that often goes to the
        dead-letter stream. Answers whether it was created."""
        policy = (
            pb.DeadLetterPolicy(max_deliveries=max_deliveries, max_len=dead_letter_max_len)
            if max_deliveries
            else None
        )
        request = pb.CreateGroupRequest(
            stream=stream,
            group=group,
            start_id=start_id,
            create_stream=create_stream,
            if_not_exists=if_not_exists,
            dead_letter=policy,
        )
        reply = yield from self._call(CREATE_GROUP, request, idempotent=if_not_exists)
        return reply.created

    @procedure
    def delete_group(self, stream: str, group: str) -> Steps[bool]:
        """Delete a consumer group; answers whether it existed."""
        reply = yield from self._call(
            DELETE_GROUP, pb.DeleteGroupRequest(stream=stream, group=group)
        )
        return reply.deleted

    @procedure
    def ack(self, stream: str, group: str, *ids: str) -> Steps[int]:
        """Acknowledge events: never redelivered to the group. Answers how many were
        pending (acking twice is harmless)."""
        reply = yield from self._call(ACK, pb.AckRequest(stream=stream, group=group, ids=ids))
        return reply.acked

    @procedure
    def pending(self, stream: str, group: str) -> Steps[pb.PendingResponse]:
        """The group's pending summary: count, id range, count per consumer."""
        reply = yield from self._call(PENDING, pb.PendingRequest(stream=stream, group=group))
        return reply

    @procedure
    def list_pending(
        self,
        stream: str,
        group: str,
        *,
        consumer: str = "",
        min_idle: Ttl | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Steps[pb.ListPendingResponse]:
        """One page of pending entries (id, consumer, idle, delivery count)."""
        request = pb.ListPendingRequest(
            stream=stream,
            group=group,
            consumer=consumer,
            min_idle=duration(min_idle),
            page_size=page_size,
            page_token=page_token,
        )
        reply = yield from self._call(LIST_PENDING, request)
        return reply

    @procedure
    def claim(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle: Ttl,
        count: int = 0,
        start_id: str = "",
        ids: Sequence[str] = (),
    ) -> Steps[Claimed]:
        """Take over events pending longer than `min_idle` (these `ids`, or a sweep from
        `start_id`); events past the group's max deliveries go to the dead letters."""
        request = pb.ClaimRequest(
            stream=stream,
            group=group,
            consumer=consumer,
            min_idle=duration(min_idle),
            count=count,
            start_id=start_id,
            ids=list(ids),
        )
        reply = yield from self._call(CLAIM, request)
        return Claimed(
            [self._event(e) for e in reply.events],
            list(reply.dead_lettered_ids),
            list(reply.deleted_ids),
            reply.next_start_id,
        )

    @procedure
    def trim(
        self,
        stream: str,
        *,
        max_len: int | None = None,
        min_id: str | None = None,
        approximate: bool = False,
    ) -> Steps[int]:
        """Trim a stream to `max_len` events or to ids from `min_id`; answers how many
        were removed."""
        if (max_len is None) == (min_id is None):
            raise ValueError("trim: give max_len or min_id, exactly one")
        request = pb.TrimRequest(stream=stream, approximate=approximate)
        if max_len is not None:
            request.max_len = max_len
        else:
            request.min_id = min_id or ""
        reply = yield from self._call(TRIM, request)
        return reply.trimmed

    @procedure
    def info(self, stream: str, *, include_consumers: bool = False) -> Steps[pb.InfoResponse]:
        """Length, ids, groups (pending, lag, policy) and the dead-letter length."""
        request = pb.InfoRequest(stream=stream, include_consumers=include_consumers)
        reply = yield from self._call(INFO, request)
        return reply

    def _consume_request(
        self,
        stream: str,
        group: str,
        consumer: str,
        batch_size: int,
        block: Ttl | None,
        auto_claim_min_idle: Ttl | None,
        redeliver_pending: bool,
        max_pending: int,
    ) -> pb.ConsumeRequest:
        return pb.ConsumeRequest(
            stream=stream,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            block=duration(block),
            auto_claim_min_idle=duration(auto_claim_min_idle),
            redeliver_pending=redeliver_pending,
            max_pending=max_pending,
        )


@dataclass(frozen=True)
class AsyncDelivery:
    """An event delivered to a consumer group; `await delivery.ack()` when done."""

    event: Event
    stream: str
    group: str
    _events: AsyncEvents = field(repr=False)

    async def ack(self) -> None:
        """Acknowledge this event (it is never redelivered to the group)."""
        await self._events.ack(self.stream, self.group, self.event.id)


@dataclass(frozen=True)
class SyncDelivery:
    """An event delivered to a consumer group; `delivery.ack()` when done."""

    event: Event
    stream: str
    group: str
    _events: SyncEvents = field(repr=False)

    def ack(self) -> None:
        """Acknowledge this event (it is never redelivered to the group)."""
        self._events.ack(self.stream, self.group, self.event.id)


class AsyncEvents(Events[Async]):
    """EventBusService on the asyncio client."""

    async def subscribe(
        self, *topics: str, patterns: Sequence[str] = ()
    ) -> AsyncGenerator[Event, None]:
        """Receive what is published to `topics` (and glob `patterns`) from now on, as
        an async iterator of Events (`topic` set); stop by leaving the loop."""
        async for event in self._subscription(topics, patterns):
            if event is not None:
                yield event

    async def subscribed(
        self, *topics: str, patterns: Sequence[str] = ()
    ) -> AsyncGenerator[Event, None]:
        """Like `subscribe`, but returns once the server confirms the subscription, so
        a publish made after it is sure to arrive:
        `events = await client.events.subscribed("t")`, then `async for e in events`."""
        frames = self._subscription(topics, patterns)
        await anext(frames)  # the "active" frame

        async def events() -> AsyncGenerator[Event, None]:
            try:
                async for event in frames:
                    if event is not None:
                        yield event
            finally:
                await frames.aclose()  # ends the stream now, not when collected

        return events()

    async def _subscription(
        self, topics: Sequence[str], patterns: Sequence[str]
    ) -> AsyncGenerator[Event | None, None]:
        """Frames of a Subscribe stream: None for "active", then the events."""
        runner: Any = self._runner
        call = runner.channels.plain.unary_stream(
            SUBSCRIBE_PATH,
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeResponse.FromString,
        )(
            pb.SubscribeRequest(topics=list(topics), patterns=list(patterns)),
            metadata=await runner.metadata(),
        )
        try:
            async for frame in call:
                if frame.HasField("active"):
                    yield None
                elif frame.HasField("message"):
                    yield self._event(frame.message.event, frame.message.topic)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch_size: int = 0,
        block: Ttl | None = None,
        auto_claim_min_idle: Ttl | None = None,
        redeliver_pending: bool = False,
        max_pending: int = 0,
    ) -> AsyncGenerator[AsyncDelivery, None]:
        """Deliveries to `consumer` of `group`, as an async iterator: each has the event
        and `await delivery.ack()`. Unacked events stay pending when the loop ends."""
        runner: Any = self._runner
        request = self._consume_request(
            stream,
            group,
            consumer,
            batch_size,
            block,
            auto_claim_min_idle,
            redeliver_pending,
            max_pending,
        )
        call = runner.channels.plain.unary_stream(
            CONSUME_PATH,
            request_serializer=pb.ConsumeRequest.SerializeToString,
            response_deserializer=pb.ConsumeResponse.FromString,
        )(request, metadata=await runner.metadata())
        try:
            async for batch in call:
                for event in batch.events:
                    yield AsyncDelivery(self._event(event), stream, group, self)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()


class SyncEvents(Events[Sync]):
    """EventBusService on the blocking client."""

    def _subscription(
        self, topics: Sequence[str], patterns: Sequence[str]
    ) -> Generator[Event | None, None, None]:
        """Frames of a Subscribe stream: None for "active", then the events."""
        runner: Any = self._runner
        call = runner.channels.plain.unary_stream(
            SUBSCRIBE_PATH,
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeResponse.FromString,
        )(
            pb.SubscribeRequest(topics=list(topics), patterns=list(patterns)),
            metadata=runner.metadata(),
        )
        try:
            for frame in call:
                if frame.HasField("active"):
                    yield None
                elif frame.HasField("message"):
                    yield self._event(frame.message.event, frame.message.topic)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(error) from None
        finally:
            call.cancel()

    def subscribe(self, *topics: str, patterns: Sequence[str] = ()) -> Generator[Event, None, None]:
        """Receive what is published to `topics` (and glob `patterns`) from now on, as an
        iterator of Events (`topic` set); stop by leaving the loop."""
        for event in self._subscription(topics, patterns):
            if event is not None:
                yield event

    def subscribed(
        self, *topics: str, patterns: Sequence[str] = ()
    ) -> Generator[Event, None, None]:
        """Like `subscribe`, but returns once the subscription is active, so a publish
        made after it is sure to arrive."""
        frames = self._subscription(topics, patterns)
        next(frames)  # the "active" frame

        def events() -> Generator[Event, None, None]:
            try:
                for event in frames:
                    if event is not None:
                        yield event
            finally:
                frames.close()  # ends the stream now, not when collected

        return events()

    def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch_size: int = 0,
        block: Ttl | None = None,
        auto_claim_min_idle: Ttl | None = None,
        redeliver_pending: bool = False,
        max_pending: int = 0,
    ) -> Generator[SyncDelivery, None, None]:
        """Deliveries to `consumer` of `group`, as an iterator: each has the event and
        `delivery.ack()`. Unacked events stay pending when the loop ends."""
        runner: Any = self._runner
        request = self._consume_request(
            stream,
            group,
            consumer,
            batch_size,
            block,
            auto_claim_min_idle,
            redeliver_pending,
            max_pending,
        )
        call = runner.channels.plain.unary_stream(
            CONSUME_PATH,
            request_serializer=pb.ConsumeRequest.SerializeToString,
            response_deserializer=pb.ConsumeResponse.FromString,
        )(request, metadata=runner.metadata())
        try:
            for batch in call:
                for event in batch.events:
                    yield SyncDelivery(self._event(event), stream, group, self)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(error) from None
        finally:
            call.cancel()
