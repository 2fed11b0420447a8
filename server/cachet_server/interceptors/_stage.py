"""What every interceptor of the corridor shares: a stage is an async context manager
around a call's handler, and the wrapped handler is built once per method."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc import aio

from ..errors import InvalidArgument, rpc_status_for

Context = aio.ServicerContext[Any, Any]

# A stage's work around one call: entered before the handler runs (it may refuse the call
# by raising or aborting), left when the handler ends. `request` is the request message of
# a unary-request call, None for a request stream.
Around = Callable[[Any, Context], AbstractAsyncContextManager[None]]


class StageInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """An interceptor that wraps each method's handler with `around(method)` once and
    serves every later call of that method from the cached wrapper."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}

    def around(self, method: str, *, response_streaming: bool) -> Around | None:
        """The stage for `method`; None leaves its handler as it is."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        # Unknown methods are not cached: a caller could otherwise grow the table at will.
        if handler is None:
            return None
        around = self.around(
            method, response_streaming=bool(handler.unary_stream or handler.stream_stream)
        )
        if around is None and getattr(handler.request_deserializer, "cachet_tolerant", False):
            # An inner stage already guards the body; nothing to add.
            wrapped = handler
        else:
            wrapped = wrap_handler(handler, around)
        self._handlers[method] = wrapped
        return wrapped


class _Malformed:
    """Stands in for a unary request whose body did not parse: grpc deserializes it
    before any handler code runs, and a deserializer that raises there makes grpc answer
    UNKNOWN with the exception's text and log a traceback. The outermost stage answers
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
    if deserializer is None or getattr(deserializer, "cachet_tolerant", False):
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

    deserialize.cachet_tolerant = True  # type: ignore[attr-defined]
    return deserialize


async def _refuse_malformed(request: _Malformed, context: Context) -> None:
    status = rpc_status_for(request.error())
    await context.abort(status.code, status.details, status.trailing_metadata)


def wrap_handler(handler: Any, around: Around | None) -> Any:
    """`handler` (a grpc RpcMethodHandler of any of the four kinds) with `around` entered
    before its behavior runs and left after it ends (None: no stage, only the request
    body guard)."""
    streamed = bool(handler.stream_unary or handler.stream_stream)
    codec = {
        "request_deserializer": _tolerant(handler.request_deserializer, streamed=streamed),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _coroutine(handler.unary_unary, around, unary_request=True), **codec
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _coroutine(handler.stream_unary, around, unary_request=False), **codec
        )
    streaming = handler.unary_stream or handler.stream_stream
    unary_request = bool(handler.unary_stream)
    # Streaming handlers come in two styles: async generators, and coroutines that call
    # context.write(); grpc.aio tells them apart by type, so the wrapper keeps the style.
    wrapped = (
        _generator(streaming, around, unary_request=unary_request)
        if inspect.isasyncgenfunction(streaming)
        else _coroutine(streaming, around, unary_request=unary_request)
    )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
    return grpc.stream_stream_rpc_method_handler(wrapped, **codec)


def _coroutine(
    behavior: Callable[[Any, Context], Awaitable[Any]],
    around: Around | None,
    *,
    unary_request: bool,
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        if isinstance(request, _Malformed):
            return await _refuse_malformed(request, context)
        if around is None:
            return await behavior(request, context)
        async with around(request if unary_request else None, context):
            return await behavior(request, context)

    return handle


def _generator(
    behavior: Callable[[Any, Context], AsyncIterator[Any]],
    around: Around | None,
    *,
    unary_request: bool,
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            await _refuse_malformed(request, context)
            return
        if around is None:
            async for response in behavior(request, context):
                yield response
            return
        async with around(request if unary_request else None, context):
            async for response in behavior(request, context):
                yield response

    return handle
