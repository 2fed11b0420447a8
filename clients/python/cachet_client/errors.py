"""One exception hierarchy for every failed call, async or sync.

A failed call raises a `CachetError` subclass picked first by the google.rpc.ErrorInfo
reason the server attached (the README's error table), then by the gRPC status code.
Every error keeps the status `code`, the `reason`, the server's `message`, the ErrorInfo
`metadata`, the BadRequest `field_violations` and, when the server named one, the
RetryInfo `retry_after`:

    try:
        await client.cache.set("k", b"v", if_version=7)
    except cachet_client.VersionMismatch:
        ...  # someone else wrote first
    except cachet_client.InvalidArgument as bad:
        print(bad.field_violations)  # [FieldViolation(field="key", description="...")]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

ERROR_DOMAIN = "cachet.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (from google.rpc.BadRequest)."""

    field: str
    description: str


class CachetError(Exception):
    """A call failed. `code` is the gRPC status, `reason` the ErrorInfo reason."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_after: timedelta | None = None,
    ) -> None:
        named = f"{code.name} {reason}" if reason and reason != code.name else code.name
        super().__init__(f"{named}: {message}")
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = field_violations
        self.retry_after = retry_after


class InvalidArgument(CachetError):
    """Malformed input or a limit exceeded; `field_violations` names each field."""


class FailedPrecondition(CachetError):
    """A condition on the stored state does not hold."""


class KeyExists(FailedPrecondition):
    """A write conditioned on absence found the key (KEY_EXISTS)."""


class KeyNotFound(FailedPrecondition):
    """A call needs a key that does not exist (KEY_NOT_FOUND)."""


class WrongType(FailedPrecondition):
    """The key holds another kind of value (WRONG_TYPE)."""


class NotANumber(FailedPrecondition):
    """An increment found a value that is not a number (NOT_A_NUMBER)."""


class OutOfRange(FailedPrecondition):
    """A number or an index is out of range (OUT_OF_RANGE)."""


class CrossSlot(FailedPrecondition):
    """The keys of one call live in different Redis Cluster slots (CROSS_SLOT)."""


class PersistDisabled(FailedPrecondition):
    """Persist is refused by the server's settings (PERSIST_DISABLED)."""


class LockNotOwned(FailedPrecondition):
    """Release or Extend by someone who does not hold the lock (LOCK_NOT_OWNED)."""


class LockHeld(FailedPrecondition):
    """The lock is held by someone else (LOCK_HELD)."""


class SemaphoreFull(FailedPrecondition):
    """Every slot of the semaphore is taken (SEMAPHORE_FULL)."""


class SemaphoreLimitMismatch(FailedPrecondition):
    """The semaphore exists with another limit (SEMAPHORE_LIMIT_MISMATCH)."""


class GroupNotFound(FailedPrecondition):
    """The consumer group does not exist (GROUP_NOT_FOUND)."""


class GroupExists(FailedPrecondition):
    """The consumer group exists already (GROUP_EXISTS)."""


class StreamNotFound(FailedPrecondition):
    """The stream does not exist (STREAM_NOT_FOUND)."""


class ConfirmationMismatch(FailedPrecondition):
    """A guarded admin call was not confirmed with the right words (CONFIRMATION_MISMATCH)."""


class FlushDisabled(FailedPrecondition):
    """Namespace flush is switched off on the server (FLUSH_DISABLED)."""


class ConfigUnsafe(FailedPrecondition):
    """A Redis setting the server refuses as unsafe (CONFIG_UNSAFE)."""


class Aborted(CachetError):
    """A concurrent writer won, or what the call relied on changed."""


class VersionMismatch(Aborted):
    """A compare-and-set found another version (VERSION_MISMATCH)."""


class FencingTokenStale(Aborted):
    """A write carried an older fencing token than the key has seen (FENCING_TOKEN_STALE)."""


class LeaseLost(Aborted):
    """A Fill came after its lease ended or was voided (LEASE_LOST)."""


class TopologyChanged(Aborted):
    """The Redis topology changed under the call (TOPOLOGY_CHANGED)."""


class NotFound(CachetError):
    """The named thing does not exist."""


class PolicyNotFound(NotFound):
    """No rate-limit policy has this name (POLICY_NOT_FOUND)."""


class ResourceExhausted(CachetError):
    """Overloaded, too large, or too slow; `retry_after` when the server named a time."""


