"""The boundary where every call's failure becomes a gRPC status (see errors.py),
where a unary call's work is bounded by the call's deadline, and where every call
is counted."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace

from .backend.keys import NAMESPACE_PATTERN
from .errors import CachetError, Unimplemented, domain_error, rpc_status_for
from .stats import ServiceStats
from .telemetry import start_rpc_span
from .validation import DEFAULT_NAMESPACE, NAMESPACE_METADATA

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]


# Statuses that describe the caller's request, not a server fault: spans stay unset.
_CALLER_FAULTS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


class _CallRecord:
    """Times one call and counts it, with its outcome, when it ends."""

    def __init__(self, stats: ServiceStats, method: str, context: Context) -> None:
        self.stats = stats
        self.method = method
        self.started = time.monotonic()
        metadata = {
            name: value
            for name, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        }
        namespace = metadata.get(NAMESPACE_METADATA, DEFAULT_NAMESPACE)
        # Health checks and reflection are not traffic of any namespace.
        if not method.startswith("/grpc.") and NAMESPACE_PATTERN.match(namespace):
            stats.record_namespace_call(namespace)
        self.span = start_rpc_span(method, namespace, metadata)

    def finish(self, code: grpc.StatusCode | None) -> None:
        self.stats.record_call(
            self.method, code.name if code else None, time.monotonic() - self.started
        )
        final = code or grpc.StatusCode.OK
        self.span.set_attribute("rpc.grpc.status_code", final.value[0])
        if final not in _CALLER_FAULTS and final is not grpc.StatusCode.OK:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, final.name))
        self.span.end()

    @contextlib.asynccontextmanager
    async def outcome(self, context: Context) -> AsyncIterator[None]:
        """Count the call when it ends, and turn any failure into its gRPC status."""
        try:
            yield
        except aio.AbortError:
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self.finish(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await self.fail(context, exc)
        else:
            self.finish(None)

    async def fail(self, context: Context, exc: BaseException) -> None:
        """Abort the call with the status that `exc` maps to (never a traceback)."""
        error: CachetError = domain_error(exc)
        if isinstance(error, Unimplemented):
            error = Unimplemented(f"{self.method} is not implemented by this cachet server yet")
        status = rpc_status_for(error)
        if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.warning("%s failed: %s", self.method, error.message)
        self.span.set_attribute("cachet.error.reason", error.reason)
        self.finish(error.code)
        await context.abort(status.code, status.details, status.trailing_metadata)


def _bounded_unary(
    stats: ServiceStats, method: str, behavior: Callable[[Any, Context], Awaitable[Any]]
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        record = _CallRecord(stats, method, context)
        async with record.outcome(context), asyncio.timeout(context.time_remaining()):
            return await behavior(request, context)

    return handle


def _bounded_stream(
    stats: ServiceStats, method: str, behavior: Callable[[Any, Context], AsyncIterator[Any]]
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        record = _CallRecord(stats, method, context)
        async with record.outcome(context):
            async for response in behavior(request, context):
                yield response

    return handle


def _bounded_coroutine_stream(
    stats: ServiceStats, method: str, behavior: Callable[[Any, Context], Awaitable[Any]]
) -> Callable[[Any, Context], Awaitable[Any]]:
    """Streaming handlers written with context.write() instead of yield."""

    async def handle(request: Any, context: Context) -> Any:
        record = _CallRecord(stats, method, context)
        async with record.outcome(context):
            return await behavior(request, context)

    return handle


class ErrorMappingInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler: exceptions -> one status mapping; unary calls -> deadline;
    every call counted in the ServiceStats."""

    def __init__(self, stats: ServiceStats) -> None:
        self.stats = stats

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
                _bounded_unary(self.stats, method, handler.unary_unary), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _bounded_unary(self.stats, method, handler.stream_unary), **codec
            )
        streaming = handler.unary_stream or handler.stream_stream
        wrapped = (
            _bounded_stream(self.stats, method, streaming)
            if inspect.isasyncgenfunction(streaming)
            else _bounded_coroutine_stream(self.stats, method, streaming)
        )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
        return grpc.stream_stream_rpc_method_handler(wrapped, **codec)
