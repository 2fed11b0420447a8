"""The Redis key layout: every key cachet writes is built here, and only here.

    cachet:<namespace>:<kind>:<user key>        user key carries a hash tag
    cachet:<namespace>:<kind>#:{<user key>}     user key has none: cachet wraps it

`kind` says what the key holds: `k` the user's data (any Redis type), `m` the
metadata hash of a cache value (version, fencing token, recompute time, tags),
`l` a fill lease, `o` a stale copy, `t` a tag index, and the other services'
kinds below (`es` an event stream, `esd` its dead-letter stream, `esg` its
groups' dead-letter policies, `ps` a pub/sub channel). A lock (`lock`) or
semaphore (`sem`) is five keys of one name: holders, owners (`-o`), fencing
counter (`-f`, never expires), waiter queue (`-q`) and waiter leases (`-w`); see
backend/locks.py. The namespace is validated to `[A-Za-z0-9_.-]`, so the prefix
never holds `{`, `}`, `:` or a glob character.

Redis Cluster hashes only the part between the first `{` and the next `}`. A
user key with a hash tag (`{user:1}:profile`) keeps it, so the user's own
co-location works. A user key without one is wrapped in braces, so all the
kinds of one user key (data, metadata, lease) share a slot and one Lua script
can touch them atomically. The `#` marks the wrapped form: the two forms can
never produce the same Redis key, and a Redis key maps back to exactly one user
key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

PREFIX = "cachet"
NAMESPACE_PATTERN = re.compile(r"\A[A-Za-z0-9_.\-]+\Z")
_WRAPPED = "#"


class Kind(StrEnum):
    """What a Redis key holds."""

    DATA = "k"
    META = "m"
    LEASE = "l"
    STALE = "o"
    TAG = "t"
    LOCK = "lock"
    LOCK_OWNERS = "lock-o"
    LOCK_FENCE = "lock-f"
    LOCK_QUEUE = "lock-q"
    LOCK_WAITERS = "lock-w"
    SEMAPHORE = "sem"
    SEMAPHORE_OWNERS = "sem-o"
    SEMAPHORE_FENCE = "sem-f"
    SEMAPHORE_QUEUE = "sem-q"
    SEMAPHORE_WAITERS = "sem-w"
    RATE = "rl"
    STREAM = "es"
    DEAD_LETTER = "esd"
    GROUP_POLICY = "esg"
    TOPIC = "ps"
    REMEMBERED = "rid"
    HOLDING = "lh"


def has_hash_tag(key: str) -> bool:
    """Whether Redis Cluster would hash only a part of `key` (a non-empty `{...}`)."""
    start = key.find("{")
    if start < 0:
        return False
    end = key.find("}", start + 1)
    return end > start + 1


@functools.lru_cache(maxsize=4096)
def _prefix(namespace: str, kind: Kind) -> str:
    # Built once per namespace and kind: every call of a namespace reuses it.
    return f"{PREFIX}:{namespace}:{kind}"


def redis_key(namespace: str, kind: Kind, key: str) -> str:
    """The Redis key holding `kind` of the user's `key` in `namespace`."""
    return _prefix(namespace, kind) + _suffix(key)


def _suffix(key: str) -> str:
    """What follows a kind's prefix for the user's `key`: the key as it is when it
    carries a hash tag, else wrapped in braces (see the layout above)."""
    if "{" in key and has_hash_tag(key):
        return f":{key}"
    return f"{_WRAPPED}:{{{key}}}"


def user_key(namespace: str, kind: Kind, redis_key_: str) -> str | None:
    """The user key a Redis key of this namespace and kind stands for, else None."""
    tagged = f"{PREFIX}:{namespace}:{kind}:"
    wrapped = f"{PREFIX}:{namespace}:{kind}{_WRAPPED}:{{"
    if redis_key_.startswith(tagged):
        return redis_key_[len(tagged) :]
    if redis_key_.startswith(wrapped) and redis_key_.endswith("}"):
        return redis_key_[len(wrapped) : -1]
    return None


def remembered_result(namespace: str, key: str, operation: str, request_id: str) -> str:
    """Where the result of `operation` on `key` with `request_id` is remembered: a key
    of the same Cluster slot as `key`'s data, so the write and the remembering are one
    script. `key` is a user key, or for Publish the namespace's pub/sub slot key."""
    return f"{redis_key(namespace, Kind.REMEMBERED, key)}:{operation}:{request_id}"


def holding_list(namespace: str, key: str, call_id: str) -> str:
    """The list one blocking ListPop call moves its value into (BLMOVE) before taking
    it, in the slot of the list `key`, so a cancelled call can put the value back."""
    return f"{redis_key(namespace, Kind.HOLDING, key)}:{call_id}"


