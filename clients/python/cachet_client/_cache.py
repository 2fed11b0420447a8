"""CacheService: strings, counters, collections, tags, leases and transactions.

Each method is written once (see `_core`): `AsyncCache` and `SyncCache` add only what
differs, the `cached` decorator and `get_or_set`'s call site.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

import grpc

from ._batch import (
    MAX_BATCH,
    MAX_IN_FLIGHT,
    AsyncCoalescer,
    AsyncSession,
    AsyncSessionStream,
    Batch,
    Batcher,
    SyncCoalescer,
    SyncSession,
    SyncSessionStream,
)
from ._core import Async, F, Invoke, Service, Sleep, Steps, Sync, duration, procedure, rpc, seconds
from ._nearcache import NearCache
from .errors import LeaseLost, from_rpc_error
from .proto.cachet.cache.v1 import cache_pb2 as pb
from .serializers import BYTES, Serializer

_SERVICE = "cachet.cache.v1.CacheService"
P = ParamSpec("P")
T = TypeVar("T")

GET = rpc(_SERVICE, "Get", pb.GetResponse, idempotent=True)
GET_MANY = rpc(_SERVICE, "GetMany", pb.GetManyResponse, idempotent=True)
SET = rpc(_SERVICE, "Set", pb.SetResponse, idempotent=True)
SET_MANY = rpc(_SERVICE, "SetMany", pb.SetManyResponse, idempotent=True)
DELETE = rpc(_SERVICE, "Delete", pb.DeleteResponse, idempotent=True)
EXISTS = rpc(_SERVICE, "Exists", pb.ExistsResponse, idempotent=True)
EXPIRE = rpc(_SERVICE, "Expire", pb.ExpireResponse, idempotent=True)
PERSIST = rpc(_SERVICE, "Persist", pb.PersistResponse, idempotent=True)
GET_TTL = rpc(_SERVICE, "GetTtl", pb.GetTtlResponse, idempotent=True)
INCREMENT = rpc(_SERVICE, "Increment", pb.IncrementResponse, idempotent=False)
SET_BIT = rpc(_SERVICE, "SetBit", pb.SetBitResponse, idempotent=True)
GET_BIT = rpc(_SERVICE, "GetBit", pb.GetBitResponse, idempotent=True)
BIT_COUNT = rpc(_SERVICE, "BitCount", pb.BitCountResponse, idempotent=True)
HASH_SET = rpc(_SERVICE, "HashSet", pb.HashSetResponse, idempotent=True)
HASH_GET = rpc(_SERVICE, "HashGet", pb.HashGetResponse, idempotent=True)
HASH_GET_ALL = rpc(_SERVICE, "HashGetAll", pb.HashGetAllResponse, idempotent=True)
HASH_DELETE = rpc(_SERVICE, "HashDelete", pb.HashDeleteResponse, idempotent=True)
HASH_INCREMENT = rpc(_SERVICE, "HashIncrement", pb.HashIncrementResponse, idempotent=False)
HASH_KEYS = rpc(_SERVICE, "HashKeys", pb.HashKeysResponse, idempotent=True)
HASH_VALUES = rpc(_SERVICE, "HashValues", pb.HashValuesResponse, idempotent=True)
HASH_LENGTH = rpc(_SERVICE, "HashLength", pb.HashLengthResponse, idempotent=True)
HASH_SCAN = rpc(_SERVICE, "HashScan", pb.HashScanResponse, idempotent=True)
LIST_PUSH = rpc(_SERVICE, "ListPush", pb.ListPushResponse, idempotent=False)
LIST_POP = rpc(_SERVICE, "ListPop", pb.ListPopResponse, idempotent=False)
LIST_RANGE = rpc(_SERVICE, "ListRange", pb.ListRangeResponse, idempotent=True)
LIST_TRIM = rpc(_SERVICE, "ListTrim", pb.ListTrimResponse, idempotent=True)
LIST_LENGTH = rpc(_SERVICE, "ListLength", pb.ListLengthResponse, idempotent=True)
LIST_REMOVE = rpc(_SERVICE, "ListRemove", pb.ListRemoveResponse, idempotent=False)
LIST_MOVE = rpc(_SERVICE, "ListMove", pb.ListMoveResponse, idempotent=False)
SET_ADD = rpc(_SERVICE, "SetAdd", pb.SetAddResponse, idempotent=True)
SET_REMOVE = rpc(_SERVICE, "SetRemove", pb.SetRemoveResponse, idempotent=True)
SET_MEMBERS = rpc(_SERVICE, "SetMembers", pb.SetMembersResponse, idempotent=True)
SET_IS_MEMBER = rpc(_SERVICE, "SetIsMember", pb.SetIsMemberResponse, idempotent=True)
SET_CARDINALITY = rpc(_SERVICE, "SetCardinality", pb.SetCardinalityResponse, idempotent=True)
SET_RANDOM = rpc(_SERVICE, "SetRandomMembers", pb.SetRandomMembersResponse, idempotent=True)
SET_POP = rpc(_SERVICE, "SetPop", pb.SetPopResponse, idempotent=False)
SET_MOVE = rpc(_SERVICE, "SetMove", pb.SetMoveResponse, idempotent=False)
SET_COMBINE = rpc(_SERVICE, "SetCombine", pb.SetCombineResponse, idempotent=True)
ZADD = rpc(_SERVICE, "SortedSetAdd", pb.SortedSetAddResponse, idempotent=True)
ZINCR = rpc(_SERVICE, "SortedSetIncrement", pb.SortedSetIncrementResponse, idempotent=False)
ZRANK = rpc(_SERVICE, "SortedSetRank", pb.SortedSetRankResponse, idempotent=True)
ZRANGE = rpc(_SERVICE, "SortedSetRange", pb.SortedSetRangeResponse, idempotent=True)
ZCOUNT = rpc(_SERVICE, "SortedSetCount", pb.SortedSetCountResponse, idempotent=True)
ZSCORE = rpc(_SERVICE, "SortedSetScore", pb.SortedSetScoreResponse, idempotent=True)
ZREM = rpc(_SERVICE, "SortedSetRemove", pb.SortedSetRemoveResponse, idempotent=True)
ZREM_RANGE = rpc(_SERVICE, "SortedSetRemoveRange", pb.SortedSetRemoveRangeResponse, idempotent=True)
ZCARD = rpc(_SERVICE, "SortedSetCardinality", pb.SortedSetCardinalityResponse, idempotent=True)
INVALIDATE_TAGS = rpc(_SERVICE, "InvalidateTags", pb.InvalidateTagsResponse, idempotent=True)
INVALIDATE_PATTERN = rpc(
    _SERVICE, "InvalidatePattern", pb.InvalidatePatternResponse, idempotent=True
)
GET_OR_LEASE = rpc(_SERVICE, "GetOrLease", pb.GetOrLeaseResponse, idempotent=False)
FILL = rpc(_SERVICE, "Fill", pb.FillResponse, idempotent=False)
TXN = rpc(_SERVICE, "Txn", pb.TxnResponse, idempotent=False)
WATCH_PATH = f"/{_SERVICE}/WatchInvalidations"

Condition = Literal["if_absent", "if_present"]
End = Literal["left", "right"]
_CONDITIONS = {
    None: pb.SET_CONDITION_UNSPECIFIED,
    "if_absent": pb.SET_CONDITION_IF_ABSENT,
    "if_present": pb.SET_CONDITION_IF_PRESENT,
}
_ENDS = {"left": pb.LIST_END_LEFT, "right": pb.LIST_END_RIGHT}
_ZADD_CONDITIONS = {
    None: pb.SORTED_SET_ADD_CONDITION_UNSPECIFIED,
    "if_absent": pb.SORTED_SET_ADD_CONDITION_IF_ABSENT,
    "if_present": pb.SORTED_SET_ADD_CONDITION_IF_PRESENT,
    "if_greater": pb.SORTED_SET_ADD_CONDITION_IF_GREATER,
    "if_less": pb.SORTED_SET_ADD_CONDITION_IF_LESS,
}
_SET_OPERATIONS = {
    "intersect": pb.SET_OPERATION_INTERSECT,
    "union": pb.SET_OPERATION_UNION,
    "diff": pb.SET_OPERATION_DIFF,
}
_COMPARE_OPERATORS = {
    "==": pb.COMPARE_OPERATOR_EQUAL,
    "!=": pb.COMPARE_OPERATOR_NOT_EQUAL,
    ">": pb.COMPARE_OPERATOR_GREATER,
    "<": pb.COMPARE_OPERATOR_LESS,
    ">=": pb.COMPARE_OPERATOR_GREATER_OR_EQUAL,
    "<=": pb.COMPARE_OPERATOR_LESS_OR_EQUAL,
}
Ttl = timedelta | float | None


@dataclass(frozen=True)
class Value:
    """A value read from the cache: its bytes, its `version` (pass it as `if_version`)
    and `value`, the bytes decoded by the client's serializer."""

    data: bytes
    version: int
    serializer: Serializer = field(default=BYTES, repr=False, compare=False)

    @property
    def value(self) -> Any:
        """`data` decoded by the client's serializer."""
        return self.serializer.loads(self.data)


