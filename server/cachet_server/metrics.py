"""OpenTelemetry metrics: every instrument cachet records, and where they are exported.

The instruments live here, one module-level `instruments` for the process (as the
tracer does in telemetry.py): recording sites call them whether or not metrics are on;
until `setup_metrics` installs a meter provider they are the API's no-op proxies. The
histograms recorded on every call (call durations, and the durations of the commands the
multiplexer carries) are pre-aggregated instead (histograms.py), merged into what every
reader collects. Exporters: a Prometheus endpoint (`CACHET_METRICS__LISTEN`, path
/metrics) and OTLP when the standard OTEL_EXPORTER_OTLP_* variables name a collector.
Redis command durations, pool use and connection errors come from redis-py's own
OpenTelemetry metrics (`db.client.operation.duration`, `db.client.connection.*`), fed to
the same provider; the two it records on every command of its ordinary path (command
durations, connections in use) are kept plain like ours and handed over at collection.

Names follow the OpenTelemetry semantic conventions where one exists
(`rpc.server.call.duration`); cachet's own are under `cachet.`. Namespace labels are
bounded: the first `max_namespaces` namespaces seen keep their name, later ones are
counted under `(other)`, so a tenant churning through names cannot grow the series.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from . import __version__
from .histograms import HistogramSeries, PreaggregatedHistogram, PreaggregatedHistograms

log = logging.getLogger(__name__)

# Where namespaces beyond a cap are counted together (metric labels, service stats); not a
# valid namespace name, so it can never be mistaken for a tenant's.
OTHER_NAMESPACES = "(other)"
# The fair-sharing (quota) stage records its refusals under this name, by namespace.
QUOTA_REFUSALS = "cachet.quota.refusals"

# Seconds; from well under a Redis round trip to a long blocking call.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class NamespaceLabels:
    """Namespace label values with a cap on how many distinct ones are ever used."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, namespace: str) -> str:
        if namespace in self._known:
            return namespace
        if len(self._known) >= self.limit:
            return OTHER_NAMESPACES
        self._known.add(namespace)
        return namespace


class PlainCounter:
    """A monotonic counter kept as plain integers per attribute set and reported through
    an observable counter, read when a reader collects: an `add` is a dictionary lookup
    and an integer addition on the event loop, where the SDK's synchronous counter spends
    several µs per add (a Measurement, the attributes hashed, a lock). Same `add` as the
    SDK's counter, same exported metric."""

    def __init__(self, meter: metrics.Meter, name: str, unit: str, description: str) -> None:
        # Per attribute set (as a frozenset of its items): [attributes, total].
        self._totals: dict[frozenset[tuple[str, str]], list[Any]] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: dict[str, str] | None = None) -> None:
        self.series(attributes)[1] += amount

    def series(self, attributes: dict[str, str] | None = None) -> list[Any]:
        """The [attributes, total] entry of one attribute set, for a caller on a hot path
        to keep and add to (`entry[1] += n`) without hashing the attributes again."""
        key = frozenset(attributes.items()) if attributes else _NO_ATTRIBUTES
        entry = self._totals.get(key)
        if entry is None:
            entry = self._totals[key] = [dict(attributes or {}), 0]
        return entry

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # A copy: the event loop adds attribute sets while a reader collects.
        return [Observation(total, attributes) for attributes, total in list(self._totals.values())]


_NO_ATTRIBUTES: frozenset[tuple[str, str]] = frozenset()


class DeferredUpDownCounter:
    """Stands in for an SDK up-down counter that is added to on the event loop: each
    `add` is summed per attribute set as a plain integer, and the sums go to the SDK
    instrument (one add per attribute set, zero included, so every set seen is
    exported) when a reader collects (PreaggregatedHistograms.before_collect). What
    each collection exports is what the instrument's own adds would have made it.
    redis-py counts its pool's connections in and out of use with four adds per command
    on its ordinary path, at about 20 µs each through the SDK."""

    def __init__(self, instrument: Any) -> None:
        self.instrument = instrument
        # Per attribute set (as a frozenset of its items): [attributes, sum not yet added].
        self._pending: dict[frozenset[tuple[str, Any]], list[Any]] = {}
        self._lock = threading.Lock()  # the event loop adds while a reader's thread flushes

    def add(self, amount: int, attributes: Any = None, context: Any = None) -> None:
        key = frozenset(attributes.items()) if attributes else _NO_ATTRIBUTES
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                entry = self._pending[key] = [dict(attributes or {}), 0]
            entry[1] += amount

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for attributes, amount in pending.values():
            self.instrument.add(amount, attributes=attributes)


