"""LockService: locks with fencing tokens, the Hold stream, counted semaphores."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc

from ._core import Async, F, Service, Steps, Sync, duration, procedure, rpc, seconds
from .errors import CachetError, DeadlineExceeded, from_rpc_error
from .proto.cachet.lock.v1 import lock_pb2 as pb

_SERVICE = "cachet.lock.v1.LockService"
ACQUIRE = rpc(_SERVICE, "Acquire", pb.AcquireResponse, idempotent=False)
RELEASE = rpc(_SERVICE, "Release", pb.ReleaseResponse, idempotent=False)
EXTEND = rpc(_SERVICE, "Extend", pb.ExtendResponse, idempotent=True)
INSPECT = rpc(_SERVICE, "Inspect", pb.InspectResponse, idempotent=True)
ACQUIRE_SEMAPHORE = rpc(_SERVICE, "AcquireSemaphore", pb.AcquireSemaphoreResponse, idempotent=False)
RELEASE_SEMAPHORE = rpc(_SERVICE, "ReleaseSemaphore", pb.ReleaseSemaphoreResponse, idempotent=False)
EXTEND_SEMAPHORE = rpc(_SERVICE, "ExtendSemaphore", pb.ExtendSemaphoreResponse, idempotent=True)
INSPECT_SEMAPHORE = rpc(_SERVICE, "InspectSemaphore", pb.InspectSemaphoreResponse, idempotent=True)
HOLD_PATH = f"/{_SERVICE}/Hold"

Ttl = timedelta | float


@dataclass(frozen=True)
class Lease:
    """A granted lock (or semaphore slot): pass `fencing_token` with every write it
    protects; `owner_token` proves ownership to release and extend."""

    name: str
    owner_token: str
    fencing_token: int
    expire_time: datetime | None = None


@dataclass(frozen=True)
class LockInfo:
    """What Inspect sees of a lock."""

    held: bool
    remaining_ttl: timedelta | None
    fencing_token: int
    waiters: int
    holder: str


@dataclass(frozen=True)
class SemaphoreInfo:
    """What InspectSemaphore sees: the limit, each holder, the waiters."""

    limit: int
    holders: list[tuple[str, int, timedelta]]
    waiters: int
    fencing_token: int


class Locks(Service[F]):
    """LockService calls for one namespace."""

    @procedure
    def acquire(
        self, name: str, *, ttl: Ttl, wait: Ttl | None = None, holder: str = ""
    ) -> Steps[Lease]:
        """Take the lock for `ttl`, waiting up to `wait` (woken on release, no polling);
        raises LockHeld when it stays taken. Never retried (a lost answer would leave
        a lock nobody knows it holds)."""
        request = pb.AcquireRequest(
            name=name, ttl=duration(ttl), wait=duration(wait), holder=holder
        )
        reply = yield from self._call(ACQUIRE, request, blocks_for=seconds(wait))
        return Lease(name, reply.owner_token, reply.fencing_token, reply.expire_time.ToDatetime())

    @procedure
    def release(self, lease: Lease) -> Steps[None]:
        """Release a lock taken with `acquire`; LockNotOwned when it is not ours any more."""
        request = pb.ReleaseRequest(name=lease.name, owner_token=lease.owner_token)
        yield from self._call(RELEASE, request)

    @procedure
    def extend(self, lease: Lease, *, ttl: Ttl) -> Steps[Lease]:
        """Give a held lock a new TTL from now; LockNotOwned when it is not ours any more."""
        request = pb.ExtendRequest(
            name=lease.name, owner_token=lease.owner_token, ttl=duration(ttl)
        )
        reply = yield from self._call(EXTEND, request)
        return Lease(
            lease.name, lease.owner_token, reply.fencing_token, reply.expire_time.ToDatetime()
        )

    @procedure
    def inspect(self, name: str) -> Steps[LockInfo]:
        """Whether the lock is held, by whom, for how long, and how many wait for it."""
        reply = yield from self._call(INSPECT, pb.InspectRequest(name=name))
        remaining = reply.remaining_ttl.ToTimedelta() if reply.held else None
        return LockInfo(reply.held, remaining, reply.fencing_token, reply.waiters, reply.holder)

    @procedure
    def acquire_semaphore(
        self, name: str, *, limit: int, ttl: Ttl, wait: Ttl | None = None, holder: str = ""
    ) -> Steps[Lease]:
        """Take one of `limit` slots for `ttl`, waiting up to `wait`; raises
        SemaphoreFull when none frees up."""
        request = pb.AcquireSemaphoreRequest(
            name=name, limit=limit, ttl=duration(ttl), wait=duration(wait), holder=holder
        )
        reply = yield from self._call(ACQUIRE_SEMAPHORE, request, blocks_for=seconds(wait))
        return Lease(name, reply.owner_token, reply.fencing_token, reply.expire_time.ToDatetime())

    @procedure
    def release_semaphore(self, lease: Lease) -> Steps[int]:
        """Give a slot back; answers how many holders remain."""
        request = pb.ReleaseSemaphoreRequest(name=lease.name, owner_token=lease.owner_token)
        reply = yield from self._call(RELEASE_SEMAPHORE, request)
        return reply.holders

    @procedure
    def extend_semaphore(self, lease: Lease, *, ttl: Ttl) -> Steps[Lease]:
        """Give a held slot a new TTL from now."""
        request = pb.ExtendSemaphoreRequest(
            name=lease.name, owner_token=lease.owner_token, ttl=duration(ttl)
        )
        reply = yield from self._call(EXTEND_SEMAPHORE, request)
        return Lease(
            lease.name, lease.owner_token, reply.fencing_token, reply.expire_time.ToDatetime()
        )

    @procedure
    def inspect_semaphore(self, name: str) -> Steps[SemaphoreInfo]:
        """The semaphore's limit, holders (holder, fencing token, remaining TTL), waiters."""
        reply = yield from self._call(INSPECT_SEMAPHORE, pb.InspectSemaphoreRequest(name=name))
        holders = [
            (h.holder, h.fencing_token, h.remaining_ttl.ToTimedelta()) for h in reply.holders
        ]
        return SemaphoreInfo(reply.limit, holders, reply.waiters, reply.fencing_token)

    def _hold_request(
        self, name: str, ttl: Ttl, wait: Ttl | None, holder: str, renew_interval: Ttl | None
    ) -> pb.HoldRequest:
        return pb.HoldRequest(
            acquire=pb.HoldAcquire(
                name=name,
                ttl=duration(ttl),
                wait=duration(wait),
                holder=holder,
                renew_interval=duration(renew_interval),
            )
        )


