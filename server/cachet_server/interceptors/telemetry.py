"""The telemetry stage: every call that passed auth is counted (ServiceStats, which feeds
the metrics too), traced with its span current while the handler runs, and, for a
sampled share of calls, written to the access log. Health checks and reflection are not
namespace traffic and pass untouched."""

from __future__ import annotations

import logging
import random
import time
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from ..callcontext import CallContext, current_call
from ..logs import ACCESS_LOGGER
from ..stats import MethodCounter, ServiceStats
from ..telemetry import start_rpc_span, tracing_on
from ._stage import Context

access_log = logging.getLogger(ACCESS_LOGGER)
_monotonic = time.monotonic

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


class TelemetryStage:
    def __init__(self, stats: ServiceStats, access_sample: float = 0.0) -> None:
        self.stats = stats
        self.access_sample = access_sample

    def stage_for(self, method: str, *, response_streaming: bool) -> _Observe | None:
        if method.startswith("/grpc."):
            return None
        return _Observe(self.stats, self.stats.method_counter(method), self.access_sample)


class _Traced:
    """What a traced call holds between enter and leave."""

    __slots__ = ("span", "started", "token")

    def __init__(
        self, started: float, span: trace.Span, token: Token[otel_context.Context]
    ) -> None:
        self.started = started
        self.span = span
        self.token = token


class _Observe:
    """One method's telemetry; `enter` answers when the call started (and its span, when
    tracing is on)."""

    __slots__ = ("counter", "sample", "stats")

    def __init__(self, stats: ServiceStats, counter: MethodCounter, sample: float) -> None:
        self.stats = stats
        self.counter = counter
        self.sample = sample

    def enter(self, request: Any, context: Context) -> float | _Traced:
        call = current_call()
        self.counter.start(call.namespace)
        started = _monotonic()
        if not tracing_on():
            return started
        span = start_rpc_span(call.method, call.namespace, call.text_metadata())
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Traced(started, span, token)

    def leave(self, entered: float | _Traced, error: BaseException | None) -> None:
        code = None if error is None else (current_call().status or grpc.StatusCode.CANCELLED)
        if isinstance(entered, float):
            seconds = _monotonic() - entered
            self.counter.end(code, seconds)
            if self.sample and random.random() < self.sample:
                _access_line(current_call(), code, seconds)
            return
        seconds = _monotonic() - entered.started
        # Inside the span, so the access line carries the call's trace_id and span_id.
        if self.sample and random.random() < self.sample:
            _access_line(current_call(), code, seconds)
        otel_context.detach(entered.token)
        self.counter.end(code, seconds)
        _finish(current_call(), entered.span, code)


def _access_line(call: CallContext, code: grpc.StatusCode | None, seconds: float) -> None:
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
            "peer": call.context.peer(),
        },
    )


def _finish(call: CallContext, span: trace.Span, code: grpc.StatusCode | None) -> None:
    final = code or grpc.StatusCode.OK
    span.set_attribute("rpc.response.status_code", final.name)
    if call.reason is not None:
        span.set_attribute("cachet.error.reason", call.reason)
    if final not in _CALLER_FAULTS and final is not grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, final.name))
    span.end()
