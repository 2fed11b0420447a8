"""An idiomatic asyncio client over the generated stubs.

    async with cachet_client.connect("localhost:50051", namespace="shop") as client:
        await client.cache.set("user:1", b"alice", ttl=timedelta(minutes=5))
        value = await client.cache.get("user:1")
        async with client.locks.hold("invoice:7", ttl=timedelta(seconds=10)) as lease:
            await client.cache.set("invoice:7", b"paid", fencing_token=lease.fencing_token)
        verdict = await client.rate_limits.check("api:a", limit=100, period=timedelta(minutes=1))

Errors arrive as `grpc.aio.AioRpcError`; the status code and the google.rpc
ErrorInfo reason say what happened (see the README's error table).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType

from google.protobuf import duration_pb2
from grpc import aio

from .proto.cachet.cache.v1 import cache_pb2 as cache_pb
from .proto.cachet.cache.v1 import cache_pb2_grpc
from .proto.cachet.lock.v1 import lock_pb2 as lock_pb
from .proto.cachet.lock.v1 import lock_pb2_grpc
from .proto.cachet.ratelimit.v1 import ratelimit_pb2 as ratelimit_pb
from .proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc

NAMESPACE_METADATA = "cachet-namespace"


def _duration(delta: timedelta | None) -> duration_pb2.Duration | None:
    if delta is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration


@dataclass(frozen=True)
class Value:
    """A value read from the cache, with the version to pass as `if_version`."""

    data: bytes
    version: int


class CacheClient:
    """CacheService calls for one namespace."""

    def __init__(self, channel: aio.Channel, namespace: str, timeout: float | None) -> None:
        self._stub = cache_pb2_grpc.CacheServiceStub(channel)
        self._metadata = ((NAMESPACE_METADATA, namespace),)
        self._timeout = timeout

    async def get(self, key: str) -> Value | None:
        reply = await self._stub.Get(
            cache_pb.GetRequest(key=key), metadata=self._metadata, timeout=self._timeout
        )
        return Value(reply.value, reply.version) if reply.found else None

    async def get_many(self, keys: Sequence[str]) -> dict[str, Value]:
        reply = await self._stub.GetMany(
            cache_pb.GetManyRequest(keys=keys), metadata=self._metadata, timeout=self._timeout
        )
        return {e.key: Value(e.value, e.version) for e in reply.entries if e.found}

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: timedelta | None = None,
        if_absent: bool = False,
        if_version: int | None = None,
        fencing_token: int | None = None,
        tags: Sequence[str] = (),
    ) -> int:
        """Write a value; answers its new version."""
        request = cache_pb.SetRequest(
            key=key,
            value=value,
            ttl=_duration(ttl),
            condition=(
                cache_pb.SET_CONDITION_IF_ABSENT
                if if_absent
                else cache_pb.SET_CONDITION_UNSPECIFIED
            ),
            if_version=if_version,
            fencing_token=fencing_token,
            tags=tags,
        )
        reply = await self._stub.Set(request, metadata=self._metadata, timeout=self._timeout)
        return reply.version

    async def delete(self, *keys: str) -> int:
        reply = await self._stub.Delete(
            cache_pb.DeleteRequest(keys=keys), metadata=self._metadata, timeout=self._timeout
        )
        return reply.deleted

    async def increment(self, key: str, by: int = 1, *, ttl: timedelta | None = None) -> int:
        reply = await self._stub.Increment(
            cache_pb.IncrementRequest(key=key, by_int=by, ttl=_duration(ttl)),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return reply.int_value


@dataclass
class Lease:
    """A held lock: pass `fencing_token` with every write it protects. `lost` is set the
    moment the server reports the lock lost (the protected work should stop)."""

    name: str
    owner_token: str
    fencing_token: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class LockClient:
    """LockService calls for one namespace."""

    def __init__(self, channel: aio.Channel, namespace: str, timeout: float | None) -> None:
        self._stub = lock_pb2_grpc.LockServiceStub(channel)
        self._metadata = ((NAMESPACE_METADATA, namespace),)
        self._timeout = timeout

    async def acquire(self, name: str, *, ttl: timedelta, wait: timedelta | None = None) -> Lease:
        """Acquire once (or wait up to `wait`); raises FAILED_PRECONDITION when held."""
        reply = await self._stub.Acquire(
            lock_pb.AcquireRequest(name=name, ttl=_duration(ttl), wait=_duration(wait)),
            metadata=self._metadata,
            timeout=None if wait is None else wait.total_seconds() + (self._timeout or 0),
        )
        return Lease(name, reply.owner_token, reply.fencing_token)

    async def release(self, lease: Lease) -> None:
        await self._stub.Release(
            lock_pb.ReleaseRequest(name=lease.name, owner_token=lease.owner_token),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    @contextlib.asynccontextmanager
    async def hold(
        self, name: str, *, ttl: timedelta, wait: timedelta | None = None
    ) -> AsyncIterator[Lease]:
        """Hold the lock for the duration of the block: the server renews it while the
        stream is open and releases it when the block ends (or this process dies)."""
        requests: asyncio.Queue[lock_pb.HoldRequest | None] = asyncio.Queue()
        await requests.put(
            lock_pb.HoldRequest(
                acquire=lock_pb.HoldAcquire(name=name, ttl=_duration(ttl), wait=_duration(wait))
            )
        )

        async def outgoing() -> AsyncIterator[lock_pb.HoldRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = self._stub.Hold(outgoing(), metadata=self._metadata)
        first = await call.read()
        if not isinstance(first, lock_pb.HoldResponse) or not first.HasField("acquired"):
            call.cancel()
            raise RuntimeError(f"Hold on {name!r} ended before the lock was granted")
        lease = Lease(name, first.acquired.owner_token, first.acquired.fencing_token)

        async def watch() -> None:
            # read() until EOF (the stream's iterator and read() cannot be mixed).
            while isinstance(event := await call.read(), lock_pb.HoldResponse):
                if event.HasField("lost"):
                    lease.lost.set()

        watcher = asyncio.create_task(watch())
        try:
            yield lease
        finally:
            await requests.put(lock_pb.HoldRequest(release=lock_pb.HoldRelease()))
            await requests.put(None)
            with contextlib.suppress(aio.AioRpcError, asyncio.CancelledError):
                await asyncio.wait_for(watcher, self._timeout)
            call.cancel()


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    remaining: int
    retry_after: timedelta | None


class RateLimitClient:
    """RateLimitService calls for one namespace."""

    _ALGORITHMS = {
        "token_bucket": ratelimit_pb.ALGORITHM_TOKEN_BUCKET,
        "gcra": ratelimit_pb.ALGORITHM_GCRA,
        "fixed_window": ratelimit_pb.ALGORITHM_FIXED_WINDOW,
        "sliding_window_log": ratelimit_pb.ALGORITHM_SLIDING_WINDOW_LOG,
        "sliding_window_counter": ratelimit_pb.ALGORITHM_SLIDING_WINDOW_COUNTER,
    }

    def __init__(self, channel: aio.Channel, namespace: str, timeout: float | None) -> None:
        self._stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        self._metadata = ((NAMESPACE_METADATA, namespace),)
        self._timeout = timeout

    async def check(
        self,
        key: str,
        *,
        limit: int,
        period: timedelta,
        algorithm: str = "token_bucket",
        hits: int = 1,
    ) -> RateDecision:
        """Consume `hits` (0 peeks) against an inline limit, decided on Redis time."""
        target = ratelimit_pb.RateLimitTarget(
            inline_limit=ratelimit_pb.InlineLimit(
                key=key,
                limit=ratelimit_pb.Limit(
                    algorithm=self._ALGORITHMS[algorithm], limit=limit, period=_duration(period)
                ),
            )
        )
        reply = await self._stub.Check(
            ratelimit_pb.CheckRequest(target=target, hits=hits),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        result = reply.result
        retry = result.retry_after.ToTimedelta() if result.HasField("retry_after") else None
        return RateDecision(result.allowed, result.remaining, retry)


class CachetClient:
    """One channel to a cachet server, with a typed client per service."""

    def __init__(self, target: str, *, namespace: str = "default", timeout: float | None = 5.0):
        self.channel = aio.insecure_channel(target)
        self.cache = CacheClient(self.channel, namespace, timeout)
        self.locks = LockClient(self.channel, namespace, timeout)
        self.rate_limits = RateLimitClient(self.channel, namespace, timeout)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> CachetClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def connect(
    target: str, *, namespace: str = "default", timeout: float | None = 5.0
) -> CachetClient:
    """A client for the server at `target` (host:port), scoped to `namespace`."""
    return CachetClient(target, namespace=namespace, timeout=timeout)
