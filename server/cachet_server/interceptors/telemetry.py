"""The telemetry stage: every call that passed auth is counted in the ServiceStats and
traced, with its span current while the handler runs. Health checks and reflection are
not namespace traffic and pass untouched."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from ..callcontext import CallContext, current_call
from ..stats import ServiceStats
from ..telemetry import start_rpc_span
from ._stage import Around, Context, StageInterceptor

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
    def __init__(self, stats: ServiceStats) -> None:
        super().__init__()
        self.stats = stats

    def around(self, method: str, *, response_streaming: bool) -> Around | None:
        if method.startswith("/grpc."):
            return None
        stats = self.stats

        @contextlib.asynccontextmanager
        async def observe(request: object, context: Context) -> AsyncIterator[None]:
            call = current_call()
            started = time.monotonic()
            stats.record_namespace_call(call.namespace)
            span = start_rpc_span(method, call.namespace, call.metadata)
            try:
                with trace.use_span(span, end_on_exit=False):
                    yield
            except BaseException:
                _finish(stats, call, span, started, call.status or grpc.StatusCode.CANCELLED)
                raise
            else:
                _finish(stats, call, span, started, None)

        return observe


def _finish(
    stats: ServiceStats,
    call: CallContext,
    span: trace.Span,
    started: float,
    code: grpc.StatusCode | None,
) -> None:
    stats.record_call(call.method, code.name if code else None, time.monotonic() - started)
    final = code or grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", final.value[0])
    if call.reason is not None:
        span.set_attribute("cachet.error.reason", call.reason)
    if final not in _CALLER_FAULTS and final is not grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, final.name))
    span.end()
