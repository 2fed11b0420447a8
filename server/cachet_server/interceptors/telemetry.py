"""The telemetry stage: every call that passed auth is counted (ServiceStats, which feeds
the metrics too), traced with its span current while the handler runs, and, for a
sampled share of calls, written to the access log. Health checks and reflection are not
namespace traffic and pass untouched."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from ..callcontext import CallContext, current_call
from ..logs import ACCESS_LOGGER
from ..stats import ServiceStats
from ..telemetry import start_rpc_span, tracing_on
from ._stage import Around, Context, StageInterceptor

access_log = logging.getLogger(ACCESS_LOGGER)

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


class TelemetryInterceptor(StageInterceptor):
    def __init__(self, stats: ServiceStats, access_sample: float = 0.0) -> None:
        super().__init__()
        self.stats = stats
        self.access_sample = access_sample

    def around(self, method: str, *, response_streaming: bool) -> Around | None:
        if method.startswith("/grpc."):
            return None
        stats = self.stats
        sample = self.access_sample

        @contextlib.asynccontextmanager
        async def observe(request: object, context: Context) -> AsyncIterator[None]:
            call = current_call()
            started = time.monotonic()
            stats.record_namespace_call(call.namespace)
            stats.record_call_start(call.method)
            code: grpc.StatusCode | None = None
            if not tracing_on():
                try:
                    yield
                except BaseException:
                    code = call.status or grpc.StatusCode.CANCELLED
                    raise
                finally:
                    seconds = time.monotonic() - started
                    stats.record_call(call.method, code.name if code else None, seconds)
                    if sample and random.random() < sample:
                        _access_line(call, context, code, seconds)
                return
            span = start_rpc_span(method, call.namespace, call.metadata)
            try:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        yield
                    except BaseException:
                        code = call.status or grpc.StatusCode.CANCELLED
                        raise
                    finally:
                        seconds = time.monotonic() - started
                        if sample and random.random() < sample:
                            _access_line(call, context, code, seconds)
            finally:
                _finish(stats, call, span, seconds, code)

        return observe


def _access_line(
    call: CallContext, context: Context, code: grpc.StatusCode | None, seconds: float
) -> None:
    # Inside the span, so the line carries the call's trace_id and span_id.
    status = (code or grpc.StatusCode.OK).name
    access_log.info(
        "%s %s %s %.3fms",
        call.method,
        call.namespace,
        status,
        seconds * 1000,
        extra={
            "rpc_method": call.method.lstrip("/"),
            "namespace": call.namespace,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "credential": call.identity.id,
            "peer": context.peer(),
        },
    )


def _finish(
    stats: ServiceStats,
    call: CallContext,
    span: trace.Span,
    seconds: float,
    code: grpc.StatusCode | None,
) -> None:
    stats.record_call(call.method, code.name if code else None, seconds)
    final = code or grpc.StatusCode.OK
    span.set_attribute("rpc.response.status_code", final.name)
    if call.reason is not None:
        span.set_attribute("cachet.error.reason", call.reason)
    if final not in _CALLER_FAULTS and final is not grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, final.name))
    span.end()
