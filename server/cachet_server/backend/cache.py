"""Cache strings and counters, tags and invalidation, fill leases and transactions.

Each operation on a key is one atomic script over that key's slot. Tag indexes live
in other slots than the values they list, so they are kept correct by ordering
(see `CacheStore.set` and `CacheStore.invalidate_tags`), not by atomicity.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import Aborted, FailedPrecondition, ResourceExhausted
from ..metrics import instruments
from .batch import Step
from .core import Backend, Command, integer_result
from .keys import (
    CacheKeys,
    Kind,
    data_and_meta_keys,
    redis_key,
    remembered_result,
    scan_patterns,
    user_key,
)
from .scripts import script
from .wakes import WakeDispatcher

_GET = script("cache_get")
_SET = script("cache_set")
_SET_MANY = script("cache_set_many")
_DELETE = script("cache_delete")
_EXPIRE = script("cache_expire")
_INCREMENT = script("cache_increment")
_SET_BIT = script("cache_set_bit")
_TAG_INDEX = script("cache_tag_index")
_GET_OR_LEASE = script("cache_get_or_lease")
_FILL = script("cache_fill")
_TXN = script("cache_txn")

# A tag index outlives the longest-lived key it lists by this much, so a key is never
# left tagged but unlisted while its index expires a moment before it.
TAG_INDEX_GRACE_MS = 60_000
# How many tagged keys InvalidateTags takes from an index at a time.
TAG_INVALIDATION_BATCH = 500
# The longest a FILL_PENDING caller is told to wait before asking again.
FILL_POLL_MS = 50
# The longest GetOrLease(wait) sleeps without a wake before it looks again: a safety
# net for a wake lost while the subscription reconnects.
FILL_RECHECK_S = 1.0
# Fill and every write that voids a lease PUBLISH on this prefix + the lease key
# (`cachet_void_lease` in scripts/_prelude.lua).
FILL_WAKE_PREFIX = "cachet-fill-wake:"

_T = TypeVar("_T")


async def _finish(work: Awaitable[_T]) -> _T:
    """Run `work` to its end even if the call awaiting it is cancelled (deadline, client
    gone): used where stopping halfway would leave a tagged key out of its index."""
    return await asyncio.shield(work)


@dataclass(frozen=True)
class CacheValue:
    found: bool
    value: bytes = b""
    version: int = 0
    ttl_ms: int = -2
    should_refresh: bool = False


# What a read of a missing key answers (immutable, so one instance serves every miss).
_MISSING = CacheValue(False)
# cache_get's ARGV: whether to answer the TTL and recompute time too.
_WITHOUT_TTL = ("0",)
_WITH_TTL = ("1",)


@dataclass(frozen=True, slots=True)
class Reads:
    """What cache_get read for many keys, in columns (no object per key): `values[i]`
    is None for a missing key, whose version is 0. With the TTL asked for, also each
    key's pttl (-2: missing) and recorded recompute time in ms (0: none)."""

    values: list[bytes | None]
    versions: list[int]
    ttls_ms: list[int] | None = None
    recompute_ms: list[int] | None = None

    @classmethod
    def of(cls, reply: list[Any], with_ttl: bool) -> Reads:
        """cache_get's flat reply: value and version per key, with the TTL four fields."""
        if not with_ttl:
            return cls(reply[0::2], reply[1::2])
        return cls(reply[0::4], reply[1::4], reply[2::4], reply[3::4])

    @classmethod
    def merged(cls, count: int, parts: Sequence[tuple[list[int], Reads]], with_ttl: bool) -> Reads:
        """The reads of slot groups put back in request order (`parts`: each group's
        indexes into the request and what it read)."""
        values: list[bytes | None] = [None] * count
        versions = [0] * count
        ttls = [-2] * count
        recompute = [0] * count
        for indexes, part in parts:
            for n, i in enumerate(indexes):
                values[i] = part.values[n]
                versions[i] = part.versions[n]
                if part.ttls_ms is not None and part.recompute_ms is not None:
                    ttls[i] = part.ttls_ms[n]
                    recompute[i] = part.recompute_ms[n]
        if not with_ttl:
            return cls(values, versions)
        return cls(values, versions, ttls, recompute)

    def value(self, i: int, beta: float = 0.0) -> CacheValue:
        """Key i's read as a CacheValue; `beta` > 0 (the TTL read) decides early refresh."""
        value = self.values[i]
        if value is None:
            return _MISSING
        if self.ttls_ms is None or self.recompute_ms is None:
            return CacheValue(True, value, self.versions[i])
        pttl = self.ttls_ms[i]
        return CacheValue(
            True, value, self.versions[i], pttl, _xfetch(pttl, self.recompute_ms[i], beta)
        )


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
class LeaseAnswer:
    """What GetOrLease found: a hit, a lease for this caller, or a fill in progress."""

    outcome: str  # "HIT", "GRANTED" or "PENDING"
    value: bytes = b""
    version: int = 0
    token: str = ""
    lease_ms: int = 0  # GRANTED: the lease's length; PENDING: suggested wait
    stale: bool = False
    lease_remaining_ms: int = 0  # PENDING: how long the filler's lease still runs


