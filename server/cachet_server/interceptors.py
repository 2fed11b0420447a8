"""The boundary where every call's failure becomes a gRPC status (see errors.py),
and where a unary call's work is bounded by the call's deadline."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from .errors import CachetError, Unimplemented, domain_error, rpc_status_for

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]


async def abort_with(context: Context, method: str, exc: BaseException) -> None:
    """Abort the call with the status that `exc` maps to (never a traceback)."""
    error: CachetError = domain_error(exc)
    if isinstance(error, Unimplemented):
        error = Unimplemented(f"{method} is not implemented by this cachet server yet")
    status = rpc_status_for(error)
    if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.warning("%s failed: %s", method, error.message)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _bounded_unary(
    method: str, behavior: Callable[[Any, Context], Awaitable[Any]]
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        try:
            remaining = context.time_remaining()
            async with asyncio.timeout(remaining):
                return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, method, exc)

    return handle


def _bounded_stream(
    method: str, behavior: Callable[[Any, Context], AsyncIterator[Any]]
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, method, exc)

    return handle


def _bounded_coroutine_stream(
    method: str, behavior: Callable[[Any, Context], Awaitable[Any]]
) -> Callable[[Any, Context], Awaitable[Any]]:
    """Streaming handlers written with context.write() instead of yield."""

    async def handle(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, method, exc)

    return handle


class ErrorMappingInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler: exceptions -> one status mapping; unary calls -> deadline."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc's typing describes sync handlers; under grpc.aio every behavior is async.
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _bounded_unary(method, handler.unary_unary), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _bounded_unary(method, handler.stream_unary), **codec
            )
        streaming = handler.unary_stream or handler.stream_stream
        wrapped = (
            _bounded_stream(method, streaming)
            if inspect.isasyncgenfunction(streaming)
            else _bounded_coroutine_stream(method, streaming)
        )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
        return grpc.stream_stream_rpc_method_handler(wrapped, **codec)
