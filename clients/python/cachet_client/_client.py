"""The two clients, `connect()` (asyncio, on grpc.aio) and `connect_sync()` (blocking,
on grpc's sync channel), with the same surface: `cache`, `locks`, `rate_limits`,
`events`, `admin`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from ._admin import Admin
from ._cache import AsyncCache, SyncCache
from ._core import (
    TLS,
    Async,
    AsyncRunner,
    Credential,
    RetryPolicy,
    Settings,
    Sync,
    SyncCredential,
    SyncRunner,
)
from ._events import AsyncEvents, SyncEvents
from ._locks import AsyncLocks, SyncLocks
from ._ratelimit import AsyncRateLimits, SyncRateLimits
from .serializers import BYTES, Serializer

Timeout = timedelta | float | None


def _settings(
    target: str,
    namespace: str,
    tls: TLS | None,
    credential: Credential | None,
    timeout: Timeout,
    retry: RetryPolicy | None,
    options: Sequence[tuple[str, Any]],
) -> Settings:
    if isinstance(timeout, int | float):
        timeout = timedelta(seconds=timeout)
    return Settings(
        target=target,
        namespace=namespace,
        tls=tls,
        credential=credential,
        timeout=timeout,
        retry=retry or RetryPolicy(),
        options=tuple(options),
    )


class AsyncClient:
    """A cachet client for asyncio code. Use it as `async with` (or `await close()`)."""

    def __init__(self, settings: Settings, serializer: Serializer = BYTES) -> None:
        self.settings = settings
        self._runner = AsyncRunner(settings)
        self.cache = AsyncCache(self._runner, serializer)
        self.locks = AsyncLocks(self._runner, serializer)
        self.rate_limits = AsyncRateLimits(self._runner, serializer)
        self.events = AsyncEvents(self._runner, serializer)
        self.admin: Admin[Async] = Admin(self._runner, serializer)

    @property
    def channel(self) -> Any:
        """The grpc.aio channel of idempotent calls, for the raw stubs in
        `cachet_client.proto` (it carries no namespace: pass the metadata yourself)."""
        return self._runner.channels.retrying

    async def close(self) -> None:
        """Close the client's channels (calls in flight are cancelled)."""
        await self._runner.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SyncClient:
    """A blocking cachet client, on grpc's sync channel. Use it as `with` (or `close()`).
    It is safe to share between threads."""

    def __init__(self, settings: Settings, serializer: Serializer = BYTES) -> None:
        self.settings = settings
        self._runner = SyncRunner(settings)
        self.cache = SyncCache(self._runner, serializer)
        self.locks = SyncLocks(self._runner, serializer)
        self.rate_limits = SyncRateLimits(self._runner, serializer)
        self.events = SyncEvents(self._runner, serializer)
        self.admin: Admin[Sync] = Admin(self._runner, serializer)

    @property
    def channel(self) -> Any:
        """The grpc channel of idempotent calls, for the raw stubs in
        `cachet_client.proto` (it carries no namespace: pass the metadata yourself)."""
        return self._runner.channels.retrying

    def close(self) -> None:
        """Close the client's channels."""
        self._runner.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(
    target: str,
    *,
    namespace: str = "default",
    tls: TLS | None = None,
    credential: Credential | None = None,
    timeout: Timeout = timedelta(seconds=5),
    retry: RetryPolicy | None = None,
    serializer: Serializer = BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> AsyncClient:
    """An asyncio client for the server at `target` ("host:port"), scoped to `namespace`.

    `tls` turns TLS on (CA, client certificate for mTLS, server name override);
    `credential` is sent as `authorization: Bearer <token>` on every call: a token, or
    a function (plain or async) called before each call for a fresh one. `timeout` is
    the default deadline of a unary call (blocking calls add the time they may wait);
    `retry` how idempotent calls are retried; `serializer` how values become bytes;
    `options` extra grpc channel arguments."""
    return AsyncClient(
        _settings(target, namespace, tls, credential, timeout, retry, options), serializer
    )


def connect_sync(
    target: str,
    *,
    namespace: str = "default",
    tls: TLS | None = None,
    credential: SyncCredential | None = None,
    timeout: Timeout = timedelta(seconds=5),
    retry: RetryPolicy | None = None,
    serializer: Serializer = BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> SyncClient:
    """A blocking client for the server at `target`, with the same settings and surface
    as `connect` (the credential function, if any, is a plain function)."""
    return SyncClient(
        _settings(target, namespace, tls, credential, timeout, retry, options), serializer
    )
