"""An idiomatic asyncio client over the generated stubs.

    async with cachet_client.connect("localhost:50051", namespace="shop") as client:
        await client.cache.set("user:1", b"alice", ttl=timedelta(minutes=5))
        value = await client.cache.get("user:1")

Errors arrive as `grpc.aio.AioRpcError`; the status code and the google.rpc
ErrorInfo reason say what happened (see the README's error table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

from google.protobuf import duration_pb2
from grpc import aio

from .proto.cachet.cache.v1 import cache_pb2 as cache_pb
from .proto.cachet.cache.v1 import cache_pb2_grpc

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


class CachetClient:
    """One channel to a cachet server, with a typed client per service."""

    def __init__(self, target: str, *, namespace: str = "default", timeout: float | None = 5.0):
        self.channel = aio.insecure_channel(target)
        self.cache = CacheClient(self.channel, namespace, timeout)

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
