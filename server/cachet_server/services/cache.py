"""CacheService: strings and counters, invalidation, fill leases, transactions."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from typing import Any, ClassVar

from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from google.protobuf import duration_pb2

from ..access import ADMIN, READ, WRITE, CallSpec, Role, StreamKind, calls, streaming
from ..backend.batch import Step, run_steps
from ..backend.cache import (
    CacheStore,
    CacheValue,
    FillOptions,
    Increment,
    Reads,
    SetOptions,
    TxnCompare,
    TxnOperation,
)
from ..backend.invalidations import InvalidationHub
from ..callcontext import current_call, current_namespace
from ..errors import (
    CachetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    domain_error,
)
from ..metrics import instruments
from ..validation import optional
from .base import Context, Dependencies
from .cache_collections import CollectionsMixin

_CONDITIONS = {
    pb.SET_CONDITION_UNSPECIFIED: "",
    pb.SET_CONDITION_IF_ABSENT: "NX",
    pb.SET_CONDITION_IF_PRESENT: "XX",
}
_BIT_UNITS = {pb.BIT_UNIT_UNSPECIFIED: "BYTE", pb.BIT_UNIT_BYTE: "BYTE", pb.BIT_UNIT_BIT: "BIT"}
_MAX_TAGS = 32
_MAX_TAG_BYTES = 256
_MAX_BETA = 100.0
_DEFAULT_LEASE_MS = 10_000
_MAX_LEASE_TOKEN_BYTES = 256
_DEFAULT_SCAN_BATCH = 500
_OPERATORS = {
    pb.COMPARE_OPERATOR_EQUAL: "eq",
    pb.COMPARE_OPERATOR_NOT_EQUAL: "ne",
    pb.COMPARE_OPERATOR_GREATER: "gt",
    pb.COMPARE_OPERATOR_LESS: "lt",
    pb.COMPARE_OPERATOR_GREATER_OR_EQUAL: "ge",
    pb.COMPARE_OPERATOR_LESS_OR_EQUAL: "le",
}
# Targets that have no order: only EQUAL and NOT_EQUAL make sense for them.
_UNORDERED_TARGETS = {"exists", "value"}
_TARGETS = {
    "exists": "exists",
    "value": "value",
    "number": "number",
    "version": "version",
    "ttl_ms": "ttl",
}


# Batch and Session operations that change data; the others only read.
_WRITE_OPERATIONS = frozenset({"set", "delete", "increment", "expire", "hash_set"})
# Operations of one Session stream held at once (arrived or running) at which the stream
# is no longer read until a round completes (backpressure instead of unbounded work; one
# packed message may take the count past it by up to SESSION_PACK).
SESSION_IN_FLIGHT = 256
# Most operations one Session message may pack; past it each is refused. Fixed, not
# max_batch: the clients pack up to 256 whatever a server's max_batch is, and the held
# count bounds a stream's work either way.
SESSION_PACK = 256


def _only_reads(operation: pb.BatchOperation) -> bool:
    return operation.WhichOneof("operation") not in _WRITE_OPERATIONS


def _batch_only_reads(request: pb.BatchRequest) -> bool:
    return all(map(_only_reads, request.operations))


# What one Session operation needs, checked as Batch's CallSpec checks a whole call.
_SESSION_OPERATION = calls(Role.WRITE, read_if=_only_reads, read_when="when it only reads")


def _fail(result: pb.BatchResult, error: CachetError) -> None:
    """Make `result` (a message of the response, filled in place) the error's status."""
    result.Clear()
    status = result.status
    status.code = error.code.value[0]
    status.message = error.message
    status.reason = error.reason
    status.metadata.update(error.metadata)


