"""OpenTelemetry tracing: one server span per RPC, continuing the caller's trace, with a
client span per Redis command under it.

Configured by the standard variables only: tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names a collector, over gRPC unless
OTEL_EXPORTER_OTLP_PROTOCOL says http/protobuf; OTEL_TRACES_SAMPLER,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the rest apply as the SDK reads them.
OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off.

Attributes follow the current RPC and database conventions (semconv 0.66b2):
`rpc.system.name`, `rpc.method` (`package.Service/Method`), `rpc.response.status_code`;
Redis spans carry `db.system.name=redis`, `db.operation.name`, `server.address` and a
query text with every argument replaced by `?`. Scripts are named by their file
(`EVALSHA cache_get`), never by SHA, and no value or key ever reaches a span.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from . import __version__

tracer = trace.get_tracer("cachet_server", __version__)

# Set once setup_tracing installs a provider: until then a call does no span work at all
# (no traceparent parsing, no span, no context switch), read per call by the
# telemetry stage so that a provider installed after the server started still counts.
_tracing = False


def tracing_on() -> bool:
    return _tracing


DEFAULT_SERVICE_NAME = "cachet"


def resource() -> Resource:
    """service.name from OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES, else `cachet`."""
    detected = Resource.create({"service.version": __version__})
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return detected


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def otlp_traces_configured() -> bool:
    if _env_true("OTEL_SDK_DISABLED") or os.environ.get("OTEL_TRACES_EXPORTER") == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _otlp_span_exporter() -> SpanExporter:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcOTLPSpanExporter,
    )

    return GrpcOTLPSpanExporter()


def setup_tracing(exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install the global tracer provider and trace Redis commands; None when tracing
    stays off (no collector configured and no exporter given)."""
    if exporter is None:
        if not otlp_traces_configured():
            return None
        exporter = _otlp_span_exporter()
    # The atexit shutdown of the SDK would wait out a down collector; `shutdown_within`
    # bounds it instead.
    provider = TracerProvider(resource=resource(), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _tracing
    _tracing = True
    instrument_redis(provider)
    return provider


def instrument_redis(provider: TracerProvider) -> None:
    """Client spans for redis-py commands and pipelines, under the current (RPC) span."""
    # The current database and HTTP conventions (db.system.name, db.query.text,
    # server.address) instead of the old ones; read when the instrumentor starts.
    modes = {m.strip() for m in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    modes |= {"database", "http"}
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = ",".join(sorted(m for m in modes if m))
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider, request_hook=_describe_redis_command)


_script_names: dict[str, str] = {}


def _script_name(sha_or_source: object) -> str | None:
    if not _script_names:
        from .backend.scripts import all_scripts

        for item in all_scripts():
            _script_names[item.sha] = _script_names[item.source] = item.name
    return _script_names.get(sha_or_source) if isinstance(sha_or_source, str) else None


def record_script_span(
    name: str,
    argc: int,
    address: tuple[str, int] | None,
    started_ns: int,
    error: BaseException | None,
) -> None:
    """The client span of a script that went out on a multiplexer, coalesced with other
    calls' commands (redis-py's instrumentation sees only its own path): named and
    described as the instrumentation and `_describe_redis_command` describe the same
    EVALSHA, under the current (RPC) span. `argc`: the command's arguments after its
    name; none of them reaches the span."""
    attributes: dict[str, Any] = {
        "db.system.name": "redis",
        "db.operation.name": "EVALSHA",
        "db.stored_procedure.name": name,
        "db.query.text": "EVALSHA" + " ?" * argc,
        "db.redis.args_length": argc + 1,
        "cachet.redis.coalesced": True,
    }
    if address is not None:
        attributes["server.address"], attributes["server.port"] = address
    span = tracer.start_span(
        f"EVALSHA {name}", kind=trace.SpanKind.CLIENT, start_time=started_ns, attributes=attributes
    )
    if error is not None:
        # The error's type only: a Redis error message may quote a key.
        span.set_status(trace.StatusCode.ERROR, type(error).__name__)
    span.end()


def _describe_redis_command(span: trace.Span, instance: Any, args: Any, kwargs: Any) -> None:
    if not span.is_recording() or not args:
        return
    command = str(args[0]).upper()
    # The instrumentation reads the system and address from a connection pool, which a
    # RedisCluster client has not: set here for every client alike.
    span.set_attribute("db.system.name", "redis")
    span.set_attribute("db.operation.name", command)
    if command in ("EVALSHA", "EVAL") and len(args) > 1:
        name = _script_name(args[1])
        if name is not None:
            span.update_name(f"{command} {name}")
            span.set_attribute("db.stored_procedure.name", name)
    key_index = 3 if command in ("EVALSHA", "EVAL") else 1
    address = node_address(instance, args[key_index] if len(args) > key_index else None)
    if address is not None:
        span.set_attribute("server.address", address[0])
        span.set_attribute("server.port", address[1])


def node_address(instance: Any, key: Any) -> tuple[str, int] | None:
    """The node a command on `key` goes to, for its span (the instrumentation cannot see
    it for a Sentinel master or a Cluster node): a Sentinel master (its pool knows the
    master found last), a Cluster node (by the key), or the one Redis."""
    pool = getattr(instance, "connection_pool", None)
    master = getattr(pool, "master_address", None)
    if master:
        return str(master[0]), int(master[1])
    nodes = getattr(instance, "nodes_manager", None)
    if nodes is None:
        kwargs = getattr(pool, "connection_kwargs", {})
        host = kwargs.get("host")
        return (str(host), int(kwargs.get("port", 6379))) if host else None
    if key is None:
        return None
    try:
        node = nodes.get_node_from_slot(instance.keyslot(key))
    except Exception:  # slots not known yet: leave the address out
        return None
    return str(node.host), int(node.port)


def shutdown_within(seconds: float, *shutdowns: Callable[[], object]) -> None:
    """Run each shutdown (flushing spans and metrics) but give up after `seconds` in
    all: a collector that is down must not hold up the exit. The exporters' threads are
    daemons, so an abandoned flush ends with the process."""
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=step, daemon=True) for step in shutdowns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def start_rpc_span(method: str, namespace: str, metadata: Mapping[str, str]) -> trace.Span:
    """A server span for `/package.Service/Method`, child of the caller's traceparent."""
    name = method.lstrip("/")
    return tracer.start_span(
        name,
        context=propagate.extract(metadata),
        kind=trace.SpanKind.SERVER,
        attributes={
            "rpc.system.name": "grpc",
            "rpc.method": name,
            "cachet.namespace": namespace,
        },
    )