def _collection_ttl(ttl: Ttl, refresh_ttl: bool) -> pb.CollectionTtl | None:
    if ttl is None and not refresh_ttl:
        return None
    return pb.CollectionTtl(ttl=duration(ttl), refresh_ttl=refresh_ttl)


def _score_range(
    minimum: float, maximum: float, min_exclusive: bool, max_exclusive: bool
) -> pb.ScoreRange:
    return pb.ScoreRange(
        min=pb.ScoreBound(value=minimum, exclusive=min_exclusive),
        max=pb.ScoreBound(value=maximum, exclusive=max_exclusive),
    )


@dataclass(frozen=True)
class TxnResult:
    """What a Txn did: whether the comparisons held, and one result per op that ran."""

    succeeded: bool
    results: list[TxnOpResult]


@dataclass(frozen=True)
class TxnOpResult:
    """The result of one Txn op: `found`/`value` for get, `int_value` for increment,
    `version` for set and increment."""

    found: bool
    data: bytes
    int_value: int
    version: int
    serializer: Serializer = field(default=BYTES, repr=False, compare=False)

    @property
    def value(self) -> Any:
        """`data` decoded by the client's serializer (None when not found)."""
        return self.serializer.loads(self.data) if self.found else None


class Txn:
    """An etcd-style transaction over keys of one slot: if every comparison holds, the
    `then_*` ops run, otherwise the `else_*` ops; atomically. Build it with
    `client.cache.txn()` and run it with `client.cache.commit(txn)`:

        txn = (client.cache.txn()
               .compare("stock", "version", "==", seen.version)
               .then_set("stock", b"9").then_get("stock")
               .else_get("stock"))
        result = await client.cache.commit(txn)
    """

    def __init__(self, serializer: Serializer) -> None:
        self._serializer = serializer
        self.request = pb.TxnRequest()

    def compare(
        self,
        key: str,
        target: Literal["exists", "value", "number", "version", "ttl_ms"],
        operator: Literal["==", "!=", ">", "<", ">=", "<="],
        operand: Any,
    ) -> Txn:
        """Add a comparison: the key's existence (a bool), value (encoded by the
        serializer, == / != only), numeric value, version or remaining TTL in ms."""
        compare = pb.Compare(key=key, operator=_COMPARE_OPERATORS[operator])
        if target == "exists":
            compare.exists = bool(operand)
        elif target == "value":
            compare.value = self._serializer.dumps(operand)
        elif target == "number":
            compare.number = float(operand)
        elif target == "version":
            compare.version = int(operand)
        else:
            compare.ttl_ms = int(operand)
        self.request.compare.append(compare)
        return self

    def _set(self, key: str, value: Any, ttl: Ttl) -> pb.TxnOp:
        return pb.TxnOp(
            set=pb.TxnSet(key=key, value=self._serializer.dumps(value), ttl=duration(ttl))
        )

    def then_set(self, key: str, value: Any, *, ttl: Ttl = None) -> Txn:
        """On success, set `key`."""
        self.request.success.append(self._set(key, value, ttl))
        return self

    def then_delete(self, key: str) -> Txn:
        """On success, delete `key`."""
        self.request.success.append(pb.TxnOp(delete=pb.TxnDelete(key=key)))
        return self

    def then_increment(self, key: str, by: int = 1, *, ttl: Ttl = None) -> Txn:
        """On success, increment `key` by `by`."""
        op = pb.TxnOp(increment=pb.TxnIncrement(key=key, by_int=by, ttl=duration(ttl)))
        self.request.success.append(op)
        return self

    def then_get(self, key: str) -> Txn:
        """On success, read `key`."""
        self.request.success.append(pb.TxnOp(get=pb.TxnGet(key=key)))
        return self

    def else_set(self, key: str, value: Any, *, ttl: Ttl = None) -> Txn:
        """On failure, set `key`."""
        self.request.failure.append(self._set(key, value, ttl))
        return self

    def else_delete(self, key: str) -> Txn:
        """On failure, delete `key`."""
        self.request.failure.append(pb.TxnOp(delete=pb.TxnDelete(key=key)))
        return self

    def else_increment(self, key: str, by: int = 1, *, ttl: Ttl = None) -> Txn:
        """On failure, increment `key` by `by`."""
        op = pb.TxnOp(increment=pb.TxnIncrement(key=key, by_int=by, ttl=duration(ttl)))
        self.request.failure.append(op)
        return self

    def else_get(self, key: str) -> Txn:
        """On failure, read `key`."""
        self.request.failure.append(pb.TxnOp(get=pb.TxnGet(key=key)))
        return self