class _Refused:
    """A packed Session operation of a message over the limit: answered, never run."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id


# What a Session stream holds until its round: a request sent alone (answered in a
# message of its own), an operation sent packed (answered packed), or one refused.
_SessionArrival = pb.SessionRequest | pb.SessionOperation | _Refused


_TOO_MANY_PACKED = InvalidArgument.field(
    "operations", f"a Session message carries at most {SESSION_PACK} operations"
)


# Bytes a packed answer adds to its message besides its own: the field's tag and length.
_ANSWER_FRAMING_BYTES = 6
# Most bytes of packed answers per message: past a MiB packing saves nothing worth having,
# and a client receives at most 4 MiB by gRPC's default, whatever the server may send.
PACKED_ANSWER_BYTES = 1 << 20


def _within_message(packed: pb.SessionResponse, max_bytes: int) -> list[pb.SessionResponse]:
    """Packed answers as messages that each fit in `max_bytes` (one answer over it alone
    still goes, in a message of its own, as an answer sent alone would)."""
    if packed.ByteSize() <= max_bytes:
        return [packed]
    messages = [pb.SessionResponse()]
    size = 0
    for answer in packed.answers:
        answer_bytes = answer.ByteSize() + _ANSWER_FRAMING_BYTES
        if size + answer_bytes > max_bytes and messages[-1].answers:
            messages.append(pb.SessionResponse())
            size = 0
        messages[-1].answers.append(answer)
        size += answer_bytes
    return messages


def _refusal(roles: frozenset[Role], operation: pb.BatchOperation) -> PermissionDenied | None:
    """Why a Session operation may not run with these roles, or None."""
    if _SESSION_OPERATION.admits(roles, operation):
        return None
    which = operation.WhichOneof("operation") or "missing"
    return PermissionDenied(
        f"a {which} operation needs the {_SESSION_OPERATION.required()} role",
        reason="ROLE_NOT_GRANTED",
    )


class _ReadBudget(Enum):
    """How the gets of one `_run_operations` share the byte budget of the message size:
    SHARED, one budget for all (a Batch: all answers are one response); EACH, a budget
    per get (a Session: each answer is a message of its own), read together first and a
    group over the budget read again APART, each get alone."""

    SHARED = "shared"
    EACH = "each"
    APART = "apart"


# How a step's answer is written into the results of the operations it serves (filled
# in place: building each result and copying it into the response costs about three
# times as much).
_Respond = Callable[[Any, list[pb.BatchResult]], None]


# How the answer of a step serving one operation becomes its result (`_plan`).
_Answer = Callable[[Any], pb.BatchResult]


def _one(respond: _Answer) -> _Respond:
    """A step's respond for the one operation it serves."""

    def fill(answer: Any, into: list[pb.BatchResult]) -> None:
        into[0].CopyFrom(respond(answer))

    return fill


def _duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


# Whether a GetRequest asks for its TTL (for `map`, which calls it in C).
_INCLUDES_TTL = operator.attrgetter("include_ttl")


# Protobuf framing of one GetMany entry beside its key and value (tags, lengths, version).
_ENTRY_OVERHEAD_BYTES = 24


