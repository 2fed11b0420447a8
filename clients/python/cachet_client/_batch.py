"""Batch, Session and the auto-batcher: many independent cache operations per call.

Every operation (get, set, delete, increment, increment_float, expire, hash_get,
hash_set) is built once, in `Operating`, as an `Operation`: the `BatchOperation`
message, the decoding of its `BatchResult` into what the unary wrapper of the same name
answers, and whether it may be repeated. Three surfaces send them:

- `Batch`, a builder: `execute()` sends one `CacheService/Batch` call (several, at once,
  past `max_batch` operations or a MiB of them) and answers one `OperationResult` per
  operation, in order.
- `Session`, one `CacheService/Session` stream: each operation is its own call on it
  (a coroutine on the async client, a blocking call on the sync one), matched to its
  answer by a fresh id. The operations that wait while the stream's previous message
  is being written go out packed in one message (`SessionRequest.operations`).
- `Batcher`, the same calls coalesced adaptively into `Batch` calls: a call goes out at
  once while fewer than `max_in_flight` batches are in flight; past that, calls queue
  and go out together when one returns.

A failed operation raises (or holds, in an `OperationResult`) the error its unary RPC
would have raised: the OperationStatus goes through `errors.from_operation_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import grpc

from ._core import (
    Async,
    AsyncRunner,
    F,
    Invoke,
    Parallel,
    Runner,
    Service,
    Steps,
    Sync,
    SyncRunner,
    duration,
    procedure,
    rpc,
)
from .errors import CachetError, Cancelled, DeadlineExceeded, Unavailable, from_operation_status
from .errors import from_rpc_error as _from_rpc_error
from .proto.cachet.cache.v1 import cache_pb2 as pb
from .serializers import Serializer

if TYPE_CHECKING:
    from ._cache import Condition, Value

T = TypeVar("T")
_SERVICE = "cachet.cache.v1.CacheService"
BATCH = rpc(_SERVICE, "Batch", pb.BatchResponse, idempotent=True)
SESSION_PATH = f"/{_SERVICE}/Session"
# The server's default max_batch: a longer Batch is split into calls of at most this
# many operations, sent at once.
MAX_BATCH = 1000
# Batches one batcher keeps in flight before it queues calls.
MAX_IN_FLIGHT = 4
# Operations one Session message carries at most: the most a server takes in one (256,
# whatever its max_batch; past it each is refused), and as many as it holds of one stream
# before it stops reading.
SESSION_PACK = 256
# Bytes of operations one message packs at most, a Session message or a Batch call (a
# bigger lone one goes alone, for the server to take or refuse): the server refuses a
# message over its message size (8 MiB by default), whatever it carries, and past a MiB
# packing saves nothing worth having.
PACK_BYTES = 1 << 20
Ttl = timedelta | float | None
# The operations that only read; a Batch with any other needs the `write` role.
_READS = frozenset({"get", "hash_get"})


@dataclass(frozen=True)
class Operation(Generic[T]):
    """One operation: its message, how its result decodes, whether a repeat is harmless."""

    message: pb.BatchOperation
    decode: Callable[[pb.BatchResult], T]
    idempotent: bool

    @property
    def reads(self) -> bool:
        """True for an operation that only reads (a Batch of them needs only `read`)."""
        return self.message.WhichOneof("operation") in _READS

    def outcome(self, result: pb.BatchResult) -> T:
        """What the unary wrapper would answer; raises what it would raise."""
        status = result.status
        if status.code:
            raise from_operation_status(
                status.code, status.message, status.reason, dict(status.metadata)
            )
        return self.decode(result)


@dataclass(frozen=True)
class OperationResult(Generic[T]):
    """The result of one operation of a Batch: `error` is what the unary call would have
    raised (None on success); `value` is what it would have answered, and raises `error`
    when the operation failed. `ok` tells them apart."""

    error: CachetError | None
    _value: T | None = None

    @property
    def ok(self) -> bool:
        """True when the operation succeeded."""
        return self.error is None

    @property
    def value(self) -> T:
        """The operation's answer; raises its error when it failed."""
        if self.error is not None:
            raise self.error
        return self._value  # type: ignore[return-value]


