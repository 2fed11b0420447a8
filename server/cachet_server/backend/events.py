"""Event bus storage: Redis streams for durable events, Redis pub/sub for topics.

Streams (`StreamStore`): one Redis stream per (namespace, stream name), keys from
`StreamKeys` so a stream, its dead-letter stream and its groups' policies share a
Cluster slot. Multi-step changes (create a group with its policy, claim with
dead-lettering, ack of a group that must exist) are single-slot Lua scripts.
Blocking reads wait in slices shorter than the Redis socket timeout, and at most
`max_blocking_reads` of them hold a pooled connection at once; beyond that,
readers poll, so waiting consumers can never drain the command pool.

Pub/sub (`PubSubHub`): every Subscribe call gets a Redis connection of its own,
from a pool kept apart from the command pool. That costs one Redis client per
subscriber, and buys exact receiver counts (Redis counts subscriptions, not
processes), isolation (one subscriber's reconnect or overflow touches nobody
else) and trivially exact cleanup (closing the connection drops every
subscription of the call). On Cluster, all pub/sub of a namespace goes through
the primary that serves `CLUSTER KEYSLOT <namespace>`, publishes included, so a
PUBLISH there counts every subscriber of the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import (
    CachetError,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    without_addresses,
)
from ..metrics import instruments
from .core import Backend
from .keys import DEAD_LETTER_SUFFIX, StreamKeys, remembered_result
from .scripts import script
from .topology import TopologyKind

log = logging.getLogger(__name__)

_CLAIM = script("es_claim")
_CREATE_GROUP = script("es_create_group")
_DELETE_GROUP = script("es_delete_group")
_ACK = script("es_ack")
_PUBLISH = script("ps_publish")
_APPEND = script("es_append")
_SIZED_READ = script("coll_read")

# What a dropped or unreachable Redis connection raises.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

FIRST_ID = "0-0"
SUBSCRIBER_CLIENT_NAME = "cachet-subscriber"
_MAX_ID_PART = 2**64 - 1


def next_id(stream_id: str) -> str:
    """The smallest stream id above `stream_id` (a full "<ms>-<seq>" id)."""
    ms, seq = (int(part) for part in stream_id.split("-"))
    return f"{ms}-{seq + 1}" if seq < _MAX_ID_PART else f"{ms + 1}-0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class StreamEntry:
    """One stream entry: its id, its fields, and (when delivered to a group) how
    many times it has been delivered, this delivery included."""

    id: str
    fields: dict[bytes, bytes]
    delivery_count: int = 0


def _entries(raw: Sequence[Any], delivery_count: int = 0) -> list[StreamEntry]:
    return [StreamEntry(_text(i), dict(f), delivery_count) for i, f in raw if f is not None]


def _raw_entries(raw: Sequence[Any]) -> list[StreamEntry]:
    """Entries of a stream reply that came through a script: fields as a flat list."""
    return [
        StreamEntry(_text(i), {f[n]: f[n + 1] for n in range(0, len(f), 2)}, 0) for i, f in raw if f
    ]


@dataclass(frozen=True)
class DeadLetterPolicy:
    max_deliveries: int
    max_len: int = 0

    def encode(self) -> str:
        return f"{self.max_deliveries}:{self.max_len}" if self.max_deliveries else ""

    @classmethod
    def decode(cls, text: bytes | str | None) -> DeadLetterPolicy:
        if not text:
            return cls(0)
        limit, _, max_len = _text(text).partition(":")
        return cls(int(limit), int(max_len or 0))


@dataclass(frozen=True)
class ClaimOutcome:
    entries: list[StreamEntry]
    dead_lettered: list[str]
    deleted: list[str]
    next_start: str  # "" when the pending list was scanned to its end


@dataclass(frozen=True)
class PendingEntry:
    id: str
    consumer: str
    idle_ms: int
    delivery_count: int


@dataclass(frozen=True)
class PendingSummary:
    count: int
    min_id: str
    max_id: str
    consumers: list[tuple[str, int]]


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None


@dataclass(frozen=True)
class GroupInfo:
    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    lag: int | None
    policy: DeadLetterPolicy
    consumer_details: list[ConsumerInfo] = field(default_factory=list)


@dataclass(frozen=True)
class StreamInfo:
    length: int
    first_id: str
    last_id: str
    last_generated_id: str
    entries_added: int
    groups: list[GroupInfo]
    dead_letter_length: int


_STREAM_NOT_FOUND = "STREAM_NOT_FOUND"


class StreamStore:
    """Durable event streams and their consumer groups."""

    def __init__(
        self,
        backend: Backend,
        *,
        socket_timeout: float,
        max_blocking_reads: int,
        poll_interval: float,
        request_window_ms: int = 120_000,
        max_answer_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.backend = backend
        # How long the result of an Append with a request_id is remembered.
        self.request_window_ms = request_window_ms
        # Reads that would answer more than this are refused before Redis builds them.
        self.max_answer_bytes = max_answer_bytes
        # One blocking command waits at most this long, so it always answers
        # well inside the socket timeout of the connection it holds.
        self.block_slice = max(0.05, socket_timeout / 2)
        self.poll_interval = poll_interval
        self._blocking_slots = asyncio.Semaphore(max_blocking_reads)

    @property
    def redis(self) -> Any:
        return self.backend.redis

    async def _wait_for(
        self, read: Callable[[int | None], Awaitable[list[StreamEntry]]], wait: float
    ) -> list[StreamEntry]:
        """`read(block_ms)` until it returns entries or `wait` seconds pass. Blocks in
        slices shorter than the socket timeout; polls when no blocking slot is free."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await read(None)
            if self._blocking_slots.locked():
                found = await read(None)
                if found:
                    return found
                await asyncio.sleep(min(self.poll_interval, remaining))
                continue
            async with self._blocking_slots:
                found = await read(max(1, round(min(remaining, self.block_slice) * 1000)))
            if found:
                return found

    async def append(
        self,
        namespace: str,
        stream: str,
        fields: dict[str, bytes | str],
        max_len: int | None,
        *,
        request_id: str = "",
    ) -> str:
        """XADD one event (acknowledged by replicas when that is configured); with a
        request_id, a retry within the window answers the first id and appends nothing."""
        keys = StreamKeys.of(namespace, stream)
        remembered, window = keys.stream, ""
        if request_id:
            # The remembered result shares the stream's slot: a dead-letter stream
            # lives in the slot of the stream it belongs to.
            source = stream.removesuffix(DEAD_LETTER_SUFFIX)
            operation = "append" if source == stream else "append-dead"
            remembered = remembered_result(namespace, source, operation, request_id)
            window = str(self.request_window_ms)
        flat: list[bytes | str] = []
        for name, value in fields.items():
            flat += [name, value]
        new_id = await self.backend.run_write(
            _APPEND,
            [keys.stream, remembered],
            [window, "" if max_len is None else str(max_len), *flat],
        )
        return _text(new_id)

    async def last_id(self, namespace: str, stream: str) -> str:
        """The id of the newest entry, FIRST_ID for an empty or missing stream."""
        keys = StreamKeys.of(namespace, stream)
        newest = await self.redis.xrevrange(keys.stream, "+", "-", count=1)
        return _text(newest[0][0]) if newest else FIRST_ID

    async def read(
        self, namespace: str, stream: str, after_id: str, count: int, wait: float
    ) -> list[StreamEntry]:
        keys = StreamKeys.of(namespace, stream)

        async def read_once(block_ms: int | None) -> list[StreamEntry]:
            if block_ms is not None:
                # Wait for one entry on the blocking pool; the answer itself is then
                # read sized, like any other (a blocking command cannot run in a script).
                woke = await self.redis.xread({keys.stream: after_id}, count=1, block=block_ms)
                if not woke:
                    return []
            reply = await self._sized(
                keys.stream, count, "XREAD", "COUNT", count, "STREAMS", keys.stream, after_id
            )
            return _raw_entries(reply[0][1]) if reply else []

        return await self._wait_for(read_once, wait)

    async def entries_within_budget(self, namespace: str, stream: str) -> int:
        """About how many entries of this stream fit in one answer (the message limit),
        from its average entry size: a group read asks Redis for no more, so a batch of
        large events is never built whole in Redis only to be refused."""
        keys = StreamKeys.of(namespace, stream)
        usage = await self.redis.memory_usage(keys.stream, samples=5)
        length = int(await self.redis.xlen(keys.stream))
        if not usage or not length:
            return self.max_answer_bytes
        return max(1, self.max_answer_bytes * length // int(usage))

    async def _sized(self, stream_key: str, count: int, *command: Any) -> Any:
        """A stream read refused (RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE) in Redis, before
        it is built, when `count` entries of the stream would exceed the message limit."""
        return await self.backend.run(
            _SIZED_READ, [stream_key], [self.max_answer_bytes, f"count {count}", *command]
        )

    async def range(
        self, namespace: str, stream: str, start: str, end: str, count: int, *, reverse: bool
    ) -> list[StreamEntry]:
        keys = StreamKeys.of(namespace, stream)
        if reverse:
            command = ("XREVRANGE", keys.stream, end, start, "COUNT", count)
        else:
            command = ("XRANGE", keys.stream, start, end, "COUNT", count)
        return _raw_entries(await self._sized(keys.stream, count, *command))

    async def trim(
        self, namespace: str, stream: str, *, max_len: int | None, min_id: str | None, approx: bool
    ) -> int:
        keys = StreamKeys.of(namespace, stream)
        strategy = ["MAXLEN", max_len] if max_len is not None else ["MINID", min_id]
        trimmed = await self.redis.execute_command(
            "XTRIM", keys.stream, strategy[0], "~" if approx else "=", strategy[1]
        )
        return int(trimmed)

    async def create_group(
        self,
        namespace: str,
        stream: str,
        group: str,
        start_id: str,
        *,
        create_stream: bool,
        if_not_exists: bool,
        policy: DeadLetterPolicy,
    ) -> bool:
        keys = StreamKeys.of(namespace, stream)
        outcome = await self.backend.run(
            _CREATE_GROUP,
            [k for k in (keys.stream, keys.policies) if k],
            [group, start_id, int(create_stream), int(if_not_exists), policy.encode()],
        )
        if outcome == -1:
            raise FailedPrecondition(
                f"stream {stream!r} does not exist (set create_stream to create it)",
                reason=_STREAM_NOT_FOUND,
            )
        if outcome == -2:
            raise FailedPrecondition(
                f"group {group!r} already exists on stream {stream!r}", reason="GROUP_EXISTS"
            )
        return bool(outcome == 1)

    async def delete_group(self, namespace: str, stream: str, group: str) -> bool:
        keys = StreamKeys.of(namespace, stream)
        destroyed = await self.backend.run(
            _DELETE_GROUP, [k for k in (keys.stream, keys.policies) if k], [group]
        )
        return bool(destroyed)

    async def require_group(self, namespace: str, stream: str, group: str) -> None:
        """Raise FAILED_PRECONDITION / GROUP_NOT_FOUND unless the group exists."""
        keys = StreamKeys.of(namespace, stream)
        await self.redis.xpending_range(keys.stream, group, "-", "+", 0)

    async def read_group(
        self, namespace: str, stream: str, group: str, consumer: str, count: int, wait: float
    ) -> list[StreamEntry]:
        """New events (never delivered to the group), waiting up to `wait` seconds."""
        keys = StreamKeys.of(namespace, stream)

        async def read_once(block_ms: int | None) -> list[StreamEntry]:
            reply = await self.redis.xreadgroup(
                group, consumer, {keys.stream: ">"}, count=count, block=block_ms
            )
            return _entries(reply[0][1], delivery_count=1) if reply else []

        return await self._wait_for(read_once, wait)

    async def ack(self, namespace: str, stream: str, group: str, ids: Sequence[str]) -> int:
        keys = StreamKeys.of(namespace, stream)
        acked = int(await self.backend.run(_ACK, [keys.stream], [group, *ids]))
        instruments.events_acked.add(acked, instruments.ns(namespace))
        return acked

    async def claim(
        self,
        namespace: str,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        *,
        start: str = FIRST_ID,
        count: int = 100,
        ids: Sequence[str] = (),
        own_only: bool = False,
    ) -> ClaimOutcome:
        """Take over idle pending entries (of every consumer, of `consumer` only, or
        exactly `ids`), dead-lettering those at the group's delivery limit."""
        keys = StreamKeys.of(namespace, stream)
        mode = "ids" if ids else "own" if own_only else "scan"
        reply = await self.backend.run(
            _CLAIM,
            [k for k in (keys.stream, keys.dead, keys.policies) if k],
            [group, consumer, min_idle_ms, mode, start, count, stream, *ids],
        )
        last, examined, claimed, dead, deleted = reply
        labels = instruments.ns(namespace)
        instruments.events_claimed.add(len(claimed), labels)
        instruments.events_dead_lettered.add(len(dead), labels)
        more = mode != "ids" and examined >= count and last
        return ClaimOutcome(
            entries=[
                StreamEntry(_text(i), dict(zip(f[::2], f[1::2], strict=True)), int(n))
                for i, f, n in claimed
            ],
            dead_lettered=[_text(i) for i in dead],
            deleted=[_text(i) for i in deleted],
            next_start=next_id(_text(last)) if more else "",
        )

    async def pending(self, namespace: str, stream: str, group: str) -> PendingSummary:
        keys = StreamKeys.of(namespace, stream)
        reply = await self.redis.xpending(keys.stream, group)
        return PendingSummary(
            count=int(reply["pending"]),
            min_id=_text(reply["min"] or ""),
            max_id=_text(reply["max"] or ""),
            consumers=[(_text(c["name"]), int(c["pending"])) for c in reply["consumers"]],
        )

    async def pending_of(self, namespace: str, stream: str, group: str, consumer: str) -> int:
        summary = await self.pending(namespace, stream, group)
        return next((n for name, n in summary.consumers if name == consumer), 0)

    async def list_pending(
        self,
        namespace: str,
        stream: str,
        group: str,
        *,
        start: str,
        count: int,
        consumer: str | None,
        min_idle_ms: int | None,
    ) -> list[PendingEntry]:
        keys = StreamKeys.of(namespace, stream)
        reply = await self.redis.xpending_range(
            keys.stream, group, start, "+", count, consumername=consumer, idle=min_idle_ms
        )
        return [
            PendingEntry(
                _text(e["message_id"]),
                _text(e["consumer"]),
                int(e["time_since_delivered"]),
                int(e["times_delivered"]),
            )
            for e in reply
        ]

    async def info(self, namespace: str, stream: str, *, with_consumers: bool) -> StreamInfo:
        keys = StreamKeys.of(namespace, stream)
        kind = _text(await self.redis.type(keys.stream))
        if kind == "none":
            raise FailedPrecondition(f"stream {stream!r} does not exist", reason=_STREAM_NOT_FOUND)
        summary = await self.redis.xinfo_stream(keys.stream)
        groups = await self.redis.xinfo_groups(keys.stream)
        policies = await self.redis.hgetall(keys.policies) if keys.policies else {}
        dead_length = int(await self.redis.xlen(keys.dead)) if keys.dead else 0
        described: list[GroupInfo] = []
        for group in groups:
            name = _text(group["name"])
            consumers: list[ConsumerInfo] = []
            if with_consumers:
                for c in await self.redis.xinfo_consumers(keys.stream, name):
                    inactive = c.get("inactive")
                    consumers.append(
                        ConsumerInfo(
                            _text(c["name"]),
                            int(c["pending"]),
                            int(c["idle"]),
                            None if inactive is None or int(inactive) < 0 else int(inactive),
                        )
                    )
            lag = group.get("lag")
            described.append(
                GroupInfo(
                    name=name,
                    consumers=int(group["consumers"]),
                    pending=int(group["pending"]),
                    last_delivered_id=_text(group["last-delivered-id"]),
                    lag=None if lag is None else int(lag),
                    policy=DeadLetterPolicy.decode(policies.get(name.encode())),
                    consumer_details=consumers,
                )
            )
        first, last = summary.get("first-entry"), summary.get("last-entry")
        return StreamInfo(
            length=int(summary["length"]),
            first_id=_text(first[0]) if first else "",
            last_id=_text(last[0]) if last else "",
            last_generated_id=_text(summary["last-generated-id"]),
            entries_added=int(summary.get("entries-added") or 0),
            groups=described,
            dead_letter_length=dead_length,
        )


# ---------------------------------------------------------------------------
# Pub/sub


@dataclass(frozen=True)
class TopicMessage:
    """A message as received: the Redis channel, the Redis pattern that matched
    (None for an exact subscription), the Redis time it was published at (µs),
    and the encoded event."""

    channel: str
    pattern: str | None
    published_us: int
    body: bytes


@dataclass(frozen=True)
class SubscriptionActive:
    reconnected: bool


class SubscriberTooSlow(ResourceExhausted):
    def __init__(self, behind: str) -> None:
        instruments.subscriber_drops.add(1)
        super().__init__(
            f"the subscriber fell {behind} behind (the configured buffer) and was "
            "disconnected; read faster, or subscribe to less",
            reason="SUBSCRIBER_TOO_SLOW",
        )


def _load_malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: its allocator gives memory back by itself, or cannot


_MALLOC_TRIM = _load_malloc_trim()
# At most this often: trimming walks the allocator's free lists.
_TRIM_INTERVAL_S = 1.0


class _Trimmer:
    last = 0.0
    pending: asyncio.TimerHandle | None = None

    @classmethod
    def trim(cls) -> None:
        cls.pending = None
        cls.last = time.monotonic()
        _MALLOC_TRIM(0)


def give_memory_back() -> None:
    """Hand freed heap back to the OS once a subscriber's buffer is gone. glibc keeps
    freed chunks of large payloads in its arenas (its mmap threshold rises after the
    first large free), so without this a slow subscriber's buffer stays in the RSS
    for good. At most once a second; a call within the second is done at its end."""
    if _MALLOC_TRIM is None or _Trimmer.pending is not None:
        return
    wait = _Trimmer.last + _TRIM_INTERVAL_S - time.monotonic()
    if wait <= 0:
        _Trimmer.trim()
    else:
        _Trimmer.pending = asyncio.get_running_loop().call_later(wait, _Trimmer.trim)


# What one buffered message costs beyond its body (the objects around it), for the
# subscriber's byte budget.
_MESSAGE_OVERHEAD_BYTES = 256


def _message_bytes(item: object) -> int:
    if isinstance(item, TopicMessage):
        return len(item.body) + len(item.channel) + _MESSAGE_OVERHEAD_BYTES
    return _MESSAGE_OVERHEAD_BYTES


class PubSubHub:
    """Routes a namespace's pub/sub to its Redis node, and gives each subscription
    a connection of its own from pools kept apart from the command pool."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_subscribers: int,
        socket_timeout: float,
        request_window_ms: int = 120_000,
    ) -> None:
        self.backend = backend
        # How long the result of a Publish with a request_id is remembered.
        self.request_window_ms = request_window_ms
        self.max_subscribers = max_subscribers
        self.socket_timeout = socket_timeout
        self._pools: dict[str, ConnectionPool] = {}

    @property
    def redis(self) -> Any:
        return self.backend.redis

    async def _node(self, namespace: str) -> Any:
        """The Cluster primary that carries `namespace`'s pub/sub (None elsewhere)."""
        if self.backend.kind is not TopologyKind.CLUSTER:
            return None
        await self.redis.initialize()
        return self.redis.get_node_from_key(namespace)

    async def refresh(self) -> None:
        """After a connection failure: on Cluster, re-learn which node serves what."""
        if self.backend.kind is TopologyKind.CLUSTER:
            with contextlib.suppress(Exception):
                await self.redis.nodes_manager.initialize()

    async def publish(
        self, namespace: str, channel: str, body: bytes, event_id: str, *, request_id: str = ""
    ) -> tuple[int, str]:
        """PUBLISH on the namespace's node; answers (receivers, event id). With a
        request_id, a retry within the window answers the first call's receivers and
        event id and publishes nothing: the remembered result lives in the slot that
        carries the namespace's pub/sub (`{<namespace>}`)."""
        keys: list[str] = []
        args: list[bytes | str] = [channel, body, event_id, ""]
        if request_id:
            # One id per topic: the same request_id on another topic is another call.
            slot_key, operation = "{" + namespace + "}", f"publish:{channel}"
            keys = [remembered_result(namespace, slot_key, operation, request_id)]
            args[3] = str(self.request_window_ms)
        node = await self._node(namespace)
        if node is None:
            reply = await self.backend.run(_PUBLISH, keys, args)
        else:
            try:
                reply = await self.redis.execute_command(
                    "EVALSHA", _PUBLISH.sha, len(keys), *keys, *args, target_nodes=node
                )
            except NoScriptError:
                reply = await self.redis.execute_command(
                    "EVAL", _PUBLISH.source, len(keys), *keys, *args, target_nodes=node
                )
        return int(reply[0]), _text(reply[1])

    def _new_pool(self, template: Any) -> ConnectionPool:
        """A pool like `template` (a command pool, or a Cluster node), of our own."""
        kwargs = {k: v for k, v in template.connection_kwargs.items() if k != "connection_pool"}
        kwargs["connection_class"] = template.connection_class
        kwargs["max_connections"] = self.max_subscribers
        # No silent reconnects inside redis-py: Subscription restores the connection
        # itself, so that it can tell its client about the gap.
        kwargs["retry"] = Retry(NoBackoff(), 0)
        # So an operator can tell subscriber connections apart in CLIENT LIST.
        kwargs["client_name"] = SUBSCRIBER_CLIENT_NAME
        if isinstance(template, SentinelConnectionPool):
            manager = template.sentinel_manager
            return SentinelConnectionPool(  # type: ignore[no-untyped-call]
                template.service_name, manager, **kwargs
            )
        return ConnectionPool(**kwargs)

    async def pubsub(self, namespace: str) -> PubSub:
        """A PubSub on a connection of its own, on `namespace`'s node."""
        node = await self._node(namespace)
        name = node.name if node is not None else ""
        pool = self._pools.get(name)
        if pool is None:
            template = node if node is not None else self.redis.connection_pool
            pool = self._pools[name] = self._new_pool(template)
        return PubSub(connection_pool=pool)

    def subscription(
        self,
        namespace: str,
        channels: Sequence[str],
        patterns: Sequence[str],
        *,
        buffer: int,
        buffer_bytes: int,
        reconnect_window: float,
    ) -> Subscription:
        return Subscription(
            self, namespace, channels, patterns, buffer, buffer_bytes, reconnect_window
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


Item = TopicMessage | SubscriptionActive


class Subscription:
    """One Subscribe call's Redis subscriptions, read into a bounded buffer by a
    task of its own. `next()` answers the buffered items in order: a
    SubscriptionActive first (and again after each reconnect), then messages; it
    raises the error that ended the subscription (too slow, Redis gone for longer
    than the reconnect window). Leaving the `async with` block closes the Redis
    connection, which drops every subscription of the call at once."""

    def __init__(
        self,
        hub: PubSubHub,
        namespace: str,
        channels: Sequence[str],
        patterns: Sequence[str],
        buffer: int,
        buffer_bytes: int,
        reconnect_window: float,
    ) -> None:
        self.hub = hub
        self.buffer_bytes = buffer_bytes
        # Bytes of the messages in the queue, against buffer_bytes.
        self.buffered_bytes = 0
        self.namespace = namespace
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.buffer = buffer
        self.reconnect_window = reconnect_window
        self._queue: asyncio.Queue[Item | BaseException] = asyncio.Queue()
        # Items put in the queue and not yet taken, as the pending gauge counts them.
        self._pending = 0
        self._pubsub: PubSub | None = None
        self._pump_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscription:
        try:
            early = await self._connect()
            self._queue.put_nowait(SubscriptionActive(reconnected=False))
            self.buffered_bytes += _message_bytes(None)
            for item in early:
                self._push(item)
        except BaseException:
            await self._close()
            raise
        self._pump_task = asyncio.create_task(self._pump(), name="cachet-subscription")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._buffered(-self._pending)
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        await self._close()
        self._queue = asyncio.Queue()
        self.buffered_bytes = 0
        give_memory_back()

    async def next(self) -> Item:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, TopicMessage) and self._pending:
            self._buffered(-1)
        self.buffered_bytes -= _message_bytes(item)
        return item

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _connect(self) -> list[TopicMessage]:
        """Subscribe on a fresh connection; return once Redis confirmed every
        subscription, with any message that arrived in between."""
        await self._close()
        pubsub = self._pubsub = await self.hub.pubsub(self.namespace)
        try:
            async with asyncio.timeout(self.hub.socket_timeout):
                return await self._subscribe(pubsub)
        except TimeoutError as exc:
            raise Unavailable("Redis did not confirm the subscriptions in time") from exc

    async def _subscribe(self, pubsub: PubSub) -> list[TopicMessage]:
        if self.channels:
            await pubsub.subscribe(*self.channels)
        if self.patterns:
            await pubsub.psubscribe(*self.patterns)
        early: list[TopicMessage] = []
        confirmed = 0
        while confirmed < len(self.channels) + len(self.patterns):
            raw = await pubsub.get_message(timeout=None)
            if raw is None:
                continue
            if raw["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            elif (message := self._message(raw)) is not None:
                early.append(message)
        return early

    @staticmethod
    def _message(raw: dict[str, Any]) -> TopicMessage | None:
        if raw["type"] not in ("message", "pmessage"):
            return None
        stamp, _, body = bytes(raw["data"]).partition(b" ")
        try:
            published_us = int(stamp)
        except ValueError:
            log.debug("ignoring a message not published by cachet on %r", raw["channel"])
            return None
        pattern = raw.get("pattern")
        return TopicMessage(
            _text(raw["channel"]), _text(pattern) if pattern else None, published_us, body
        )

    def _push(self, item: Item) -> None:
        if self._queue.qsize() >= self.buffer:
            raise SubscriberTooSlow(f"{self.buffer} events")
        size = _message_bytes(item)
        if self.buffered_bytes + size > self.buffer_bytes:
            raise SubscriberTooSlow(f"{self.buffer_bytes} bytes")
        self.buffered_bytes += size
        self._queue.put_nowait(item)
        if isinstance(item, TopicMessage):
            self._buffered(1)

    def _buffered(self, change: int) -> None:
        self._pending += change
        instruments.events_pending.add(change)

    async def _pump(self) -> None:
        try:
            while True:
                try:
                    await self._forward()
                except CONNECTION_ERRORS as exc:
                    log.info("subscription lost its Redis connection (%s); restoring", exc)
                    for item in await self._restore():
                        self._push(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # The terminal item: delivered after what is already buffered.
            self._queue.put_nowait(exc if isinstance(exc, Exception) else Unavailable(str(exc)))
        finally:
            # Whatever ended the pump, the Redis subscriptions go at once.
            await self._close()

    async def _forward(self) -> None:
        assert self._pubsub is not None
        while True:
            raw = await self._pubsub.get_message(timeout=None)
            if raw is not None and (message := self._message(raw)) is not None:
                self._push(message)

    async def _restore(self) -> list[Item]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_window
        delay = 0.05
        while True:
            try:
                early = await self._connect()
                return [SubscriptionActive(reconnected=True), *early]
            except (*CONNECTION_ERRORS, CachetError) as exc:
                await self._close()
                await self.hub.refresh()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Unavailable(
                        "lost the Redis connection of this subscription and could not "
                        f"restore it within {self.reconnect_window:g} s: "
                        f"{without_addresses(str(exc))[:300]}"
                    ) from exc
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