KeySpec = str | Callable[..., str] | None
TagSpec = Sequence[str] | Callable[..., Sequence[str]]


@dataclass(frozen=True)
class _CachedCall:
    """How `cached` names a call: a template formatted with the call's arguments by
    name (`"user:{user_id}"`), a function of the same arguments, or by default the
    function's qualified name and the repr of its arguments."""

    function: Callable[..., Any]
    key: KeySpec
    tags: TagSpec
    signature: inspect.Signature = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", inspect.signature(self.function))

    def names(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, list[str]]:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if callable(self.key):
            key = self.key(*args, **kwargs)
        elif self.key is not None:
            key = self.key.format(*bound.args, **bound.arguments)
        else:
            shown = ",".join(
                [repr(a) for a in bound.args] + [f"{k}={v!r}" for k, v in bound.kwargs.items()]
            )
            key = f"{self.function.__module__}.{self.function.__qualname__}({shown})"
        if callable(self.tags):
            tags = list(self.tags(*args, **kwargs))
        else:
            tags = [tag.format(*bound.args, **bound.arguments) for tag in self.tags]
        return key, tags


@dataclass(frozen=True)
class Invalidation:
    """One event of `watch_invalidations`: `synced` (the stream is established: a
    near-cache may serve from now on), `keys` (these keys changed: drop them), or
    `flush_all` (changes may have been missed: drop everything and serve nothing until
    the next `synced`)."""

    synced: bool = False
    keys: tuple[str, ...] = ()
    flush_all: bool = False


def _invalidation(event: pb.WatchInvalidationsResponse) -> Invalidation:
    kind = event.WhichOneof("event")
    if kind == "keys":
        return Invalidation(keys=tuple(event.keys.keys))
    return Invalidation(synced=kind == "synced", flush_all=kind == "flush_all")


def _ttl_seconds(message: pb.GetResponse | pb.Entry) -> float | None:
    return message.ttl.ToTimedelta().total_seconds() if message.HasField("ttl") else None