def _result(operation: Operation[T], result: pb.BatchResult) -> OperationResult[T]:
    try:
        return OperationResult(None, operation.outcome(result))
    except CachetError as error:
        return OperationResult(error)


class Operating(Service[F]):
    """Builds operations as the unary wrappers of the same name build their requests."""

    def _get(self, key: str) -> Operation[Value | None]:
        from ._cache import Value  # the cache module imports this one

        def decode(result: pb.BatchResult) -> Value | None:
            reply = result.get
            return Value(reply.value, reply.version, self._serializer) if reply.found else None

        return Operation(pb.BatchOperation(get=pb.GetRequest(key=key)), decode, True)

    def _set(
        self,
        key: str,
        value: Any,
        ttl: Ttl,
        condition: Condition | None,
        if_version: int | None,
        fencing_token: int | None,
        keep_ttl: bool,
    ) -> Operation[int]:
        from ._cache import _CONDITIONS

        request = pb.SetRequest(
            key=key,
            value=self._encode(value),
            ttl=duration(ttl),
            keep_ttl=keep_ttl,
            condition=_CONDITIONS[condition],
            if_version=if_version,
            fencing_token=fencing_token,
        )
        conditional = condition is not None or if_version is not None
        return Operation(
            pb.BatchOperation(set=request), lambda result: result.set.version, not conditional
        )

    def _delete(self, keys: Sequence[str]) -> Operation[int]:
        return Operation(
            pb.BatchOperation(delete=pb.DeleteRequest(keys=keys)),
            lambda result: result.delete.deleted,
            True,
        )

    def _increment(self, key: str, by: int, ttl: Ttl) -> Operation[int]:
        request = pb.IncrementRequest(key=key, by_int=by, ttl=duration(ttl))
        idempotent = self._deduplicated(request)
        return Operation(
            pb.BatchOperation(increment=request),
            lambda result: result.increment.int_value,
            idempotent,
        )

    def _increment_float(self, key: str, by: float, ttl: Ttl) -> Operation[float]:
        request = pb.IncrementRequest(key=key, by_float=by, ttl=duration(ttl))
        idempotent = self._deduplicated(request)
        return Operation(
            pb.BatchOperation(increment=request),
            lambda result: result.increment.float_value,
            idempotent,
        )

    def _expire(self, key: str, ttl: timedelta | float) -> Operation[bool]:
        return Operation(
            pb.BatchOperation(expire=pb.ExpireRequest(key=key, ttl=duration(ttl))),
            lambda result: result.expire.found,
            True,
        )

    def _hash_get(self, key: str, fields: Sequence[str]) -> Operation[dict[str, Any]]:
        def decode(result: pb.BatchResult) -> dict[str, Any]:
            return {f.field: self._decode(f.value) for f in result.hash_get.fields if f.found}

        return Operation(
            pb.BatchOperation(hash_get=pb.HashGetRequest(key=key, fields=fields)), decode, True
        )

    def _hash_set(
        self,
        key: str,
        fields: Mapping[str, Any],
        if_absent: bool,
        ttl: Ttl,
        refresh_ttl: bool,
    ) -> Operation[int]:
        from ._cache import _collection_ttl

        request = pb.HashSetRequest(
            key=key,
            fields=[pb.HashField(field=f, value=self._encode(v)) for f, v in fields.items()],
            if_absent=if_absent,
            ttl=_collection_ttl(ttl, refresh_ttl),
        )
        return Operation(
            pb.BatchOperation(hash_set=request), lambda result: result.hash_set.added, not if_absent
        )

    def _batch_steps(
        self, operations: Sequence[Operation[Any]], max_batch: int
    ) -> Steps[list[pb.BatchResult]]:
        """Batch calls for `operations` (at most `max_batch` and PACK_BYTES per call),
        sent at once; their results in order. Retried as a unary call is when every
        operation may be."""
        if not operations:
            return []
        chunks = _chunks(operations, max_batch)
        calls = [
            self._call(
                BATCH,
                pb.BatchRequest(operations=[op.message for op in chunk]),
                idempotent=all(op.idempotent for op in chunk),
            )
            for chunk in chunks
        ]
        if len(calls) == 1:
            replies: list[pb.BatchResponse] = [(yield from calls[0])]
        else:
            replies = yield Parallel(calls)
        return [result for reply in replies for result in reply.results]