class HistogramRecords:
    """Stands in for an SDK histogram recorded on the event loop (redis-py's
    `db.client.operation.duration`, one record per command it sends itself): the same
    `record`, into the pre-aggregated series of the same metric (histograms.py) that
    the multiplexer's commands are counted in. Keeps the instrument's name, unit and
    description."""

    def __init__(self, histogram: PreaggregatedHistogram) -> None:
        self.histogram = histogram
        self.name = histogram.name
        self.unit = histogram.unit
        self.description = histogram.description

    def record(self, amount: float, attributes: Any = None, context: Any = None) -> None:
        self.histogram.record(amount, attributes or {})


class CountingSource(Protocol):
    """What ServiceStats keeps and the observable instruments read at collection time:
    lookups per namespace and calls in flight per method."""

    namespaces: dict[str, Any]
    active: dict[str, int]


class Instruments:
    """Every instrument, created once from one meter.

    Nothing on the request path goes through the SDK's synchronous record. The busiest
    counts (cache hits and misses, calls in flight) are observed: ServiceStats keeps them
    as plain integers on the event loop (it answers GetServiceStats from them) and these
    instruments read them when a reader collects, so both views show the same numbers.
    The other counters are PlainCounters (plain integers per attribute set, observed the
    same way), and the duration histograms are pre-aggregated (histograms.py)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.namespace = NamespaceLabels()
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()

        # Counted on the request path: plain integers, observed at collection.
        def counter(name: str, unit: str, description: str) -> PlainCounter:
            return PlainCounter(meter, name, unit, description)

        # RPCs
        # Recorded on every call: pre-aggregated (histograms.py), not an SDK instrument.
        self.rpc_duration = histograms.histogram(
            SCOPE,
            "rpc.server.call.duration",
            unit="s",
            description="Duration of calls served, by rpc.method and rpc.response.status_code.",
            bounds=DURATION_BUCKETS,
        )
        meter.create_observable_up_down_counter(
            "cachet.rpc.server.active_calls",
            callbacks=[self._observe_active],
            unit="{call}",
            description="Calls being served now, by rpc.method.",
        )
        # cache
        meter.create_observable_counter(
            "cachet.cache.hits",
            callbacks=[self._observe_lookups("hits")],
            unit="{lookup}",
            description="Keys found, by namespace.",
        )
        meter.create_observable_counter(
            "cachet.cache.misses",
            callbacks=[self._observe_lookups("misses")],
            unit="{lookup}",
            description="Keys not found, by namespace.",
        )
        self.lease_grants = counter(
            "cachet.cache.lease.grants", "{lease}", "Fill leases granted (the caller recomputes)."
        )
        self.lease_waits = counter(
            "cachet.cache.lease.waits", "{call}", "GetOrLease calls that waited for a fill."
        )
        self.stale_served = counter(
            "cachet.cache.stale_served", "{call}", "Stale copies served while a fill runs."
        )
        self.invalidations = counter(
            "cachet.cache.invalidations", "{key}", "Keys deleted or invalidated by tag."
        )
        # locks
        self.lock_grants = counter("cachet.lock.grants", "{grant}", "Locks and permits granted.")
        self.lock_wait = histograms.histogram(
            SCOPE,
            "cachet.lock.wait.duration",
            unit="s",
            description="How long a granted Acquire or Hold waited.",
            bounds=DURATION_BUCKETS,
        )
        self.lock_waiters = meter.create_up_down_counter(
            "cachet.lock.waiters", unit="{waiter}", description="Callers waiting for a lock now."
        )
        self.hold_losses = counter(
            "cachet.lock.hold.losses", "{hold}", "Hold streams that lost their lock."
        )
        self.fencing_rejections = counter(
            "cachet.lock.fencing.rejections", "{write}", "Writes refused for a stale fencing token."
        )
        # rate limits
        self.ratelimit_decisions = counter(
            "cachet.ratelimit.decisions",
            "{decision}",
            "Rate-limit decisions by cachet.ratelimit.policy and cachet.ratelimit.outcome "
            "(allowed, denied, shadow_denied, fail_open).",
        )
        # event bus
        self.events_published = counter("cachet.eventbus.published", "{event}", "Events accepted.")
        self.events_delivered = counter(
            "cachet.eventbus.delivered", "{event}", "Events sent to subscribers and consumers."
        )
        self.events_acked = counter("cachet.eventbus.acked", "{event}", "Events acknowledged.")
        self.events_claimed = counter(
            "cachet.eventbus.claimed", "{event}", "Pending events claimed by another consumer."
        )
        self.events_dead_lettered = counter(
            "cachet.eventbus.dead_lettered", "{event}", "Events moved to a dead-letter stream."
        )
        self.subscriber_drops = counter(
            "cachet.eventbus.subscriber.drops",
            "{subscriber}",
            "Subscribe calls ended because the client read too slowly.",
        )
        self.events_pending = meter.create_up_down_counter(
            "cachet.eventbus.pending",
            unit="{event}",
            description="Events buffered for Subscribe calls, not yet written to the client.",
        )
        # Redis (beside redis-py's own db.client.* instruments)
        self.redis_failovers = counter(
            "cachet.redis.failovers", "{failover}", "Sentinel failovers followed to a new master."
        )
        self.redis_reachable = meter.create_gauge(
            "cachet.redis.reachable",
            description="1 while the health probe reaches Redis (readiness SERVING), else 0.",
        )
        self.redis_reconnects = counter(
            "cachet.redis.reconnects",
            "{event}",
            "Times Redis became reachable again after the health probe lost it.",
        )
        self.quota_refusals = counter(
            QUOTA_REFUSALS, "{call}", "Calls refused by a namespace's fair share, by namespace."
        )

    def ns(self, namespace: str) -> dict[str, str]:
        """The attributes of a per-namespace data point."""
        return {"cachet.namespace": self.namespace(namespace)}

    def observe(self, source: CountingSource) -> None:
        """Report `source`'s counts (a ServiceStats) while it lives."""
        self._sources.add(source)

    def _observe_lookups(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[str, int] = defaultdict(int)
            for source in list(self._sources):
                # A copy: the event loop adds namespaces while a reader collects.
                for namespace, entry in list(source.namespaces.items()):
                    totals[self.namespace(namespace)] += getattr(entry, field)
            return [Observation(n, {"cachet.namespace": ns}) for ns, n in totals.items()]

        return observe

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = defaultdict(int)
        for source in list(self._sources):
            for method, calls in list(source.active.items()):
                totals[method] += calls
        return [
            Observation(n, {"rpc.system.name": "grpc", "rpc.method": method.lstrip("/")})
            for method, n in totals.items()
        ]


class RedisCommandDurations:
    """redis-py's `db.client.operation.duration` for the commands the multiplexer carried
    (redis-py records those it sends itself): pre-aggregated into the same metric, with
    the attributes redis-py's own recorder gives them, built by its attribute builder once
    per node, command and kind of error. Records nothing until `setup_metrics` turns
    redis-py's command metrics on (metrics.redis_commands)."""

    def __init__(self) -> None:
        self._collector: Any = None
        self._histogram: PreaggregatedHistogram | None = None
        # None for a command redis-py's configuration does not track.
        self._series: dict[tuple[Any, ...], HistogramSeries | None] = {}

    def enable(self, collector: Any) -> None:
        """Record into the metric of redis-py's collector (a RedisMetricsCollector), and
        have the collector's own records (the commands redis-py sends) go there too."""
        instrument = collector.operation_duration
        self._collector = collector
        self._series.clear()
        self._histogram = histograms.histogram(
            InstrumentationScope(collector.METER_NAME, collector.METER_VERSION),
            instrument.name,
            unit=instrument.unit,
            description=instrument.description,
            bounds=collector.config.buckets_operation_duration,
        )
        collector.operation_duration = HistogramRecords(self._histogram)

    @property
    def on(self) -> bool:
        """Whether command durations are recorded (metrics.redis_commands)."""
        return self._histogram is not None

    def record(
        self, connection: Any, name: str, seconds: float, error: BaseException | None
    ) -> None:
        """One command `connection` carried: its name, seconds from queueing to answer,
        and its error reply or None."""
        if self._histogram is None:
            return
        if error is None:
            key: tuple[Any, ...] = (connection.host, connection.port, connection.db, name)
        else:
            status = getattr(error, "status_code", None)
            category = getattr(error, "error_type", None)
            key = (
                connection.host,
                connection.port,
                connection.db,
                name,
                type(error),
                status,
                category,
            )
        try:
            series = self._series[key]
        except KeyError:
            series = self._series[key] = self._new_series(connection, name, error)
        if series is not None:
            series.record(seconds)

    def _new_series(
        self, connection: Any, name: str, error: BaseException | None
    ) -> HistogramSeries | None:
        # As redis-py's RedisMetricsCollector.record_operation_duration builds them.
        collector = self._collector
        assert self._histogram is not None
        if not collector.config.should_track_command(name):
            return None
        build = collector.attr_builder
        attributes = build.build_base_attributes(
            server_address=connection.host,
            server_port=connection.port,
            db_namespace=str(connection.db),
        )
        attributes.update(
            build.build_operation_attributes(
                command_name=name,
                network_peer_address=connection.host,
                network_peer_port=connection.port,
            )
        )
        attributes.update(
            build.build_error_attributes(error_type=error if isinstance(error, Exception) else None)
        )
        return self._histogram.series(attributes)


# What every reader of the provider gets merged into its collections (setup_metrics).
histograms = PreaggregatedHistograms()
SCOPE = InstrumentationScope("cachet_server", __version__)
instruments = Instruments(metrics.get_meter(SCOPE.name, __version__))
redis_command_durations = RedisCommandDurations()


def _otlp_metrics_configured() -> bool:
    exporter = os.environ.get("OTEL_METRICS_EXPORTER", "otlp")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and exporter != "none"


@dataclass
class MetricsRuntime:
    """The installed provider and the Prometheus endpoint, if any."""

    provider: Any
    server: Any = None
    port: int | None = None

    def shutdown(self, timeout_seconds: float) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.provider.shutdown(timeout_millis=max(1, int(timeout_seconds * 1000)))


def setup_metrics(
    listen: str | None, max_namespaces: int, *, redis_commands: bool = True
) -> MetricsRuntime | None:
    """Install the process's meter provider with its exporters; None when both are off."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

    from .telemetry import resource

    readers: list[MetricReader] = []
    registry = None
    if listen is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    if _otlp_metrics_configured():
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter()))
    if not readers:
        return None
    # Shut down by __main__ within a bound, not by the SDK's own atexit handler.
    process = resource()
    provider = MeterProvider(resource=process, metric_readers=readers, shutdown_on_exit=False)
    for reader in readers:
        histograms.export_to(reader, process)
    metrics.set_meter_provider(provider)
    instruments.namespace.limit = max_namespaces
    _observe_redis_py(commands=redis_commands)
    runtime = MetricsRuntime(provider)
    if listen is not None:
        from prometheus_client import start_http_server

        assert registry is not None
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            server, _thread = start_http_server(int(port), addr=host, registry=registry)
        except (OSError, ValueError) as exc:
            provider.shutdown(timeout_millis=100)
            raise RuntimeError(f"cannot serve metrics on {listen}: {exc}") from exc
        runtime.server = server
        runtime.port = server.server_port
        log.info("metrics on http://%s/metrics", listen)
    return runtime


def _otlp_metric_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcOTLPMetricExporter,
    )

    return GrpcOTLPMetricExporter()


def _observe_redis_py(*, commands: bool) -> None:
    """Turn on redis-py's own metrics: connection pool use and waits, connection errors,
    and (`commands`) command durations by operation. Names of streams and channels stay
    out of them."""
    from redis.observability import MetricGroup, OTelConfig, get_observability_instance

    groups = [MetricGroup.CONNECTION_BASIC, MetricGroup.CONNECTION_ADVANCED]
    if commands:
        groups += [MetricGroup.COMMAND, MetricGroup.RESILIENCY]
    get_observability_instance().init(
        OTelConfig(
            metric_groups=groups,
            hide_pubsub_channel_names=True,
            hide_stream_names=True,
        )
    )
    # The collector redis-py's asyncio clients record with: its instruments, their bounds,
    # its command filter and its attribute builder.
    from redis.asyncio.observability.recorder import _get_or_create_collector

    # Any: its instruments are replaced by stand-ins with the same add and record.
    collector: Any = _get_or_create_collector()
    if collector is None:
        return
    # Its SDK adds and records on every command of the ordinary path, made plain (what
    # metrics add to a command's CPU: about 110 -> 13 µs): the same series at every
    # collection.
    connections = getattr(collector, "connection_count_updown", None)
    if connections is not None and not isinstance(connections, DeferredUpDownCounter):
        deferred = collector.connection_count_updown = DeferredUpDownCounter(connections)
        histograms.before_collect(deferred.flush)
    if commands:
        redis_command_durations.enable(collector)