class Cache(Service[F]):
    """CacheService calls for one namespace (values go through the client's serializer)."""

    # Set by the client's enable_near_cache: get and get_many then serve from it.
    _near: NearCache | None = None

    def _value(self, data: bytes, version: int) -> Value:
        return Value(data, version, self._serializer)

    @procedure
    def get(self, key: str) -> Steps[Value | None]:
        """Read `key`: its Value, or None when missing (from the near-cache, when the
        client has one and it holds the key)."""
        near = self._near
        if near is None:
            reply = yield from self._call(GET, pb.GetRequest(key=key))
            return self._value(reply.value, reply.version) if reply.found else None
        cached = near.get(key)
        if cached is not None:
            return self._value(*cached)
        ticket = near.begin()
        try:
            reply = yield from self._call(GET, pb.GetRequest(key=key, include_ttl=True))
        except BaseException:
            near.abandon(ticket)
            raise
        if not reply.found:
            near.abandon(ticket)
            return None
        near.fill(ticket, key, reply.value, reply.version, _ttl_seconds(reply))
        return self._value(reply.value, reply.version)

    @procedure
    def get_many(self, keys: Iterable[str]) -> Steps[dict[str, Value]]:
        """Read many keys at once: a dict of those that exist (near-cached ones from the
        near-cache, the rest in one call)."""
        wanted = list(keys)
        near = self._near
        if near is None:
            reply = yield from self._call(GET_MANY, pb.GetManyRequest(keys=wanted))
            return {e.key: self._value(e.value, e.version) for e in reply.entries if e.found}
        found: dict[str, Value] = {}
        missing = []
        for key in dict.fromkeys(wanted):
            cached = near.get(key)
            if cached is not None:
                found[key] = self._value(*cached)
            else:
                missing.append(key)
        if not missing:
            return found
        ticket = near.begin()
        try:
            reply = yield from self._call(
                GET_MANY, pb.GetManyRequest(keys=missing, include_ttl=True)
            )
        except BaseException:
            near.abandon(ticket)
            raise
        fills = []
        for entry in reply.entries:
            if entry.found:
                found[entry.key] = self._value(entry.value, entry.version)
                fills.append((entry.key, entry.value, entry.version, _ttl_seconds(entry)))
        near.fill_many(ticket, fills)
        return found

    @procedure
    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl = None,
        condition: Condition | None = None,
        if_version: int | None = None,
        fencing_token: int | None = None,
        tags: Sequence[str] = (),
        keep_ttl: bool = False,
    ) -> Steps[int]:
        """Write `key` (the server's default TTL when `ttl` is None); answers the new
        version. `condition` "if_absent"/"if_present" raise KeyExists/KeyNotFound when
        they do not hold; `if_version` is compare-and-set (VersionMismatch); a
        `fencing_token` older than the key has seen raises FencingTokenStale; `tags`
        are for `invalidate_tags`. Conditional writes are never retried."""
        request = pb.SetRequest(
            key=key,
            value=self._encode(value),
            ttl=duration(ttl),
            keep_ttl=keep_ttl,
            condition=_CONDITIONS[condition],
            if_version=if_version,
            fencing_token=fencing_token,
            tags=list(tags),
        )
        conditional = condition is not None or if_version is not None
        reply = yield from self._call(SET, request, idempotent=not conditional)
        return reply.version

    @procedure
    def exchange(
        self, key: str, value: Any, *, ttl: Ttl = None, tags: Sequence[str] = ()
    ) -> Steps[Value | None]:
        """Write `key` and answer the Value it replaced, in one step (None when absent;
        its version is not reported, so 0). Never retried: a repeat would answer the new
        value as the previous one."""
        request = pb.SetRequest(
            key=key,
            value=self._encode(value),
            ttl=duration(ttl),
            return_previous=True,
            tags=list(tags),
        )
        reply = yield from self._call(SET, request, idempotent=False)
        return self._value(reply.previous_value, 0) if reply.previous_found else None

    @procedure
    def set_many(self, items: Mapping[str, Any], *, ttl: Ttl = None) -> Steps[list[int]]:
        """Write many keys at once (one TTL for all); answers their versions in order."""
        entries = [pb.SetManyEntry(key=k, value=self._encode(v)) for k, v in items.items()]
        reply = yield from self._call(
            SET_MANY, pb.SetManyRequest(entries=entries, ttl=duration(ttl))
        )
        return list(reply.versions)

    @procedure
    def delete(self, *keys: str) -> Steps[int]:
        """Delete keys; answers how many existed."""
        reply = yield from self._call(DELETE, pb.DeleteRequest(keys=keys))
        return reply.deleted

    @procedure
    def exists(self, *keys: str) -> Steps[int]:
        """How many of `keys` exist."""
        reply = yield from self._call(EXISTS, pb.ExistsRequest(keys=keys))
        return reply.count

    @procedure
    def expire(self, key: str, ttl: timedelta | float) -> Steps[bool]:
        """Give `key` a new TTL; False when it does not exist."""
        reply = yield from self._call(EXPIRE, pb.ExpireRequest(key=key, ttl=duration(ttl)))
        return reply.found

    @procedure
    def persist(self, key: str) -> Steps[bool]:
        """Drop `key`'s TTL (refused unless the server allows it); False when missing."""
        reply = yield from self._call(PERSIST, pb.PersistRequest(key=key))
        return reply.found

    @procedure
    def ttl(self, key: str) -> Steps[timedelta | None]:
        """`key`'s remaining TTL; None when the key is missing or has none."""
        reply = yield from self._call(GET_TTL, pb.GetTtlRequest(key=key))
        return reply.ttl.ToTimedelta() if reply.found and reply.has_ttl else None

    @procedure
    def increment(self, key: str, by: int = 1, *, ttl: Ttl = None) -> Steps[int]:
        """Add `by` to the integer at `key` (created at 0 with `ttl`); answers the result."""
        request = pb.IncrementRequest(key=key, by_int=by, ttl=duration(ttl))
        reply = yield from self._call(INCREMENT, request, idempotent=self._deduplicated(request))
        return reply.int_value

    @procedure
    def increment_float(self, key: str, by: float, *, ttl: Ttl = None) -> Steps[float]:
        """Add `by` to the number at `key` (created at 0 with `ttl`); answers the result."""
        request = pb.IncrementRequest(key=key, by_float=by, ttl=duration(ttl))
        reply = yield from self._call(INCREMENT, request, idempotent=self._deduplicated(request))
        return reply.float_value

    @procedure
    def set_bit(self, key: str, offset: int, value: bool, *, ttl: Ttl = None) -> Steps[bool]:
        """Set one bit; answers its previous value."""
        request = pb.SetBitRequest(key=key, offset=offset, value=value, ttl=duration(ttl))
        reply = yield from self._call(SET_BIT, request)
        return reply.previous

    @procedure
    def get_bit(self, key: str, offset: int) -> Steps[bool]:
        """Read one bit (0 past the end)."""
        reply = yield from self._call(GET_BIT, pb.GetBitRequest(key=key, offset=offset))
        return reply.value

    @procedure
    def bit_count(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        *,
        unit: Literal["byte", "bit"] = "byte",
    ) -> Steps[int]:
        """Count set bits, over the whole value or an inclusive range in bytes or bits."""
        request = pb.BitCountRequest(
            key=key,
            unit=pb.BIT_UNIT_BIT if unit == "bit" else pb.BIT_UNIT_BYTE,
        )
        if start is not None or end is not None:
            request.range.CopyFrom(pb.IndexRange(start=start or 0, end=-1 if end is None else end))
        reply = yield from self._call(BIT_COUNT, request)
        return reply.count

    # -- hashes ---------------------------------------------------------------------

    @procedure
    def hash_set(
        self,
        key: str,
        fields: Mapping[str, Any],
        *,
        if_absent: bool = False,
        ttl: Ttl = None,
        refresh_ttl: bool = False,
    ) -> Steps[int]:
        """Set fields of the hash at `key`; answers how many were new."""
        request = pb.HashSetRequest(
            key=key,
            fields=[pb.HashField(field=f, value=self._encode(v)) for f, v in fields.items()],
            if_absent=if_absent,
            ttl=_collection_ttl(ttl, refresh_ttl),
        )
        reply = yield from self._call(HASH_SET, request, idempotent=not if_absent)
        return reply.added

    @procedure
    def hash_get(self, key: str, *fields: str) -> Steps[dict[str, Any]]:
        """Read fields of a hash: a dict of those that exist, decoded."""
        reply = yield from self._call(HASH_GET, pb.HashGetRequest(key=key, fields=fields))
        return {f.field: self._decode(f.value) for f in reply.fields if f.found}

    @procedure
    def hash_get_all(self, key: str) -> Steps[dict[str, Any]]:
        """Every field of a hash, decoded."""
        reply = yield from self._call(HASH_GET_ALL, pb.HashGetAllRequest(key=key))
        return {f.field: self._decode(f.value) for f in reply.fields}

    @procedure
    def hash_delete(self, key: str, *fields: str) -> Steps[int]:
        """Delete fields of a hash; answers how many existed."""
        reply = yield from self._call(HASH_DELETE, pb.HashDeleteRequest(key=key, fields=fields))
        return reply.deleted

    @procedure
    def hash_increment(
        self, key: str, field: str, by: int = 1, *, ttl: Ttl = None, refresh_ttl: bool = False
    ) -> Steps[int]:
        """Add `by` to an integer field; answers the result."""
        request = pb.HashIncrementRequest(
            key=key, field=field, by_int=by, ttl=_collection_ttl(ttl, refresh_ttl)
        )
        reply = yield from self._call(
            HASH_INCREMENT, request, idempotent=self._deduplicated(request)
        )
        return reply.int_value

    @procedure
    def hash_increment_float(
        self, key: str, field: str, by: float, *, ttl: Ttl = None, refresh_ttl: bool = False
    ) -> Steps[float]:
        """Add `by` to a numeric field; answers the result."""
        request = pb.HashIncrementRequest(
            key=key, field=field, by_float=by, ttl=_collection_ttl(ttl, refresh_ttl)
        )
        reply = yield from self._call(
            HASH_INCREMENT, request, idempotent=self._deduplicated(request)
        )
        return reply.float_value

    @procedure
    def hash_keys(self, key: str) -> Steps[list[str]]:
        """The field names of a hash."""
        reply = yield from self._call(HASH_KEYS, pb.HashKeysRequest(key=key))
        return list(reply.fields)

    @procedure
    def hash_values(self, key: str) -> Steps[list[Any]]:
        """The values of a hash, decoded."""
        reply = yield from self._call(HASH_VALUES, pb.HashValuesRequest(key=key))
        return [self._decode(v) for v in reply.values]

    @procedure
    def hash_length(self, key: str) -> Steps[int]:
        """How many fields a hash has."""
        reply = yield from self._call(HASH_LENGTH, pb.HashLengthRequest(key=key))
        return reply.length

    @procedure
    def hash_scan(
        self, key: str, *, match: str = "", page_size: int = 0, page_token: str = ""
    ) -> Steps[tuple[dict[str, Any], str]]:
        """One page of a hash's fields (optionally matching a glob) and the next page's
        token ("" when done)."""
        request = pb.HashScanRequest(
            key=key, match=match, page_size=page_size, page_token=page_token
        )
        reply = yield from self._call(HASH_SCAN, request)
        return {f.field: self._decode(f.value) for f in reply.fields}, reply.next_page_token

    # -- lists ----------------------------------------------------------------------

    @procedure
    def list_push(
        self,
        key: str,
        *values: Any,
        end: End = "right",
        if_present: bool = False,
        keep_newest: int = 0,
        ttl: Ttl = None,
        refresh_ttl: bool = False,
    ) -> Steps[int]:
        """Push values onto one end of a list (optionally trimming it to the
        `keep_newest` last pushed); answers the new length."""
        request = pb.ListPushRequest(
            key=key,
            values=[self._encode(v) for v in values],
            end=_ENDS[end],
            if_present=if_present,
            keep_newest=keep_newest,
            ttl=_collection_ttl(ttl, refresh_ttl),
        )
        reply = yield from self._call(LIST_PUSH, request, idempotent=self._deduplicated(request))
        return reply.length

    @procedure
    def list_pop(
        self, key: str, *, end: End = "left", count: int = 1, wait: Ttl = None
    ) -> Steps[list[Any]]:
        """Pop up to `count` values from one end, waiting up to `wait` for one."""
        request = pb.ListPopRequest(key=key, end=_ENDS[end], count=count, wait=duration(wait))
        reply = yield from self._call(LIST_POP, request, blocks_for=seconds(wait))
        return [self._decode(v) for v in reply.values]

    @procedure
    def list_range(self, key: str, start: int = 0, end: int = -1) -> Steps[list[Any]]:
        """Values between two inclusive indexes (negative count from the end)."""
        request = pb.ListRangeRequest(key=key, range=pb.IndexRange(start=start, end=end))
        reply = yield from self._call(LIST_RANGE, request)
        return [self._decode(v) for v in reply.values]

    @procedure
    def list_trim(self, key: str, start: int, end: int) -> Steps[int]:
        """Keep only the inclusive index range; answers the new length."""
        request = pb.ListTrimRequest(key=key, range=pb.IndexRange(start=start, end=end))
        reply = yield from self._call(LIST_TRIM, request)
        return reply.length

    @procedure
    def list_length(self, key: str) -> Steps[int]:
        """A list's length."""
        reply = yield from self._call(LIST_LENGTH, pb.ListLengthRequest(key=key))
        return reply.length

    @procedure
    def list_remove(self, key: str, value: Any, *, count: int = 0) -> Steps[int]:
        """Remove occurrences of `value` (all when count is 0, from the head when
        positive, from the tail when negative); answers how many."""
        request = pb.ListRemoveRequest(key=key, value=self._encode(value), count=count)
        reply = yield from self._call(LIST_REMOVE, request)
        return reply.removed

    @procedure
    def list_move(
        self,
        source: str,
        destination: str,
        *,
        from_end: End = "left",
        to_end: End = "right",
        wait: Ttl = None,
        ttl: Ttl = None,
    ) -> Steps[tuple[bool, Any]]:
        """Move one value between lists of one slot, waiting up to `wait`; answers
        (moved, value)."""
        request = pb.ListMoveRequest(
            source=source,
            destination=destination,
            to=_ENDS[to_end],
            wait=duration(wait),
            ttl=_collection_ttl(ttl, False),
        )
        setattr(request, "from", _ENDS[from_end])  # `from` is a Python keyword
        reply = yield from self._call(LIST_MOVE, request, blocks_for=seconds(wait))
        return reply.moved, self._decode(reply.value) if reply.moved else None

    # -- sets -----------------------------------------------------------------------

    @procedure
    def set_add(
        self, key: str, *members: Any, ttl: Ttl = None, refresh_ttl: bool = False
    ) -> Steps[int]:
        """Add members to a set; answers how many were new."""
        request = pb.SetAddRequest(
            key=key,
            members=[self._encode(m) for m in members],
            ttl=_collection_ttl(ttl, refresh_ttl),
        )
        reply = yield from self._call(SET_ADD, request)
        return reply.added

    @procedure
    def set_remove(self, key: str, *members: Any) -> Steps[int]:
        """Remove members from a set; answers how many were there."""
        request = pb.SetRemoveRequest(key=key, members=[self._encode(m) for m in members])
        reply = yield from self._call(SET_REMOVE, request)
        return reply.removed

    @procedure
    def set_members(self, key: str) -> Steps[list[Any]]:
        """Every member of a set, decoded."""
        reply = yield from self._call(SET_MEMBERS, pb.SetMembersRequest(key=key))
        return [self._decode(m) for m in reply.members]

    @procedure
    def set_is_member(self, key: str, *members: Any) -> Steps[list[bool]]:
        """Whether each of `members` is in the set."""
        request = pb.SetIsMemberRequest(key=key, members=[self._encode(m) for m in members])
        reply = yield from self._call(SET_IS_MEMBER, request)
        return list(reply.is_member)

    @procedure
    def set_cardinality(self, key: str) -> Steps[int]:
        """How many members a set has."""
        reply = yield from self._call(SET_CARDINALITY, pb.SetCardinalityRequest(key=key))
        return reply.cardinality

    @procedure
    def set_random_members(self, key: str, count: int = 1) -> Steps[list[Any]]:
        """Up to `count` random members (distinct; repeats when count is negative)."""
        reply = yield from self._call(SET_RANDOM, pb.SetRandomMembersRequest(key=key, count=count))
        return [self._decode(m) for m in reply.members]

    @procedure
    def set_pop(self, key: str, count: int = 1) -> Steps[list[Any]]:
        """Remove and answer up to `count` random members."""
        reply = yield from self._call(SET_POP, pb.SetPopRequest(key=key, count=count))
        return [self._decode(m) for m in reply.members]

    @procedure
    def set_move(self, source: str, destination: str, member: Any) -> Steps[bool]:
        """Move a member between sets of one slot; False when it was not in `source`."""
        request = pb.SetMoveRequest(
            source=source, destination=destination, member=self._encode(member)
        )
        reply = yield from self._call(SET_MOVE, request)
        return reply.moved

    @procedure
    def set_combine(
        self,
        operation: Literal["intersect", "union", "diff"],
        *keys: str,
        destination: str = "",
        destination_ttl: Ttl = None,
    ) -> Steps[list[Any]]:
        """Intersection, union or difference of sets of one slot. With `destination`
        the result is stored there instead (answers [] then)."""
        request = pb.SetCombineRequest(
            operation=_SET_OPERATIONS[operation],
            keys=keys,
            destination=destination,
            destination_ttl=duration(destination_ttl),
        )
        reply = yield from self._call(SET_COMBINE, request)
        return [self._decode(m) for m in reply.members]

    # -- sorted sets ----------------------------------------------------------------

    @procedure
    def sorted_set_add(
        self,
        key: str,
        members: Mapping[Any, float] | Iterable[tuple[Any, float]],
        *,
        condition: Literal["if_absent", "if_present", "if_greater", "if_less"] | None = None,
        ttl: Ttl = None,
        refresh_ttl: bool = False,
    ) -> Steps[int]:
        """Add or update (member, score) pairs; answers how many were new."""
        pairs = members.items() if isinstance(members, Mapping) else members
        request = pb.SortedSetAddRequest(
            key=key,
            members=[pb.ScoredMember(member=self._encode(m), score=s) for m, s in pairs],
            condition=_ZADD_CONDITIONS[condition],
            ttl=_collection_ttl(ttl, refresh_ttl),
        )
        reply = yield from self._call(ZADD, request)
        return reply.added

    @procedure
    def sorted_set_increment(
        self, key: str, member: Any, delta: float, *, ttl: Ttl = None
    ) -> Steps[float]:
        """Add `delta` to a member's score; answers the new score."""
        request = pb.SortedSetIncrementRequest(
            key=key,
            member=self._encode(member),
            delta=delta,
            ttl=_collection_ttl(ttl, False),
        )
        reply = yield from self._call(ZINCR, request, idempotent=self._deduplicated(request))
        return reply.score

    @procedure
    def sorted_set_rank(
        self, key: str, member: Any, *, descending: bool = False
    ) -> Steps[int | None]:
        """A member's 0-based rank (None when absent)."""
        request = pb.SortedSetRankRequest(
            key=key,
            member=self._encode(member),
            order=pb.ORDER_DESCENDING if descending else pb.ORDER_ASCENDING,
        )
        reply = yield from self._call(ZRANK, request)
        return reply.rank if reply.found else None

    def _pairs(self, members: Iterable[pb.ScoredMember]) -> list[tuple[Any, float]]:
        return [(self._decode(m.member), m.score) for m in members]

    @procedure
    def sorted_set_range(
        self, key: str, start: int = 0, end: int = -1, *, descending: bool = False
    ) -> Steps[list[tuple[Any, float]]]:
        """(member, score) pairs between two inclusive ranks."""
        request = pb.SortedSetRangeRequest(
            key=key,
            by_rank=pb.IndexRange(start=start, end=end),
            order=pb.ORDER_DESCENDING if descending else pb.ORDER_ASCENDING,
        )
        reply = yield from self._call(ZRANGE, request)
        return self._pairs(reply.members)

    @procedure
    def sorted_set_range_by_score(
        self,
        key: str,
        minimum: float,
        maximum: float,
        *,
        min_exclusive: bool = False,
        max_exclusive: bool = False,
        descending: bool = False,
        offset: int = 0,
        limit: int = 0,
    ) -> Steps[list[tuple[Any, float]]]:
        """(member, score) pairs with scores in [minimum, maximum], paged by offset/limit."""
        request = pb.SortedSetRangeRequest(
            key=key,
            by_score=_score_range(minimum, maximum, min_exclusive, max_exclusive),
            order=pb.ORDER_DESCENDING if descending else pb.ORDER_ASCENDING,
            offset=offset,
            limit=limit,
        )
        reply = yield from self._call(ZRANGE, request)
        return self._pairs(reply.members)

    @procedure
    def sorted_set_count(
        self,
        key: str,
        minimum: float,
        maximum: float,
        *,
        min_exclusive: bool = False,
        max_exclusive: bool = False,
    ) -> Steps[int]:
        """How many members have scores in [minimum, maximum]."""
        request = pb.SortedSetCountRequest(
            key=key, range=_score_range(minimum, maximum, min_exclusive, max_exclusive)
        )
        reply = yield from self._call(ZCOUNT, request)
        return reply.count

    @procedure
    def sorted_set_score(self, key: str, *members: Any) -> Steps[list[float | None]]:
        """Each member's score (None when absent)."""
        request = pb.SortedSetScoreRequest(key=key, members=[self._encode(m) for m in members])
        reply = yield from self._call(ZSCORE, request)
        return [s.score if s.found else None for s in reply.scores]

    @procedure
    def sorted_set_remove(self, key: str, *members: Any) -> Steps[int]:
        """Remove members; answers how many were there."""
        request = pb.SortedSetRemoveRequest(key=key, members=[self._encode(m) for m in members])
        reply = yield from self._call(ZREM, request)
        return reply.removed

    @procedure
    def sorted_set_remove_range(
        self,
        key: str,
        *,
        ranks: tuple[int, int] | None = None,
        scores: tuple[float, float] | None = None,
    ) -> Steps[int]:
        """Remove members by inclusive rank range or by score range (one of them)."""
        if (ranks is None) == (scores is None):
            raise ValueError("sorted_set_remove_range: give ranks or scores, exactly one")
        request = pb.SortedSetRemoveRangeRequest(key=key)
        if ranks is not None:
            request.by_rank.CopyFrom(pb.IndexRange(start=ranks[0], end=ranks[1]))
        elif scores is not None:
            request.by_score.CopyFrom(_score_range(scores[0], scores[1], False, False))
        reply = yield from self._call(ZREM_RANGE, request)
        return reply.removed

    @procedure
    def sorted_set_cardinality(self, key: str) -> Steps[int]:
        """How many members a sorted set has."""
        reply = yield from self._call(ZCARD, pb.SortedSetCardinalityRequest(key=key))
        return reply.cardinality

    # -- invalidation, leases, transactions ----------------------------------------

    @procedure
    def invalidate_tags(self, *tags: str) -> Steps[int]:
        """Delete every value written with any of `tags`; answers how many."""
        reply = yield from self._call(INVALIDATE_TAGS, pb.InvalidateTagsRequest(tags=tags))
        return reply.deleted

    @procedure
    def invalidate_pattern(self, pattern: str, *, batch_size: int = 0) -> Steps[int]:
        """Delete every key of the namespace matching a glob (SCAN on every node, never
        KEYS); answers how many."""
        request = pb.InvalidatePatternRequest(pattern=pattern, batch_size=batch_size)
        reply = yield from self._call(INVALIDATE_PATTERN, request)
        return reply.deleted

    def batch(self, *, max_batch: int = MAX_BATCH) -> Batch[F]:
        """A new Batch builder: independent get, set, delete, increment, expire,
        hash_get and hash_set operations sent together by its `execute()` (one Batch
        call per `max_batch` of them, the server's default), each answered with its own
        OperationResult. For a known set of keys at once."""
        batch: Batch[F] = Batch(self._runner, self._serializer, max_batch)
        return batch

    def txn(self) -> Txn:
        """A new transaction builder, encoding values with this client's serializer."""
        return Txn(self._serializer)

    @procedure
    def commit(self, txn: Txn) -> Steps[TxnResult]:
        """Run a Txn atomically; never retried (its ops may not be idempotent)."""
        reply = yield from self._call(TXN, txn.request)
        results = [
            TxnOpResult(r.found, r.value, r.int_value, r.version, self._serializer)
            for r in reply.results
        ]
        return TxnResult(reply.succeeded, results)

    def _get_or_set(
        self,
        key: str,
        factory: Callable[[], Any],
        ttl: Ttl,
        tags: Sequence[str],
        stale_ttl: Ttl,
        lease_ttl: Ttl,
    ) -> Steps[Any]:
        """The lease protocol, once for both clients: a hit answers the value; the one
        caller granted the lease computes and fills; the others wait (or take the stale
        copy while a refill runs, when one was kept with `stale_ttl`)."""
        request = pb.GetOrLeaseRequest(
            key=key, lease_ttl=duration(lease_ttl), accept_stale=stale_ttl is not None
        )
        # Protos with GetOrLease `wait` let the server hold a waiter until the fill lands
        # (woken, not polled). Not with a stale copy: that is answered at once instead.
        server_wait = 0.0
        if stale_ttl is None and "wait" in request.DESCRIPTOR.fields_by_name:
            server_wait = seconds(self._settings.timeout) or 5.0
            getattr(request, "wait").CopyFrom(duration(server_wait))  # noqa: B009
        while True:
            reply = yield from self._call(GET_OR_LEASE, request, blocks_for=server_wait)
            if reply.outcome == pb.LEASE_OUTCOME_HIT or (
                reply.outcome == pb.LEASE_OUTCOME_FILL_PENDING and reply.stale
            ):
                return self._decode(reply.value)
            if reply.outcome == pb.LEASE_OUTCOME_FILL_PENDING:
                wait = (
                    reply.retry_after.ToTimedelta().total_seconds()
                    if reply.HasField("retry_after")
                    else 0.05
                )
                yield Sleep(wait or 0.01)
                continue
            # Granted: compute. If the factory raises, the lease simply expires and the
            # next caller is granted a new one.
            encoded = self._encode((yield Invoke(factory)))
            fill = pb.FillRequest(
                key=key,
                lease_token=reply.lease_token,
                value=encoded,
                ttl=duration(ttl),
                stale_ttl=duration(stale_ttl),
                tags=list(tags),
            )
            # LEASE_LOST: a write or invalidation voided the lease while we computed;
            # the value is still this caller's answer, but must not overwrite newer data.
            with contextlib.suppress(LeaseLost):
                yield from self._call(FILL, fill)
            # Decoded from what was stored, so a hit and a fill answer alike.
            return self._decode(encoded)