def _chunks(operations: Sequence[Operation[Any]], max_batch: int) -> list[Sequence[Operation[Any]]]:
    """`operations` in order, cut into the runs one Batch call carries: at most
    `max_batch` operations and PACK_BYTES of them (a bigger one alone), so a batch of big
    values is not one request over the server's message size that fails as a whole."""
    chunks: list[Sequence[Operation[Any]]] = []
    start = size = 0
    for end, operation in enumerate(operations):
        bytes_ = operation.message.ByteSize()
        size += bytes_
        if end > start and (end - start == max_batch or size > PACK_BYTES):
            chunks.append(operations[start:end])
            start, size = end, bytes_
    chunks.append(operations[start:])
    return chunks


class Batch(Operating[F]):
    """Independent operations sent together: build with `client.cache.batch()`, add
    operations (each method answers the batch, so calls chain), then `execute()`:

        batch = client.cache.batch().get("user:1").increment("visits").delete("old")
        user, visits, deleted = await batch.execute()  # OperationResults, in order
        print(user.value, visits.value)  # .value raises the operation's error

    It is a pipeline, not a transaction (that is `txn`): each operation applies on its
    own, and one failing leaves the others. Operations take the arguments of the unary
    methods of the same name (a set takes no tags: the server refuses them in a batch).
    """

    def __init__(self, runner: Runner, serializer: Serializer, max_batch: int = MAX_BATCH):
        super().__init__(runner, serializer)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._max_batch = max_batch
        self._operations: list[Operation[Any]] = []

    def __len__(self) -> int:
        return len(self._operations)

    def get(self, key: str) -> Batch[F]:
        """Read `key`: its Value, or None when missing."""
        self._operations.append(self._get(key))
        return self

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl = None,
        condition: Condition | None = None,
        if_version: int | None = None,
        fencing_token: int | None = None,
        keep_ttl: bool = False,
    ) -> Batch[F]:
        """Write `key`, as `cache.set` (without tags); answers the new version."""
        self._operations.append(
            self._set(key, value, ttl, condition, if_version, fencing_token, keep_ttl)
        )
        return self

    def delete(self, *keys: str) -> Batch[F]:
        """Delete keys; answers how many existed."""
        self._operations.append(self._delete(keys))
        return self

    def increment(self, key: str, by: int = 1, *, ttl: Ttl = None) -> Batch[F]:
        """Add `by` to the integer at `key`; answers the result."""
        self._operations.append(self._increment(key, by, ttl))
        return self

    def increment_float(self, key: str, by: float, *, ttl: Ttl = None) -> Batch[F]:
        """Add `by` to the number at `key`; answers the result."""
        self._operations.append(self._increment_float(key, by, ttl))
        return self

    def expire(self, key: str, ttl: timedelta | float) -> Batch[F]:
        """Give `key` a new TTL; answers False when it does not exist."""
        self._operations.append(self._expire(key, ttl))
        return self

    def hash_get(self, key: str, *fields: str) -> Batch[F]:
        """Read fields of a hash: a dict of those that exist, decoded."""
        self._operations.append(self._hash_get(key, fields))
        return self

    def hash_set(
        self,
        key: str,
        fields: Mapping[str, Any],
        *,
        if_absent: bool = False,
        ttl: Ttl = None,
        refresh_ttl: bool = False,
    ) -> Batch[F]:
        """Set fields of the hash at `key`; answers how many were new."""
        self._operations.append(self._hash_set(key, fields, if_absent, ttl, refresh_ttl))
        return self

    @procedure
    def execute(self) -> Steps[list[OperationResult[Any]]]:
        """Send the operations (one Batch call per `max_batch` of them or a MiB, all at
        once) and answer one OperationResult per operation, in order. Raises only when a
        call itself fails (UNAVAILABLE, a deadline, ...), as a unary call does."""
        operations = list(self._operations)
        results = yield from self._batch_steps(operations, self._max_batch)
        return [_result(op, r) for op, r in zip(operations, results, strict=True)]


