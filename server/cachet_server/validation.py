"""Request checks shared by every service: keys, values, TTLs, batch sizes.

Each check raises InvalidArgument naming the offending field, so the caller gets
a google.rpc.BadRequest pointing at exactly what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2

from .config import Limits
from .errors import InvalidArgument

REQUEST_ID_PATTERN = re.compile(r"\A[A-Za-z0-9_.:\-]{1,128}\Z")
_MAX_NANOS = 999_999_999
_Choice = TypeVar("_Choice")


def _ms(delta: timedelta) -> int:
    return int(delta / timedelta(milliseconds=1))


class Validator:
    """Checks requests against the configured Limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # A key of at most this many characters passes `key` whatever they are (UTF-8
        # takes at most 4 bytes each): loops over many keys check only the others, without
        # building a field name per key.
        self.short_key_chars = limits.max_key_bytes // 4
        self.max_ttl_ms = _ms(limits.max_ttl)
        self.default_ttl_ms = _ms(limits.default_ttl)

    def key(self, key: str, field: str = "key") -> str:
        if not key:
            raise InvalidArgument.field(field, "must not be empty")
        # Only a key of more characters than short_key_chars can be over the byte limit:
        # the others are not encoded to be measured.
        if len(key) > self.short_key_chars:
            size = len(key.encode())
            if size > self.limits.max_key_bytes:
                raise InvalidArgument.field(
                    field, f"is {size} bytes; the limit is {self.limits.max_key_bytes}"
                )
        return key

    @staticmethod
    def request_id(request_id: str, field: str = "request_id") -> str:
        """An optional idempotency key: empty, or 1 to 128 bytes of [A-Za-z0-9_.:-]."""
        if request_id and not REQUEST_ID_PATTERN.match(request_id):
            raise InvalidArgument.field(field, "must be 1 to 128 characters of [A-Za-z0-9_.:-]")
        return request_id

    def batch(self, count: int, field: str, *, allow_empty: bool = False) -> None:
        if count == 0 and not allow_empty:
            raise InvalidArgument.field(field, "must not be empty")
        if count > self.limits.max_batch:
            raise InvalidArgument.field(
                field, f"has {count} items; the limit is {self.limits.max_batch}"
            )

    def keys(self, keys: Sequence[str], field: str = "keys") -> list[str]:
        self.batch(len(keys), field)
        # The keys are copied out of the request once: each read of a protobuf repeated
        # string builds a new str, so iterating the request twice built every key twice.
        listed = list(keys)
        fits = self.short_key_chars
        # Whether every key passes is asked in C (`all` for an empty one, `max` over their
        # lengths); only a batch that may hold a bad key is looked through key by key.
        if not all(listed) or max(map(len, listed)) > fits:
            for i, key in enumerate(listed):
                if not key or len(key) > fits:
                    self.key(key, f"{field}[{i}]")
        return listed

    def value(self, value: bytes, field: str = "value") -> bytes:
        if len(value) > self.limits.max_value_bytes:
            raise InvalidArgument.field(
                field, f"is {len(value)} bytes; the limit is {self.limits.max_value_bytes}"
            )
        return value

    def duration_ms(self, duration: duration_pb2.Duration, field: str) -> int:
        """A well-formed, non-negative Duration in whole milliseconds (rounded up)."""
        if duration.seconds < 0 or duration.nanos < 0:
            raise InvalidArgument.field(field, "must not be negative")
        if duration.nanos > _MAX_NANOS or duration.seconds > 315_576_000_000:
            raise InvalidArgument.field(field, "is not a valid google.protobuf.Duration")
        return duration.seconds * 1000 + math.ceil(duration.nanos / 1_000_000)

    def ttl_ms(self, duration: duration_pb2.Duration | None, field: str = "ttl") -> int:
        """A TTL in ms: the default when absent, else in (0, max_ttl]."""
        if duration is None:
            return self.default_ttl_ms
        ms = self.duration_ms(duration, field)
        if ms <= 0:
            raise InvalidArgument.field(field, "must be positive (omit it for the default TTL)")
        if ms > self.max_ttl_ms:
            raise InvalidArgument.field(
                field, f"is longer than the maximum TTL of {self.limits.max_ttl}"
            )
        return ms

    @staticmethod
    def choice(value: int, allowed: Mapping[Any, _Choice], field: str) -> _Choice:
        """What an enum value means, refusing values the server does not handle (proto3
        enums are open: any integer can arrive)."""
        if value not in allowed:
            raise InvalidArgument.field(field, f"unknown or unspecified enum value {value}")
        return allowed[value]

    def finite(self, number: float, field: str) -> float:
        if not math.isfinite(number):
            raise InvalidArgument.field(field, "must be a finite number")
        return number


def optional(message: object, field: str) -> duration_pb2.Duration | None:
    """The Duration in `field` when the request set it, else None."""
    if message.HasField(field):  # type: ignore[attr-defined]
        value: duration_pb2.Duration = getattr(message, field)
        return value
    return None