class _AsyncCachedDecorator(Protocol):
    """What the async `cached` answers: it takes async and plain functions alike and
    makes an async function of either."""

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, function: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]: ...


class AsyncCache(Cache[Async]):
    """CacheService on the asyncio client."""

    def session(self) -> AsyncSession:
        """A Session: one CacheService/Session stream carrying the operations of
        `batch()` as calls of their own (`await session.get(key)`), many in flight at
        once, answered out of order. For a hot client making many small calls. Use it
        as `async with` (or `await close()`)."""
        runner: Any = self._runner
        return AsyncSession(self._runner, self._serializer, AsyncSessionStream(runner))

    def batcher(
        self, *, max_in_flight: int = MAX_IN_FLIGHT, max_batch: int = MAX_BATCH
    ) -> Batcher[Async]:
        """An auto-batcher: the operations of `batch()` as calls of their own, for many
        concurrent independent callers, coalesced into Batch calls: a call goes out at
        once while fewer than `max_in_flight` batches are in flight; the calls of one
        event-loop turn, and those made while the limit is reached, go out together."""
        return Batcher(
            self._runner,
            self._serializer,
            coalescer=AsyncCoalescer,
            max_in_flight=max_in_flight,
            max_batch=max_batch,
        )

    async def _watch_events(self) -> AsyncGenerator[pb.WatchInvalidationsResponse, None]:
        """The raw invalidation stream of the namespace, for the near-cache follower."""
        runner: Any = self._runner
        call = runner.channels.plain.unary_stream(
            WATCH_PATH,
            request_serializer=pb.WatchInvalidationsRequest.SerializeToString,
            response_deserializer=pb.WatchInvalidationsResponse.FromString,
        )(pb.WatchInvalidationsRequest(), metadata=await runner.metadata())
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()

    async def watch_invalidations(self, *prefixes: str) -> AsyncGenerator[Invalidation, None]:
        """The namespace's invalidation stream (keys with these prefixes, or all), as an
        async iterator of Invalidation events, for keeping a near-cache; it starts with
        `synced`. Stop by leaving the loop (or `aclose()`)."""
        runner: Any = self._runner
        call = runner.channels.plain.unary_stream(
            WATCH_PATH,
            request_serializer=pb.WatchInvalidationsRequest.SerializeToString,
            response_deserializer=pb.WatchInvalidationsResponse.FromString,
        )(pb.WatchInvalidationsRequest(prefixes=prefixes), metadata=await runner.metadata())
        try:
            async for event in call:
                yield _invalidation(event)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]] | Callable[[], T],
        *,
        ttl: Ttl = None,
        tags: Sequence[str] = (),
        stale_ttl: Ttl = None,
        lease_ttl: Ttl = None,
    ) -> T:
        """The value at `key`, or `factory()`'s (awaited when it is a coroutine
        function), computed once across every caller and process (GetOrLease/Fill) and
        stored with `ttl` and `tags`. With `stale_ttl`, a stale copy is kept that long
        past the TTL and answered to callers while one of them refills."""
        result: T = await self._runner.run(
            self._get_or_set(key, factory, ttl, tags, stale_ttl, lease_ttl)
        )
        return result

    def cached(
        self,
        *,
        ttl: Ttl = None,
        key: KeySpec = None,
        tags: TagSpec = (),
        stale_ttl: Ttl = None,
    ) -> _AsyncCachedDecorator:
        """Decorate a function (async or not) so its result is cached through
        `get_or_set`: `key` is a template over the arguments by name ("user:{user_id}")
        or a function of them; `tags` likewise. The decorated function is async."""

        def decorate(function: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
            spec = _CachedCall(function, key, tags)

            @functools.wraps(function)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                name, tag_names = spec.names(args, kwargs)
                return await self.get_or_set(
                    name,
                    lambda: function(*args, **kwargs),
                    ttl=ttl,
                    tags=tag_names,
                    stale_ttl=stale_ttl,
                )

            return wrapper

        return decorate


class SyncCache(Cache[Sync]):
    """CacheService on the blocking client."""

    def session(self) -> SyncSession:
        """A Session: one CacheService/Session stream (read by a thread of its own)
        carrying the operations of `batch()` as calls of their own, safe to call from
        many threads at once. For a hot client making many small calls. Use it as
        `with` (or `close()`)."""
        runner: Any = self._runner
        return SyncSession(self._runner, self._serializer, SyncSessionStream(runner))

    def batcher(
        self, *, max_in_flight: int = MAX_IN_FLIGHT, max_batch: int = MAX_BATCH
    ) -> Batcher[Sync]:
        """An auto-batcher: the operations of `batch()` as calls of their own, for many
        threads calling at once, coalesced into Batch calls: a call goes out at once
        while fewer than `max_in_flight` batches are in flight; those made while the
        limit is reached go out together when one returns."""
        return Batcher(
            self._runner,
            self._serializer,
            coalescer=SyncCoalescer,
            max_in_flight=max_in_flight,
            max_batch=max_batch,
        )

    def _watch_call(self) -> Any:
        """The raw invalidation stream of the namespace (an iterator that can be
        cancelled), for the near-cache follower thread."""
        runner: Any = self._runner
        return runner.channels.plain.unary_stream(
            WATCH_PATH,
            request_serializer=pb.WatchInvalidationsRequest.SerializeToString,
            response_deserializer=pb.WatchInvalidationsResponse.FromString,
        )(pb.WatchInvalidationsRequest(), metadata=runner.metadata())

    def watch_invalidations(self, *prefixes: str) -> Generator[Invalidation, None, None]:
        """The namespace's invalidation stream (keys with these prefixes, or all), as an
        iterator of Invalidation events, for keeping a near-cache; it starts with
        `synced`. Stop by leaving the loop (or `close()`)."""
        runner: Any = self._runner
        call = runner.channels.plain.unary_stream(
            WATCH_PATH,
            request_serializer=pb.WatchInvalidationsRequest.SerializeToString,
            response_deserializer=pb.WatchInvalidationsResponse.FromString,
        )(pb.WatchInvalidationsRequest(prefixes=prefixes), metadata=runner.metadata())
        try:
            for event in call:
                yield _invalidation(event)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(error) from None
        finally:
            call.cancel()

    def get_or_set(
        self,
        key: str,
        factory: Callable[[], T],
        *,
        ttl: Ttl = None,
        tags: Sequence[str] = (),
        stale_ttl: Ttl = None,
        lease_ttl: Ttl = None,
    ) -> T:
        """The value at `key`, or `factory()`'s, computed once across every caller and
        process (GetOrLease/Fill) and stored with `ttl` and `tags`. With `stale_ttl`, a
        stale copy is kept that long past the TTL and answered to callers while one of
        them refills."""
        result: T = self._runner.run(
            self._get_or_set(key, factory, ttl, tags, stale_ttl, lease_ttl)
        )
        return result

    def cached(
        self,
        *,
        ttl: Ttl = None,
        key: KeySpec = None,
        tags: TagSpec = (),
        stale_ttl: Ttl = None,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate a function so its result is cached through `get_or_set`: `key` is a
        template over the arguments by name ("user:{user_id}") or a function of them;
        `tags` likewise."""

        def decorate(function: Callable[P, T]) -> Callable[P, T]:
            spec = _CachedCall(function, key, tags)

            @functools.wraps(function)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                name, tag_names = spec.names(args, kwargs)
                return self.get_or_set(
                    name,
                    lambda: function(*args, **kwargs),
                    ttl=ttl,
                    tags=tag_names,
                    stale_ttl=stale_ttl,
                )

            return wrapper

        return decorate
