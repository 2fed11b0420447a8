"""cachet-client: generated stubs under `cachet_client.proto`, and a friendly async client."""

from ._client import CacheClient, CachetClient, connect

__all__ = ["CacheClient", "CachetClient", "connect"]