@dataclass(frozen=True)
class FillOptions:
    ttl_ms: int
    stale_ttl_ms: int = 0
    recompute_ms: int | None = None
    tags: Sequence[str] = ()


@dataclass(frozen=True)
class TxnCompare:
    key: str
    target: str  # "exists", "value", "number", "version" or "ttl"
    operator: str  # "eq", "ne", "gt", "lt", "ge" or "le"
    operand: bytes | str


@dataclass(frozen=True)
class TxnOperation:
    kind: str  # "set", "del", "incr" or "get"
    key: str
    argument: bytes | str = b""  # the value of a set, the integer of an incr
    ttl_ms: int = 0


@dataclass(frozen=True)
class TxnResult:
    found: bool
    value: bytes
    int_value: int
    version: int


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

    def __init__(
        self, backend: Backend, *, max_ttl_ms: int, request_window_ms: int = 120_000
    ) -> None:
        self.backend = backend
        self.max_ttl_ms = max_ttl_ms
        # How long the result of a write with a request_id is remembered.
        self.request_window_ms = request_window_ms
        self.fill_wakes = WakeDispatcher(
            backend, FILL_WAKE_PREFIX, names_in_message=False, what="fill"
        )

    async def read_many(
        self,
        namespace: str,
        keys: Sequence[str],
        *,
        with_ttl: bool = False,
        max_answer_bytes: int | None = None,
    ) -> Reads:
        """The values of `keys`, one script per slot group, the groups in one pipeline.
        With `max_answer_bytes`, values adding up to more are refused (RESOURCE_EXHAUSTED
        / RESPONSE_TOO_LARGE); on one node, or a slot group over it alone, before Redis
        reads any."""
        names = data_and_meta_keys(namespace, keys)
        groups = self.backend.group_by_slot(names[::2])
        flag = _WITH_TTL if with_ttl else _WITHOUT_TTL
        args = flag if max_answer_bytes is None else (*flag, max_answer_bytes)
        if len(groups) == 1:
            return Reads.of(await self.backend.run(_GET, names, args), with_ttl)
        # Slot groups (Cluster) go out as one pipeline: one round trip per node, not one
        # per group. Each group's script refuses it when it alone is over the budget,
        # before reading it; together they are checked once read.
        indexes_of = list(groups.values())
        replies = await self.backend.pipeline(
            [
                Command.of_script(
                    _GET, [name for i in indexes for name in names[2 * i : 2 * i + 2]], args
                )
                for indexes in indexes_of
            ]
        )
        parts: list[tuple[list[int], Reads]] = []
        for indexes, reply in zip(indexes_of, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            parts.append((indexes, Reads.of(reply, with_ttl)))
        if max_answer_bytes is not None:
            total = sum(len(v) for _, part in parts for v in part.values if v is not None)
            if total > max_answer_bytes:
                raise ResourceExhausted(
                    f"the values add up to {total} bytes, over the budget of "
                    f"{max_answer_bytes}; read fewer keys at a time",
                    reason="RESPONSE_TOO_LARGE",
                )
        return Reads.merged(len(keys), parts, with_ttl)

    def read_many_step(
        self, namespace: str, keys: Sequence[str], *, with_ttl: bool, max_answer_bytes: int
    ) -> Step:
        """Reads of a batch as one step, one script per slot group as in `read_many`;
        answers Reads. The groups run in one pipeline, so each gets the whole byte
        budget (a group over it fails with TOOLARGE before Redis builds it; the
        response is checked whole too)."""
        names = data_and_meta_keys(namespace, keys)
        groups = list(self.backend.group_by_slot(names[::2]).values())
        args = ["1" if with_ttl else "0", max_answer_bytes]
        if len(groups) == 1:
            return Step(
                [Command.of_script(_GET, names, args)],
                lambda replies: Reads.of(replies[0], with_ttl),
            )
        commands = [
            Command.of_script(
                _GET, [name for i in indexes for name in names[2 * i : 2 * i + 2]], args
            )
            for indexes in groups
        ]

        def answer(replies: list[Any]) -> Reads:
            parts = [
                (indexes, Reads.of(reply, with_ttl))
                for indexes, reply in zip(groups, replies, strict=True)
            ]
            return Reads.merged(len(keys), parts, with_ttl)

        return Step(commands, answer)

    async def get(
        self, namespace: str, key: str, *, with_ttl: bool = False, beta: float = 0.0
    ) -> CacheValue:
        reads = await self.read_many(namespace, [key], with_ttl=with_ttl or beta > 0)
        return reads.value(0, beta)

    async def set(self, namespace: str, key: str, value: bytes, options: SetOptions) -> SetOutcome:
        """Write one value. Tags are listed in their indexes before the write (so no
        tagged value is ever missing from an index) and again after it: an
        InvalidateTags running meanwhile may have taken the key out of the index just
        before this write landed, and the write must not survive unlisted."""
        k = CacheKeys.of(namespace, key)
        if options.tags:
            # A keep-TTL write may keep any TTL up to the maximum.
            await self._index_tags(namespace, key, options.tags, options.ttl_ms or self.max_ttl_ms)
        reply = await self.backend.run_write(
            _SET, [k.data, k.meta, k.lease, k.stale], _set_args(value, options)
        )
        if reply[0] == b"OK" and options.tags:
            await _finish(self._index_tags(namespace, key, options.tags, int(reply[4])))
        return _set_outcome(key, options, reply)

    def set_step(self, namespace: str, key: str, value: bytes, options: SetOptions) -> Step:
        """`set` without tags as one step of a batch (tag indexes are written around the
        value, which a pipeline cannot order); answers a SetOutcome."""
        if options.tags:
            raise ValueError("a batched set cannot carry tags")
        k = CacheKeys.of(namespace, key)
        command = Command.of_script(
            _SET, [k.data, k.meta, k.lease, k.stale], _set_args(value, options)
        )
        return Step([command], lambda replies: _set_outcome(key, options, replies[0]))

    async def set_many(self, namespace: str, items: Sequence[tuple[str, bytes, int]]) -> list[int]:
        """Write (key, value, ttl_ms) items; atomic within each slot. Answers versions."""
        names: list[str] = []
        args: list[bytes | int] = []
        for key, value, ttl_ms in items:
            k = CacheKeys.of(namespace, key)
            names += (k.data, k.meta, k.lease, k.stale)
            args += (value, ttl_ms)
        groups = self.backend.group_by_slot(names[::4])
        if len(groups) == 1:
            return list(await self.backend.run_write(_SET_MANY, names, args))
        # Several slots (Cluster): one script per slot group, all in one pipeline.
        commands = [
            Command.of_script(
                _SET_MANY,
                [name for i in indexes for name in names[4 * i : 4 * i + 4]],
                [arg for i in indexes for arg in args[2 * i : 2 * i + 2]],
            )
            for indexes in groups.values()
        ]
        versions = [0] * len(items)
        for indexes, reply in zip(
            groups.values(), await self.backend.pipeline(commands), strict=True
        ):
            if isinstance(reply, Exception):
                raise reply
            for i, version in zip(indexes, reply, strict=True):
                versions[i] = version
        return versions

    async def delete(self, namespace: str, keys: Sequence[str], *, only_tag: str = "") -> int:
        """Delete keys with their metadata, voiding their fill leases; with `only_tag`,
        only those whose metadata still carries that tag. Answers how many existed."""
        entries = [CacheKeys.of(namespace, key) for key in dict.fromkeys(keys)]
        deleted = 0
        for indexes in self.backend.group_by_slot([e.data for e in entries]).values():
            flat: list[str] = []
            for i in indexes:
                flat += [entries[i].data, entries[i].meta, entries[i].lease, entries[i].stale]
            deleted += int(await self.backend.run_write(_DELETE, flat, [only_tag]))
        return deleted

    def delete_step(self, namespace: str, keys: Sequence[str]) -> Step:
        """`delete` as one step of a batch (one script per slot group); answers how many
        keys existed."""
        entries = [CacheKeys.of(namespace, key) for key in dict.fromkeys(keys)]
        commands = []
        for indexes in self.backend.group_by_slot([e.data for e in entries]).values():
            flat: list[str] = []
            for i in indexes:
                flat += [entries[i].data, entries[i].meta, entries[i].lease, entries[i].stale]
            commands.append(Command.of_script(_DELETE, flat, [""]))
        return Step(commands, lambda replies: sum(int(reply) for reply in replies))

    async def _index_tags(self, namespace: str, key: str, tags: Sequence[str], ttl_ms: int) -> None:
        """List `key` in each tag's index, which must outlive a key living `ttl_ms`
        (-1: a key without TTL)."""
        index_ttl = -1 if ttl_ms < 0 else ttl_ms + TAG_INDEX_GRACE_MS
        await asyncio.gather(
            *(
                self.backend.run_write(
                    _TAG_INDEX, [redis_key(namespace, Kind.TAG, tag)], [key, index_ttl]
                )
                for tag in dict.fromkeys(tags)
            )
        )

    async def invalidate_tags(self, namespace: str, tags: Sequence[str]) -> int:
        """Delete every key carrying any of the tags; answers how many were deleted.

        Keys are taken out of an index with SPOP before they are checked, never
        removed after: a writer re-lists its key after writing, so a value written
        while it is being invalidated either is deleted or stays listed. Only keys
        whose metadata still carries the tag are deleted, so stale index entries
        (expired keys, keys rewritten without the tag) are simply dropped. The
        index disappears with its last member."""
        deleted = 0
        for tag in dict.fromkeys(tags):
            index = redis_key(namespace, Kind.TAG, tag)
            # Bounded by the members present at the start, so writers that keep adding
            # cannot keep this call going; what they add stays listed.
            remaining = int(await self.backend.redis.scard(index))
            while remaining > 0:
                batch = min(remaining, TAG_INVALIDATION_BATCH)
                taken, removed = await _finish(self._invalidate_some(namespace, index, tag, batch))
                if taken == 0:
                    break
                remaining -= taken
                deleted += removed
        return deleted

    async def _invalidate_some(
        self, namespace: str, index: str, tag: str, count: int
    ) -> tuple[int, int]:
        members = await self.backend.redis.spop(index, count)
        if not members:
            return 0, 0
        keys = [m.decode() for m in members]
        return len(keys), await self.delete(namespace, keys, only_tag=tag)

    async def invalidate_pattern(self, namespace: str, glob: str, batch_size: int) -> int:
        """Delete the namespace's keys whose user key matches `glob`: SCAN (never KEYS)
        on every primary, `batch_size` per step, deleting each page as it comes. Keys
        that are only being filled (a lease, no value yet) are found too, so their
        fills are voided. Answers how many values were deleted."""
        deleted = 0
        for kind in (Kind.DATA, Kind.LEASE):
            for pattern in scan_patterns(namespace, kind, glob):
                for node in await self.backend.primaries():
                    page: list[str] = []
                    async for name in node.scan_iter(match=pattern, count=batch_size):
                        key = user_key(namespace, kind, name.decode())
                        if key is not None:
                            page.append(key)
                        if len(page) >= batch_size:
                            deleted += await self.delete(namespace, page)
                            page = []
                    if page:
                        deleted += await self.delete(namespace, page)
        return deleted

    async def get_or_lease(
        self,
        namespace: str,
        key: str,
        lease_ms: int,
        *,
        accept_stale: bool,
        wait_s: float = 0.0,
    ) -> LeaseAnswer:
        """A hit, a lease for this caller, or a fill in progress. With `wait_s`, a fill
        in progress is waited for: the caller is registered for the lease's wake
        before it looks, so a fill that lands between its look and its sleep still
        wakes it, and it looks again when woken (the fill landed, or a write voided the
        lease), when the lease would expire, or at the latest every FILL_RECHECK_S."""
        k = CacheKeys.of(namespace, key)
        if wait_s <= 0:
            return await self._get_or_lease_once(k, lease_ms, accept_stale)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait_s
        woken = self.fill_wakes.register(k.lease)
        try:
            # Until the subscription is live a wake could be missed; the timed looks
            # below still cover that, so do not wait long for it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait_s, 1.0)):
                    await self.fill_wakes.subscribed()
            while True:
                woken.clear()
                answer = await self._get_or_lease_once(k, lease_ms, accept_stale)
                left = end - loop.time()
                if answer.outcome != "PENDING" or left <= 0:
                    return answer
                # The lease's own expiry is worth a look (a filler that died); 1 ms
                # past it, so the look finds it expired.
                nap = min(left, FILL_RECHECK_S, answer.lease_remaining_ms / 1000 + 0.001)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(nap):
                        await woken.wait()
        finally:
            self.fill_wakes.unregister(k.lease, woken)

    async def _get_or_lease_once(
        self, k: CacheKeys, lease_ms: int, accept_stale: bool
    ) -> LeaseAnswer:
        token = secrets.token_urlsafe(24)
        reply = await self.backend.run(
            _GET_OR_LEASE,
            [k.data, k.meta, k.lease, k.stale],
            [token, lease_ms, "1" if accept_stale else "0"],
        )
        outcome = reply[0].decode()
        if outcome == "HIT":
            return LeaseAnswer("HIT", value=reply[1], version=int(reply[2]))
        if outcome == "GRANTED":
            return LeaseAnswer("GRANTED", token=token, lease_ms=lease_ms)
        remaining, stale_value = int(reply[1]), reply[2]
        return LeaseAnswer(
            "PENDING",
            value=stale_value or b"",
            lease_ms=max(1, min(remaining, FILL_POLL_MS)),
            stale=stale_value is not None,
            lease_remaining_ms=max(0, remaining),
        )

    async def aclose(self) -> None:
        """Stop the fill-wake subscription (at shutdown, after calls have drained)."""
        await self.fill_wakes.aclose()

    async def fill(
        self, namespace: str, key: str, token: str, value: bytes, options: FillOptions
    ) -> int:
        """Store a value under a lease; answers its version. Tags are indexed around
        the write exactly as in `set`."""
        k = CacheKeys.of(namespace, key)
        if options.tags:
            await self._index_tags(namespace, key, options.tags, options.ttl_ms)
        reply = await self.backend.run_write(
            _FILL,
            [k.data, k.meta, k.lease, k.stale],
            [
                token,
                value,
                options.ttl_ms,
                options.stale_ttl_ms,
                "" if options.recompute_ms is None else str(options.recompute_ms),
                "\n".join(options.tags),
            ],
        )
        if reply[0] == b"LEASE_LOST":
            raise Aborted(
                f"the lease on key {key!r} is no longer yours: it expired, or a write, "
                "Delete or invalidation voided it; nothing was stored (call GetOrLease again)",
                reason="LEASE_LOST",
            )
        if options.tags:
            await _finish(self._index_tags(namespace, key, options.tags, int(reply[2])))
        return int(reply[1])

    async def txn(
        self,
        namespace: str,
        compares: Sequence[TxnCompare],
        success: Sequence[TxnOperation],
        failure: Sequence[TxnOperation],
    ) -> tuple[bool, list[TxnResult]]:
        """Compare, then run `success` or `failure`, in one script. Every key must
        hash to one Cluster slot on every topology, so a transaction that works on a
        standalone Redis keeps working on Cluster."""
        names = list(
            dict.fromkeys([c.key for c in compares] + [op.key for op in (*success, *failure)])
        )
        if not names:
            return True, []
        entries = [CacheKeys.of(namespace, name) for name in names]
        self.backend.require_one_slot(
            [e.data for e in entries], "the keys of a Txn", "{account}:alice and {account}:bob"
        )
        number = {name: i + 1 for i, name in enumerate(names)}
        keys: list[str] = []
        for e in entries:
            keys += [e.data, e.meta, e.lease, e.stale]
        args: list[bytes | str | int] = [len(compares), len(success), len(failure)]
        for c in compares:
            args += [number[c.key], c.target, c.operator, c.operand]
        for op in (*success, *failure):
            args += [op.kind, number[op.key], op.argument, op.ttl_ms]
        reply = await self.backend.run_write(_TXN, keys, args)
        outcome = reply[0].decode()
        if outcome != "OK":
            where, position = reply[1].decode(), int(reply[2])
            raise _txn_error(outcome, where, position, compares, success, failure)
        succeeded = bool(reply[1])
        results = [
            TxnResult(bool(reply[i]), reply[i + 1], int(reply[i + 2]), int(reply[i + 3]))
            for i in range(2, len(reply), 4)
        ]
        return succeeded, results

    async def exists(self, namespace: str, keys: Sequence[str]) -> list[bool]:
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(CacheKeys.of(namespace, key).data)
            return [bool(n) for n in await pipe.execute()]

    async def expire(self, namespace: str, key: str, ttl_ms: int) -> bool:
        return await self._expire(namespace, key, ttl_ms)

    async def persist(self, namespace: str, key: str) -> bool:
        return await self._expire(namespace, key, -1)

    async def _expire(self, namespace: str, key: str, ttl_ms: int) -> bool:
        """Set a key's TTL (-1: none), then make its tags' indexes outlive it. Right
        after the script the indexes still outlive the old TTL by the grace period,
        so extending them afterwards leaves no gap."""
        k = CacheKeys.of(namespace, key)
        found, tags = await self.backend.run_write(
            _EXPIRE, [k.data, k.meta, k.stale], ["persist" if ttl_ms < 0 else ttl_ms]
        )
        if found and tags:
            await _finish(self._index_tags(namespace, key, tags.decode().split("\n"), ttl_ms))
        return bool(found)

    def expire_step(self, namespace: str, key: str, ttl_ms: int) -> Step:
        """`expire` as one step of a batch; answers whether the key exists. Its tags'
        indexes are extended afterwards, as `_expire` does."""
        k = CacheKeys.of(namespace, key)
        command = Command.of_script(_EXPIRE, [k.data, k.meta, k.stale], [ttl_ms])
        tags: list[str] = []

        def answer(replies: list[Any]) -> bool:
            found, listed = replies[0]
            if found and listed:
                tags.extend(listed.decode().split("\n"))
            return bool(found)

        async def reindex(found: bool) -> None:
            if tags:
                await self._index_tags(namespace, key, tags, ttl_ms)

        return Step([command], answer, reindex)

    async def ttl_ms(self, namespace: str, key: str) -> int:
        """Remaining TTL in ms; -2 for a missing key, -1 for a key without TTL."""
        return int(await self.backend.redis.pttl(CacheKeys.of(namespace, key).data))

    async def increment(
        self, namespace: str, key: str, delta: int | float, ttl_ms: int, *, request_id: str = ""
    ) -> Increment:
        """Add `delta`; with a request_id, a retry within the window answers the first
        result and adds nothing (one script: the check, the add and the remembering)."""
        reply = await self.backend.run_write(
            _INCREMENT, *self._increment_call(namespace, key, delta, ttl_ms, request_id)
        )
        return _increment(reply, delta)

    def increment_step(
        self, namespace: str, key: str, delta: int | float, ttl_ms: int, request_id: str = ""
    ) -> Step:
        """`increment` as one step of a batch (a request_id is honoured as in
        `increment`); answers an Increment."""
        command = Command.of_script(
            _INCREMENT, *self._increment_call(namespace, key, delta, ttl_ms, request_id)
        )
        return Step([command], lambda replies: _increment(replies[0], delta))

    def _increment_call(
        self, namespace: str, key: str, delta: int | float, ttl_ms: int, request_id: str
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of cache_increment."""
        k = CacheKeys.of(namespace, key)
        is_int = isinstance(delta, int)
        remembered, window = k.lease, ""
        if request_id:
            remembered = remembered_result(namespace, key, "increment", request_id)
            window = str(self.request_window_ms)
        return (
            [k.data, k.meta, k.lease, remembered],
            ["int" if is_int else "float", str(delta) if is_int else repr(delta), ttl_ms, window],
        )

    async def set_bit(self, namespace: str, key: str, offset: int, bit: bool, ttl_ms: int) -> bool:
        k = CacheKeys.of(namespace, key)
        previous = await self.backend.run_write(
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


def _set_args(value: bytes, options: SetOptions) -> list[bytes | str | int]:
    return [
        value,
        options.ttl_ms,
        options.condition,
        "" if options.if_version is None else str(options.if_version),
        "1" if options.return_previous else "0",
        "" if options.fencing_token is None else str(options.fencing_token),
        "" if options.recompute_ms is None else str(options.recompute_ms),
        options.default_ttl_ms,
        "\n".join(options.tags),
    ]


def _set_outcome(key: str, options: SetOptions, reply: list[Any]) -> SetOutcome:
    """A cache_set reply, or the error of a refused write."""
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
        instruments.fencing_rejections.add(1)
        raise Aborted(
            f"key {key!r} was written under fencing token {detail}, newer than "
            f"{options.fencing_token}: the writer's lock was lost",
            reason=outcome,
            metadata={"latest_fencing_token": detail},
        )
    raise RuntimeError(f"cache_set answered {outcome!r}")


def _increment(reply: list[Any], delta: int | float) -> Increment:
    value, created, version = reply
    number = value.decode()
    is_int = isinstance(delta, int)
    int_value = integer_result(number, "Increment") if is_int else 0
    return Increment(
        int_value=int_value,
        float_value=0.0 if is_int else float(number),
        created=bool(created),
        version=int(version),
    )


_TXN_ERRORS = {
    "WRONG_TYPE": "the key holds a different kind of value than a string",
    "NOT_A_NUMBER": "the value is not a number (increments need a 64-bit integer)",
    "OUT_OF_RANGE": "the increment would overflow a signed 64-bit integer",
}


def _txn_error(
    reason: str,
    where: str,
    position: int,
    compares: Sequence[TxnCompare],
    success: Sequence[TxnOperation],
    failure: Sequence[TxnOperation],
) -> FailedPrecondition:
    """The error for a Txn the script refused before writing anything."""
    lists: dict[str, Sequence[TxnCompare] | Sequence[TxnOperation]] = {
        "compare": compares,
        "success": success,
        "failure": failure,
    }
    key = lists[where][position - 1].key
    return FailedPrecondition(
        f"{where}[{position - 1}] on key {key!r}: {_TXN_ERRORS[reason]}; nothing was written",
        reason=reason,
        metadata={"field": f"{where}[{position - 1}]"},
    )