def scan_patterns(namespace: str, kind: Kind, user_glob: str) -> list[str]:
    """SCAN MATCH patterns that together find exactly the keys whose user key matches."""
    return [
        f"{PREFIX}:{namespace}:{kind}:{user_glob}",
        f"{PREFIX}:{namespace}:{kind}{_WRAPPED}:{{{user_glob}}}",
    ]


def kind_prefix(namespace: str, kind: Kind) -> str:
    """The prefix every Redis key of this namespace and kind starts with, in both forms
    (`cachet:<ns>:k:` and `cachet:<ns>:k#:`): for Redis client tracking's BCAST PREFIX.
    Only `k` among the kinds starts with the letter k, so it matches no other kind."""
    return f"{PREFIX}:{namespace}:{kind}"


def namespace_of(redis_key_: str) -> str | None:
    """The namespace a Redis key of cachet's layout belongs to; None for any other key."""
    prefix, _, rest = redis_key_.partition(":")
    namespace, separator, _ = rest.partition(":")
    if prefix != PREFIX or not separator or not NAMESPACE_PATTERN.match(namespace):
        return None
    return namespace


# Fencing counters are kept by FlushNamespace: a flushed lock must never hand out a
# token it handed out before (a former holder's writes would then be accepted).
KEPT_BY_FLUSH = (Kind.LOCK_FENCE, Kind.SEMAPHORE_FENCE)


def kept_by_flush(namespace: str, redis_key_: str) -> bool:
    """Whether a key of the namespace survives FlushNamespace (see KEPT_BY_FLUSH)."""
    return any(
        redis_key_.startswith(
            (f"{PREFIX}:{namespace}:{kind}:", f"{PREFIX}:{namespace}:{kind}{_WRAPPED}:")
        )
        for kind in KEPT_BY_FLUSH
    )


def namespace_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for every key of a namespace, of every kind."""
    return f"{PREFIX}:{namespace}:*"


@functools.lru_cache(maxsize=4096)
def _cache_prefixes(namespace: str) -> tuple[str, str, str, str]:
    # The four kinds of a cache entry, built once per namespace.
    return (
        _prefix(namespace, Kind.DATA),
        _prefix(namespace, Kind.META),
        _prefix(namespace, Kind.LEASE),
        _prefix(namespace, Kind.STALE),
    )


class CacheKeys(NamedTuple):
    """The Redis keys that together make up one cache entry."""

    data: str
    meta: str
    lease: str
    stale: str

    @classmethod
    def of(cls, namespace: str, key: str) -> CacheKeys:
        data, meta, lease, stale = _cache_prefixes(namespace)
        suffix = _suffix(key)
        return cls(data + suffix, meta + suffix, lease + suffix, stale + suffix)


@functools.lru_cache(maxsize=4096)
def _wrapped_read_prefixes(namespace: str) -> tuple[str, str]:
    # What a wrapped key's data and metadata names start with, up to the key itself.
    data, meta, _, _ = _cache_prefixes(namespace)
    return f"{data}{_WRAPPED}:{{", f"{meta}{_WRAPPED}:{{"


def data_and_meta_keys(namespace: str, keys: Sequence[str]) -> list[str]:
    """The data and the metadata key of each of `keys`, in turn: what a cache read
    touches (the prefixes built once per namespace)."""
    names = [""] * (2 * len(keys))
    if "{" not in "".join(keys):
        # No key can carry a hash tag, so each is wrapped, and each name is one f-string
        # (a suffix per key and two concatenations took 60 % more instructions).
        data, meta = _wrapped_read_prefixes(namespace)
        names[0::2] = [f"{data}{key}}}" for key in keys]
        names[1::2] = [f"{meta}{key}}}" for key in keys]
        return names
    data, meta, _, _ = _cache_prefixes(namespace)
    suffixes = [_suffix(key) for key in keys]
    names[0::2] = [data + suffix for suffix in suffixes]
    names[1::2] = [meta + suffix for suffix in suffixes]
    return names


DEAD_LETTER_SUFFIX = ":dead"


@dataclass(frozen=True)
class StreamKeys:
    """The Redis keys of one event stream, all in one Cluster slot.

    A stream named "<name>:dead" is the dead-letter stream of "<name>": it is
    stored as the DEAD_LETTER kind of "<name>", so that moving an event from a
    stream to its dead-letter stream is one single-slot script. A dead-letter
    stream has no dead-letter stream (and no policies) of its own: `dead` and
    `policies` are None for it.
    """

    stream: str
    dead: str | None
    policies: str | None

    @classmethod
    def of(cls, namespace: str, name: str) -> StreamKeys:
        if name.endswith(DEAD_LETTER_SUFFIX):
            source = name.removesuffix(DEAD_LETTER_SUFFIX)
            return cls(redis_key(namespace, Kind.DEAD_LETTER, source), None, None)
        return cls(
            stream=redis_key(namespace, Kind.STREAM, name),
            dead=redis_key(namespace, Kind.DEAD_LETTER, name),
            policies=redis_key(namespace, Kind.GROUP_POLICY, name),
        )
