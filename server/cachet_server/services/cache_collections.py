"""CacheService collections: hashes, lists, sets and sorted sets (mixed into CacheService).

Each method validates its request, makes one CollectionStore call and maps the
result. docs/cache.md ("Collections") describes the behaviour for users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal, TypeVar

from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from google.protobuf.message import Message

from ..access import READ, WRITE, CallSpec, Role, blocking, calls, waits
from ..backend.collections import (
    MAX_STORE_KEYS,
    UNBOUNDED_ABOVE,
    UNBOUNDED_BELOW,
    CollectionStore,
    CollectionTtl,
    ScoreBound,
)
from ..callcontext import current_namespace
from ..errors import InvalidArgument, ResourceExhausted
from ..validation import optional
from .base import Context, Dependencies, Servicer

_LIST_ENDS = {pb.LIST_END_LEFT: "LEFT", pb.LIST_END_RIGHT: "RIGHT"}
_DESCENDING = {pb.ORDER_UNSPECIFIED: False, pb.ORDER_ASCENDING: False, pb.ORDER_DESCENDING: True}
_SET_OPERATIONS = {
    pb.SET_OPERATION_INTERSECT: "SINTER",
    pb.SET_OPERATION_UNION: "SUNION",
    pb.SET_OPERATION_DIFF: "SDIFF",
}
_ADD_CONDITIONS = {
    pb.SORTED_SET_ADD_CONDITION_UNSPECIFIED: "",
    pb.SORTED_SET_ADD_CONDITION_IF_ABSENT: "NX",
    pb.SORTED_SET_ADD_CONDITION_IF_PRESENT: "XX",
    pb.SORTED_SET_ADD_CONDITION_IF_GREATER: "GT",
    pb.SORTED_SET_ADD_CONDITION_IF_LESS: "LT",
}
_DEFAULT_SCAN_PAGE = 100
_MAX_CURSOR = 2**64 - 1
# A blocking pop stops this long before the call's deadline, so the empty answer
# reaches the caller in time: Redis times blocked commands out up to 1/hz late
# (100 ms at the default hz 10), plus the way back.
_DEADLINE_MARGIN_S = 0.2

_Response = TypeVar("_Response", bound=Message)


def _answers_only(request: pb.SetCombineRequest) -> bool:
    """A SetCombine that answers the members, storing nothing, is a read."""
    return not request.destination


class CollectionsMixin(Servicer):
    # What each collection RPC needs (see access.py); CacheService adds its own.
    COLLECTION_CALLS: ClassVar[dict[str, CallSpec]] = {
        "HashDelete": WRITE,
        "HashGet": READ,
        "HashGetAll": READ,
        "HashIncrement": WRITE,
        "HashKeys": READ,
        "HashLength": READ,
        "HashScan": READ,
        "HashSet": WRITE,
        "HashValues": READ,
        "ListLength": READ,
        "ListMove": blocking(WRITE, waits("wait")),
        "ListPop": blocking(WRITE, waits("wait")),
        "ListPush": WRITE,
        "ListRange": READ,
        "ListRemove": WRITE,
        "ListTrim": WRITE,
        "SetAdd": WRITE,
        "SetCardinality": READ,
        "SetCombine": calls(Role.WRITE, read_if=_answers_only, read_when="without a destination"),
        "SetIsMember": READ,
        "SetMembers": READ,
        "SetMove": WRITE,
        "SetPop": WRITE,
        "SetRandomMembers": READ,
        "SetRemove": WRITE,
        "SortedSetAdd": WRITE,
        "SortedSetCardinality": READ,
        "SortedSetCount": READ,
        "SortedSetIncrement": WRITE,
        "SortedSetRange": READ,
        "SortedSetRank": READ,
        "SortedSetRemove": WRITE,
        "SortedSetRemoveRange": WRITE,
        "SortedSetScore": READ,
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.collections = CollectionStore(
            deps.backend,
            block_slice_s=deps.settings.redis_timeout.total_seconds() / 2,
            request_window_ms=deps.settings.idempotency_window_ms,
            default_ttl_ms=self.check.default_ttl_ms,
            max_answer_bytes=deps.settings.limits.max_message_bytes,
        )

    # ---- request checks shared by the collection RPCs ---------------------------

    def _ttl(self, request: Message, field: str = "ttl") -> CollectionTtl:
        if not request.HasField(field):
            return CollectionTtl(self.check.default_ttl_ms)
        options: pb.CollectionTtl = getattr(request, field)
        ttl_ms = self.check.ttl_ms(optional(options, "ttl"), f"{field}.ttl")
        return CollectionTtl(ttl_ms, refresh=options.refresh_ttl)

    def _values(self, values: Sequence[bytes], field: str) -> list[bytes]:
        self.check.batch(len(values), field)
        return [self.check.value(value, f"{field}[{i}]") for i, value in enumerate(values)]

    def _fields(self, fields: Sequence[str], field: str) -> list[str]:
        """Hash field names follow the key rules: 1 to max_key_bytes bytes."""
        self.check.batch(len(fields), field)
        return [self.check.key(name, f"{field}[{i}]") for i, name in enumerate(fields)]

    def _count(self, count: int, field: str) -> int:
        """A count of 1 to max_batch; 0 means 1."""
        if count == 0:
            return 1
        if not 1 <= count <= self.check.limits.max_batch:
            raise InvalidArgument.field(
                field, f"must be 1 to {self.check.limits.max_batch} (0 means 1)"
            )
        return count

    def _wait_s(self, request: Message, context: Context) -> float:
        """How long a blocking call may wait: the request's wait, ending in time for
        the answer to reach the caller before its deadline."""
        wait = optional(request, "wait")
        if wait is None:
            return 0.0
        wait_ms = self.check.duration_ms(wait, "wait")
        if wait_ms > self.check.max_ttl_ms:
            raise InvalidArgument.field("wait", "must not be longer than the maximum TTL")
        remaining = context.time_remaining()
        if remaining is None:
            return wait_ms / 1000
        return max(0.0, min(wait_ms / 1000, remaining - _DEADLINE_MARGIN_S))

    def _score(self, score: float, field: str) -> float:
        return self.check.finite(score, field)

    @staticmethod
    def _bound(message: pb.ScoreRange, side: Literal["min", "max"], field: str) -> ScoreBound:
        if not message.HasField(side):
            return UNBOUNDED_BELOW if side == "min" else UNBOUNDED_ABOVE
        bound: pb.ScoreBound = getattr(message, side)
        if math.isnan(bound.value):
            raise InvalidArgument.field(f"{field}.{side}.value", "must not be NaN")
        return ScoreBound(bound.value, bound.exclusive)

    def _score_range(self, message: pb.ScoreRange, field: str) -> tuple[ScoreBound, ScoreBound]:
        return self._bound(message, "min", field), self._bound(message, "max", field)

    def _fits(self, response: _Response) -> _Response:
        """The response, unless it is larger than a gRPC message may be."""
        size = response.ByteSize()
        limit = self.check.limits.max_message_bytes
        if size > limit:
            raise ResourceExhausted(
                f"the answer would be {size} bytes, over the {limit}-byte message limit; "
                "read the collection in parts (HashScan, a smaller range or a limit)",
                reason="RESPONSE_TOO_LARGE",
            )
        return response

    # ---- hashes -----------------------------------------------------------------

    async def HashSet(self, request: pb.HashSetRequest, context: Context) -> pb.HashSetResponse:
        namespace = current_namespace()
        key, fields, ttl = self._hash_set_args(request)
        added = await self.collections.hash_set(
            namespace, key, fields, if_absent=request.if_absent, ttl=ttl
        )
        return pb.HashSetResponse(added=added)

    def _hash_set_args(
        self, request: pb.HashSetRequest
    ) -> tuple[str, list[tuple[str, bytes]], CollectionTtl]:
        key = self.check.key(request.key)
        self.check.batch(len(request.fields), "fields")
        fields = [
            (
                self.check.key(item.field, f"fields[{i}].field"),
                self.check.value(item.value, f"fields[{i}].value"),
            )
            for i, item in enumerate(request.fields)
        ]
        return key, fields, self._ttl(request)

    async def HashGet(self, request: pb.HashGetRequest, context: Context) -> pb.HashGetResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        fields = self._fields(request.fields, "fields")
        values = await self.collections.hash_get(namespace, key, fields)
        return self._hash_get_response(fields, values)

    def _hash_get_response(
        self, fields: Sequence[str], values: Sequence[bytes | None]
    ) -> pb.HashGetResponse:
        return self._fits(
            pb.HashGetResponse(
                fields=[
                    pb.HashFieldValue(field=name, found=value is not None, value=value or b"")
                    for name, value in zip(fields, values, strict=True)
                ]
            )
        )

    async def HashGetAll(
        self, request: pb.HashGetAllRequest, context: Context
    ) -> pb.HashGetAllResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        fields = await self.collections.hash_get_all(namespace, key)
        return self._fits(
            pb.HashGetAllResponse(fields=[pb.HashField(field=n, value=v) for n, v in fields])
        )

    async def HashDelete(
        self, request: pb.HashDeleteRequest, context: Context
    ) -> pb.HashDeleteResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        fields = self._fields(request.fields, "fields")
        return pb.HashDeleteResponse(
            deleted=await self.collections.hash_delete(namespace, key, fields)
        )

    async def HashIncrement(
        self, request: pb.HashIncrementRequest, context: Context
    ) -> pb.HashIncrementResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        field = self.check.key(request.field, "field")
        delta: int | float
        if request.WhichOneof("delta") == "by_float":
            delta = self.check.finite(request.by_float, "by_float")
        else:
            delta = request.by_int if request.HasField("by_int") else 1
        request_id = self.check.request_id(request.request_id)
        value = await self.collections.hash_increment(
            namespace, key, field, delta, self._ttl(request), request_id=request_id
        )
        if isinstance(value, int):
            return pb.HashIncrementResponse(int_value=value)
        return pb.HashIncrementResponse(float_value=value)

    async def HashKeys(self, request: pb.HashKeysRequest, context: Context) -> pb.HashKeysResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        fields = await self.collections.hash_keys(namespace, key)
        return self._fits(pb.HashKeysResponse(fields=fields))

    async def HashValues(
        self, request: pb.HashValuesRequest, context: Context
    ) -> pb.HashValuesResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        values = await self.collections.hash_values(namespace, key)
        return self._fits(pb.HashValuesResponse(values=values))

    async def HashLength(
        self, request: pb.HashLengthRequest, context: Context
    ) -> pb.HashLengthResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        return pb.HashLengthResponse(length=await self.collections.hash_length(namespace, key))

    async def HashScan(self, request: pb.HashScanRequest, context: Context) -> pb.HashScanResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        token = request.page_token
        if token and not (token.isdigit() and token.isascii() and int(token) <= _MAX_CURSOR):
            raise InvalidArgument.field(
                "page_token", "is not a token from a previous HashScan answer"
            )
        if len(request.match.encode()) > self.check.limits.max_key_bytes:
            raise InvalidArgument.field(
                "match", f"is longer than {self.check.limits.max_key_bytes} bytes"
            )
        page_size = request.page_size or _DEFAULT_SCAN_PAGE
        if not 1 <= page_size <= self.check.limits.max_batch:
            raise InvalidArgument.field(
                "page_size", f"must be 1 to {self.check.limits.max_batch} (0 means 100)"
            )
        cursor, fields = await self.collections.hash_scan(
            namespace, key, int(token or "0"), request.match or None, page_size
        )
        return self._fits(
            pb.HashScanResponse(
                fields=[pb.HashField(field=n, value=v) for n, v in fields],
                next_page_token=str(cursor) if cursor else "",
            )
        )

    # ---- lists ------------------------------------------------------------------

    async def ListPush(self, request: pb.ListPushRequest, context: Context) -> pb.ListPushResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        values = self._values(request.values, "values")
        end = self.check.choice(request.end, _LIST_ENDS, "end")
        if request.keep_newest < 0:
            raise InvalidArgument.field("keep_newest", "must not be negative (0 keeps all)")
        request_id = self.check.request_id(request.request_id)
        length = await self.collections.list_push(
            namespace,
            key,
            values,
            end=end,
            if_present=request.if_present,
            keep_newest=request.keep_newest,
            ttl=self._ttl(request),
            request_id=request_id,
        )
        return pb.ListPushResponse(length=length)

    async def ListPop(self, request: pb.ListPopRequest, context: Context) -> pb.ListPopResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        end = self.check.choice(request.end, _LIST_ENDS, "end")
        count = self._count(request.count, "count")
        values = await self.collections.list_pop(
            namespace,
            key,
            end=end,
            count=count,
            wait_s=self._wait_s(request, context),
            max_answer_bytes=self.check.limits.max_message_bytes,
        )
        return pb.ListPopResponse(values=values)

    async def ListRange(
        self, request: pb.ListRangeRequest, context: Context
    ) -> pb.ListRangeResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        start, stop = 0, -1  # no range: the whole list
        if request.HasField("range"):
            start, stop = request.range.start, request.range.end
        values = await self.collections.list_range(namespace, key, start, stop)
        return self._fits(pb.ListRangeResponse(values=values))

    async def ListTrim(self, request: pb.ListTrimRequest, context: Context) -> pb.ListTrimResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        if not request.HasField("range"):
            raise InvalidArgument.field("range", "is required: the index range to keep")
        length = await self.collections.list_trim(
            namespace, key, request.range.start, request.range.end
        )
        return pb.ListTrimResponse(length=length)

    async def ListLength(
        self, request: pb.ListLengthRequest, context: Context
    ) -> pb.ListLengthResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        return pb.ListLengthResponse(length=await self.collections.list_length(namespace, key))

    async def ListRemove(
        self, request: pb.ListRemoveRequest, context: Context
    ) -> pb.ListRemoveResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        value = self.check.value(request.value)
        removed = await self.collections.list_remove(namespace, key, value, request.count)
        return pb.ListRemoveResponse(removed=removed)

    async def ListMove(self, request: pb.ListMoveRequest, context: Context) -> pb.ListMoveResponse:
        namespace = current_namespace()
        source = self.check.key(request.source, "source")
        destination = self.check.key(request.destination, "destination")
        # `from` is a Python keyword, hence getattr.
        from_end = self.check.choice(getattr(request, "from"), _LIST_ENDS, "from")
        to_end = self.check.choice(request.to, _LIST_ENDS, "to")
        value = await self.collections.list_move(
            namespace,
            source,
            destination,
            from_end=from_end,
            to_end=to_end,
            ttl=self._ttl(request),
            wait_s=self._wait_s(request, context),
        )
        if value is None:
            return pb.ListMoveResponse(moved=False)
        return pb.ListMoveResponse(moved=True, value=value)

    # ---- sets -------------------------------------------------------------------

    async def SetAdd(self, request: pb.SetAddRequest, context: Context) -> pb.SetAddResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = self._values(request.members, "members")
        added = await self.collections.set_add(namespace, key, members, self._ttl(request))
        return pb.SetAddResponse(added=added)

    async def SetRemove(
        self, request: pb.SetRemoveRequest, context: Context
    ) -> pb.SetRemoveResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = self._values(request.members, "members")
        return pb.SetRemoveResponse(
            removed=await self.collections.set_remove(namespace, key, members)
        )

    async def SetMembers(
        self, request: pb.SetMembersRequest, context: Context
    ) -> pb.SetMembersResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = await self.collections.set_members(namespace, key)
        return self._fits(pb.SetMembersResponse(members=members))

    async def SetIsMember(
        self, request: pb.SetIsMemberRequest, context: Context
    ) -> pb.SetIsMemberResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = self._values(request.members, "members")
        flags = await self.collections.set_is_member(namespace, key, members)
        return pb.SetIsMemberResponse(is_member=flags)

    async def SetCardinality(
        self, request: pb.SetCardinalityRequest, context: Context
    ) -> pb.SetCardinalityResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        return pb.SetCardinalityResponse(
            cardinality=await self.collections.set_cardinality(namespace, key)
        )

    async def SetRandomMembers(
        self, request: pb.SetRandomMembersRequest, context: Context
    ) -> pb.SetRandomMembersResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        count = request.count or 1
        if abs(count) > self.check.limits.max_batch:
            raise InvalidArgument.field(
                "count", f"must be at most {self.check.limits.max_batch} in absolute value"
            )
        members = await self.collections.set_random_members(namespace, key, count)
        return self._fits(pb.SetRandomMembersResponse(members=members))

    async def SetPop(self, request: pb.SetPopRequest, context: Context) -> pb.SetPopResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        count = self._count(request.count, "count")
        members = await self.collections.set_pop(
            namespace, key, count, self.check.limits.max_message_bytes
        )
        return pb.SetPopResponse(members=members)

    async def SetMove(self, request: pb.SetMoveRequest, context: Context) -> pb.SetMoveResponse:
        namespace = current_namespace()
        source = self.check.key(request.source, "source")
        destination = self.check.key(request.destination, "destination")
        member = self.check.value(request.member, "member")
        moved = await self.collections.set_move(
            namespace, source, destination, member, self._ttl(request)
        )
        return pb.SetMoveResponse(moved=moved)

    async def SetCombine(
        self, request: pb.SetCombineRequest, context: Context
    ) -> pb.SetCombineResponse:
        namespace = current_namespace()
        operation = self.check.choice(request.operation, _SET_OPERATIONS, "operation")
        keys = self.check.keys(request.keys)
        destination = (
            self.check.key(request.destination, "destination") if request.destination else None
        )
        ttl = optional(request, "destination_ttl")
        if destination is None and ttl is not None:
            raise InvalidArgument.field("destination_ttl", "only applies with a destination")
        if destination is not None and len(keys) > MAX_STORE_KEYS:
            raise InvalidArgument.field(
                "keys", f"at most {MAX_STORE_KEYS} sets when storing into a destination"
            )
        members, cardinality = await self.collections.set_combine(
            namespace,
            operation,
            keys,
            destination=destination,
            destination_ttl_ms=self.check.ttl_ms(ttl, "destination_ttl"),
        )
        return self._fits(pb.SetCombineResponse(members=members, cardinality=cardinality))

    # ---- sorted sets ------------------------------------------------------------

    async def SortedSetAdd(
        self, request: pb.SortedSetAddRequest, context: Context
    ) -> pb.SortedSetAddResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        self.check.batch(len(request.members), "members")
        members = [
            (
                self.check.value(item.member, f"members[{i}].member"),
                self._score(item.score, f"members[{i}].score"),
            )
            for i, item in enumerate(request.members)
        ]
        condition = self.check.choice(request.condition, _ADD_CONDITIONS, "condition")
        added, changed = await self.collections.sorted_set_add(
            namespace, key, members, condition=condition, ttl=self._ttl(request)
        )
        return pb.SortedSetAddResponse(added=added, changed=changed)

    async def SortedSetIncrement(
        self, request: pb.SortedSetIncrementRequest, context: Context
    ) -> pb.SortedSetIncrementResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        member = self.check.value(request.member, "member")
        delta = self._score(request.delta, "delta")
        request_id = self.check.request_id(request.request_id)
        score = await self.collections.sorted_set_increment(
            namespace, key, member, delta, self._ttl(request), request_id=request_id
        )
        return pb.SortedSetIncrementResponse(score=score)

    async def SortedSetRank(
        self, request: pb.SortedSetRankRequest, context: Context
    ) -> pb.SortedSetRankResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        member = self.check.value(request.member, "member")
        descending = self.check.choice(request.order, _DESCENDING, "order")
        found = await self.collections.sorted_set_rank(
            namespace, key, member, descending=descending
        )
        if found is None:
            return pb.SortedSetRankResponse(found=False)
        return pb.SortedSetRankResponse(found=True, rank=found[0], score=found[1])

    async def SortedSetRange(
        self, request: pb.SortedSetRangeRequest, context: Context
    ) -> pb.SortedSetRangeResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        descending = self.check.choice(request.order, _DESCENDING, "order")
        which = request.WhichOneof("range")
        if which == "by_rank":
            if request.offset or request.limit:
                field = "offset" if request.offset else "limit"
                raise InvalidArgument.field(field, "only applies with by_score")
            members = await self.collections.sorted_set_range_by_rank(
                namespace,
                key,
                request.by_rank.start,
                request.by_rank.end,
                descending=descending,
            )
        elif which == "by_score":
            low, high = self._score_range(request.by_score, "by_score")
            if request.offset < 0:
                raise InvalidArgument.field("offset", "must not be negative")
            max_batch = self.check.limits.max_batch
            if not 0 <= request.limit <= max_batch:
                raise InvalidArgument.field("limit", f"must be 0 to {max_batch} (0: {max_batch})")
            members = await self.collections.sorted_set_range_by_score(
                namespace,
                key,
                low,
                high,
                descending=descending,
                offset=request.offset,
                limit=request.limit or max_batch,
            )
        else:
            raise InvalidArgument.field("range", "is required: set by_rank or by_score")
        return self._fits(
            pb.SortedSetRangeResponse(
                members=[pb.ScoredMember(member=m, score=s) for m, s in members]
            )
        )

    async def SortedSetCount(
        self, request: pb.SortedSetCountRequest, context: Context
    ) -> pb.SortedSetCountResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        low, high = self._score_range(request.range, "range")
        return pb.SortedSetCountResponse(
            count=await self.collections.sorted_set_count(namespace, key, low, high)
        )

    async def SortedSetScore(
        self, request: pb.SortedSetScoreRequest, context: Context
    ) -> pb.SortedSetScoreResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = self._values(request.members, "members")
        scores = await self.collections.sorted_set_score(namespace, key, members)
        return self._fits(
            pb.SortedSetScoreResponse(
                scores=[
                    pb.MemberScore(member=m, found=s is not None, score=s or 0.0)
                    for m, s in zip(members, scores, strict=True)
                ]
            )
        )

    async def SortedSetRemove(
        self, request: pb.SortedSetRemoveRequest, context: Context
    ) -> pb.SortedSetRemoveResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        members = self._values(request.members, "members")
        return pb.SortedSetRemoveResponse(
            removed=await self.collections.sorted_set_remove(namespace, key, members)
        )

    async def SortedSetRemoveRange(
        self, request: pb.SortedSetRemoveRangeRequest, context: Context
    ) -> pb.SortedSetRemoveRangeResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        which = request.WhichOneof("range")
        if which == "by_rank":
            removed = await self.collections.sorted_set_remove_by_rank(
                namespace, key, request.by_rank.start, request.by_rank.end
            )
        elif which == "by_score":
            low, high = self._score_range(request.by_score, "by_score")
            removed = await self.collections.sorted_set_remove_by_score(namespace, key, low, high)
        else:
            raise InvalidArgument.field("range", "is required: set by_rank or by_score")
        return pb.SortedSetRemoveRangeResponse(removed=removed)

    async def SortedSetCardinality(
        self, request: pb.SortedSetCardinalityRequest, context: Context
    ) -> pb.SortedSetCardinalityResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        return pb.SortedSetCardinalityResponse(
            cardinality=await self.collections.sorted_set_cardinality(namespace, key)
        )
