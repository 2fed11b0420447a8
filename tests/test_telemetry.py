"""OpenTelemetry traces: one server span per RPC, continuing the caller's trace, current
while the handler runs, with a client span per Redis command under it; JSON log lines
that carry the call's trace id."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server import telemetry
from cachet_server.backend.keys import CacheKeys
from cachet_server.config import LogFormat
from cachet_server.logs import TraceContext, formatter
from cachet_server.telemetry import setup_tracing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from .conftest import rpc_error

_exporter = InMemorySpanExporter()
_provider = None

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]


@pytest.fixture
def spans(monkeypatch):
    """Spans exported during the test (the global provider can be set once per process).
    Tracing is on for the test only: the tests after it run as deployed by default."""
    global _provider
    if _provider is None:
        _provider = setup_tracing(exporter=_exporter)
        telemetry._tracing = False
    monkeypatch.setattr(telemetry, "_tracing", True)
    # Spans of earlier tests may still sit in the batch processor: flush them out first.
    _provider.force_flush()
    _exporter.clear()

    def finished():
        assert _provider is not None
        _provider.force_flush()
        return _exporter.get_finished_spans()

    return finished


def rpc_span(finished, name: str):
    (span,) = [s for s in finished if s.name == name and s.kind is SpanKind.SERVER]
    return span


async def test_rpc_span_continues_the_callers_trace(cache, namespace, spans):
    await cache.Set(pb.SetRequest(key="k", value=b"v"), metadata=TRACEPARENT)
    span = rpc_span(spans(), "cachet.cache.v1.CacheService/Set")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["rpc.system.name"] == "grpc"
    assert span.attributes["rpc.method"] == "cachet.cache.v1.CacheService/Set"
    assert span.attributes["cachet.namespace"] == namespace
    assert span.attributes["rpc.response.status_code"] == "OK"
    assert "rpc.system" not in span.attributes, "the deprecated names are gone"
    assert "rpc.grpc.status_code" not in span.attributes


async def test_redis_commands_are_child_spans_of_the_rpc_span(cache, spans, topology):
    secret = b"value-that-must-not-leak"
    await cache.Set(pb.SetRequest(key="traced-key", value=secret), metadata=TRACEPARENT)
    await cache.Get(pb.GetRequest(key="traced-key"), metadata=TRACEPARENT)
    finished = spans()
    for method in ("Set", "Get"):
        parent = rpc_span(finished, f"cachet.cache.v1.CacheService/{method}")
        children = [
            s
            for s in finished
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]
        assert children, f"{method} ran Redis commands under its span"
        for child in children:
            assert child.kind is SpanKind.CLIENT
            assert format(child.context.trace_id, "032x") == TRACE_ID
            attributes = dict(child.attributes)
            assert attributes["db.system.name"] == "redis"
            assert attributes["db.operation.name"] in ("EVALSHA", "EVAL")
            assert attributes["server.address"] == "127.0.0.1"
            script = f"cache_{method.lower()}"
            assert child.name.endswith(script), "scripts appear by name"
            assert attributes["db.stored_procedure.name"] == script
            text = json.dumps(attributes)
            assert secret.decode() not in text and "traced-key" not in text
            from cachet_server.backend.scripts import script as load

            assert load(script).sha not in text + child.name, "never by SHA"


async def test_a_traced_call_is_coalesced_and_its_redis_span_made_by_cachet(
    cachet, cache, spans, topology
):
    """A sampled call's scripts take the multiplexer too (redis-py's instrumentation
    sees only redis-py's own path, so cachet makes the span): one EVALSHA span per
    script, timed around the command, under the RPC span."""
    await cache.Set(pb.SetRequest(key="coalesced", value=b"v"))
    before = cachet.backend.coalescing.commands
    reply = await cache.Get(pb.GetRequest(key="coalesced"), metadata=TRACEPARENT)
    assert reply.value == b"v"
    assert cachet.backend.coalescing.commands == before + 1, "the Get's script coalesced"
    finished = spans()
    parent = rpc_span(finished, "cachet.cache.v1.CacheService/Get")
    (child,) = [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]
    assert child.name == "EVALSHA cache_get" and child.kind is SpanKind.CLIENT
    assert child.attributes["cachet.redis.coalesced"] is True
    assert child.attributes["db.query.text"].startswith("EVALSHA ? ?")
    assert child.attributes["server.address"] == "127.0.0.1"
    assert isinstance(child.attributes["server.port"], int)
    assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time
    assert child.status.is_ok


async def test_a_traced_command_that_fails_marks_its_span_with_the_error_type_only(
    cache, spans, namespace, redis_client
):
    redis_client.hset(CacheKeys.of(namespace, "hash").data, "field", "secret-field")
    error = await rpc_error(cache.Get(pb.GetRequest(key="hash"), metadata=TRACEPARENT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    finished = spans()
    parent = rpc_span(finished, "cachet.cache.v1.CacheService/Get")
    (child,) = [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]
    assert not child.status.is_ok
    assert child.status.description == "ResponseError"
    text = json.dumps(dict(child.attributes)) + str(child.events)
    assert "hash" not in text and "secret-field" not in text


async def test_a_call_the_sampler_leaves_out_is_coalesced_and_makes_no_spans(cachet, cache, spans):
    """Tracing on, but the caller's trace is not sampled (traceparent flags 00): the
    call's scripts take the multiplexer as always, and nothing is exported."""
    unsampled = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")]
    await cache.Set(pb.SetRequest(key="unsampled", value=b"v"))
    before = cachet.backend.coalescing.commands
    reply = await cache.Get(pb.GetRequest(key="unsampled"), metadata=unsampled)
    assert reply.value == b"v"
    assert cachet.backend.coalescing.commands > before
    assert not [s for s in spans() if format(s.context.trace_id, "032x") == TRACE_ID]


async def test_failed_rpc_span_records_code_and_reason(cache, spans):
    error = await rpc_error(cache.Get(pb.GetRequest(key="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    span = rpc_span(spans(), "cachet.cache.v1.CacheService/Get")
    assert span.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"
    assert span.attributes["cachet.error.reason"] == "INVALID_ARGUMENT"


async def test_health_and_reflection_are_not_traced(channel, spans):
    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
    await health.Check(health_pb2.HealthCheckRequest())
    assert not [s for s in spans() if s.kind is SpanKind.SERVER]


def test_json_log_lines_carry_the_current_span_ids(spans):
    from cachet_server.telemetry import tracer

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContext(text=False))
    handler.setFormatter(formatter(LogFormat.JSON))
    logger = logging.getLogger("cachet_server.test_json_lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tracer.start_as_current_span("work") as span:
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside" and inside["level"] == "WARNING"
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert outside["trace_id"] is None and outside["logger"] == "cachet_server.test_json_lines"