class _Transport(Protocol):
    """Where a Session or a Batcher sends one operation: `submit` answers its
    BatchResult (an awaitable of it on the async client)."""

    def submit(self, operation: Operation[Any]) -> Any: ...

    def close(self) -> Any: ...


class _OneByOne(Operating[F]):
    """Operations as calls of their own, through a transport (a Session, a Batcher),
    with the signatures of the unary wrappers of the same name."""

    def __init__(self, runner: Runner, serializer: Serializer, transport: _Transport) -> None:
        super().__init__(runner, serializer)
        self._transport = transport

    def _one(self, operation: Operation[T]) -> Steps[T]:
        result = yield Invoke(functools.partial(self._transport.submit, operation))
        return operation.outcome(result)

    @procedure
    def get(self, key: str) -> Steps[Value | None]:
        """Read `key`: its Value, or None when missing."""
        return (yield from self._one(self._get(key)))

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
        keep_ttl: bool = False,
    ) -> Steps[int]:
        """Write `key`, as `cache.set` (without tags); answers the new version."""
        operation = self._set(key, value, ttl, condition, if_version, fencing_token, keep_ttl)
        return (yield from self._one(operation))

    @procedure
    def delete(self, *keys: str) -> Steps[int]:
        """Delete keys; answers how many existed."""
        return (yield from self._one(self._delete(keys)))

    @procedure
    def increment(self, key: str, by: int = 1, *, ttl: Ttl = None) -> Steps[int]:
        """Add `by` to the integer at `key` (created at 0 with `ttl`); answers the result."""
        return (yield from self._one(self._increment(key, by, ttl)))

    @procedure
    def increment_float(self, key: str, by: float, *, ttl: Ttl = None) -> Steps[float]:
        """Add `by` to the number at `key` (created at 0 with `ttl`); answers the result."""
        return (yield from self._one(self._increment_float(key, by, ttl)))

    @procedure
    def expire(self, key: str, ttl: timedelta | float) -> Steps[bool]:
        """Give `key` a new TTL; False when it does not exist."""
        return (yield from self._one(self._expire(key, ttl)))

    @procedure
    def hash_get(self, key: str, *fields: str) -> Steps[dict[str, Any]]:
        """Read fields of a hash: a dict of those that exist, decoded."""
        return (yield from self._one(self._hash_get(key, fields)))

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
        return (yield from self._one(self._hash_set(key, fields, if_absent, ttl, refresh_ttl)))

    @procedure
    def close(self) -> Steps[None]:
        """Finish: wait for the calls in flight (a Session half-closes its stream and
        waits for the answers due; it takes no calls after)."""
        yield Invoke(self._transport.close)


def _deadline_exceeded(seconds: float | None) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"no answer on the session within {seconds:.3g} s",
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _stream_ended() -> Unavailable:
    return Unavailable(
        "the session stream ended before this operation was answered",
        code=grpc.StatusCode.UNAVAILABLE,
    )


def _closed() -> RuntimeError:
    return RuntimeError("the session is closed")


