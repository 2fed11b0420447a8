"""CacheService collections: hashes, lists, sets and sorted sets (mixed into CacheService)."""

from __future__ import annotations

from .base import Servicer


class CollectionsMixin(Servicer):
    pass
