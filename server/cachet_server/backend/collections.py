"""Cache collections: hashes, lists, sets and sorted sets.

A collection lives at the same Redis key as a string value of that name (the DATA
kind), so Delete, Exists, Expire and GetTtl work on every type alike. Every write
that may create a collection runs in `coll_write.lua`, which gives the collection
its TTL in the same step; reads and removals are single Redis commands.

Operations on two collections (moves, set algebra) need both keys in one Redis
Cluster slot. That is checked on every topology, not only on Cluster, so a call
that works on a laptop's standalone Redis keeps working in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FailedPrecondition
from .batch import Step
from .core import Backend, Command, integer_result
from .keys import CacheKeys, holding_list, remembered_result
from .scripts import script

log = logging.getLogger(__name__)

_WRITE = script("coll_write")
_POP = script("coll_pop")
_LIST_TRIM = script("coll_list_trim")
_SORTED_SET_RANK = script("coll_sorted_set_rank")
_PUT_BACK = script("coll_put_back")
_READ = script("coll_read")

# A holding list of a waiting ListPop lives at most this long (see list_pop).
HOLDING_TTL_MS = 60_000

# Redis scripts cannot pass more arguments than Lua's stack holds to one command.
MAX_STORE_KEYS = 4000


@dataclass(frozen=True)
class CollectionTtl:
    """TTL handling of one write: a new collection always gets `ttl_ms`; an existing
    one gets it only with `refresh`."""

    ttl_ms: int
    refresh: bool = False


@dataclass(frozen=True)
class ScoreBound:
    """One end of a score range; `value` may be +/-inf but not NaN."""

    value: float
    exclusive: bool = False

    def redis_arg(self) -> str:
        if math.isinf(self.value):
            text = "+inf" if self.value > 0 else "-inf"
        else:
            text = repr(self.value)
        return f"({text}" if self.exclusive else text


UNBOUNDED_BELOW = ScoreBound(-math.inf)
UNBOUNDED_ABOVE = ScoreBound(math.inf)


def _text(raw: bytes) -> str:
    # Field names are written from protobuf strings, so they are UTF-8.
    return raw.decode(errors="replace")


def _score(raw: bytes | float) -> float:
    return float(raw)


async def _finish_quietly(work: Awaitable[Any]) -> None:
    """Run a clean-up to its end even if the calling task is cancelled meanwhile;
    a failure is logged (the holding list's TTL is then the last resort)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
    except Exception as exc:
        log.warning("putting back a cancelled ListPop's values failed: %s", exc)


def _scored(flat: Sequence[Any]) -> list[tuple[bytes, float]]:
    """A flat WITHSCORES reply as (member, score) pairs."""
    return [(flat[i], _score(flat[i + 1])) for i in range(0, len(flat), 2)]


class CollectionStore:
    """The collections of one namespace at a time."""

    def __init__(
        self,
        backend: Backend,
        *,
        block_slice_s: float,
        request_window_ms: int = 120_000,
        default_ttl_ms: int = 3_600_000,
        max_answer_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.backend = backend
        # TTL of a list that putting back a cancelled pop's values re-creates.
        self.default_ttl_ms = default_ttl_ms
        # How long the result of a write with a request_id is remembered.
        self.request_window_ms = request_window_ms
        # Whole-collection and range reads larger than this are refused in Redis,
        # before the answer is built (coll_read.lua).
        self.max_answer_bytes = max_answer_bytes
        # A blocking command must answer before the connection's socket timeout or
        # redis-py drops the connection (and a value Redis popped with it); waits
        # longer than a slice are done as several blocking calls in a row.
        self.block_slice_s = block_slice_s

    @property
    def _redis(self) -> Any:
        return self.backend.redis

    async def _read(self, name: str, part: str, *command: Any) -> Any:
        """`command` on collection `name`, refused (RESOURCE_EXHAUSTED /
        RESPONSE_TOO_LARGE) without reading when its answer would exceed the budget."""
        return await self.backend.run(_READ, [name], [self.max_answer_bytes, part, *command])

    async def _write(
        self,
        namespace: str,
        key: str,
        ttl: CollectionTtl,
        op: str,
        args: Sequence[Any],
        *,
        sources: Sequence[str] = (),
        request_id: str = "",
    ) -> Any:
        """Run one collection write on `key` (reading `sources`, Redis keys of its
        slot). It voids the key's fill lease; with a request_id, a retry within the
        window answers the first result and writes nothing."""
        return await self.backend.run(
            _WRITE, *self._write_call(namespace, key, ttl, op, args, sources, request_id)
        )

    def _write_call(
        self,
        namespace: str,
        key: str,
        ttl: CollectionTtl,
        op: str,
        args: Sequence[Any],
        sources: Sequence[str] = (),
        request_id: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of coll_write for one write."""
        target = CacheKeys.of(namespace, key)
        remembered = target.lease
        window = ""
        if request_id:
            remembered = remembered_result(namespace, key, op, request_id)
            window = str(self.request_window_ms)
        return (
            [target.data, target.lease, remembered, *sources],
            [ttl.ttl_ms, "1" if ttl.refresh else "0", op, window, *args],
        )

    @staticmethod
    def _one_slot(namespace: str, keys: Sequence[str], what: str) -> list[str]:
        """The Redis keys of `keys`, refused unless they share one Cluster slot."""
        names = [CacheKeys.of(namespace, key).data for key in keys]
        Backend.require_one_slot(names, what, "{queue:1}:pending and {queue:1}:done")
        return names

    # ---- hashes -----------------------------------------------------------------

    async def hash_set(
        self,
        namespace: str,
        key: str,
        fields: Sequence[tuple[str, bytes]],
        *,
        if_absent: bool,
        ttl: CollectionTtl,
    ) -> int:
        flat: list[str | bytes] = []
        for name, value in fields:
            flat += [name, value]
        op = "hash_set_absent" if if_absent else "hash_set"
        return int(await self._write(namespace, key, ttl, op, flat))

    async def hash_get(self, namespace: str, key: str, fields: Sequence[str]) -> list[bytes | None]:
        return list(await self._redis.hmget(CacheKeys.of(namespace, key).data, list(fields)))

    def hash_set_step(
        self,
        namespace: str,
        key: str,
        fields: Sequence[tuple[str, bytes]],
        *,
        if_absent: bool,
        ttl: CollectionTtl,
    ) -> Step:
        """`hash_set` as one step of a batch; answers how many fields were added."""
        flat: list[str | bytes] = []
        for name, value in fields:
            flat += [name, value]
        op = "hash_set_absent" if if_absent else "hash_set"
        command = Command.of_script(_WRITE, *self._write_call(namespace, key, ttl, op, flat))
        return Step([command], lambda replies: int(replies[0]))

    def hash_get_step(self, namespace: str, key: str, fields: Sequence[str]) -> Step:
        """`hash_get` as one step of a batch; answers each field's value or None."""
        command = Command(["HMGET", CacheKeys.of(namespace, key).data, *fields])
        return Step([command], lambda replies: list(replies[0]))

    async def hash_get_all(self, namespace: str, key: str) -> list[tuple[str, bytes]]:
        name = CacheKeys.of(namespace, key).data
        flat = await self._read(name, "all", "HGETALL", name)
        return [(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]

    async def hash_delete(self, namespace: str, key: str, fields: Sequence[str]) -> int:
        return int(await self._redis.hdel(CacheKeys.of(namespace, key).data, *fields))

    async def hash_increment(
        self,
        namespace: str,
        key: str,
        field: str,
        delta: int | float,
        ttl: CollectionTtl,
        *,
        request_id: str = "",
    ) -> int | float:
        is_int = isinstance(delta, int)
        reply = await self._write(
            namespace,
            key,
            ttl,
            "hash_increment",
            [field, "int" if is_int else "float", str(delta) if is_int else repr(delta)],
            request_id=request_id,
        )
        if reply[0] == b"NOT_A_NUMBER":
            kind = "an integer" if is_int else "a number"
            raise FailedPrecondition(
                f"field {field!r} of hash {key!r} is not {kind}", reason="NOT_A_NUMBER"
            )
        return integer_result(reply[1], "increment") if is_int else float(reply[1])

    async def hash_keys(self, namespace: str, key: str) -> list[str]:
        name = CacheKeys.of(namespace, key).data
        return [_text(n) for n in await self._read(name, "all", "HKEYS", name)]

    async def hash_values(self, namespace: str, key: str) -> list[bytes]:
        name = CacheKeys.of(namespace, key).data
        return list(await self._read(name, "all", "HVALS", name))

    async def hash_length(self, namespace: str, key: str) -> int:
        return int(await self._redis.hlen(CacheKeys.of(namespace, key).data))

    async def hash_scan(
        self, namespace: str, key: str, cursor: int, match: str | None, count: int
    ) -> tuple[int, list[tuple[str, bytes]]]:
        """One HSCAN page: the next cursor (0 when done) and the page's fields."""
        next_cursor, page = await self._redis.hscan(
            CacheKeys.of(namespace, key).data, cursor, match=match, count=count
        )
        return int(next_cursor), [(_text(name), value) for name, value in page.items()]

    # ---- lists ------------------------------------------------------------------

    async def list_push(
        self,
        namespace: str,
        key: str,
        values: Sequence[bytes],
        *,
        end: str,
        if_present: bool,
        keep_newest: int,
        ttl: CollectionTtl,
        request_id: str = "",
    ) -> int:
        keep: tuple[int | str, int | str] = ("", "")
        if keep_newest > 0:
            keep = (0, keep_newest - 1) if end == "LEFT" else (-keep_newest, -1)
        return int(
            await self._write(
                namespace,
                key,
                ttl,
                "list_push",
                [end, "1" if if_present else "0", *keep, *values],
                request_id=request_id,
            )
        )

    async def _pop(self, name: str, where: str, count: int, max_answer_bytes: int) -> list[bytes]:
        return list(await self.backend.run(_POP, [name], [where, count, max_answer_bytes]))

    async def list_pop(
        self,
        namespace: str,
        key: str,
        *,
        end: str,
        count: int,
        wait_s: float,
        max_answer_bytes: int,
    ) -> list[bytes]:
        """Pop up to `count` values; when the list is empty, wait up to `wait_s` for one.

        No value is lost to a cancellation (deadline, client gone). The wait is a
        BLMOVE into a holding list of this call's own, in the list's slot: one waiter
        is woken per value pushed, and if the call is cancelled while Redis hands it
        the value, the value is in the holding list and is put back. Taking values
        out (the holding list's and up to count-1 more) is one script, shielded from
        cancellation: a call cancelled meanwhile puts them back too."""
        name = CacheKeys.of(namespace, key).data
        values = await self._take(name, [name], end, count, max_answer_bytes)
        if values or wait_s <= 0:
            return values
        holding = holding_list(namespace, key, secrets.token_urlsafe(12))
        deadline = time.monotonic() + wait_s
        try:
            while (timeout := self._slice(deadline)) is not None:
                # The PEXPIRE runs right after the BLMOVE unblocks (Redis reads a
                # blocked client's next command only then): a holding list left by a
                # process that died in between does not stay forever.
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.blmove(name, holding, timeout, end, "LEFT")
                    pipe.pexpire(holding, HOLDING_TTL_MS)
                    first, _ = await pipe.execute()
                if first is not None:
                    return await self._take(name, [name, holding], end, count, max_answer_bytes)
            return []
        except BaseException:
            # Cancelled (or the connection failed) around the BLMOVE: whatever it moved
            # is in the holding list; put it back where it came from.
            await _finish_quietly(
                self.backend.run(_PUT_BACK, [name, holding], [end, self.default_ttl_ms])
            )
            raise

    async def _take(
        self, name: str, keys: list[str], end: str, count: int, max_answer_bytes: int
    ) -> list[bytes]:
        """Run coll_pop to its end even if the call is cancelled meanwhile; a cancelled
        call puts what it took back, so the values are never lost with the answer."""
        work = asyncio.ensure_future(self.backend.run(_POP, keys, [end, count, max_answer_bytes]))
        try:
            return list(await asyncio.shield(work))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                taken = list(await work)
                await _finish_quietly(
                    self.backend.run(_PUT_BACK, [name], [end, self.default_ttl_ms, *taken])
                )
            raise

    def _slice(self, deadline: float) -> float | None:
        """Seconds to block in the next blocking command (whole ms, never 0: Redis
        reads 0 as "forever"), or None when the wait is over."""
        remaining_ms = math.floor(min(self.block_slice_s, deadline - time.monotonic()) * 1000)
        return remaining_ms / 1000 if remaining_ms >= 1 else None

    async def list_range(self, namespace: str, key: str, start: int, stop: int) -> list[bytes]:
        name = CacheKeys.of(namespace, key).data
        return list(await self._read(name, f"range {start} {stop}", "LRANGE", name, start, stop))

    async def list_trim(self, namespace: str, key: str, start: int, stop: int) -> int:
        return int(
            await self.backend.run(_LIST_TRIM, [CacheKeys.of(namespace, key).data], [start, stop])
        )

    async def list_length(self, namespace: str, key: str) -> int:
        return int(await self._redis.llen(CacheKeys.of(namespace, key).data))

    async def list_remove(self, namespace: str, key: str, value: bytes, count: int) -> int:
        return int(await self._redis.lrem(CacheKeys.of(namespace, key).data, count, value))

    async def list_move(
        self,
        namespace: str,
        source: str,
        destination: str,
        *,
        from_end: str,
        to_end: str,
        ttl: CollectionTtl,
        wait_s: float,
    ) -> bytes | None:
        """Move one value atomically; when the source is empty, wait up to `wait_s`.

        The move itself always runs in coll_write, so a destination it creates gets
        its TTL in the same step. To wait, a BLMOVE from the source onto the same
        end of itself returns as soon as the source holds a value and leaves the
        list exactly as it was; the move is then tried again. (Every such waiter on
        a source wakes for each value pushed and all but one wait again: a cost
        only paid while the source is empty.)"""
        (src, _) = self._one_slot(namespace, [source, destination], "source and destination")
        deadline = time.monotonic() + wait_s
        while True:
            moved, value = await self._write(
                namespace, destination, ttl, "list_move", [from_end, to_end], sources=[src]
            )
            if moved:
                return bytes(value)
            timeout = self._slice(deadline)
            if timeout is None:
                return None
            await self._redis.blmove(src, src, timeout, from_end, from_end)

    # ---- sets -------------------------------------------------------------------

    async def set_add(
        self, namespace: str, key: str, members: Sequence[bytes], ttl: CollectionTtl
    ) -> int:
        return int(await self._write(namespace, key, ttl, "set_add", members))

    async def set_remove(self, namespace: str, key: str, members: Sequence[bytes]) -> int:
        return int(await self._redis.srem(CacheKeys.of(namespace, key).data, *members))

    async def set_members(self, namespace: str, key: str) -> list[bytes]:
        name = CacheKeys.of(namespace, key).data
        return list(await self._read(name, "all", "SMEMBERS", name))

    async def set_is_member(self, namespace: str, key: str, members: Sequence[bytes]) -> list[bool]:
        reply = await self._redis.smismember(CacheKeys.of(namespace, key).data, list(members))
        return [bool(flag) for flag in reply]

    async def set_cardinality(self, namespace: str, key: str) -> int:
        return int(await self._redis.scard(CacheKeys.of(namespace, key).data))

    async def set_random_members(self, namespace: str, key: str, count: int) -> list[bytes]:
        """`count` > 0: distinct members; < 0: -count members, repeats allowed."""
        return list(await self._redis.srandmember(CacheKeys.of(namespace, key).data, count))

    async def set_pop(
        self, namespace: str, key: str, count: int, max_answer_bytes: int
    ) -> list[bytes]:
        return await self._pop(CacheKeys.of(namespace, key).data, "SET", count, max_answer_bytes)

    async def set_move(
        self, namespace: str, source: str, destination: str, member: bytes, ttl: CollectionTtl
    ) -> bool:
        (src, _) = self._one_slot(namespace, [source, destination], "source and destination")
        return bool(
            await self._write(namespace, destination, ttl, "set_move", [member], sources=[src])
        )

    async def set_combine(
        self,
        namespace: str,
        operation: str,
        keys: Sequence[str],
        *,
        destination: str | None,
        destination_ttl_ms: int,
    ) -> tuple[list[bytes], int]:
        """`operation` is SINTER, SUNION or SDIFF. Answers the members (none when stored
        into `destination`) and the result's cardinality."""
        if destination is None:
            names = self._one_slot(namespace, keys, "the sets")
            members = list(await self._redis.execute_command(operation, *names))
            return members, len(members)
        _, *names = self._one_slot(namespace, [destination, *keys], "the sets and destination")
        # The destination is replaced, so it takes destination_ttl however it existed.
        cardinality = await self._write(
            namespace, destination, CollectionTtl(destination_ttl_ms, refresh=True), "set_store",
            [f"{operation}STORE"], sources=names,
        )  # fmt: skip
        return [], int(cardinality)

    # ---- sorted sets ------------------------------------------------------------

    async def sorted_set_add(
        self,
        namespace: str,
        key: str,
        members: Sequence[tuple[bytes, float]],
        *,
        condition: str,
        ttl: CollectionTtl,
    ) -> tuple[int, int]:
        """Answers (members added, members added or whose score changed)."""
        flat: list[str | bytes] = []
        for member, score in members:
            flat += [repr(score), member]
        added, changed = await self._write(
            namespace, key, ttl, "sorted_set_add", [condition, *flat]
        )
        return int(added), int(changed)

    async def sorted_set_increment(
        self,
        namespace: str,
        key: str,
        member: bytes,
        delta: float,
        ttl: CollectionTtl,
        *,
        request_id: str = "",
    ) -> float:
        reply = await self._write(
            namespace,
            key,
            ttl,
            "sorted_set_increment",
            [repr(delta), member],
            request_id=request_id,
        )
        return _score(reply)

    async def sorted_set_rank(
        self, namespace: str, key: str, member: bytes, *, descending: bool
    ) -> tuple[int, float] | None:
        reply = await self.backend.run(
            _SORTED_SET_RANK,
            [CacheKeys.of(namespace, key).data],
            [member, "ZREVRANK" if descending else "ZRANK"],
        )
        return (int(reply[0]), _score(reply[1])) if reply else None

    async def sorted_set_range_by_rank(
        self, namespace: str, key: str, start: int, stop: int, *, descending: bool
    ) -> list[tuple[bytes, float]]:
        name = CacheKeys.of(namespace, key).data
        command = ["ZRANGE", name, start, stop, *(["REV"] if descending else []), "WITHSCORES"]
        return _scored(await self._read(name, f"range {start} {stop}", *command))

    async def sorted_set_range_by_score(
        self,
        namespace: str,
        key: str,
        low: ScoreBound,
        high: ScoreBound,
        *,
        descending: bool,
        offset: int,
        limit: int,
    ) -> list[tuple[bytes, float]]:
        # With REV, ZRANGE ... BYSCORE takes the range from its high end.
        first, last = (high, low) if descending else (low, high)
        name = CacheKeys.of(namespace, key).data
        command: list[Any] = ["ZRANGE", name, first.redis_arg(), last.redis_arg(), "BYSCORE"]
        if descending:
            command.append("REV")
        part = "all"
        if limit is not None and limit >= 0:
            command += ["LIMIT", offset, limit]
            part = f"count {limit}"
        elif offset:
            command += ["LIMIT", offset, -1]
        command.append("WITHSCORES")
        return _scored(await self._read(name, part, *command))

    async def sorted_set_count(
        self, namespace: str, key: str, low: ScoreBound, high: ScoreBound
    ) -> int:
        return int(
            await self._redis.zcount(
                CacheKeys.of(namespace, key).data, low.redis_arg(), high.redis_arg()
            )
        )

    async def sorted_set_score(
        self, namespace: str, key: str, members: Sequence[bytes]
    ) -> list[float | None]:
        reply = await self._redis.zmscore(CacheKeys.of(namespace, key).data, list(members))
        return [None if score is None else _score(score) for score in reply]

    async def sorted_set_remove(self, namespace: str, key: str, members: Sequence[bytes]) -> int:
        return int(await self._redis.zrem(CacheKeys.of(namespace, key).data, *members))

    async def sorted_set_remove_by_rank(
        self, namespace: str, key: str, start: int, stop: int
    ) -> int:
        return int(
            await self._redis.zremrangebyrank(CacheKeys.of(namespace, key).data, start, stop)
        )

    async def sorted_set_remove_by_score(
        self, namespace: str, key: str, low: ScoreBound, high: ScoreBound
    ) -> int:
        return int(
            await self._redis.zremrangebyscore(
                CacheKeys.of(namespace, key).data, low.redis_arg(), high.redis_arg()
            )
        )

    async def sorted_set_cardinality(self, namespace: str, key: str) -> int:
        return int(await self._redis.zcard(CacheKeys.of(namespace, key).data))