class RateLimited(ResourceExhausted):
    """RESOURCE_EXHAUSTED with a RetryInfo: try again after `retry_after`."""


class QuotaExceeded(RateLimited):
    """The namespace has its quota of calls, blocking calls or streams in flight
    (QUOTA_EXCEEDED); `retry_after` says when to try again."""


class TooManyWatchers(ResourceExhausted):
    """The server's limit of WatchInvalidations streams is reached (TOO_MANY_WATCHERS)."""


class ResponseTooLarge(ResourceExhausted):
    """The answer would exceed the message limit (RESPONSE_TOO_LARGE)."""


class SubscriberTooSlow(ResourceExhausted):
    """The server dropped a subscriber that fell behind (SUBSCRIBER_TOO_SLOW)."""


class TooManySubscribers(ResourceExhausted):
    """The server's subscriber limit is reached (TOO_MANY_SUBSCRIBERS)."""


class BackendOutOfMemory(ResourceExhausted):
    """Redis is out of memory (BACKEND_OUT_OF_MEMORY)."""


class PermissionDenied(CachetError):
    """The credential may not do this (PERMISSION_DENIED, CONFIG_NOT_WHITELISTED, ...)."""


class ConfigNotWhitelisted(PermissionDenied):
    """A Redis setting outside the admin whitelist (CONFIG_NOT_WHITELISTED)."""


class NamespaceNotGranted(PermissionDenied):
    """The credential does not grant the call's namespace (NAMESPACE_NOT_GRANTED)."""


class RoleNotGranted(PermissionDenied):
    """The RPC needs a role the credential does not hold (ROLE_NOT_GRANTED)."""


class Unauthenticated(CachetError):
    """No credential, or one the server does not know (UNAUTHENTICATED)."""


class CredentialMissing(Unauthenticated):
    """The call carried no credential (CREDENTIAL_MISSING)."""


class CredentialMalformed(Unauthenticated):
    """The credential is not `Bearer <token>` or does not parse (CREDENTIAL_MALFORMED)."""


class CredentialUnknown(Unauthenticated):
    """No API key or certificate identity matches the credential (CREDENTIAL_UNKNOWN)."""


class CredentialExpired(Unauthenticated):
    """A JWT past its `exp` (CREDENTIAL_EXPIRED): refresh it."""


class CredentialNotYetValid(Unauthenticated):
    """A JWT before its `nbf` (CREDENTIAL_NOT_YET_VALID)."""


class CredentialWrongAudience(Unauthenticated):
    """A JWT for another audience (CREDENTIAL_WRONG_AUDIENCE)."""


class CredentialWrongIssuer(Unauthenticated):
    """A JWT from another issuer (CREDENTIAL_WRONG_ISSUER)."""


class CredentialBadSignature(Unauthenticated):
    """A JWT no configured key verifies (CREDENTIAL_BAD_SIGNATURE)."""


class Unavailable(CachetError):
    """The server or its Redis cannot answer now; retrying later may succeed."""


class NotEnoughReplicas(Unavailable):
    """Too few Redis replicas acknowledged a write (NOT_ENOUGH_REPLICAS)."""


class BackendUnavailable(Unavailable):
    """Redis cannot be reached (BACKEND_UNAVAILABLE)."""


class BackendReadonly(Unavailable):
    """The Redis node is a read-only replica, e.g. during a failover (BACKEND_READONLY)."""


class BackendLoading(Unavailable):
    """Redis is loading its dataset (BACKEND_LOADING)."""


class BackendClusterDown(Unavailable):
    """Redis Cluster is down (BACKEND_CLUSTER_DOWN)."""


class BackendTryAgain(Unavailable):
    """Redis Cluster is moving the key's slot (BACKEND_TRY_AGAIN)."""


class ReplicationIncomplete(Unavailable):
    """A write reached fewer replicas than required (REPLICATION_INCOMPLETE)."""


class DeadlineExceeded(CachetError):
    """The call's deadline passed."""


class Cancelled(CachetError):
    """The call was cancelled."""


class Unimplemented(CachetError):
    """The server does not serve this method (yet)."""


class Internal(CachetError):
    """A server bug; the message carries a reference id for the server log."""