# An operation waiting to be sent on a Session stream, with its id; None ends the stream.
_Queued = tuple[int, pb.BatchOperation]


class _Packing:
    """The next message of a stream: `first` and what else is queued (`take` until it
    raises `empty`), at most SESSION_PACK operations and PACK_BYTES, leaving out
    those whose caller gave up while they were queued (`waiting` says it still waits):
    a set or an increment nobody waits for must not run after its caller was told it
    failed. `request` is None when none is left. An operation taken that would not fit
    is `carried` to lead the next message; `ending` when the end of the stream was
    queued among them (the message is then the last; nothing is carried then, as the
    end is taken only after what fitted). A lone operation goes in `id` and
    `operation`, as a server that predates packing reads it."""

    def __init__(
        self,
        first: _Queued,
        take: Callable[[], _Queued | None],
        empty: type[Exception],
        waiting: Callable[[int], bool],
    ) -> None:
        taken = [first] if waiting(first[0]) else []
        size = first[1].ByteSize() if taken else 0
        self.carried: _Queued | None = None
        self.ending = False
        while len(taken) < SESSION_PACK:
            try:
                queued = take()
            except empty:
                break
            if queued is None:
                self.ending = True
                break
            if not waiting(queued[0]):
                continue
            size += queued[1].ByteSize()
            if taken and size > PACK_BYTES:
                self.carried = queued
                break
            taken.append(queued)
        self.request: pb.SessionRequest | None = None
        if len(taken) == 1:
            self.request = pb.SessionRequest(id=taken[0][0], operation=taken[0][1])
        elif taken:
            self.request = pb.SessionRequest()
            for request_id, operation in taken:
                self.request.operations.add(id=request_id, operation=operation)


def _answers(response: pb.SessionResponse) -> list[tuple[int, pb.BatchResult]]:
    """The (id, result) pairs a message answers: packed ones, or the one of its own."""
    answers = [(answer.id, answer.result) for answer in response.answers]
    if not answers or response.HasField("result"):
        answers.append((response.id, response.result))
    return answers


# -- Session on the asyncio client ---------------------------------------------------


class _AsyncStream:
    """One open Session stream: requests are fed from a queue; a reader task resolves
    the pending futures by id and, when the stream ends, fails those left."""

    def __init__(self, runner: AsyncRunner, metadata: list[tuple[str, str]]) -> None:
        self.requests: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[pb.BatchResult]] = {}
        self.broken = False
        self.call = runner.channels.plain.stream_stream(
            SESSION_PATH,
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionResponse.FromString,
        )(self._feed(), metadata=metadata)
        self.reader = asyncio.create_task(self._read())

    async def _feed(self) -> Any:
        """One message per write: grpc asks for the next only when the previous one is
        written, so what was queued meanwhile (or in the same loop turn) goes packed."""
        requests = self.requests
        carried: _Queued | None = None
        while (first := carried or await requests.get()) is not None:
            packing = _Packing(first, requests.get_nowait, asyncio.QueueEmpty, self._waiting)
            if packing.request is not None:
                yield packing.request
            if packing.ending:
                return
            carried = packing.carried

    def _waiting(self, request_id: int) -> bool:
        """Whether the caller of `request_id` still waits: a deadline or a cancel
        cancels the future it awaits at once, before its task runs again."""
        future = self.pending.get(request_id)
        return future is not None and not future.done()

    async def _read(self) -> None:
        error: CachetError = _stream_ended()
        try:
            async for response in self.call:
                for request_id, result in _answers(response):
                    future = self.pending.pop(request_id, None)
                    if future is not None and not future.done():
                        future.set_result(result)
        except grpc.RpcError as failure:
            error = _from_rpc_error(failure)
        except asyncio.CancelledError:
            error = Cancelled("the session was cancelled", code=grpc.StatusCode.CANCELLED)
            raise
        finally:
            self.broken = True
            self.requests.put_nowait(None)
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()


