"""EventBusService: pub/sub topics and durable streams with consumer groups.

The contract (and its delivery guarantees) is in protos/cachet/eventbus/v1/eventbus.proto;
docs/eventbus.md explains the design. Events are stored as stream entries with
one field per event attribute (see `_event_fields`) and published as
"<Redis time µs> <encoded Event>" (see backend/events.py).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as pb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from ..access import READ, WRITE, CallSpec, StreamKind, blocking, streaming, waits
from ..backend.events import (
    FIRST_ID,
    DeadLetterPolicy,
    PubSubHub,
    StreamEntry,
    StreamStore,
    SubscriptionActive,
    TopicMessage,
)
from ..backend.keys import DEAD_LETTER_SUFFIX, Kind, redis_key, scan_patterns, user_key
from ..callcontext import current_namespace
from ..errors import InvalidArgument, ResourceExhausted, quoted
from ..metrics import instruments
from ..pagination import PageTokens, malformed_token
from ..validation import optional
from .base import Context, Dependencies, Servicer

_MAX_ID_PART = 2**64 - 1
_MAX_ID = f"{_MAX_ID_PART}-{_MAX_ID_PART}"
_STREAM_ID = re.compile(r"\A([0-9]{1,20})(?:-([0-9]{1,20}))?\Z")
_ATTRIBUTE_KEY = re.compile(r"\A[a-z0-9_.\-]{1,128}\Z")
_RESERVED_ATTRIBUTE_PREFIX = "cachet."
_MAX_ATTRIBUTES = 64
_MAX_ATTRIBUTE_VALUE_BYTES = 4096
_MAX_SOURCE_BYTES = 1024
_MAX_TYPE_BYTES = 1024
_MAX_CONTENT_TYPE_BYTES = 256
_MAX_PUBLISHED_ID_BYTES = 256
_MAX_NAME_BYTES = 256
_MAX_DEAD_LETTER_DELIVERIES = 10_000
_MAX_PENDING_PAGE = 1000
_DEFAULT_PAGE = 100
_DEFAULT_BATCH = 10
_DEFAULT_CONSUME_BLOCK = 5.0
# A Read's wait ends this long before the call's deadline, so the empty answer
# still reaches the client in time.
_DEADLINE_MARGIN = 0.25

# How an event is stored in a stream entry (one field per attribute).
_PAYLOAD = "payload"
_SOURCE = "source"
_TYPE = "type"
_CONTENT_TYPE = "content_type"
_TIME = "time"  # Unix nanoseconds; absent: the event is dated by its stream id
_ATTRIBUTE = "attr."
_DEAD = "dead."


def _duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _event_fields(event: pb.Event) -> dict[str, bytes | str]:
    fields: dict[str, bytes | str] = {_PAYLOAD: event.payload}
    for name, value in ((_SOURCE, event.source), (_TYPE, event.type)):
        if value:
            fields[name] = value
    if event.content_type:
        fields[_CONTENT_TYPE] = event.content_type
    if event.HasField("time"):
        fields[_TIME] = str(event.time.ToNanoseconds())
    for key, value in event.attributes.items():
        fields[_ATTRIBUTE + key] = value
    return fields


def _decode_entry(entry: StreamEntry) -> pb.Event:
    event = pb.Event(id=entry.id, delivery_count=entry.delivery_count)
    dead: dict[str, str] = {}
    for raw_name, raw_value in entry.fields.items():
        name = raw_name.decode(errors="replace")
        if name == _PAYLOAD:
            event.payload = raw_value
            continue
        value = raw_value.decode(errors="replace")
        if name == _SOURCE:
            event.source = value
        elif name == _TYPE:
            event.type = value
        elif name == _CONTENT_TYPE:
            event.content_type = value
        elif name == _TIME and value.lstrip("-").isdigit():
            event.time.FromNanoseconds(int(value))
        elif name.startswith(_ATTRIBUTE):
            event.attributes[name.removeprefix(_ATTRIBUTE)] = value
        elif name.startswith(_DEAD):
            dead[name.removeprefix(_DEAD)] = value
    if not event.HasField("time"):
        event.time.FromMilliseconds(int(entry.id.split("-")[0]))
    if dead:
        info = event.dead_letter
        info.original_stream = dead.get("stream", "")
        info.original_id = dead.get("id", "")
        info.group = dead.get("group", "")
        info.last_consumer = dead.get("consumer", "")
        info.delivery_count = int(dead.get("count", "0") or 0)
        if dead.get("time", "").isdigit():
            info.dead_lettered_time.FromNanoseconds(int(dead["time"]))
    return event


def _well_formed_glob(pattern: str) -> bool:
    """Whether a Redis glob has no dangling escape and no unclosed class, so that
    wrapping it in a prefix and braces cannot change what it matches."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 == len(pattern):
                return False
            i += 2
            continue
        if char == "[":
            i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            if i >= len(pattern):
                return False
        i += 1
    return True


