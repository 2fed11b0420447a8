"""LockService: exclusive locks, Hold streams and counted semaphores (backend/locks.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, ClassVar

from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..access import READ, WRITE, CallSpec, StreamKind, blocking, streaming, waits
from ..backend.core import ReplicaAck
from ..backend.locks import (
    SERVER_TIME_US,
    Extended,
    Family,
    Grant,
    PermitStore,
    WakeDispatcher,
)
from ..callcontext import current_namespace
from ..errors import (
    Aborted,
    CachetError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    domain_error,
)
from ..metrics import instruments
from ..validation import optional
from .base import Context, Dependencies, Servicer

# Bounds fixed by the contract (lock.proto), not by configuration.
MAX_HOLDER_BYTES = 256
MAX_OWNER_TOKEN_BYTES = 256
MIN_HOLD_TTL_MS = 100
MIN_RENEW_INTERVAL_MS = 10
# A Hold renews at most ten times per TTL (and never more often than
# lock.min_renew_interval), whatever renew_interval it asks for.
RENEW_FLOOR_DIVISOR = 10
MAX_REPLICAS = 64
DEFAULT_REPLICATION_TIMEOUT_MS = 1000
MAX_REPLICATION_TIMEOUT_MS = 10_000
# While Redis does not answer, a Hold retries its renewal this often (until the
# lock would have expired).
_RENEW_RETRY_S = 0.05


def _ms(delta: timedelta) -> int:
    return int(delta / timedelta(milliseconds=1))


_NANOS = 1_000_000_000
_MS = 1000
_US = 1_000_000


def _put(
    value: duration_pb2.Duration | timestamp_pb2.Timestamp, amount: int, per_second: int
) -> None:
    """Set `value` to `amount` ≥ 0 units of 1/`per_second` s in place (filling a
    response's own field costs a fraction of building a message and copying it in;
    protobuf's From* helpers are Python). Every time and duration a lock answers is
    non-negative: TTLs are at least 1 ms, waits and remaining TTLs at least 0, Redis
    times after 1970."""
    value.seconds, rest = divmod(amount, per_second)
    value.nanos = rest * (_NANOS // per_second)


def _duration(ms: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    _put(duration, ms, _MS)
    return duration


def _seconds(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    _put(duration, int(seconds * 1e9), _NANOS)
    return duration


def _time_us(us: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    _put(stamp, us, _US)
    return stamp


def _time_ms(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    _put(stamp, ms, _MS)
    return stamp


def _put_grant(response: pb.AcquireResponse | pb.AcquireSemaphoreResponse, grant: Grant) -> None:
    """The grant's times, in the response's own fields."""
    _put(response.ttl, grant.ttl_ms, _MS)
    _put(response.expire_time, grant.expire_ms, _MS)
    _put(response.server_time, grant.server_us, _US)
    _put(response.waited, int(grant.waited * 1e9), _NANOS)


def _put_extended(
    response: pb.ExtendResponse | pb.ExtendSemaphoreResponse, extended: Extended
) -> None:
    _put(response.ttl, extended.ttl_ms, _MS)
    _put(response.expire_time, extended.expire_ms, _MS)
    _put(response.server_time, extended.server_us, _US)


def _deadline(context: Context) -> float | None:
    """Seconds until the call's deadline; None when it has none."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining)


class LockService(Servicer, lock_pb2_grpc.LockServiceServicer):
    CALLS: ClassVar[dict[str, CallSpec]] = {
        "Acquire": blocking(WRITE, waits("wait")),
        "AcquireSemaphore": blocking(WRITE, waits("wait")),
        "Extend": WRITE,
        "ExtendSemaphore": WRITE,
        "Hold": streaming(WRITE, StreamKind.HOLD),
        "Inspect": READ,
        "InspectSemaphore": READ,
        "Release": WRITE,
        "ReleaseSemaphore": WRITE,
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.settings = deps.settings.lock
        self.max_ttl_ms = _ms(self.settings.max_ttl)
        self.max_wait_ms = _ms(self.settings.max_wait)
        self.wakes = WakeDispatcher(deps.backend)
        self.locks = PermitStore(deps.backend, self.settings, self.wakes, Family.LOCK)
        self.semaphores = PermitStore(deps.backend, self.settings, self.wakes, Family.SEMAPHORE)

    async def aclose(self) -> None:
        await self.wakes.aclose()
        await self.locks.aclose()
        await self.semaphores.aclose()

    # -- request checks

    def _name(self, name: str, field: str = "name") -> str:
        return self.check.key(name, field)

    def _ttl(self, message: Any, field: str, path: str, minimum_ms: int = 1) -> int:
        if not message.HasField(field):
            raise InvalidArgument.field(path, "is required")
        ms = self.check.duration_ms(getattr(message, field), path)
        if ms < minimum_ms:
            raise InvalidArgument.field(path, f"must be at least {minimum_ms} ms")
        if ms > self.max_ttl_ms:
            raise InvalidArgument.field(
                path, f"is longer than the maximum lock TTL of {self.settings.max_ttl}"
            )
        return ms

    def _wait(self, message: Any, path: str) -> float:
        duration = optional(message, "wait")
        if duration is None:
            return 0.0
        ms = self.check.duration_ms(duration, path)
        if ms > self.max_wait_ms:
            raise InvalidArgument.field(
                path, f"is longer than the maximum wait of {self.settings.max_wait}"
            )
        return ms / 1000

    def _holder(self, holder: str, path: str) -> str:
        # Encoded only when it may not fit: UTF-8 takes at most 4 bytes a character.
        if len(holder) > MAX_HOLDER_BYTES // 4 and len(holder.encode()) > MAX_HOLDER_BYTES:
            raise InvalidArgument.field(path, f"is longer than {MAX_HOLDER_BYTES} bytes")
        return holder

    def _token(self, token: str) -> str:
        if not token:
            raise InvalidArgument.field("owner_token", "must not be empty")
        if len(token) > MAX_OWNER_TOKEN_BYTES // 4 and len(token.encode()) > MAX_OWNER_TOKEN_BYTES:
            raise InvalidArgument.field(
                "owner_token", f"is longer than {MAX_OWNER_TOKEN_BYTES} bytes"
            )
        return token

    def _replication(self, message: Any, path: str, context: Context) -> ReplicaAck | None:
        if not message.HasField("replication"):
            return None
        requirement: pb.ReplicationRequirement = message.replication
        if not 0 <= requirement.min_replicas <= MAX_REPLICAS:
            raise InvalidArgument.field(
                f"{path}.min_replicas", f"must be between 0 and {MAX_REPLICAS}"
            )
        if requirement.min_replicas == 0:
            return None
        timeout_ms = self.check.duration_ms(requirement.timeout, f"{path}.timeout")
        if timeout_ms > MAX_REPLICATION_TIMEOUT_MS:
            raise InvalidArgument.field(
                f"{path}.timeout", f"must be at most {MAX_REPLICATION_TIMEOUT_MS} ms"
            )
        timeout_ms = timeout_ms or DEFAULT_REPLICATION_TIMEOUT_MS
        deadline = _deadline(context)
        if deadline is not None:
            timeout_ms = max(1, min(timeout_ms, int(deadline * 1000)))
        return ReplicaAck(requirement.min_replicas, timeout_ms)

    def _limit(self, limit: int) -> int:
        maximum = self.settings.max_semaphore_limit
        if not 1 <= limit <= maximum:
            raise InvalidArgument.field("limit", f"must be between 1 and {maximum}")
        return limit

    # -- locks

    async def Acquire(self, request: pb.AcquireRequest, context: Context) -> pb.AcquireResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        ttl_ms = self._ttl(request, "ttl", "ttl")
        wait = self._wait(request, "wait")
        holder = self._holder(request.holder, "holder")
        replication = self._replication(request, "replication", context)
        grant = await self.locks.acquire(
            namespace,
            name,
            limit=1,
            ttl_ms=ttl_ms,
            holder=holder,
            wait=wait,
            deadline=_deadline(context),
            replication=replication,
        )
        response = pb.AcquireResponse(
            owner_token=grant.owner_token,
            fencing_token=grant.fencing_token,
            replicas_acked=grant.replicas_acked,
        )
        _put_grant(response, grant)
        return response

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        token = self._token(request.owner_token)
        replication = self._replication(request, "replication", context)
        released = await self.locks.release(namespace, name, token, replication)
        response = pb.ReleaseResponse(replicas_acked=released.replicas_acked)
        _put(response.server_time, released.server_us, _US)
        return response

    async def Extend(self, request: pb.ExtendRequest, context: Context) -> pb.ExtendResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        token = self._token(request.owner_token)
        ttl_ms = self._ttl(request, "ttl", "ttl")
        replication = self._replication(request, "replication", context)
        extended = await self.locks.extend(namespace, name, token, ttl_ms, replication)
        response = pb.ExtendResponse(
            fencing_token=extended.fencing_token, replicas_acked=extended.replicas_acked
        )
        _put_extended(response, extended)
        return response

    async def Inspect(self, request: pb.InspectRequest, context: Context) -> pb.InspectResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        state = await self.locks.inspect(namespace, name)
        response = pb.InspectResponse(
            held=bool(state.permits),
            fencing_token=state.fencing_token,
            waiters=state.waiters,
            server_time=_time_us(state.server_us),
        )
        if state.permits:
            response.remaining_ttl.CopyFrom(_duration(state.permits[0].remaining_ms))
            response.holder = state.permits[0].holder
        return response

    # -- Hold

    async def Hold(
        self, requests: AsyncIterator[pb.HoldRequest], context: Context
    ) -> AsyncIterator[pb.HoldResponse]:
        namespace = current_namespace()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "acquire":
            raise InvalidArgument.field("acquire", "the first message of a Hold must be acquire")
        spec = first.acquire
        name = self._name(spec.name, "acquire.name")
        ttl_ms = self._ttl(spec, "ttl", "acquire.ttl", minimum_ms=MIN_HOLD_TTL_MS)
        wait = self._wait(spec, "acquire.wait")
        holder = self._holder(spec.holder, "acquire.holder")
        interval_ms = self._renew_interval(spec, ttl_ms)
        replication = self._replication(spec, "acquire.replication", context)
        grant = await self.locks.acquire(
            namespace,
            name,
            limit=1,
            ttl_ms=ttl_ms,
            holder=holder,
            wait=wait,
            deadline=_deadline(context),
            replication=replication,
        )
        held = True
        reader = asyncio.ensure_future(anext(requests, None))
        try:
            yield pb.HoldResponse(
                acquired=pb.HoldAcquired(
                    owner_token=grant.owner_token,
                    fencing_token=grant.fencing_token,
                    ttl=_duration(ttl_ms),
                    expire_time=_time_ms(grant.expire_ms),
                    waited=_seconds(grant.waited),
                ),
                server_time=_time_us(grant.server_us),
            )
            async for event in self._keep(namespace, name, grant, interval_ms, replication, reader):
                if event.WhichOneof("event") in ("lost", "released"):
                    held = False
                yield event
        finally:
            if reader.done() and not reader.cancelled():
                reader.exception()  # retrieved: a broken stream is not worth a log line
            reader.cancel()
            if held:
                await self.locks.release_quietly(namespace, name, grant.owner_token)

    def renew_floor_ms(self, ttl_ms: int) -> int:
        """The shortest renew interval a Hold of this TTL gets, whatever it asks."""
        return max(_ms(self.settings.min_renew_interval), ttl_ms // RENEW_FLOOR_DIVISOR)

    def _renew_interval(self, spec: pb.HoldAcquire, ttl_ms: int) -> int:
        duration = optional(spec, "renew_interval")
        ms = self.check.duration_ms(duration, "acquire.renew_interval") if duration else 0
        if ms == 0:
            return max(MIN_RENEW_INTERVAL_MS, ttl_ms // 3)
        if not MIN_RENEW_INTERVAL_MS <= ms <= ttl_ms // 2:
            raise InvalidArgument.field(
                "acquire.renew_interval",
                f"must be between {MIN_RENEW_INTERVAL_MS} ms and ttl / 2 ({ttl_ms // 2} ms)",
            )
        return max(ms, self.renew_floor_ms(ttl_ms))

    async def _keep(
        self,
        namespace: str,
        name: str,
        grant: Grant,
        interval_ms: int,
        replication: ReplicaAck | None,
        reader: asyncio.Future[pb.HoldRequest | None],
    ) -> AsyncIterator[pb.HoldResponse]:
        """Renew until the client ends the hold or the lock is lost; the events to send.
        A `lost` event is followed by ABORTED / LEASE_LOST."""
        loop = asyncio.get_running_loop()
        interval = interval_ms / 1000
        ttl = grant.ttl_ms / 1000
        lease_end = loop.time() + ttl
        next_renewal = loop.time() + interval
        renewals = 0
        while True:
            await asyncio.wait({reader}, timeout=max(0.0, next_renewal - loop.time()))
            if reader.done():
                message = reader.result()
                if message is not None and message.WhichOneof("kind") != "release":
                    raise InvalidArgument.field(
                        "acquire", "only the first message of a Hold may be acquire"
                    )
                try:
                    released = await self.locks.release(namespace, name, grant.owner_token)
                except FailedPrecondition as error:
                    yield self._lost(pb.LOST_REASON_NOT_OWNED, error)
                    raise self._lease_lost(name) from None
                yield pb.HoldResponse(
                    released=pb.HoldReleased(), server_time=_time_us(released.server_us)
                )
                return
            sent = loop.time()
            try:
                extended = await self.locks.extend(
                    namespace, name, grant.owner_token, grant.ttl_ms, replication
                )
            except Exception as exc:
                failure = domain_error(exc)
                if failure.reason == "LOCK_NOT_OWNED":
                    yield self._lost(pb.LOST_REASON_NOT_OWNED, failure)
                    raise self._lease_lost(name) from None
                if failure.reason == "REPLICATION_INCOMPLETE":
                    yield self._lost(pb.LOST_REASON_REPLICATION_INCOMPLETE, failure)
                    raise self._lease_lost(name) from None
                if not isinstance(failure, Unavailable | DeadlineExceeded):
                    raise failure from exc
                if loop.time() + _RENEW_RETRY_S >= lease_end:
                    yield self._lost(pb.LOST_REASON_REDIS_UNAVAILABLE, failure)
                    raise self._lease_lost(name) from None
                next_renewal = loop.time() + _RENEW_RETRY_S
                continue
            renewals += 1
            lease_end = sent + ttl
            next_renewal = sent + interval
            yield pb.HoldResponse(
                renewed=pb.HoldRenewed(expire_time=_time_ms(extended.expire_ms), renewals=renewals),
                server_time=_time_us(extended.server_us),
            )

    @staticmethod
    def _lost(reason: pb.LostReason.ValueType, error: CachetError) -> pb.HoldResponse:
        """A `lost` event, timed by the Redis decision that found the lock lost (untimed
        when Redis did not answer)."""
        response = pb.HoldResponse(lost=pb.HoldLost(reason=reason, message=error.message))
        if SERVER_TIME_US in error.metadata:
            response.server_time.CopyFrom(_time_us(int(error.metadata[SERVER_TIME_US])))
        return response

    @staticmethod
    def _lease_lost(name: str) -> CachetError:
        instruments.hold_losses.add(1)
        return Aborted(f"the hold on lock {name!r} was lost", reason="LEASE_LOST")

    # -- semaphores

    async def AcquireSemaphore(
        self, request: pb.AcquireSemaphoreRequest, context: Context
    ) -> pb.AcquireSemaphoreResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        limit = self._limit(request.limit)
        ttl_ms = self._ttl(request, "ttl", "ttl")
        wait = self._wait(request, "wait")
        holder = self._holder(request.holder, "holder")
        replication = self._replication(request, "replication", context)
        grant = await self.semaphores.acquire(
            namespace,
            name,
            limit=limit,
            ttl_ms=ttl_ms,
            holder=holder,
            wait=wait,
            deadline=_deadline(context),
            replication=replication,
        )
        response = pb.AcquireSemaphoreResponse(
            owner_token=grant.owner_token,
            fencing_token=grant.fencing_token,
            holders=grant.holders,
            replicas_acked=grant.replicas_acked,
        )
        _put_grant(response, grant)
        return response

    async def ReleaseSemaphore(
        self, request: pb.ReleaseSemaphoreRequest, context: Context
    ) -> pb.ReleaseSemaphoreResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        token = self._token(request.owner_token)
        released = await self.semaphores.release(namespace, name, token)
        response = pb.ReleaseSemaphoreResponse(holders=released.holders)
        _put(response.server_time, released.server_us, _US)
        return response

    async def ExtendSemaphore(
        self, request: pb.ExtendSemaphoreRequest, context: Context
    ) -> pb.ExtendSemaphoreResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        token = self._token(request.owner_token)
        ttl_ms = self._ttl(request, "ttl", "ttl")
        replication = self._replication(request, "replication", context)
        extended = await self.semaphores.extend(namespace, name, token, ttl_ms, replication)
        response = pb.ExtendSemaphoreResponse(
            fencing_token=extended.fencing_token, replicas_acked=extended.replicas_acked
        )
        _put_extended(response, extended)
        return response

    async def InspectSemaphore(
        self, request: pb.InspectSemaphoreRequest, context: Context
    ) -> pb.InspectSemaphoreResponse:
        namespace = current_namespace()
        name = self._name(request.name)
        state = await self.semaphores.inspect(namespace, name)
        return pb.InspectSemaphoreResponse(
            limit=state.limit,
            holders=[
                pb.SemaphoreHolder(
                    holder=permit.holder,
                    fencing_token=permit.fencing_token,
                    remaining_ttl=_duration(permit.remaining_ms),
                )
                for permit in state.permits
            ],
            waiters=state.waiters,
            fencing_token=state.fencing_token,
            server_time=_time_us(state.server_us),
        )
