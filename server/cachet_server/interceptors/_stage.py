"""What the stages of the corridor share, and the server's one generic handler that runs
them.

A stage is a plain object built once per method (`StageFactory.stage_for`): `enter` runs
before the handler and may refuse the call by raising a CachetError; `leave` runs after
the handler ends, told the exception that ended the call (None: it succeeded). The
innermost stage, errors, is the `Invoker`: it runs the handler itself, so it can bound
it by the deadline and turn what it raises into a status.

Why not one grpc interceptor per stage, each an async context manager: grpc.aio awaits
interceptors one by one, and each async context manager is an async generator (loop
hooks, a weak set entry, two awaits) per call. Why not even one interceptor: grpc.aio
runs an interceptor per call as two coroutines and a continuation (a partial); a generic
handler is one plain method call. So the corridor is the server's one generic handler,
the services are registered behind it, and each method's wrapped handler, built once,
does per call only what the stages themselves need.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

import grpc
from grpc import aio

from ..backend.multiplex import serving
from ..errors import CachetError, InvalidArgument, rpc_status_for

Context = aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


class Stage(Protocol):
    """One stage's work around the calls of one method. `request` is the request
    message of a unary-request call, None for a request stream."""

    def enter(self, request: Any, context: Context) -> Any:
        """Admit the call (raise a CachetError to refuse it); the result is handed to
        `leave`."""
        ...

    def leave(self, entered: Any, error: BaseException | None) -> None: ...


class StageFactory(Protocol):
    def stage_for(self, method: str, *, response_streaming: bool) -> Stage | None:
        """The stage for `method`; None: this stage does nothing for it."""
        ...


class Invoker(Protocol):
    """Runs the handler: the innermost stage."""

    def unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior: ...

    def streaming(self, method: str, behavior: StreamBehavior) -> StreamBehavior: ...

    def writing(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        """A streaming handler that answers through context.write()."""
        ...


# The metadata of the call this task serves, as grpc.aio handed it to the corridor's
# handler lookup (Corridor.service).
_arrived: ContextVar[Iterable[tuple[str, Any]] | None] = ContextVar("cachet_metadata", default=None)
# The call's metadata as its handler lookup saw it; None for a handler run without one
# (a test driving a wrapped handler directly): then ask the context. grpc.aio builds the
# tuple anew (every entry decoded) on each `context.invocation_metadata()`, and it
# already built one for the lookup. Every RPC is a task of its own and looks its handler
# up once, so what this task's lookup saw is this call's.
arrived_metadata: Callable[[], Iterable[tuple[str, Any]] | None] = _arrived.get


async def abort_with(context: Context, error: CachetError) -> None:
    """End the call with `error`'s status and google.rpc details (raises AbortError)."""
    status = rpc_status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


