"""What every interceptor of the corridor shares: a stage is an async context manager
around a call's handler, and the wrapped handler is built once per method."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc import aio

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
        wrapped = handler if around is None else wrap_handler(handler, around)
        self._handlers[method] = wrapped
        return wrapped


def wrap_handler(handler: Any, around: Around) -> Any:
    """`handler` (a grpc RpcMethodHandler of any of the four kinds) with `around` entered
    before its behavior runs and left after it ends."""
    codec = {
        "request_deserializer": handler.request_deserializer,
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
    behavior: Callable[[Any, Context], Awaitable[Any]], around: Around, *, unary_request: bool
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        async with around(request if unary_request else None, context):
            return await behavior(request, context)

    return handle


def _generator(
    behavior: Callable[[Any, Context], AsyncIterator[Any]], around: Around, *, unary_request: bool
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        async with around(request if unary_request else None, context):
            async for response in behavior(request, context):
                yield response

    return handle