@dataclass
class AsyncHeld:
    """A lock kept by a Hold stream. `lost` is set the moment the server reports the
    lock lost (`lost_reason` says why): the protected work should stop."""

    name: str
    owner_token: str
    fencing_token: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""


@dataclass
class SyncHeld:
    """A lock kept by a Hold stream. `lost` is set the moment the server reports the
    lock lost (`lost_reason` says why): the protected work should stop."""

    name: str
    owner_token: str
    fencing_token: int
    lost: threading.Event = field(default_factory=threading.Event)
    lost_reason: str = ""


def _granted(name: str, first: Any) -> pb.HoldResponse:
    if not isinstance(first, pb.HoldResponse) or not first.HasField("acquired"):
        raise CachetError(f"Hold on {name!r} ended before the lock was granted")
    return first


def _lost_reason(event: pb.HoldResponse) -> str:
    return f"{pb.LostReason.Name(event.lost.reason)}: {event.lost.message}"


class AsyncLocks(Locks[Async]):
    """LockService on the asyncio client."""

    @contextlib.asynccontextmanager
    async def hold(
        self,
        name: str,
        *,
        ttl: Ttl,
        wait: Ttl | None = None,
        holder: str = "",
        renew_interval: Ttl | None = None,
    ) -> AsyncIterator[AsyncHeld]:
        """Hold the lock for the block: the server renews it while the stream is open
        and releases it when the block ends (or when this process dies and the stream
        breaks). Raises LockHeld when it cannot be had within `wait`."""
        runner: Any = self._runner
        requests: asyncio.Queue[pb.HoldRequest | None] = asyncio.Queue()
        await requests.put(self._hold_request(name, ttl, wait, holder, renew_interval))

        async def outgoing() -> AsyncIterator[pb.HoldRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = runner.channels.plain.stream_stream(
            HOLD_PATH,
            request_serializer=pb.HoldRequest.SerializeToString,
            response_deserializer=pb.HoldResponse.FromString,
        )(outgoing(), metadata=await runner.metadata())
        try:
            first = _granted(name, await asyncio.wait_for(call.read(), _open_timeout(self, wait)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        except TimeoutError:
            call.cancel()
            raise DeadlineExceeded(
                f"Hold on {name!r}: no grant within the deadline",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        except BaseException:
            call.cancel()
            raise
        held = AsyncHeld(name, first.acquired.owner_token, first.acquired.fencing_token)

        async def watch() -> None:
            # read() until EOF (the stream's iterator and read() cannot be mixed).
            with contextlib.suppress(grpc.RpcError):
                while isinstance(event := await call.read(), pb.HoldResponse):
                    if event.HasField("lost"):
                        held.lost_reason = _lost_reason(event)
                        held.lost.set()
            if not closing.is_set():  # the stream broke while the block still runs
                held.lost_reason = held.lost_reason or "the Hold stream ended"
                held.lost.set()

        closing = asyncio.Event()
        watcher = asyncio.create_task(watch())
        try:
            yield held
        finally:
            closing.set()
            await requests.put(pb.HoldRequest(release=pb.HoldRelease()))
            await requests.put(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(watcher, self._settings.deadline(0))
            call.cancel()

    @contextlib.asynccontextmanager
    async def semaphore(
        self, name: str, *, limit: int, ttl: Ttl, wait: Ttl | None = None, holder: str = ""
    ) -> AsyncIterator[Lease]:
        """Hold one slot of a semaphore for the block (released at its end; not renewed:
        extend it with `extend_semaphore` for work longer than `ttl`)."""
        lease = await self.acquire_semaphore(name, limit=limit, ttl=ttl, wait=wait, holder=holder)
        try:
            yield lease
        finally:
            await self.release_semaphore(lease)


class SyncLocks(Locks[Sync]):
    """LockService on the blocking client."""

    @contextlib.contextmanager
    def hold(
        self,
        name: str,
        *,
        ttl: Ttl,
        wait: Ttl | None = None,
        holder: str = "",
        renew_interval: Ttl | None = None,
    ) -> Iterator[SyncHeld]:
        """Hold the lock for the block: the server renews it while the stream is open
        and releases it when the block ends (or when this process dies and the stream
        breaks). A daemon thread reads the stream to set `lost`. Raises LockHeld when
        it cannot be had within `wait`."""
        runner: Any = self._runner
        requests: queue.Queue[pb.HoldRequest | None] = queue.Queue()
        requests.put(self._hold_request(name, ttl, wait, holder, renew_interval))

        def outgoing() -> Iterator[pb.HoldRequest]:
            while (request := requests.get()) is not None:
                yield request

        call = runner.channels.plain.stream_stream(
            HOLD_PATH,
            request_serializer=pb.HoldRequest.SerializeToString,
            response_deserializer=pb.HoldResponse.FromString,
        )(outgoing(), metadata=runner.metadata(), timeout=None)
        events = iter(call)
        try:
            first = _granted(name, next(events, None))
        except grpc.RpcError as error:
            requests.put(None)
            raise from_rpc_error(error) from None
        held = SyncHeld(name, first.acquired.owner_token, first.acquired.fencing_token)
        closing = threading.Event()

        def watch() -> None:
            try:
                for event in events:
                    if event.HasField("lost"):
                        held.lost_reason = _lost_reason(event)
                        held.lost.set()
            except grpc.RpcError:
                pass
            if not closing.is_set():  # the stream broke while the block still runs
                held.lost_reason = held.lost_reason or "the Hold stream ended"
                held.lost.set()

        watcher = threading.Thread(target=watch, name=f"cachet-hold-{name}", daemon=True)
        watcher.start()
        try:
            yield held
        finally:
            closing.set()
            requests.put(pb.HoldRequest(release=pb.HoldRelease()))
            requests.put(None)
            watcher.join(self._settings.deadline(0))
            call.cancel()

    @contextlib.contextmanager
    def semaphore(
        self, name: str, *, limit: int, ttl: Ttl, wait: Ttl | None = None, holder: str = ""
    ) -> Iterator[Lease]:
        """Hold one slot of a semaphore for the block (released at its end; not renewed:
        extend it with `extend_semaphore` for work longer than `ttl`)."""
        lease = self.acquire_semaphore(name, limit=limit, ttl=ttl, wait=wait, holder=holder)
        try:
            yield lease
        finally:
            self.release_semaphore(lease)


def _open_timeout(service: Service[Any], wait: Ttl | None) -> float | None:
    return service._settings.deadline(seconds(wait))