class AsyncSessionStream:
    """The async Session transport: a stream opened on first use and again after it
    broke; each operation waits for its answer up to the client's deadline."""

    def __init__(self, runner: AsyncRunner) -> None:
        self._runner = runner
        self._ids = itertools.count(1)
        self._stream: _AsyncStream | None = None
        self._closed = False
        self.streams_opened = 0

    async def _live(self) -> _AsyncStream:
        stream = self._stream
        if stream is not None and not stream.broken:
            return stream
        metadata = await self._runner.metadata()
        stream = self._stream  # another task may have opened one meanwhile
        if stream is None or stream.broken:
            stream = self._stream = _AsyncStream(self._runner, metadata)
            self.streams_opened += 1
        return stream

    async def submit(self, operation: Operation[Any]) -> pb.BatchResult:
        if self._closed:
            raise _closed()
        stream = await self._live()
        request_id = next(self._ids)
        future: asyncio.Future[pb.BatchResult] = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = future
        stream.requests.put_nowait((request_id, operation.message))
        deadline = self._runner.settings.deadline(0.0)
        try:
            async with asyncio.timeout(deadline):
                return await future
        except TimeoutError:
            raise _deadline_exceeded(deadline) from None
        finally:
            stream.pending.pop(request_id, None)

    async def close(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.requests.put_nowait(None)  # half-close: the server answers what it has
        done, _ = await asyncio.wait({stream.reader}, timeout=self._runner.settings.deadline(0.0))
        if not done:
            stream.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream.reader


# -- Session on the blocking client --------------------------------------------------


class _SyncStream:
    """One open Session stream on grpc's blocking channel, read by a thread of its own
    (as the sync near-cache reads its stream)."""

    def __init__(self, runner: SyncRunner, metadata: list[tuple[str, str]]) -> None:
        self.lock = threading.Lock()
        self.requests: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self.pending: dict[int, Future[pb.BatchResult]] = {}
        self.broken = False
        self.error: CachetError = _stream_ended()
        self.call = runner.channels.plain.stream_stream(
            SESSION_PATH,
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionResponse.FromString,
        )(self._feed(), metadata=metadata)
        self.reader = threading.Thread(target=self._read, name="cachet-session", daemon=True)
        self.reader.start()

    def _feed(self) -> Iterator[pb.SessionRequest]:
        """One message per write: grpc's request thread asks for the next only when the
        previous one is written, so what other threads queued meanwhile goes packed."""
        requests = self.requests
        carried: _Queued | None = None
        while (first := carried or requests.get()) is not None:
            packing = _Packing(first, requests.get_nowait, queue.Empty, self._waiting)
            if packing.request is not None:
                yield packing.request
            if packing.ending:
                return
            carried = packing.carried

    def _waiting(self, request_id: int) -> bool:
        """Whether the caller of `request_id` still waits: one past its deadline takes
        it out of `pending` (a lookup is safe from any thread; the lock orders updates)."""
        return request_id in self.pending

    def add(self, request_id: int, future: Future[pb.BatchResult]) -> bool:
        with self.lock:
            if self.broken:
                return False
            self.pending[request_id] = future
            return True

    def _read(self) -> None:
        error = self.error
        try:
            for response in self.call:
                answers = _answers(response)
                with self.lock:
                    futures = [
                        (self.pending.pop(request_id, None), result)
                        for request_id, result in answers
                    ]
                for future, result in futures:
                    if future is not None and not future.done():
                        future.set_result(result)
        except grpc.RpcError as failure:
            error = _from_rpc_error(failure)
        finally:
            with self.lock:
                self.broken, self.error = True, error
                failed, self.pending = list(self.pending.values()), {}
            self.requests.put(None)  # lets grpc's request thread finish
            for future in failed:
                if not future.done():
                    future.set_exception(error)


class SyncSessionStream:
    """The sync Session transport, safe to share between threads."""

    def __init__(self, runner: SyncRunner) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stream: _SyncStream | None = None
        self._closed = False
        self.streams_opened = 0

    def _live(self) -> _SyncStream:
        with self._lock:
            if self._closed:
                raise _closed()
            if self._stream is None or self._stream.broken:
                self._stream = _SyncStream(self._runner, self._runner.metadata())
                self.streams_opened += 1
            return self._stream

    def submit(self, operation: Operation[Any]) -> pb.BatchResult:
        future: Future[pb.BatchResult] = Future()
        request_id = next(self._ids)
        stream = self._live()
        if not stream.add(request_id, future):  # it broke meanwhile: one more stream
            stream = self._live()
            if not stream.add(request_id, future):
                raise stream.error
        stream.requests.put((request_id, operation.message))
        deadline = self._runner.settings.deadline(0.0)
        try:
            return future.result(timeout=deadline)
        except FutureTimeout:
            raise _deadline_exceeded(deadline) from None
        finally:
            with stream.lock:
                stream.pending.pop(request_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.requests.put(None)  # half-close: the server answers what it has
        stream.reader.join(timeout=self._runner.settings.deadline(0.0))
        if stream.reader.is_alive():
            stream.call.cancel()
            stream.reader.join(timeout=5)


class Session(_OneByOne[F]):
    """One CacheService/Session stream: the operations of `Batch`, each a call of its
    own (with the unary method's signature) answered as soon as the server has it, many
    in flight at once; those waiting while the stream's previous message is written go
    out together in one (up to SESSION_PACK), so a busy stream pays one message for
    many operations and a lone call goes out at once. The stream opens on first use;
    when it breaks (server gone, cancelled), the calls waiting fail with the mapped
    error (Unavailable, ...) and the next call opens a new one. Each call waits up to
    the client's default deadline (DeadlineExceeded: that call only); one that gives up
    (deadline, or its task cancelled) before its message is written is never sent, and
    one already sent may still apply. `close()` half-closes and waits for the answers
    due; use the session as a context manager."""


class AsyncSession(Session[Async]):
    """A Session on the asyncio client: `async with client.cache.session() as s:`."""

    @property
    def streams_opened(self) -> int:
        """How many streams this session has opened (one, unless one broke)."""
        transport: Any = self._transport
        return int(transport.streams_opened)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SyncSession(Session[Sync]):
    """A Session on the blocking client (one reader thread per stream), safe to share
    between threads: `with client.cache.session() as s:`."""

    @property
    def streams_opened(self) -> int:
        """How many streams this session has opened (one, unless one broke)."""
        transport: Any = self._transport
        return int(transport.streams_opened)

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the auto-batcher ----------------------------------------------------------------

_Send = Callable[[Sequence[Operation[Any]]], Any]
Queued = TypeVar("Queued", bound=tuple[Operation[Any], Any])


def _next_batch(queued: list[Queued], max_batch: int) -> tuple[list[Queued], list[Queued]]:
    """The next batch of the queue and what stays queued: up to `max_batch` operations
    and PACK_BYTES (the head alone, if bigger) of the head's kind, oldest first, reads
    apart from writes, so a credential that may only read has its reads answered
    whatever other callers write (a Batch with a write needs the `write` role as a
    whole)."""
    reads = queued[0][0].reads
    taken: list[Queued] = []
    rest: list[Queued] = []
    size = 0
    full = False
    for item in queued:
        if item[0].reads == reads and not full:
            size += item[0].message.ByteSize()
            full = bool(taken) and (len(taken) == max_batch or size > PACK_BYTES)
            if not full:
                taken.append(item)
                continue
        rest.append(item)
    return taken, rest


class AsyncCoalescer:
    """The async batcher's transport. Calls made in one event-loop turn are gathered
    (the flush runs with `call_soon`); a flush sends what is queued while fewer than
    `max_in_flight` batches are in flight, and each batch that returns flushes again."""

    def __init__(self, send: _Send, max_in_flight: int, max_batch: int) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[Operation[Any], asyncio.Future[pb.BatchResult]]] = []
        self._in_flight = 0
        self._flush_due = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, operation: Operation[Any]) -> pb.BatchResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.BatchResult] = loop.create_future()
        self._queue.append((operation, future))
        if not self._flush_due and self._in_flight < self._max_in_flight:
            self._flush_due = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_due = False
        while self._queue and self._in_flight < self._max_in_flight:
            taken, self._queue = _next_batch(self._queue, self._max_batch)
            taken = [(op, future) for op, future in taken if not future.done()]  # cancelled
            if taken:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._batch(taken))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _batch(
        self, taken: list[tuple[Operation[Any], asyncio.Future[pb.BatchResult]]]
    ) -> None:
        try:
            results = await self._send([op for op, _ in taken])
        except asyncio.CancelledError:  # the loop is going away: so are its callers
            for _, future in taken:
                future.cancel()
            raise
        except Exception as error:  # the call failed: every caller of it gets the error
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), result in zip(taken, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._flush()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SyncCoalescer:
    """The sync batcher's transport. A caller that finds fewer than `max_in_flight`
    batches in flight sends the queue (its own call with whatever waits) itself; one
    that does not waits, and when a batch returns a waiting caller sends the queue."""

    def __init__(self, send: _Send, max_in_flight: int, max_batch: int) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[Operation[Any], Future[pb.BatchResult]]] = []
        self._in_flight = 0
        self._changed = threading.Condition()

    def submit(self, operation: Operation[Any]) -> pb.BatchResult:
        future: Future[pb.BatchResult] = Future()
        with self._changed:
            self._queue.append((operation, future))
        while True:
            with self._changed:
                while not future.done() and not (
                    self._queue and self._in_flight < self._max_in_flight
                ):
                    self._changed.wait()
                if future.done():
                    return future.result()
                taken, self._queue = _next_batch(self._queue, self._max_batch)
                self._in_flight += 1
            try:
                self._batch(taken)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()

    def _batch(self, taken: list[tuple[Operation[Any], Future[pb.BatchResult]]]) -> None:
        try:
            results = self._send([op for op, _ in taken])
        except BaseException as error:  # the call failed: every caller of it gets the error
            for _, future in taken:
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt and the like go on in the sending thread
        else:
            for (_, future), result in zip(taken, results, strict=True):
                future.set_result(result)

    def close(self) -> None:
        return None


