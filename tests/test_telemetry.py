"""OpenTelemetry: one server span per RPC, continuing the caller's trace."""

from __future__ import annotations

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.telemetry import setup_tracing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .conftest import rpc_error

_exporter = InMemorySpanExporter()
_provider = None


@pytest.fixture
def spans():
    """Spans exported during the test (the global provider can be set once per process)."""
    global _provider
    if _provider is None:
        _provider = setup_tracing("cachet-test", None, exporter=_exporter)
    # Spans of earlier tests may still sit in the batch processor: flush them out first.
    _provider.force_flush()
    _exporter.clear()

    def finished():
        assert _provider is not None
        _provider.force_flush()
        return _exporter.get_finished_spans()

    return finished


async def test_rpc_span_continues_the_callers_trace(cache, namespace, spans):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{parent_id}-01"
    await cache.Set(pb.SetRequest(key="k", value=b"v"), metadata=[("traceparent", traceparent)])
    (span,) = [s for s in spans() if s.name == "cachet.cache.v1.CacheService/Set"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "cachet.cache.v1.CacheService"
    assert span.attributes["rpc.method"] == "Set"
    assert span.attributes["cachet.namespace"] == namespace
    assert span.attributes["rpc.grpc.status_code"] == 0


async def test_failed_rpc_span_records_code_and_reason(cache, spans):
    error = await rpc_error(cache.Get(pb.GetRequest(key="")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (span,) = [s for s in spans() if s.name == "cachet.cache.v1.CacheService/Get"]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.attributes["cachet.error.reason"] == "INVALID_ARGUMENT"
