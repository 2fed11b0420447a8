"""Domain errors and their gRPC status mapping, in one place.

Services and the backend raise `CachetError` subclasses (or let redis-py errors
through); `rpc_status_for` turns any exception into a `grpc.Status` carrying a
`google.rpc.Status` with ErrorInfo / BadRequest / RetryInfo details. Unknown
exceptions become INTERNAL with a reference id; their traceback is logged, never
sent.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from redis import exceptions as redis_errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "cachet.dev"
# The longest status message and field description sent, in UTF-8 bytes: input quoted
# in an error is cut well before this (`quoted`), and this bounds what any message can
# carry, well below grpc's 8 kB metadata limit even percent-encoded (past that limit the
# status itself would be lost).
MAX_MESSAGE_CHARS = 1024
MAX_DESCRIPTION_CHARS = 256
# How much of a caller's input an error message quotes.
QUOTED_CHARS = 64
# host:port pairs and bare IP addresses in Redis client errors: never sent to callers.
_ADDRESS = re.compile(
    r"\(\s*'[^']*'\s*,\s*[0-9]+[^)]*\)"  # ('host', port) as asyncio reports it
    r"|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?"  # [v6]:port
    r"|\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?::[0-9]+)?\b"  # v4[:port]
    r"|\b[A-Za-z0-9_.\-]+:[0-9]{2,5}\b"  # host:port
    r"|(?<![A-Za-z0-9])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![A-Za-z0-9:])"  # v6
)


def quoted(text: str | bytes, limit: int = QUOTED_CHARS) -> str:
    """`text` as an error message may quote it: repr of at most `limit` characters, and
    how much was left out."""
    shown = repr(text[:limit])
    if len(text) > limit:
        shown += f"... ({len(text)} {'bytes' if isinstance(text, bytes) else 'characters'})"
    return shown


def _bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (grpc percent-encodes the status message
    byte by byte, so bytes, not characters, are what must stay small)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def without_addresses(text: str) -> str:
    """`text` with every network address replaced: Redis errors name the node."""
    return _ADDRESS.sub("<redis node>", text)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class CachetError(Exception):
    """A failure with a defined gRPC status. `reason` is the ErrorInfo reason."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(CachetError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation] | FieldViolation) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))