class EventBusService(Servicer, eventbus_pb2_grpc.EventBusServiceServicer):
    CALLS: ClassVar[dict[str, CallSpec]] = {
        "Ack": WRITE,
        "Append": WRITE,
        "Claim": WRITE,
        # Consume waits in Redis between batches for as long as it is open.
        "Consume": blocking(READ),
        "CreateGroup": WRITE,
        "DeleteGroup": WRITE,
        "Info": READ,
        "ListPending": READ,
        "Pending": READ,
        "Publish": WRITE,
        "Range": READ,
        "Read": blocking(READ, waits("block")),
        "Subscribe": streaming(READ, StreamKind.SUBSCRIBE),
        "Trim": WRITE,
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.config = deps.settings.eventbus
        socket_timeout = deps.settings.redis_timeout.total_seconds()
        self.streams = StreamStore(
            deps.backend,
            socket_timeout=socket_timeout,
            max_blocking_reads=self.config.max_blocking_reads,
            poll_interval=self.config.poll_interval.total_seconds(),
            request_window_ms=deps.settings.idempotency_window_ms,
            max_answer_bytes=deps.settings.limits.max_message_bytes,
        )
        self.hub = PubSubHub(
            deps.backend,
            max_subscribers=self.config.max_subscribers,
            socket_timeout=socket_timeout,
            request_window_ms=deps.settings.idempotency_window_ms,
        )
        self.max_block = self.config.max_block.total_seconds()
        self.poll_interval = self.config.poll_interval.total_seconds()
        self.open_subscriptions = 0

    async def aclose(self) -> None:
        await self.hub.aclose()

    # -- request checks ------------------------------------------------------

    def _stream(self, name: str, field: str = "stream") -> str:
        self.check.key(name, field)
        if name == DEAD_LETTER_SUFFIX:
            raise InvalidArgument.field(field, f"needs a stream name before {DEAD_LETTER_SUFFIX!r}")
        return name

    def _name(self, name: str, field: str) -> str:
        if not name:
            raise InvalidArgument.field(field, "must not be empty")
        if len(name.encode()) > _MAX_NAME_BYTES:
            raise InvalidArgument.field(field, f"must be at most {_MAX_NAME_BYTES} bytes")
        return name

    def _id(self, text: str, field: str) -> str:
        """A stream id, "<ms>-<seq>" or "<ms>", in its full form."""
        match = _STREAM_ID.match(text)
        if not match or any(int(p) > _MAX_ID_PART for p in match.groups("0")):
            raise InvalidArgument.field(
                field, f"{quoted(text)} is not a stream id ('<ms>-<seq>' or '<ms>', each < 2^64)"
            )
        return f"{int(match[1])}-{int(match[2] or 0)}"

    def _bound(self, text: str, field: str, *, low: bool) -> str:
        """A Range bound: '-', '+', an id, or '(' and an id (exclusive)."""
        if text in ("", "-", "+"):
            return text or ("-" if low else "+")
        exclusive = text.startswith("(")
        stream_id = text.removeprefix("(")
        full = self._id(stream_id, field)
        if exclusive and "-" in stream_id and full == ("0-0" if not low else _MAX_ID):
            raise InvalidArgument.field(field, "the exclusive bound leaves no id in range")
        return text

    def _count(self, count: int, field: str, *, default: int, limit: int | None = None) -> int:
        limit = limit or self.check.limits.max_batch
        if count < 0 or count > limit:
            raise InvalidArgument.field(field, f"must be between 0 and {limit}")
        return count or default

    def _after(self, position: dict[str, Any] | None) -> str | None:
        """The stream id a page token continues after (None for the first page)."""
        if position is None:
            return None
        after = position.get("after")
        if not isinstance(after, str) or not _STREAM_ID.match(after) or "-" not in after:
            raise malformed_token()
        return self._id(after, "page_token")

    def _wait(self, duration: duration_pb2.Duration | None, field: str, default: float) -> float:
        if duration is None:
            return default
        return min(self.check.duration_ms(duration, field) / 1000, self.max_block)

    def _min_idle(self, duration: duration_pb2.Duration | None, field: str) -> int:
        if duration is None:
            raise InvalidArgument.field(field, "is required")
        ms = self.check.duration_ms(duration, field)
        if ms < 1:
            raise InvalidArgument.field(field, "must be at least 1 ms")
        return ms

    def _event(self, event: pb.Event, field: str, *, for_stream: bool) -> None:
        if for_stream and event.id:
            raise InvalidArgument.field(f"{field}.id", "must be empty: Redis assigns stream ids")
        if len(event.id.encode()) > _MAX_PUBLISHED_ID_BYTES:
            raise InvalidArgument.field(
                f"{field}.id", f"must be at most {_MAX_PUBLISHED_ID_BYTES} bytes"
            )
        if event.delivery_count:
            raise InvalidArgument.field(f"{field}.delivery_count", "is output only")
        if event.HasField("dead_letter"):
            raise InvalidArgument.field(f"{field}.dead_letter", "is output only")
        for name, value, limit in (
            ("source", event.source, _MAX_SOURCE_BYTES),
            ("type", event.type, _MAX_TYPE_BYTES),
            ("content_type", event.content_type, _MAX_CONTENT_TYPE_BYTES),
        ):
            if len(value.encode()) > limit:
                raise InvalidArgument.field(f"{field}.{name}", f"must be at most {limit} bytes")
        if event.HasField("time") and not (
            -62_135_596_800 <= event.time.seconds <= 253_402_300_799
            and 0 <= event.time.nanos <= 999_999_999
        ):
            raise InvalidArgument.field(f"{field}.time", "is not a valid Timestamp")
        if len(event.attributes) > _MAX_ATTRIBUTES:
            raise InvalidArgument.field(
                f"{field}.attributes", f"at most {_MAX_ATTRIBUTES} attributes"
            )
        for key, value in event.attributes.items():
            where = f"{field}.attributes[{key}]"
            if not _ATTRIBUTE_KEY.match(key):
                raise InvalidArgument.field(where, "keys are 1 to 128 bytes of [a-z0-9_.-]")
            if key.startswith(_RESERVED_ATTRIBUTE_PREFIX):
                raise InvalidArgument.field(where, "keys starting with 'cachet.' are reserved")
            if len(value.encode()) > _MAX_ATTRIBUTE_VALUE_BYTES:
                raise InvalidArgument.field(
                    where, f"values must be at most {_MAX_ATTRIBUTE_VALUE_BYTES} bytes"
                )
        size = event.ByteSize()
        if size > self.config.max_event_bytes:
            raise InvalidArgument.field(
                field, f"is {size} bytes encoded; the limit is {self.config.max_event_bytes}"
            )

    # -- pub/sub ---------------------------------------------------------------

    async def Publish(self, request: pb.PublishRequest, context: Context) -> pb.PublishResponse:
        namespace = current_namespace()
        topic = self.check.key(request.topic, "topic")
        if not request.HasField("event"):
            raise InvalidArgument.field("event", "is required")
        self._event(request.event, "event", for_stream=False)
        request_id = self.check.request_id(request.request_id)
        event = pb.Event()
        event.CopyFrom(request.event)
        event.id = event.id or str(uuid.uuid4())
        receivers, event_id = await self.hub.publish(
            namespace,
            redis_key(namespace, Kind.TOPIC, topic),
            event.SerializeToString(),
            event.id,
            request_id=request_id,
        )
        instruments.events_published.add(1, instruments.ns(namespace))
        return pb.PublishResponse(receivers=receivers, id=event_id)

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        namespace = current_namespace()
        topics = list(dict.fromkeys(request.topics))
        user_patterns = list(dict.fromkeys(request.patterns))
        total = len(topics) + len(user_patterns)
        if total == 0:
            raise InvalidArgument.field("topics", "name at least one topic or pattern")
        if total > self.config.max_subscriptions:
            raise InvalidArgument.field(
                "topics", f"at most {self.config.max_subscriptions} topics and patterns together"
            )
        for i, topic in enumerate(request.topics):
            self.check.key(topic, f"topics[{i}]")
        patterns: dict[str, str] = {}  # Redis pattern -> the caller's pattern
        for i, pattern in enumerate(request.patterns):
            self.check.key(pattern, f"patterns[{i}]")
            if not _well_formed_glob(pattern):
                raise InvalidArgument.field(
                    f"patterns[{i}]", "has a dangling '\\' or an unclosed '['"
                )
            for redis_pattern in scan_patterns(namespace, Kind.TOPIC, pattern):
                patterns[redis_pattern] = pattern
        if self.open_subscriptions >= self.config.max_subscribers:
            raise ResourceExhausted(
                f"this server already serves {self.config.max_subscribers} subscriptions; "
                "retry later or on another replica",
                reason="TOO_MANY_SUBSCRIBERS",
            )
        self.open_subscriptions += 1
        delivered = instruments.ns(namespace)
        try:
            subscription = self.hub.subscription(
                namespace,
                [redis_key(namespace, Kind.TOPIC, t) for t in topics],
                list(patterns),
                buffer=self.config.subscriber_buffer,
                buffer_bytes=self.config.subscriber_buffer_bytes,
                reconnect_window=self.config.reconnect_window.total_seconds(),
            )
            async with subscription:
                while True:
                    item = await subscription.next()
                    if isinstance(item, SubscriptionActive):
                        yield pb.SubscribeResponse(
                            active=pb.SubscriptionActive(reconnected=item.reconnected)
                        )
                    elif (message := self._topic_message(namespace, item, patterns)) is not None:
                        instruments.events_delivered.add(1, delivered)
                        yield pb.SubscribeResponse(message=message)
        finally:
            self.open_subscriptions -= 1

    @staticmethod
    def _topic_message(
        namespace: str, item: TopicMessage, patterns: dict[str, str]
    ) -> pb.TopicMessage | None:
        try:
            event = pb.Event.FromString(item.body)
        except DecodeError:
            return None  # not published through cachet
        if not event.HasField("time"):
            event.time.FromMicroseconds(item.published_us)
        topic = user_key(namespace, Kind.TOPIC, item.channel)
        if topic is None:
            return None
        pattern = patterns.get(item.pattern, "") if item.pattern else ""
        return pb.TopicMessage(topic=topic, pattern=pattern, event=event)

    # -- streams ---------------------------------------------------------------

    async def Append(self, request: pb.AppendRequest, context: Context) -> pb.AppendResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        if not request.HasField("event"):
            raise InvalidArgument.field("event", "is required")
        self._event(request.event, "event", for_stream=True)
        max_len = None
        if request.HasField("max_len"):
            if not 1 <= request.max_len <= 2**62:
                raise InvalidArgument.field("max_len", "must be between 1 and 2^62")
            max_len = request.max_len
        request_id = self.check.request_id(request.request_id)
        new_id = await self.streams.append(
            namespace, stream, _event_fields(request.event), max_len, request_id=request_id
        )
        instruments.events_published.add(1, instruments.ns(namespace))
        return pb.AppendResponse(id=new_id)

    async def Read(self, request: pb.ReadRequest, context: Context) -> pb.ReadResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        count = self._count(request.count, "count", default=_DEFAULT_PAGE)
        wait = self._wait(optional(request, "block"), "block", 0.0)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - _DEADLINE_MARGIN))
        if request.after_id in ("", "0"):
            after = FIRST_ID
        elif request.after_id == "$":
            after = await self.streams.last_id(namespace, stream)
        else:
            after = self._id(request.after_id, "after_id")
        entries = await self.streams.read(namespace, stream, after, count, wait)
        return pb.ReadResponse(
            events=[_decode_entry(e) for e in entries],
            last_id=entries[-1].id if entries else after,
        )

    async def Range(self, request: pb.RangeRequest, context: Context) -> pb.RangeResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        start = self._bound(request.start, "start", low=True)
        end = self._bound(request.end, "end", low=False)
        page_size = self._count(request.page_size, "page_size", default=_DEFAULT_PAGE)
        binding = PageTokens.binding("Range", namespace, request)
        after_id = self._after(PageTokens.decode(request.page_token, binding))
        if after_id is not None:
            after = "(" + after_id
            if request.reverse:
                end = after
            else:
                start = after
        entries = await self.streams.range(
            namespace, stream, start, end, page_size + 1, reverse=request.reverse
        )
        page = entries[:page_size]
        return pb.RangeResponse(
            events=[_decode_entry(e) for e in page],
            next_page_token=(
                PageTokens.encode(binding, {"after": page[-1].id})
                if len(entries) > page_size
                else ""
            ),
        )

    async def Trim(self, request: pb.TrimRequest, context: Context) -> pb.TrimResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        strategy = request.WhichOneof("strategy")
        if strategy is None:
            raise InvalidArgument.field("strategy", "set max_len or min_id")
        max_len = min_id = None
        if strategy == "max_len":
            if request.max_len < 0:
                raise InvalidArgument.field("max_len", "must not be negative")
            max_len = request.max_len
        else:
            min_id = self._id(request.min_id, "min_id")
        trimmed = await self.streams.trim(
            namespace, stream, max_len=max_len, min_id=min_id, approx=request.approximate
        )
        return pb.TrimResponse(trimmed=trimmed)

    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        info = await self.streams.info(namespace, stream, with_consumers=request.include_consumers)
        response = pb.InfoResponse(
            length=info.length,
            first_id=info.first_id,
            last_id=info.last_id,
            last_generated_id=info.last_generated_id,
            entries_added=info.entries_added,
            dead_letter_length=info.dead_letter_length,
        )
        for group in info.groups:
            described = response.groups.add(
                name=group.name,
                consumer_count=group.consumers,
                pending=group.pending,
                last_delivered_id=group.last_delivered_id,
                dead_letter=pb.DeadLetterPolicy(
                    max_deliveries=group.policy.max_deliveries, max_len=group.policy.max_len
                ),
            )
            if group.lag is not None:
                described.lag = group.lag
            for consumer in group.consumer_details:
                entry = described.consumers.add(
                    name=consumer.name, pending=consumer.pending, idle=_duration(consumer.idle_ms)
                )
                if consumer.inactive_ms is not None:
                    entry.inactive.CopyFrom(_duration(consumer.inactive_ms))
        return response

    # -- consumer groups ---------------------------------------------------------

    async def CreateGroup(
        self, request: pb.CreateGroupRequest, context: Context
    ) -> pb.CreateGroupResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        if request.start_id in ("", "$"):
            start_id = "$"
        elif request.start_id == "0":
            start_id = FIRST_ID
        else:
            start_id = self._id(request.start_id, "start_id")
        policy = DeadLetterPolicy(0)
        if request.HasField("dead_letter"):
            wanted = request.dead_letter
            if not 0 <= wanted.max_deliveries <= _MAX_DEAD_LETTER_DELIVERIES:
                raise InvalidArgument.field(
                    "dead_letter.max_deliveries",
                    f"must be between 0 and {_MAX_DEAD_LETTER_DELIVERIES}",
                )
            if wanted.max_len < 0:
                raise InvalidArgument.field("dead_letter.max_len", "must not be negative")
            if wanted.max_deliveries and stream.endswith(DEAD_LETTER_SUFFIX):
                raise InvalidArgument.field(
                    "dead_letter.max_deliveries",
                    "a dead-letter stream cannot have a dead-letter stream of its own",
                )
            policy = DeadLetterPolicy(wanted.max_deliveries, wanted.max_len)
        created = await self.streams.create_group(
            namespace,
            stream,
            group,
            start_id,
            create_stream=request.create_stream,
            if_not_exists=request.if_not_exists,
            policy=policy,
        )
        return pb.CreateGroupResponse(created=created)

    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, context: Context
    ) -> pb.DeleteGroupResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        deleted = await self.streams.delete_group(namespace, stream, group)
        return pb.DeleteGroupResponse(deleted=deleted)

    async def Consume(
        self, request: pb.ConsumeRequest, context: Context
    ) -> AsyncIterator[pb.ConsumeResponse]:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        consumer = self._name(request.consumer, "consumer")
        batch = self._count(request.batch_size, "batch_size", default=_DEFAULT_BATCH)
        wait = self._wait(optional(request, "block"), "block", _DEFAULT_CONSUME_BLOCK)
        auto_claim = optional(request, "auto_claim_min_idle")
        min_idle = self._min_idle(auto_claim, "auto_claim_min_idle") if auto_claim else None
        if request.max_pending < 0:
            raise InvalidArgument.field("max_pending", "must not be negative")
        await self.streams.require_group(namespace, stream, group)
        # Never more per Redis read than about fits in one answer.
        batch = min(batch, await self.streams.entries_within_budget(namespace, stream))
        limit = self.check.limits.max_message_bytes

        delivered = instruments.ns(namespace)

        def batches_of(
            events: Sequence[StreamEntry], dead: Sequence[str]
        ) -> Iterator[pb.ConsumeResponse]:
            """The events in answers of at most the message limit each: a batch larger
            than one answer is cut, and every event of it is still delivered."""
            instruments.events_delivered.add(len(events), delivered)
            response = pb.ConsumeResponse(dead_lettered_ids=dead)
            size = response.ByteSize()
            for entry in events:
                event = _decode_entry(entry)
                # The event, its field tag and its length prefix.
                cost = event.ByteSize() + 6
                if response.events and size + cost > limit:
                    yield response
                    response, size = pb.ConsumeResponse(), 0
                response.events.append(event)
                size += cost
            yield response

        if request.redeliver_pending:
            cursor = FIRST_ID
            while cursor:
                own = await self.streams.claim(
                    namespace, stream, group, consumer, 0, start=cursor, count=batch, own_only=True
                )
                if own.entries or own.dead_lettered:
                    for response in batches_of(own.entries, own.dead_lettered):
                        yield response
                cursor = own.next_start

        claim_cursor = FIRST_ID
        while True:
            room = batch
            if request.max_pending:
                held = await self.streams.pending_of(namespace, stream, group, consumer)
                room = min(batch, request.max_pending - held)
                if room <= 0:
                    await asyncio.sleep(self.poll_interval)
                    continue
            claimed: list[StreamEntry] = []
            dead: list[str] = []
            if min_idle is not None:
                outcome = await self.streams.claim(
                    namespace, stream, group, consumer, min_idle, start=claim_cursor, count=room
                )
                claimed, dead = outcome.entries, outcome.dead_lettered
                claim_cursor = outcome.next_start or FIRST_ID
            fresh: list[StreamEntry] = []
            if len(claimed) < room:
                fresh = await self.streams.read_group(
                    namespace,
                    stream,
                    group,
                    consumer,
                    room - len(claimed),
                    0.0 if claimed or dead else wait,
                )
            if claimed or fresh or dead:
                for response in batches_of([*claimed, *fresh], dead):
                    yield response

    async def Ack(self, request: pb.AckRequest, context: Context) -> pb.AckResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        self.check.batch(len(request.ids), "ids")
        ids = [self._id(i, f"ids[{n}]") for n, i in enumerate(request.ids)]
        acked = await self.streams.ack(namespace, stream, group, list(dict.fromkeys(ids)))
        return pb.AckResponse(acked=acked)

    async def Pending(self, request: pb.PendingRequest, context: Context) -> pb.PendingResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        summary = await self.streams.pending(namespace, stream, group)
        return pb.PendingResponse(
            count=summary.count,
            min_id=summary.min_id,
            max_id=summary.max_id,
            consumers=[
                pb.ConsumerPendingCount(consumer=name, count=count)
                for name, count in summary.consumers
            ],
        )

    async def ListPending(
        self, request: pb.ListPendingRequest, context: Context
    ) -> pb.ListPendingResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        consumer = self._name(request.consumer, "consumer") if request.consumer else None
        min_idle = optional(request, "min_idle")
        min_idle_ms = self.check.duration_ms(min_idle, "min_idle") if min_idle else None
        page_size = self._count(
            request.page_size, "page_size", default=_DEFAULT_PAGE, limit=_MAX_PENDING_PAGE
        )
        binding = PageTokens.binding("ListPending", namespace, request)
        after_id = self._after(PageTokens.decode(request.page_token, binding))
        start = "-" if after_id is None else "(" + after_id
        entries = await self.streams.list_pending(
            namespace,
            stream,
            group,
            start=start,
            count=page_size + 1,
            consumer=consumer,
            min_idle_ms=min_idle_ms,
        )
        page = entries[:page_size]
        return pb.ListPendingResponse(
            entries=[
                pb.PendingEntry(
                    id=e.id,
                    consumer=e.consumer,
                    idle=_duration(e.idle_ms),
                    delivery_count=e.delivery_count,
                )
                for e in page
            ],
            next_page_token=(
                PageTokens.encode(binding, {"after": page[-1].id})
                if len(entries) > page_size
                else ""
            ),
        )

    async def Claim(self, request: pb.ClaimRequest, context: Context) -> pb.ClaimResponse:
        namespace = current_namespace()
        stream = self._stream(request.stream)
        group = self._name(request.group, "group")
        consumer = self._name(request.consumer, "consumer")
        min_idle = self._min_idle(optional(request, "min_idle"), "min_idle")
        count = self._count(request.count, "count", default=_DEFAULT_PAGE)
        start = (
            FIRST_ID if request.start_id in ("", "0") else self._id(request.start_id, "start_id")
        )
        self.check.batch(len(request.ids), "ids", allow_empty=True)
        ids = list(dict.fromkeys(self._id(i, f"ids[{n}]") for n, i in enumerate(request.ids)))
        outcome = await self.streams.claim(
            namespace, stream, group, consumer, min_idle, start=start, count=count, ids=ids
        )
        return pb.ClaimResponse(
            events=[_decode_entry(e) for e in outcome.entries],
            dead_lettered_ids=outcome.dead_lettered,
            deleted_ids=outcome.deleted,
            next_start_id=outcome.next_start,
        )
