"""The two clients, `connect()` (asyncio, on grpc.aio) and `connect_sync()` (blocking,
on grpc's sync channel), with the same surface: `cache`, `locks`, `rate_limits`,
`events`, `admin`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
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
    seconds,
)
from ._events import AsyncEvents, SyncEvents
from ._locks import AsyncLocks, SyncLocks
from ._nearcache import NearCache, follow, follow_in_thread
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


# How long enable_near_cache waits for the first `synced` when calls have no deadline.
_SYNC_WAIT = 5.0


class AsyncClient:
    """A cachet client for asyncio code. Use it as `async with` (or `await close()`)."""

    def __init__(self, settings: Settings, serializer: Serializer = BYTES) -> None:
        self.settings = settings
        self._near_task: asyncio.Task[None] | None = None
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

    async def enable_near_cache(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_ttl: Timeout = timedelta(minutes=5),
    ) -> NearCache:
        """Serve `cache.get` and `cache.get_many` from a local near-cache kept in step by
        the server's WatchInvalidations stream (docs/near-cache.md): bounded by entries
        and bytes, never kept past the server's TTL nor `max_ttl`, never served while
        the stream is not synced. Waits (up to the default deadline) for the first
        `synced`; answers the near-cache, whose `stats()` count hits and misses."""
        if self._near_task is not None:
            raise RuntimeError("the near-cache is already enabled")
        near = NearCache(max_entries=max_entries, max_bytes=max_bytes, max_ttl=seconds(max_ttl))
        synced = asyncio.Event()
        near.on_synced = synced.set
        self._near_task = asyncio.create_task(follow(near, self.cache._watch_events))
        self.cache._near = near
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.deadline(0.0) or _SYNC_WAIT):
                await synced.wait()
        return near

    async def close(self) -> None:
        """Close the client's channels (calls in flight are cancelled)."""
        if self._near_task is not None:
            self._near_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._near_task
            self._near_task = None
            self.cache._near = None
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
        self._near_thread: threading.Thread | None = None
        self._near_stop = threading.Event()
        self._near_calls: list[Any] = []
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

    def enable_near_cache(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_ttl: Timeout = timedelta(minutes=5),
    ) -> NearCache:
        """As AsyncClient.enable_near_cache: the stream is read by one thread of its own."""
        if self._near_thread is not None:
            raise RuntimeError("the near-cache is already enabled")
        near = NearCache(max_entries=max_entries, max_bytes=max_bytes, max_ttl=seconds(max_ttl))
        stop = self._near_stop = threading.Event()
        calls: list[Any] = []

        def open_stream() -> Any:
            call = self.cache._watch_call()
            calls[:] = [call]
            if stop.is_set():
                call.cancel()
            return call

        self._near_calls = calls
        self._near_thread = threading.Thread(
            target=follow_in_thread,
            args=(near, open_stream, stop),
            name="cachet-near-cache",
            daemon=True,
        )
        self._near_thread.start()
        self.cache._near = near
        deadline = time.monotonic() + (self.settings.deadline(0.0) or _SYNC_WAIT)
        while not near.synced and time.monotonic() < deadline:
            time.sleep(0.005)
        return near

    def close(self) -> None:
        """Close the client's channels."""
        if self._near_thread is not None:
            self._near_stop.set()
            for call in self._near_calls:
                call.cancel()
            self._near_thread.join(timeout=5)
            self._near_thread = None
            self.cache._near = None
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