class FailedPrecondition(CachetError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(CachetError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class NotFound(CachetError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class ResourceExhausted(CachetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: timedelta | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Unavailable(CachetError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "BACKEND_UNAVAILABLE"


class DeadlineExceeded(CachetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class PermissionDenied(CachetError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(CachetError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unimplemented(CachetError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class Internal(CachetError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


# Redis error replies whose first word identifies them, and what they mean to a caller.
_RESPONSE_ERRORS: dict[str, tuple[type[CachetError], str, str]] = {
    "WRONGTYPE": (
        FailedPrecondition,
        "WRONG_TYPE",
        "the key holds a different kind of value than this operation works on",
    ),
    "CROSSSLOT": (
        FailedPrecondition,
        "CROSS_SLOT",
        "the keys of this operation must share one Redis Cluster slot: "
        "give them a common hash tag, e.g. {user:1}:a and {user:1}:b",
    ),
    "NOSCRIPT": (Unavailable, "SCRIPT_CACHE_FLUSHED", "Redis lost its script cache; retry"),
    "LOADING": (Unavailable, "BACKEND_LOADING", "Redis is loading its dataset; retry shortly"),
    "READONLY": (Unavailable, "BACKEND_READONLY", "Redis node is a read-only replica; retry"),
    "MASTERDOWN": (Unavailable, "BACKEND_MASTER_DOWN", "Redis lost its master; retry"),
    "CLUSTERDOWN": (Unavailable, "BACKEND_CLUSTER_DOWN", "Redis Cluster is down; retry"),
    "TRYAGAIN": (Unavailable, "BACKEND_TRY_AGAIN", "Redis Cluster is resharding; retry"),
    # Followed inside redis-py; seen only when a slot keeps moving past its redirect limit.
    "MOVED": (Unavailable, "BACKEND_TRY_AGAIN", "Redis Cluster is moving the key's slot; retry"),
    "ASK": (Unavailable, "BACKEND_TRY_AGAIN", "Redis Cluster is moving the key's slot; retry"),
    "NOPERM": (
        Unavailable,
        "BACKEND_NO_PERMISSION",
        "the Redis user cachet logs in as lacks a permission it needs; check its ACL",
    ),
    "OOM": (ResourceExhausted, "BACKEND_OUT_OF_MEMORY", "Redis is out of memory"),
    "BUSY": (Unavailable, "BACKEND_BUSY", "Redis is busy running a script; retry"),
    # Raised by cachet's own read scripts, which size an answer before reading it.
    "TOOLARGE": (
        ResourceExhausted,
        "RESPONSE_TOO_LARGE",
        "the answer would be larger than the gRPC message limit; read it in parts (HashScan, "
        "a smaller range, a limit, fewer keys)",
    ),
    "NOREPLICAS": (Unavailable, "NOT_ENOUGH_REPLICAS", "not enough Redis replicas are in sync"),
    "NOGROUP": (
        FailedPrecondition,
        "GROUP_NOT_FOUND",
        "the consumer group (or its stream) does not exist; create it with CreateGroup",
    ),
    # A blocked XREADGROUP whose stream was deleted under it.
    "UNBLOCKED": (
        FailedPrecondition,
        "GROUP_NOT_FOUND",
        "the stream of this consumer group was deleted",
    ),
}

_RESPONSE_MESSAGES: list[tuple[str, type[CachetError], str, str]] = [
    (
        "increment or decrement would overflow",
        FailedPrecondition,
        "OUT_OF_RANGE",
        "the increment would overflow a signed 64-bit integer",
    ),
    (
        "not an integer or out of range",
        FailedPrecondition,
        "NOT_A_NUMBER",
        "the stored value is not an integer",
    ),
    ("not a valid float", FailedPrecondition, "NOT_A_NUMBER", "the stored value is not a number"),
    (
        "would produce NaN or Infinity",
        FailedPrecondition,
        "OUT_OF_RANGE",
        "the result would not be a finite number",
    ),
]


def domain_error(exc: BaseException) -> CachetError:
    """Translate any exception raised while serving a call into a CachetError."""
    if isinstance(exc, CachetError):
        return exc
    if isinstance(exc, TimeoutError) and not isinstance(exc, redis_errors.RedisError):
        return DeadlineExceeded("the call's deadline passed before Redis answered")
    if isinstance(exc, NotImplementedError):
        return Unimplemented(str(exc) or "this RPC is not implemented by this server")
    if isinstance(exc, redis_errors.ResponseError):
        return _response_error(exc)
    if isinstance(exc, redis_errors.RedisClusterException):
        if isinstance(exc, redis_errors.CrossSlotTransactionError):
            cls, reason, message = _RESPONSE_ERRORS["CROSSSLOT"]
            return cls(message, reason=reason)
        return Unavailable(f"Redis Cluster unavailable: {_first_line(exc)}")
    if isinstance(exc, redis_errors.ClusterError):
        # "TTL exhausted": ASK/TRYAGAIN/MOVED outlasted redis-py's 16 redirections.
        return Unavailable(
            "Redis Cluster kept redirecting the command (a slot is moving); retry",
            reason="BACKEND_TRY_AGAIN",
        )
    if _connection_torn_down(exc):
        log.warning("Redis connection closed under a command: %r", exc)
        return Unavailable("the Redis connection was closed under the command; retry")
    if isinstance(
        exc,
        redis_errors.ConnectionError | redis_errors.TimeoutError | ConnectionError | OSError,
    ):
        return Unavailable(f"Redis is unreachable: {_first_line(exc)}")
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error (ref %s)", ref, exc_info=exc)
    return Internal(f"internal error (ref {ref}); the server log has the details")


def _connection_torn_down(exc: BaseException) -> bool:
    """redis-py's async cluster client closes every connection, busy ones included, when
    it rebuilds its slot table; a command caught mid-handshake then fails inside the
    connection with AttributeError (its stream is gone). That is a lost connection."""
    if not isinstance(exc, AttributeError):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__") == (
        "redis.asyncio.connection"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return without_addresses(text.splitlines()[0][:300])


def _response_error(exc: redis_errors.ResponseError) -> CachetError:
    text = _first_line(exc)
    # redis-py strips a known error code off the message and keeps it in status_code.
    error_code = exc.status_code or text.split(" ", 1)[0]
    if error_code in _RESPONSE_ERRORS:
        cls, reason, message = _RESPONSE_ERRORS[error_code]
        return cls(message, reason=reason)
    for fragment, cls, reason, message in _RESPONSE_MESSAGES:
        if fragment in text:
            return cls(message, reason=reason)
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected Redis error reply (ref %s): %s", ref, text)
    return Internal(f"unexpected Redis error (ref {ref}); the server log has the details")


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rpc_status_for(error: CachetError) -> grpc.Status:
    """The grpc.Status (code, message, and google.rpc details trailer) for an error."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_bounded(v.field, MAX_DESCRIPTION_CHARS),
                            description=_bounded(v.description, MAX_DESCRIPTION_CHARS),
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=_bounded(error.message, MAX_MESSAGE_CHARS),
        details=details,
    )
    return rpc_status.to_status(status)