class CacheService(CollectionsMixin, cache_pb2_grpc.CacheServiceServicer):
    CALLS: ClassVar[dict[str, CallSpec]] = {
        **CollectionsMixin.COLLECTION_CALLS,
        "BitCount": READ,
        "Delete": WRITE,
        "Exists": READ,
        "Expire": WRITE,
        "Fill": WRITE,
        "Get": READ,
        "GetBit": READ,
        "GetMany": READ,
        "GetOrLease": WRITE,
        "GetTtl": READ,
        "Increment": WRITE,
        "InvalidatePattern": ADMIN,
        "InvalidateTags": WRITE,
        "Persist": WRITE,
        "Set": WRITE,
        "SetBit": WRITE,
        "SetMany": WRITE,
        "Txn": WRITE,
        # A batch of reads needs only `read`; any write in it needs `write`.
        "Batch": calls(Role.WRITE, read_if=_batch_only_reads, read_when="when it only reads"),
        # Opening the stream needs either role; the servicer checks each message, since
        # the interceptor sees the stream open, never the operations sent on it.
        "Session": calls([Role.READ, Role.WRITE]),
        "WatchInvalidations": streaming(READ, StreamKind.WATCH),
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.store = CacheStore(
            deps.backend,
            max_ttl_ms=self.check.max_ttl_ms,
            request_window_ms=deps.settings.idempotency_window_ms,
        )
        self.stats = deps.stats
        watching = deps.settings.invalidations
        self.invalidations = InvalidationHub(
            deps.backend,
            watcher_buffer=watching.watcher_buffer,
            check_interval=watching.check_interval.total_seconds(),
            max_watchers=watching.max_watchers,
        )

    async def aclose(self) -> None:
        await self.invalidations.aclose()
        await self.store.aclose()
        await super().aclose()

    def _bit_offset(self, offset: int) -> int:
        limit = self.check.limits.max_value_bytes * 8
        if offset >= limit:
            raise InvalidArgument.field("offset", f"must be below {limit} (8 * max value size)")
        return offset

    def _tags(self, tags: Sequence[str], field: str = "tags") -> list[str]:
        if len(tags) > _MAX_TAGS:
            raise InvalidArgument.field(field, f"at most {_MAX_TAGS} tags per key")
        return self._tag_list(tags, field)

    def _tag_list(self, tags: Sequence[str], field: str) -> list[str]:
        for i, tag in enumerate(tags):
            if not tag or len(tag.encode()) > _MAX_TAG_BYTES or "\n" in tag:
                raise InvalidArgument.field(
                    f"{field}[{i}]", f"must be 1 to {_MAX_TAG_BYTES} bytes without newlines"
                )
        return list(tags)

    def _recompute_ms(self, message: object) -> int | None:
        recompute = optional(message, "recompute_time")
        return self.check.duration_ms(recompute, "recompute_time") if recompute else None

    async def Get(self, request: pb.GetRequest, context: Context) -> pb.GetResponse:
        namespace = current_namespace()
        key, beta = self._get_args(request)
        found = await self.store.get(namespace, key, with_ttl=request.include_ttl, beta=beta)
        return self._get_response(namespace, request, found)

    def _get_args(self, request: pb.GetRequest) -> tuple[str, float]:
        key = self.check.key(request.key)
        beta = request.early_refresh_beta
        if beta:  # 0, the default, needs no check
            self.check.finite(beta, "early_refresh_beta")
            if not 0 <= beta <= _MAX_BETA:
                raise InvalidArgument.field("early_refresh_beta", f"must be in [0, {_MAX_BETA}]")
        return key, beta

    def _get_response(
        self, namespace: str, request: pb.GetRequest, found: CacheValue
    ) -> pb.GetResponse:
        self.stats.record_lookups(namespace, hits=int(found.found), misses=int(not found.found))
        return _get_message(request, found)

    async def GetMany(self, request: pb.GetManyRequest, context: Context) -> pb.GetManyResponse:
        namespace = current_namespace()
        keys = self.check.keys(request.keys)
        # Keys and per-entry framing come on top of the values (the keys' UTF-8 bytes
        # counted in one encode of them all, not one per key).
        framing = len("".join(keys).encode()) + _ENTRY_OVERHEAD_BYTES * len(keys)
        reads = await self.store.read_many(
            namespace,
            keys,
            with_ttl=request.include_ttl,
            max_answer_bytes=max(0, self.check.limits.max_message_bytes - framing),
        )
        misses = reads.values.count(None)
        self.stats.record_lookups(namespace, hits=len(keys) - misses, misses=misses)
        response = pb.GetManyResponse()
        add = response.entries.add
        ttls = reads.ttls_ms or [-1] * len(keys)  # -1: no TTL to answer
        # Fields set one by one on the added entry: upb's keyword constructor looks each
        # name up, about 20 % more instructions per entry (callgrind).
        for key, value, version, ttl_ms in zip(
            keys, reads.values, reads.versions, ttls, strict=True
        ):
            entry = add()
            entry.key = key
            if value is not None:
                entry.found = True
                entry.value = value
                entry.version = version
                if ttl_ms >= 0:
                    entry.ttl.FromMilliseconds(ttl_ms)
        return response

    async def Set(self, request: pb.SetRequest, context: Context) -> pb.SetResponse:
        namespace = current_namespace()
        key, value, options = self._set_args(request)
        outcome = await self.store.set(namespace, key, value, options)
        return pb.SetResponse(
            version=outcome.version,
            previous_found=outcome.previous_found,
            previous_value=outcome.previous,
        )

    def _set_args(self, request: pb.SetRequest) -> tuple[str, bytes, SetOptions]:
        key = self.check.key(request.key)
        value = self.check.value(request.value)
        ttl = optional(request, "ttl")
        if request.keep_ttl and ttl is not None:
            raise InvalidArgument.field("keep_ttl", "cannot be combined with ttl")
        ttl_ms = 0 if request.keep_ttl else self.check.ttl_ms(ttl)
        condition = self.check.choice(request.condition, _CONDITIONS, "condition")
        tags = self._tags(request.tags)
        return (
            key,
            value,
            SetOptions(
                ttl_ms=ttl_ms,
                default_ttl_ms=self.check.default_ttl_ms,
                condition=condition,
                if_version=request.if_version if request.HasField("if_version") else None,
                return_previous=request.return_previous,
                fencing_token=request.fencing_token or None,
                recompute_ms=self._recompute_ms(request),
                tags=tags,
            ),
        )

    async def SetMany(self, request: pb.SetManyRequest, context: Context) -> pb.SetManyResponse:
        namespace = current_namespace()
        self.check.batch(len(request.entries), "entries")
        shared_ttl = self.check.ttl_ms(optional(request, "ttl"))
        items: list[tuple[str, bytes, int]] = []
        seen: set[str] = set()
        # The full checks (and their field names) only for the entries that may fail them.
        fits, max_value = self.check.short_key_chars, self.check.limits.max_value_bytes
        for i, entry in enumerate(request.entries):
            key = entry.key
            if not key or len(key) > fits:
                self.check.key(key, f"entries[{i}].key")
            if key in seen:
                raise InvalidArgument.field(f"entries[{i}].key", f"duplicate key {key!r}")
            seen.add(key)
            value = entry.value
            if len(value) > max_value:
                self.check.value(value, f"entries[{i}].value")
            ttl_ms = (
                self.check.ttl_ms(entry.ttl, f"entries[{i}].ttl")
                if entry.HasField("ttl")
                else shared_ttl
            )
            items.append((key, value, ttl_ms))
        versions = await self.store.set_many(namespace, items)
        return pb.SetManyResponse(stored=len(items), versions=versions)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        namespace = current_namespace()
        keys = self.check.keys(request.keys)
        deleted = await self.store.delete(namespace, keys)
        instruments.invalidations.add(deleted, instruments.ns(namespace))
        return pb.DeleteResponse(deleted=deleted)

    async def Exists(self, request: pb.ExistsRequest, context: Context) -> pb.ExistsResponse:
        namespace = current_namespace()
        keys = self.check.keys(request.keys)
        flags = await self.store.exists(namespace, keys)
        return pb.ExistsResponse(count=sum(flags), exists=flags)

    async def Expire(self, request: pb.ExpireRequest, context: Context) -> pb.ExpireResponse:
        namespace = current_namespace()
        key, ttl_ms = self._expire_args(request)
        found = await self.store.expire(namespace, key, ttl_ms)
        return pb.ExpireResponse(found=found)

    def _expire_args(self, request: pb.ExpireRequest) -> tuple[str, int]:
        key = self.check.key(request.key)
        ttl = optional(request, "ttl")
        if ttl is None:
            raise InvalidArgument.field("ttl", "is required")
        return key, self.check.ttl_ms(ttl)

    async def Persist(self, request: pb.PersistRequest, context: Context) -> pb.PersistResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        if not self.deps.settings.allow_persist:
            raise FailedPrecondition(
                "persistent keys are disabled: every cache key expires "
                "(set CACHET_ALLOW_PERSIST=true to allow Persist)",
                reason="PERSIST_DISABLED",
            )
        return pb.PersistResponse(found=await self.store.persist(namespace, key))

    async def GetTtl(self, request: pb.GetTtlRequest, context: Context) -> pb.GetTtlResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        ttl_ms = await self.store.ttl_ms(namespace, key)
        if ttl_ms == -2:
            return pb.GetTtlResponse(found=False)
        if ttl_ms == -1:
            return pb.GetTtlResponse(found=True, has_ttl=False)
        return pb.GetTtlResponse(found=True, has_ttl=True, ttl=_duration(ttl_ms))

    async def Increment(
        self, request: pb.IncrementRequest, context: Context
    ) -> pb.IncrementResponse:
        namespace = current_namespace()
        key, delta, ttl_ms, request_id = self._increment_args(request)
        result = await self.store.increment(namespace, key, delta, ttl_ms, request_id=request_id)
        return _increment_response(result)

    def _increment_args(self, request: pb.IncrementRequest) -> tuple[str, int | float, int, str]:
        key = self.check.key(request.key)
        ttl_ms = self.check.ttl_ms(optional(request, "ttl"))
        delta: int | float
        if request.WhichOneof("delta") == "by_float":
            delta = self.check.finite(request.by_float, "by_float")
        else:
            delta = request.by_int if request.HasField("by_int") else 1
        return key, delta, ttl_ms, self.check.request_id(request.request_id)

    async def SetBit(self, request: pb.SetBitRequest, context: Context) -> pb.SetBitResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        offset = self._bit_offset(request.offset)
        ttl_ms = self.check.ttl_ms(optional(request, "ttl"))
        previous = await self.store.set_bit(namespace, key, offset, request.value, ttl_ms)
        return pb.SetBitResponse(previous=previous)

    async def GetBit(self, request: pb.GetBitRequest, context: Context) -> pb.GetBitResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        offset = self._bit_offset(request.offset)
        return pb.GetBitResponse(value=await self.store.get_bit(namespace, key, offset))

    async def BitCount(self, request: pb.BitCountRequest, context: Context) -> pb.BitCountResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        unit = self.check.choice(request.unit, _BIT_UNITS, "unit")
        span = (request.range.start, request.range.end) if request.HasField("range") else None
        return pb.BitCountResponse(count=await self.store.bit_count(namespace, key, span, unit))

    async def InvalidateTags(
        self, request: pb.InvalidateTagsRequest, context: Context
    ) -> pb.InvalidateTagsResponse:
        namespace = current_namespace()
        self.check.batch(len(request.tags), "tags")
        tags = self._tag_list(request.tags, "tags")
        deleted = await self.store.invalidate_tags(namespace, tags)
        instruments.invalidations.add(deleted, instruments.ns(namespace))
        return pb.InvalidateTagsResponse(deleted=deleted)

    async def InvalidatePattern(
        self, request: pb.InvalidatePatternRequest, context: Context
    ) -> pb.InvalidatePatternResponse:
        namespace = current_namespace()
        pattern = self.check.key(request.pattern, "pattern")
        if _ends_in_escape(pattern):
            raise InvalidArgument.field("pattern", "must not end with an unescaped backslash")
        batch_size = request.batch_size or min(_DEFAULT_SCAN_BATCH, self.check.limits.max_batch)
        if not 0 < batch_size <= self.check.limits.max_batch:
            raise InvalidArgument.field(
                "batch_size", f"must be 1 to {self.check.limits.max_batch} (0: the default)"
            )
        deleted = await self.store.invalidate_pattern(namespace, pattern, batch_size)
        instruments.invalidations.add(deleted, instruments.ns(namespace))
        return pb.InvalidatePatternResponse(deleted=deleted)

    async def GetOrLease(
        self, request: pb.GetOrLeaseRequest, context: Context
    ) -> pb.GetOrLeaseResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        lease_ttl = optional(request, "lease_ttl")
        lease_ms = (
            _DEFAULT_LEASE_MS if lease_ttl is None else self.check.ttl_ms(lease_ttl, "lease_ttl")
        )
        answer = await self.store.get_or_lease(
            namespace,
            key,
            lease_ms,
            accept_stale=request.accept_stale,
            wait_s=self._wait_s(request, context),
        )
        hit = answer.outcome == "HIT"
        self.stats.record_lookups(namespace, hits=int(hit), misses=int(not hit))
        if hit:
            return pb.GetOrLeaseResponse(
                outcome=pb.LEASE_OUTCOME_HIT, value=answer.value, version=answer.version
            )
        if answer.outcome == "GRANTED":
            instruments.lease_grants.add(1, instruments.ns(namespace))
            return pb.GetOrLeaseResponse(
                outcome=pb.LEASE_OUTCOME_LEASE_GRANTED,
                lease_token=answer.token,
                lease_ttl=_duration(answer.lease_ms),
            )
        instruments.lease_waits.add(1, instruments.ns(namespace))
        if answer.stale:
            instruments.stale_served.add(1, instruments.ns(namespace))
        return pb.GetOrLeaseResponse(
            outcome=pb.LEASE_OUTCOME_FILL_PENDING,
            retry_after=_duration(answer.lease_ms),
            value=answer.value,
            stale=answer.stale,
        )

    async def Fill(self, request: pb.FillRequest, context: Context) -> pb.FillResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        token = request.lease_token
        if not token or len(token.encode()) > _MAX_LEASE_TOKEN_BYTES:
            raise InvalidArgument.field(
                "lease_token", "must be the token GetOrLease granted (non-empty)"
            )
        value = self.check.value(request.value)
        stale_ttl = optional(request, "stale_ttl")
        stale_ms = 0
        if stale_ttl is not None:
            stale_ms = self.check.duration_ms(stale_ttl, "stale_ttl")
            if stale_ms:
                stale_ms = self.check.ttl_ms(stale_ttl, "stale_ttl")
        version = await self.store.fill(
            namespace,
            key,
            token,
            value,
            FillOptions(
                ttl_ms=self.check.ttl_ms(optional(request, "ttl")),
                stale_ttl_ms=stale_ms,
                recompute_ms=self._recompute_ms(request),
                tags=self._tags(request.tags),
            ),
        )
        return pb.FillResponse(version=version)

    async def Txn(self, request: pb.TxnRequest, context: Context) -> pb.TxnResponse:
        namespace = current_namespace()
        self.check.batch(len(request.compare), "compare", allow_empty=True)
        self.check.batch(len(request.success), "success", allow_empty=True)
        self.check.batch(len(request.failure), "failure", allow_empty=True)
        compares = [self._compare(c, f"compare[{i}]") for i, c in enumerate(request.compare)]
        success = [self._txn_op(op, f"success[{i}]") for i, op in enumerate(request.success)]
        failure = [self._txn_op(op, f"failure[{i}]") for i, op in enumerate(request.failure)]
        succeeded, results = await self.store.txn(namespace, compares, success, failure)
        return pb.TxnResponse(
            succeeded=succeeded,
            results=[
                pb.TxnOpResult(
                    found=r.found, value=r.value, int_value=r.int_value, version=r.version
                )
                for r in results
            ],
        )

    async def Batch(self, request: pb.BatchRequest, context: Context) -> pb.BatchResponse:
        namespace = current_namespace()
        self.check.batch(len(request.operations), "operations")
        response = pb.BatchResponse()
        add = response.results.add
        await self._run_operations(
            namespace, request.operations, [add() for _ in request.operations]
        )
        return self._fits(response)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        """Operations run in rounds: all those that arrived while the previous round was
        at Redis run together as one pipeline, each answered on its own. A lone operation
        runs at once; under load a round carries whatever arrived meanwhile, so the
        stream pays one backend call per round, not per operation. Packed operations of a
        round are answered packed, in as few messages as fit. One Task reads the stream;
        answers are written as their round completes."""
        namespace = current_namespace()
        roles = current_call().identity.grants.roles
        # Roles that admit every operation (WRITE) need no check per operation.
        check_each = not _SESSION_OPERATION.admits(roles, None)
        arrived: list[_SessionArrival] = []
        running = 0  # operations of the round at Redis
        progress = asyncio.Event()  # for the rounds: a request arrived, or reading ended
        room = asyncio.Event()  # for the reader: fewer than SESSION_IN_FLIGHT are held
        reading = True

        async def read() -> None:
            nonlocal reading
            try:
                async for request in request_iterator:
                    operations = request.operations
                    if not operations:
                        arrived.append(request)
                    else:
                        if request.HasField("operation"):
                            arrived.append(request)
                        if len(operations) > SESSION_PACK:
                            arrived.extend(_Refused(op.id) for op in operations)
                        else:
                            arrived.extend(operations)
                    progress.set()
                    while len(arrived) + running >= SESSION_IN_FLIGHT:
                        room.clear()
                        await room.wait()
            finally:
                reading = False
                progress.set()

        reader = asyncio.create_task(read())
        try:
            while arrived or reading:
                if not arrived:
                    progress.clear()
                    await progress.wait()
                    continue
                requests = arrived[:]
                arrived.clear()
                running = len(requests)
                responses = await self._session_round(
                    namespace, roles if check_each else None, requests
                )
                running = 0
                room.set()
                for response in responses:
                    yield response
            await reader  # raises what ended the reading, if anything did
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _session_round(
        self,
        namespace: str,
        roles: frozenset[Role] | None,
        requests: Sequence[_SessionArrival],
    ) -> list[pb.SessionResponse]:
        """The answers to Session operations run together; an operation refused or
        failed fails alone, and a Redis fault fails the round's answers, not the stream.
        Operations sent alone get a message each; packed ones share messages. `roles`:
        those to check each operation against, None when they admit every operation."""
        responses: list[pb.SessionResponse] = []
        packed = pb.SessionResponse()
        add_answer = packed.answers.add
        operations: list[pb.BatchOperation] = []
        into: list[pb.BatchResult] = []
        for request in requests:
            if type(request) is pb.SessionOperation:  # the common case first
                answer = add_answer()
                answer.id = request.id
                result = answer.result
            elif isinstance(request, _Refused):
                _fail(add_answer(id=request.id).result, _TOO_MANY_PACKED)
                continue
            else:
                response = pb.SessionResponse(id=request.id)
                responses.append(response)
                result = response.result
            operation = request.operation
            if roles is not None and (refusal := _refusal(roles, operation)) is not None:
                _fail(result, refusal)
                continue
            operations.append(operation)
            into.append(result)
        if operations:
            try:
                await self._run_operations(namespace, operations, into, budget=_ReadBudget.EACH)
            except Exception as exc:  # Redis unreachable: these answers fail, the stream goes on
                error = domain_error(exc)
                for result in into:
                    _fail(result, error)
        if packed.answers:
            limit = min(PACKED_ANSWER_BYTES, self.check.limits.max_message_bytes)
            responses += _within_message(packed, limit)
        return responses

    async def _run_operations(
        self,
        namespace: str,
        operations: Sequence[pb.BatchOperation],
        into: list[pb.BatchResult],
        *,
        budget: _ReadBudget = _ReadBudget.SHARED,
    ) -> None:
        """Validate each operation, run the valid ones as one pipeline, and write each
        one's own result into `into` (in place); a bad operation fails alone.
        Consecutive gets are read together, one script per slot group as GetMany reads
        (still in request order with the writes around them), within the message size
        as byte budget, shared or per get as `budget` says."""
        planned: list[tuple[list[int], Step, _Respond]] = []
        reads: list[tuple[int, pb.GetRequest, str, float]] = []

        def read_together() -> None:
            if reads:
                planned.append(self._plan_gets(namespace, reads))
                reads.clear()

        for i, operation in enumerate(operations):
            try:
                if operation.WhichOneof("operation") == "get":
                    get = operation.get
                    key, beta = self._get_args(get)
                    reads.append((i, get, key, beta))
                    if budget is _ReadBudget.APART:
                        read_together()
                    continue
                step, answer = self._plan(namespace, operation)
            except CachetError as exc:
                _fail(into[i], exc)
                continue
            read_together()
            planned.append(([i], step, _one(answer)))
        read_together()
        if not planned:
            return
        outcomes = await run_steps(self.deps.backend, [step for _, step, _ in planned])
        over_together: list[int] = []
        for (indexes, _, respond), outcome in zip(planned, outcomes, strict=True):
            results = [into[i] for i in indexes]
            if not isinstance(outcome, CachetError):
                try:
                    respond(outcome, results)
                    continue
                except CachetError as exc:
                    outcome = exc
            if (
                budget is _ReadBudget.EACH
                and len(indexes) > 1
                and outcome.reason == "RESPONSE_TOO_LARGE"
            ):
                over_together += indexes
                continue
            for result in results:
                _fail(result, outcome)
        if over_together:
            # Gets over the budget together (refused before Redis read them): each has a
            # budget of its own, so they are read again apart.
            await self._run_operations(
                namespace,
                [operations[i] for i in over_together],
                [into[i] for i in over_together],
                budget=_ReadBudget.APART,
            )

    def _plan_gets(
        self, namespace: str, reads: Sequence[tuple[int, pb.GetRequest, str, float]]
    ) -> tuple[list[int], Step, _Respond]:
        # The columns of `reads`, transposed in C (zip), not by a comprehension each.
        indexes, requests, keys, betas = map(list, zip(*reads, strict=True))
        with_ttl = any(betas) or any(map(_INCLUDES_TTL, requests))
        step = self.store.read_many_step(
            namespace, keys, with_ttl=with_ttl, max_answer_bytes=self.check.limits.max_message_bytes
        )

        def respond(found: Reads, into: list[pb.BatchResult]) -> None:
            misses = found.values.count(None)
            self.stats.record_lookups(namespace, hits=len(into) - misses, misses=misses)
            if with_ttl:
                for n, (result, request, beta) in enumerate(
                    zip(into, requests, betas, strict=True)
                ):
                    result.get.CopyFrom(_get_message(request, found.value(n, beta)))
                return
            for result, value, version in zip(into, found.values, found.versions, strict=True):
                get = result.get
                if value is None:
                    get.SetInParent()
                else:
                    get.found = True
                    get.value = value
                    get.version = version

        return indexes, step, respond

    def _plan(self, namespace: str, operation: pb.BatchOperation) -> tuple[Step, _Answer]:
        """The backend step of one operation but a get (see `_plan_gets`), validated as
        its unary RPC validates, and how its answer maps to a BatchResult."""
        which = operation.WhichOneof("operation")
        if which == "set":
            key, value, options = self._set_args(operation.set)
            if options.tags:
                raise InvalidArgument.field(
                    "tags", "a batched set cannot carry tags: use CacheService/Set"
                )
            return (
                self.store.set_step(namespace, key, value, options),
                lambda outcome: pb.BatchResult(
                    set=pb.SetResponse(
                        version=outcome.version,
                        previous_found=outcome.previous_found,
                        previous_value=outcome.previous,
                    )
                ),
            )
        if which == "delete":
            keys = self.check.keys(operation.delete.keys)
            return (
                self.store.delete_step(namespace, keys),
                lambda deleted: pb.BatchResult(delete=pb.DeleteResponse(deleted=deleted)),
            )
        if which == "increment":
            key, delta, ttl_ms, request_id = self._increment_args(operation.increment)
            return (
                self.store.increment_step(namespace, key, delta, ttl_ms, request_id),
                lambda result: pb.BatchResult(increment=_increment_response(result)),
            )
        if which == "expire":
            key, ttl_ms = self._expire_args(operation.expire)
            return (
                self.store.expire_step(namespace, key, ttl_ms),
                lambda found: pb.BatchResult(expire=pb.ExpireResponse(found=found)),
            )
        if which == "hash_get":
            key = self.check.key(operation.hash_get.key)
            fields = self._fields(operation.hash_get.fields, "fields")
            return (
                self.collections.hash_get_step(namespace, key, fields),
                lambda values: pb.BatchResult(hash_get=self._hash_get_response(fields, values)),
            )
        if which == "hash_set":
            hash_set = operation.hash_set
            key, fields_set, ttl = self._hash_set_args(hash_set)
            return (
                self.collections.hash_set_step(
                    namespace, key, fields_set, if_absent=hash_set.if_absent, ttl=ttl
                ),
                lambda added: pb.BatchResult(hash_set=pb.HashSetResponse(added=added)),
            )
        raise InvalidArgument.field(
            "operation", "set one of get, set, delete, increment, expire, hash_get, hash_set"
        )

    def _compare(self, compare: pb.Compare, field: str) -> TxnCompare:
        key = self.check.key(compare.key, f"{field}.key")
        if compare.operator not in _OPERATORS:
            raise InvalidArgument.field(
                f"{field}.operator",
                "must be one of EQUAL, NOT_EQUAL, GREATER, LESS, GREATER_OR_EQUAL, LESS_OR_EQUAL",
            )
        operator = _OPERATORS[compare.operator]
        which = compare.WhichOneof("target")
        if which is None:
            raise InvalidArgument.field(
                f"{field}.target", "set one of exists, value, number, version, ttl_ms"
            )
        target = _TARGETS[which]
        if target in _UNORDERED_TARGETS and operator not in ("eq", "ne"):
            raise InvalidArgument.field(
                f"{field}.operator", f"a {which} comparison takes only EQUAL or NOT_EQUAL"
            )
        operand: bytes | str
        if which == "exists":
            operand = "1" if compare.exists else "0"
        elif which == "value":
            operand = self.check.value(compare.value, f"{field}.value")
        elif which == "number":
            operand = repr(self.check.finite(compare.number, f"{field}.number"))
        elif which == "version":
            operand = str(compare.version)
        else:
            operand = str(compare.ttl_ms)
        return TxnCompare(key, target, operator, operand)

    def _txn_op(self, op: pb.TxnOp, field: str) -> TxnOperation:
        which = op.WhichOneof("op")
        if which == "set":
            return TxnOperation(
                "set",
                self.check.key(op.set.key, f"{field}.set.key"),
                self.check.value(op.set.value, f"{field}.set.value"),
                self.check.ttl_ms(optional(op.set, "ttl"), f"{field}.set.ttl"),
            )
        if which == "delete":
            return TxnOperation("del", self.check.key(op.delete.key, f"{field}.delete.key"))
        if which == "increment":
            return TxnOperation(
                "incr",
                self.check.key(op.increment.key, f"{field}.increment.key"),
                str(op.increment.by_int),
                self.check.ttl_ms(optional(op.increment, "ttl"), f"{field}.increment.ttl"),
            )
        if which == "get":
            return TxnOperation("get", self.check.key(op.get.key, f"{field}.get.key"))
        raise InvalidArgument.field(f"{field}.op", "set one of set, delete, increment, get")

    async def WatchInvalidations(
        self, request: pb.WatchInvalidationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchInvalidationsResponse]:
        namespace = current_namespace()
        self.check.batch(len(request.prefixes), "prefixes", allow_empty=True)
        prefixes = [self.check.key(p, f"prefixes[{i}]") for i, p in enumerate(request.prefixes)]
        async with self.invalidations.watch(namespace, prefixes) as watcher:
            async for event in watcher:
                if event.synced:
                    yield pb.WatchInvalidationsResponse(synced=True)
                elif event.flush_all:
                    yield pb.WatchInvalidationsResponse(flush_all=True)
                else:
                    yield pb.WatchInvalidationsResponse(keys=pb.InvalidatedKeys(keys=event.keys))


def _get_message(request: pb.GetRequest, found: CacheValue) -> pb.GetResponse:
    if not found.found:
        return pb.GetResponse(found=False)
    response = pb.GetResponse(
        found=True,
        value=found.value,
        version=found.version,
        should_refresh=found.should_refresh,
    )
    if request.include_ttl and found.ttl_ms >= 0:
        response.ttl.CopyFrom(_duration(found.ttl_ms))
    return response


def _increment_response(result: Increment) -> pb.IncrementResponse:
    return pb.IncrementResponse(
        int_value=result.int_value,
        float_value=result.float_value,
        created=result.created,
        version=result.version,
    )


def _ends_in_escape(pattern: str) -> bool:
    """Whether a glob ends with a backslash that escapes nothing (it would escape the
    closing brace cachet adds around the key)."""
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    return trailing % 2 == 1