class Batcher(_OneByOne[F]):
    """The operations of `Batch` as calls of their own (the unary methods' signatures),
    safe to call concurrently, coalesced adaptively into Batch calls: a call made while
    fewer than `max_in_flight` batches are in flight goes out at once (a lone caller
    waits for nothing); calls made while the limit is reached queue, and go out together
    (up to `max_batch` and a MiB per Batch) when a batch returns. On the asyncio client
    the calls of one event-loop turn also go out together, so `asyncio.gather` of 50
    gets is one Batch. Reads and writes go in Batches apart (one with a write needs the
    `write` role as a whole). Each caller gets its own answer or its own error."""

    def __init__(
        self,
        runner: Runner,
        serializer: Serializer,
        *,
        coalescer: type[AsyncCoalescer] | type[SyncCoalescer],
        max_in_flight: int = MAX_IN_FLIGHT,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")

        def send(operations: Sequence[Operation[Any]]) -> Any:
            return runner.run(self._batch_steps(operations, max_batch))

        super().__init__(runner, serializer, coalescer(send, max_in_flight, max_batch))


__all__ = [
    "MAX_BATCH",
    "MAX_IN_FLIGHT",
    "AsyncSession",
    "Batch",
    "Batcher",
    "Operation",
    "OperationResult",
    "Session",
    "SyncSession",
]