class Corridor(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The server's one generic handler, in front of every service: each method's
    handler is wrapped once with the stages that apply to it, outermost first, and later
    calls are served from the cached wrapper.

    Services register on it as on a server (the generated `add_*_to_server` functions
    take it as their server), and it is the one generic handler of the server.
    Only their generic handlers are kept, not their per-method registrations: grpc.aio's
    serving loop keeps one pending request future per registered method and, for every
    call that arrives, runs asyncio.wait over all of them (a set of ~100 futures, a
    coroutine check and a done callback added and removed on each), about a tenth of a
    Get's CPU; served through generic handlers, every call waits on one future."""

    def __init__(self, stages: Sequence[StageFactory], invoker: Invoker) -> None:
        self.stages = tuple(stages)
        self.invoker = invoker
        self._services: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._services.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """The generic handler added just before serves these methods."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        # grpc.aio looks the handler up in the call's own task, just before running it:
        # what it built the lookup with is the call's metadata (see arrived_metadata).
        _arrived.set(handler_call_details.invocation_metadata)
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        for service in self._services:
            handler = service.service(handler_call_details)
            if handler is not None:
                break
        else:
            # Unknown methods are not cached: a caller could otherwise grow the table at
            # will. gRPC answers UNIMPLEMENTED.
            return None
        wrapped = self._handlers[method] = self.wrap(method, handler)
        return wrapped

    def wrap(self, method: str, handler: Any) -> Any:
        """`handler` (a grpc RpcMethodHandler of any of the four kinds) run through the
        stages that apply to `method` and the invoker."""
        response_streaming = bool(handler.unary_stream or handler.stream_stream)
        stages = tuple(
            stage
            for factory in self.stages
            if (stage := factory.stage_for(method, response_streaming=response_streaming))
            is not None
        )
        streamed = bool(handler.stream_unary or handler.stream_stream)
        codec = {
            "request_deserializer": _tolerant(handler.request_deserializer, streamed=streamed),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            behavior = self.invoker.unary(method, handler.unary_unary)
            return grpc.unary_unary_rpc_method_handler(
                _coroutine(behavior, stages, unary_request=True, counted=True), **codec
            )
        if handler.stream_unary:
            behavior = self.invoker.unary(method, handler.stream_unary)
            return grpc.stream_unary_rpc_method_handler(
                _coroutine(behavior, stages, unary_request=False), **codec
            )
        streaming = handler.unary_stream or handler.stream_stream
        unary_request = bool(handler.unary_stream)
        # Streaming handlers come in two styles: async generators, and coroutines that call
        # context.write(); grpc.aio tells them apart by type, so the wrapper keeps the style.
        if inspect.isasyncgenfunction(streaming):
            wrapped: Any = _generator(
                self.invoker.streaming(method, streaming), stages, unary_request=unary_request
            )
        else:
            wrapped = _coroutine(
                self.invoker.writing(method, streaming), stages, unary_request=unary_request
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
        return grpc.stream_stream_rpc_method_handler(wrapped, **codec)


class _Malformed:
    """Stands in for a unary request whose body did not parse: grpc deserializes it
    before any handler code runs, and a deserializer that raises there makes grpc answer
    UNKNOWN with the exception's text and log a traceback. The corridor answers
    INVALID_ARGUMENT for it instead, before any stage looks at the request."""

    __slots__ = ("message_name",)

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name

    def error(self) -> InvalidArgument:
        return malformed_body(self.message_name)


def malformed_body(message_name: str) -> InvalidArgument:
    return InvalidArgument.field("request", f"is not a valid {message_name} message")


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, *, streamed: bool
) -> Callable[[bytes], Any] | None:
    """`deserializer`, made to never raise out of grpc: a unary body that does not parse
    becomes a `_Malformed`; a streamed one raises InvalidArgument inside the handler's
    read, where the errors stage maps it."""
    if deserializer is None:
        return deserializer
    name = _message_name(deserializer)
    parse = deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception:
            if streamed:
                raise malformed_body(name) from None
            return _Malformed(name)

    return deserialize


def _coroutine(
    behavior: UnaryBehavior,
    stages: tuple[Stage, ...],
    *,
    unary_request: bool,
    counted: bool = False,
) -> UnaryBehavior:
    """`counted`: the call counts in `serving.unary_calls` while it runs, so that the
    multiplexer sends a lone call's command at once instead of gathering a write for
    others (streams, which may stay open for hours, are not counted)."""

    async def handle(request: Any, context: Context) -> Any:
        if isinstance(request, _Malformed):
            return await abort_with(context, request.error())
        seen = request if unary_request else None
        entered: list[Any] = []
        error: BaseException | None = None
        if counted:
            serving.unary_calls += 1
        try:
            for stage in stages:
                entered.append(stage.enter(seen, context))
            return await behavior(request, context)
        except CachetError as refusal:
            # Only a stage's enter raises one: the invoker turns the handler's own into
            # a status.
            error = refusal
            await abort_with(context, refusal)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if counted:
                serving.unary_calls -= 1
            # Leave the stages that were entered, innermost first.
            for index in range(len(entered) - 1, -1, -1):
                stages[index].leave(entered[index], error)

    return handle


def _generator(
    behavior: StreamBehavior, stages: tuple[Stage, ...], *, unary_request: bool
) -> StreamBehavior:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            await abort_with(context, request.error())
            return
        seen = request if unary_request else None
        entered: list[Any] = []
        error: BaseException | None = None
        try:
            for stage in stages:
                entered.append(stage.enter(seen, context))
            async for response in behavior(request, context):
                yield response
        except CachetError as refusal:
            error = refusal
            await abort_with(context, refusal)
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Leave the stages that were entered, innermost first.
            for index in range(len(entered) - 1, -1, -1):
                stages[index].leave(entered[index], error)

    return handle