_BY_REASON: dict[str, type[CachetError]] = {
    "KEY_EXISTS": KeyExists,
    "KEY_NOT_FOUND": KeyNotFound,
    "WRONG_TYPE": WrongType,
    "NOT_A_NUMBER": NotANumber,
    "OUT_OF_RANGE": OutOfRange,
    "CROSS_SLOT": CrossSlot,
    "PERSIST_DISABLED": PersistDisabled,
    "LOCK_NOT_OWNED": LockNotOwned,
    "LOCK_HELD": LockHeld,
    "SEMAPHORE_FULL": SemaphoreFull,
    "SEMAPHORE_LIMIT_MISMATCH": SemaphoreLimitMismatch,
    "GROUP_NOT_FOUND": GroupNotFound,
    "GROUP_EXISTS": GroupExists,
    "STREAM_NOT_FOUND": StreamNotFound,
    "CONFIRMATION_MISMATCH": ConfirmationMismatch,
    "FLUSH_DISABLED": FlushDisabled,
    "CONFIG_UNSAFE": ConfigUnsafe,
    "VERSION_MISMATCH": VersionMismatch,
    "FENCING_TOKEN_STALE": FencingTokenStale,
    "LEASE_LOST": LeaseLost,
    "TOPOLOGY_CHANGED": TopologyChanged,
    "POLICY_NOT_FOUND": PolicyNotFound,
    "RESPONSE_TOO_LARGE": ResponseTooLarge,
    "QUOTA_EXCEEDED": QuotaExceeded,
    "TOO_MANY_WATCHERS": TooManyWatchers,
    "SUBSCRIBER_TOO_SLOW": SubscriberTooSlow,
    "TOO_MANY_SUBSCRIBERS": TooManySubscribers,
    "BACKEND_OUT_OF_MEMORY": BackendOutOfMemory,
    "CONFIG_NOT_WHITELISTED": ConfigNotWhitelisted,
    "NAMESPACE_NOT_GRANTED": NamespaceNotGranted,
    "ROLE_NOT_GRANTED": RoleNotGranted,
    "CREDENTIAL_MISSING": CredentialMissing,
    "CREDENTIAL_MALFORMED": CredentialMalformed,
    "CREDENTIAL_UNKNOWN": CredentialUnknown,
    "CREDENTIAL_EXPIRED": CredentialExpired,
    "CREDENTIAL_NOT_YET_VALID": CredentialNotYetValid,
    "CREDENTIAL_WRONG_AUDIENCE": CredentialWrongAudience,
    "CREDENTIAL_WRONG_ISSUER": CredentialWrongIssuer,
    "CREDENTIAL_BAD_SIGNATURE": CredentialBadSignature,
    "NOT_ENOUGH_REPLICAS": NotEnoughReplicas,
    "BACKEND_UNAVAILABLE": BackendUnavailable,
    "BACKEND_READONLY": BackendReadonly,
    "BACKEND_LOADING": BackendLoading,
    "BACKEND_CLUSTER_DOWN": BackendClusterDown,
    "BACKEND_TRY_AGAIN": BackendTryAgain,
    "REPLICATION_INCOMPLETE": ReplicationIncomplete,
}

_BY_CODE: dict[grpc.StatusCode, type[CachetError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
}


def _error_class(
    code: grpc.StatusCode, reason: str, retry_after: timedelta | None
) -> type[CachetError]:
    by_reason = _BY_REASON.get(reason)
    # A reason is trusted only under the status it belongs to, so a new server reason
    # under an unexpected code still lands in the code's class.
    if by_reason is not None and issubclass(by_reason, _BY_CODE.get(code, CachetError)):
        return by_reason
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None:
        return RateLimited
    return _BY_CODE.get(code, CachetError)


def from_operation_status(
    code: int, message: str, reason: str, metadata: dict[str, str]
) -> CachetError:
    """The CachetError of one failed operation of a Batch or a Session (its
    OperationStatus: the code, message, reason and metadata of the error the unary RPC
    would have raised, picked by the same rules; it carries no field violations)."""
    status = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    cls = _error_class(status, reason, None)
    return cls(message, code=status, reason=reason, metadata=metadata)


_CODES = {status.value[0]: status for status in grpc.StatusCode}


def from_rpc_error(error: grpc.RpcError) -> CachetError:
    """The CachetError for a failed call (a grpc.RpcError or grpc.aio.AioRpcError)."""
    call: Any = error  # both kinds of error are also the failed call (code, details, ...)
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: timedelta | None = None
    for key, value in call.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta()
    cls = _error_class(code, reason, retry_after)
    return cls(
        message,
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_after=retry_after,
    )
