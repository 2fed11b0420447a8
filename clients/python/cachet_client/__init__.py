"""cachet-client: generated stubs under `cachet_client.proto`, and a friendly async client."""

from ._client import (
    CacheClient,
    CachetClient,
    Lease,
    LockClient,
    RateDecision,
    RateLimitClient,
    Value,
    connect,
)

__all__ = [
    "CacheClient",
    "CachetClient",
    "Lease",
    "LockClient",
    "RateDecision",
    "RateLimitClient",
    "Value",
    "connect",
]
