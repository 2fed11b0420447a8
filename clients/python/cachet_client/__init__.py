"""cachet-client: idiomatic asyncio and blocking clients for cachet, and the generated
stubs under `cachet_client.proto`.

    import cachet_client

    async with cachet_client.connect("localhost:50051", namespace="shop") as client:
        await client.cache.set("user:1", b"alice", ttl=300)
        value = await client.cache.get("user:1")

    with cachet_client.connect_sync("localhost:50051", namespace="shop") as client:
        client.cache.set("user:1", b"alice", ttl=300)
"""

from . import serializers
from ._cache import Txn, TxnOpResult, TxnResult, Value
from ._client import AsyncClient, SyncClient, connect, connect_sync
from ._core import NO_RETRY, TLS, RetryPolicy
from ._events import AsyncDelivery, Claimed, Event, SyncDelivery
from ._locks import AsyncHeld, Lease, LockInfo, SemaphoreInfo, SyncHeld
from ._ratelimit import Decision, Decisions, RateLimit, parse_rate
from .errors import (
    Aborted,
    BackendOutOfMemory,
    CachetError,
    Cancelled,
    ConfigNotWhitelisted,
    ConfirmationMismatch,
    CrossSlot,
    DeadlineExceeded,
    FailedPrecondition,
    FencingTokenStale,
    FieldViolation,
    FlushDisabled,
    GroupExists,
    GroupNotFound,
    Internal,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    LeaseLost,
    LockHeld,
    LockNotOwned,
    NotANumber,
    NotEnoughReplicas,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PersistDisabled,
    PolicyNotFound,
    RateLimited,
    ResourceExhausted,
    ResponseTooLarge,
    SemaphoreFull,
    SemaphoreLimitMismatch,
    StreamNotFound,
    SubscriberTooSlow,
    TooManySubscribers,
    TopologyChanged,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    VersionMismatch,
    WrongType,
)

CachetClient = AsyncClient  # the name of the first, async-only client

__all__ = [
    "NO_RETRY",
    "TLS",
    "Aborted",
    "AsyncClient",
    "AsyncDelivery",
    "AsyncHeld",
    "BackendOutOfMemory",
    "CachetClient",
    "CachetError",
    "Cancelled",
    "Claimed",
    "ConfigNotWhitelisted",
    "ConfirmationMismatch",
    "CrossSlot",
    "DeadlineExceeded",
    "Decision",
    "Decisions",
    "Event",
    "FailedPrecondition",
    "FencingTokenStale",
    "FieldViolation",
    "FlushDisabled",
    "GroupExists",
    "GroupNotFound",
    "Internal",
    "InvalidArgument",
    "KeyExists",
    "KeyNotFound",
    "Lease",
    "LeaseLost",
    "LockHeld",
    "LockInfo",
    "LockNotOwned",
    "NotANumber",
    "NotEnoughReplicas",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PersistDisabled",
    "PolicyNotFound",
    "RateLimit",
    "RateLimited",
    "ResourceExhausted",
    "ResponseTooLarge",
    "RetryPolicy",
    "SemaphoreFull",
    "SemaphoreInfo",
    "SemaphoreLimitMismatch",
    "StreamNotFound",
    "SubscriberTooSlow",
    "SyncClient",
    "SyncDelivery",
    "SyncHeld",
    "TooManySubscribers",
    "TopologyChanged",
    "Txn",
    "TxnOpResult",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Value",
    "VersionMismatch",
    "WrongType",
    "connect",
    "connect_sync",
    "parse_rate",
    "serializers",
]
