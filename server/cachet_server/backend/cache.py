"""Cache strings and counters: each operation is one atomic script per slot."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Aborted, FailedPrecondition
from .core import Backend
from .keys import CacheKeys
from .scripts import script

_GET = script("cache_get")
_SET = script("cache_set")
_SET_MANY = script("cache_set_many")
_DELETE = script("cache_delete")
_EXPIRE = script("cache_expire")
_INCREMENT = script("cache_increment")
_SET_BIT = script("cache_set_bit")


@dataclass(frozen=True)
class CacheValue:
    found: bool
    value: bytes = b""
    version: int = 0
    ttl_ms: int = -2
    should_refresh: bool = False


@dataclass(frozen=True)
class SetOutcome:
    version: int
    previous_found: bool
    previous: bytes


@dataclass(frozen=True)
class SetOptions:
    ttl_ms: int  # 0 keeps the current TTL (a new key still gets default_ttl_ms)
    default_ttl_ms: int
    condition: str = ""  # "", "NX" or "XX"
    if_version: int | None = None
    return_previous: bool = False
    fencing_token: int | None = None
    recompute_ms: int | None = None
    tags: Sequence[str] = ()


@dataclass(frozen=True)
class Increment:
    int_value: int
    float_value: float
    created: bool
    version: int


def _xfetch(ttl_ms: int, recompute_ms: int, beta: float) -> bool:
    """XFetch (Vattani et al.): refresh early with a probability that grows as expiry
    nears, scaled by how long the value takes to recompute."""
    if beta <= 0 or recompute_ms <= 0 or ttl_ms <= 0:
        return False
    return recompute_ms * beta * -math.log(1.0 - random.random()) >= ttl_ms


class CacheStore:
    """String values and counters of one namespace at a time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def get_many(
        self, namespace: str, keys: Sequence[str], *, with_ttl: bool = False, beta: float = 0.0
    ) -> list[CacheValue]:
        entries = [CacheKeys.of(namespace, key) for key in keys]
        results: list[CacheValue | None] = [None] * len(keys)
        want_ttl = with_ttl or beta > 0
        for indexes in self.backend.group_by_slot([e.data for e in entries]).values():
            flat: list[str] = []
            for i in indexes:
                flat += [entries[i].data, entries[i].meta]
            reply = await self.backend.run(_GET, flat, ["1" if want_ttl else "0"])
            for n, i in enumerate(indexes):
                found, value, version, pttl, recompute = reply[5 * n : 5 * n + 5]
                results[i] = (
                    CacheValue(
                        True,
                        value,
                        int(version),
                        int(pttl),
                        _xfetch(int(pttl), int(recompute), beta),
                    )
                    if found
                    else CacheValue(False)
                )
        return [r if r is not None else CacheValue(False) for r in results]

    async def get(
        self, namespace: str, key: str, *, with_ttl: bool = False, beta: float = 0.0
    ) -> CacheValue:
        (result,) = await self.get_many(namespace, [key], with_ttl=with_ttl, beta=beta)
        return result

    async def set(self, namespace: str, key: str, value: bytes, options: SetOptions) -> SetOutcome:
        k = CacheKeys.of(namespace, key)
        reply = await self.backend.run(
            _SET,
            [k.data, k.meta, k.lease],
            [
                value,
                options.ttl_ms,
                options.condition,
                "" if options.if_version is None else str(options.if_version),
                "1" if options.return_previous else "0",
                "" if options.fencing_token is None else str(options.fencing_token),
                "" if options.recompute_ms is None else str(options.recompute_ms),
                options.default_ttl_ms,
                "\n".join(options.tags),
            ],
        )
        outcome = reply[0].decode()
        if outcome == "OK":
            return SetOutcome(int(reply[1]), bool(reply[2]), reply[3])
        detail = reply[1].decode()
        if outcome == "KEY_EXISTS":
            raise FailedPrecondition(
                f"key {key!r} already exists (condition IF_ABSENT)", reason=outcome
            )
        if outcome == "KEY_NOT_FOUND":
            raise FailedPrecondition(
                f"key {key!r} does not exist (condition IF_PRESENT)", reason=outcome
            )
        if outcome == "VERSION_MISMATCH":
            raise Aborted(
                f"key {key!r} is at version {detail}, not {options.if_version}; "
                "read it again and retry",
                reason=outcome,
                metadata={"current_version": detail},
            )
        if outcome == "FENCING_TOKEN_STALE":
            raise Aborted(
                f"key {key!r} was written under fencing token {detail}, newer than "
                f"{options.fencing_token}: the writer's lock was lost",
                reason=outcome,
                metadata={"latest_fencing_token": detail},
            )
        raise RuntimeError(f"cache_set answered {outcome!r}")

    async def set_many(self, namespace: str, items: Sequence[tuple[str, bytes, int]]) -> list[int]:
        """Write (key, value, ttl_ms) items; atomic within each slot. Answers versions."""
        entries = [CacheKeys.of(namespace, key) for key, _, _ in items]
        versions = [0] * len(items)
        for indexes in self.backend.group_by_slot([e.data for e in entries]).values():
            keys: list[str] = []
            args: list[bytes | int] = []
            for i in indexes:
                keys += [entries[i].data, entries[i].meta, entries[i].lease]
                args += [items[i][1], items[i][2]]
            reply = await self.backend.run(_SET_MANY, keys, args)
            for n, i in enumerate(indexes):
                versions[i] = int(reply[n])
        return versions

    async def delete(self, namespace: str, keys: Sequence[str]) -> int:
        entries = [CacheKeys.of(namespace, key) for key in dict.fromkeys(keys)]
        deleted = 0
        for indexes in self.backend.group_by_slot([e.data for e in entries]).values():
            flat: list[str] = []
            for i in indexes:
                flat += [entries[i].data, entries[i].meta, entries[i].lease]
            deleted += int(await self.backend.run(_DELETE, flat, [3]))
        return deleted

    async def exists(self, namespace: str, keys: Sequence[str]) -> list[bool]:
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(CacheKeys.of(namespace, key).data)
            return [bool(n) for n in await pipe.execute()]

    async def expire(self, namespace: str, key: str, ttl_ms: int) -> bool:
        k = CacheKeys.of(namespace, key)
        return bool(await self.backend.run(_EXPIRE, [k.data, k.meta], [ttl_ms]))

    async def persist(self, namespace: str, key: str) -> bool:
        k = CacheKeys.of(namespace, key)
        return bool(await self.backend.run(_EXPIRE, [k.data, k.meta], ["persist"]))

    async def ttl_ms(self, namespace: str, key: str) -> int:
        """Remaining TTL in ms; -2 for a missing key, -1 for a key without TTL."""
        return int(await self.backend.redis.pttl(CacheKeys.of(namespace, key).data))

    async def increment(
        self, namespace: str, key: str, delta: int | float, ttl_ms: int
    ) -> Increment:
        k = CacheKeys.of(namespace, key)
        is_int = isinstance(delta, int)
        value, created, version = await self.backend.run(
            _INCREMENT,
            [k.data, k.meta, k.lease],
            ["int" if is_int else "float", str(delta) if is_int else repr(delta), ttl_ms],
        )
        number = value.decode()
        return Increment(
            int_value=int(number) if is_int else 0,
            float_value=0.0 if is_int else float(number),
            created=bool(created),
            version=int(version),
        )

    async def set_bit(self, namespace: str, key: str, offset: int, bit: bool, ttl_ms: int) -> bool:
        k = CacheKeys.of(namespace, key)
        previous = await self.backend.run(
            _SET_BIT, [k.data, k.meta, k.lease], [offset, int(bit), ttl_ms]
        )
        return bool(previous)

    async def get_bit(self, namespace: str, key: str, offset: int) -> bool:
        return bool(await self.backend.redis.getbit(CacheKeys.of(namespace, key).data, offset))

    async def bit_count(
        self, namespace: str, key: str, span: tuple[int, int] | None, unit: str
    ) -> int:
        name = CacheKeys.of(namespace, key).data
        if span is None:
            return int(await self.backend.redis.bitcount(name))
        return int(await self.backend.redis.bitcount(name, span[0], span[1], unit))
