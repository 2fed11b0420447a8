"""OpenTelemetry tracing: one server span per RPC, continuing the caller's trace.

Off unless CACHET_OTEL_ENDPOINT names an OTLP/gRPC collector (or a test installs
its own exporter). Spans follow the OpenTelemetry RPC conventions: `rpc.system`,
`rpc.service`, `rpc.method`, `rpc.grpc.status_code`, plus `cachet.namespace`.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from . import __version__

tracer = trace.get_tracer("cachet_server", __version__)


def setup_tracing(
    service_name: str, endpoint: str | None, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the global tracer provider; None when tracing stays off."""
    if exporter is None:
        if endpoint is None:
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def start_rpc_span(method: str, namespace: str, metadata: Mapping[str, str]) -> trace.Span:
    """A server span for `/package.Service/Method`, child of the caller's traceparent."""
    service, _, name = method.lstrip("/").partition("/")
    return tracer.start_span(
        method.lstrip("/"),
        context=propagate.extract(metadata),
        kind=trace.SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "cachet.namespace": namespace,
        },
    )
