"""Histograms recorded as plain Python state on the event loop and exported as ordinary
OpenTelemetry histogram points.

The SDK's synchronous histogram costs several µs per record (attributes rebuilt and
hashed, a Measurement, time_ns, a context lookup, a lock), and the SDK has no bulk or
pre-aggregated record API. Here a caller finds the `HistogramSeries` of an attribute set
once (`histogram.series(attributes)`, then caches it), and `series.record(seconds)` is a
bisect on the bounds and a few number updates.

Every reader of the meter provider gets these series merged into what the SDK collected
for it (`PreaggregatedHistograms.export_to`), in the reader's preferred temporality for
histograms, as the same Metric / Histogram / HistogramDataPoint data classes the SDK
makes. A series whose metric the SDK also collected in the same scope (redis-py's own
`db.client.operation.duration`) is merged into that metric, and a point with the same
attributes adds up, so an exporter sees one metric family.

Recording happens on the event loop, collection on a reader's thread. A record updates
sum, min and max before the bucket, and a collection reads the buckets first and derives
the count from them: a collected point never has a count other than the sum of its
buckets, and its sum includes at least the records its buckets count.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]


class HistogramSeries:
    """One attribute set's counts: per bucket (the last is above every bound), the sum,
    the smallest and the largest value recorded."""

    __slots__ = ("attributes", "bounds", "counts", "max", "min", "started", "sum")

    def __init__(self, attributes: Attributes, bounds: tuple[float, ...]) -> None:
        self.attributes = dict(attributes)
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.started = time.time_ns()

    def record(self, value: float) -> None:
        # Bucket i holds bounds[i-1] < value <= bounds[i], as the SDK's does.
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.counts[bisect_left(self.bounds, value)] += 1


class PreaggregatedHistogram:
    """A histogram instrument: its identity (scope, name, unit, description, bounds) and
    a series per attribute set."""

    def __init__(
        self,
        scope: InstrumentationScope,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float],
    ) -> None:
        self.scope = scope
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(bounds)  # as given: Prometheus prints le="1" for 1, "1.0" for 1.0
        self._series: dict[frozenset[tuple[str, AttributeValue]], HistogramSeries] = {}

    def series(self, attributes: Attributes) -> HistogramSeries:
        """The series of `attributes`, made on first use. Callers keep what this returns:
        it is the lookup the hot path must not repeat."""
        key = frozenset(attributes.items())
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = HistogramSeries(attributes, self.bounds)
        return found

    def record(self, value: float, attributes: Attributes) -> None:
        """For a site recorded too rarely to keep its series: the lookup, then the record."""
        self.series(attributes).record(value)

    def all_series(self) -> list[HistogramSeries]:
        # One C-level copy: safe against the event loop adding a series meanwhile.
        return list(self._series.values())


class PreaggregatedHistograms:
    """The process's pre-aggregated histograms, by scope and name."""

    def __init__(self) -> None:
        self._histograms: dict[tuple[str, str | None, str], PreaggregatedHistogram] = {}
        # Whether a reader collects them (export_to was called): until then a record
        # is work nobody reads, and the busiest sites skip it.
        self.read = False
        # Run before every reader's collection (before_collect).
        self._before_collect: list[Callable[[], None]] = []

    def histogram(
        self,
        scope: InstrumentationScope,
        name: str,
        *,
        unit: str,
        description: str,
        bounds: Sequence[float],
    ) -> PreaggregatedHistogram:
        """The histogram `name` of `scope`, made on first use (the same one after)."""
        key = (scope.name, scope.version, name)
        found = self._histograms.get(key)
        if found is None:
            found = self._histograms[key] = PreaggregatedHistogram(
                scope, name, unit, description, bounds
            )
        return found

    def before_collect(self, callback: Callable[[], None]) -> None:
        """Have `callback` run on a reader's thread just before each collection, ahead
        of the SDK's own: state kept plain on the event loop can be handed to SDK
        instruments then (metrics.DeferredUpDownCounter)."""
        self._before_collect.append(callback)

    def export_to(self, reader: MetricReader, resource: Resource) -> None:
        """Merge these histograms into everything `reader` collects from now on. Call it
        once the meter provider has registered the reader (its collect callback is set)."""
        # Wrapped here rather than in _receive_metrics, which the SDK skips when it
        # collected nothing itself. What MeterProvider set is its measurement consumer's
        # collect(reader, timeout_millis) (the SDK annotates the attribute otherwise).
        collect: Any = reader._collect
        if collect is None:
            raise ValueError("the reader is not registered with a meter provider")
        temporality = reader._instrument_class_temporality[_Histogram]
        export = _ReaderExport(self, temporality, resource)
        self.read = True

        def collect_with_histograms(
            metric_reader: MetricReader, timeout_millis: float = 10_000
        ) -> MetricsData | None:
            for callback in list(self._before_collect):
                callback()
            return export.merged(collect(metric_reader, timeout_millis=timeout_millis))

        reader._collect = collect_with_histograms  # type: ignore[assignment]

    def histograms(self) -> list[PreaggregatedHistogram]:
        return list(self._histograms.values())


class _ReaderExport:
    """What one reader gets: each series' cumulative totals, or for a delta reader the
    difference since that reader's last collection (kept here, per series)."""

    def __init__(
        self,
        histograms: PreaggregatedHistograms,
        temporality: AggregationTemporality,
        resource: Resource,
    ) -> None:
        self._histograms = histograms
        self._temporality = temporality
        self._resource = resource
        self._lock = threading.Lock()  # a reader may collect from two threads at once
        # Delta only: per series, the bucket counts and sum at the last collection, and when.
        self._sent: dict[HistogramSeries, tuple[list[int], float, int]] = {}

    def merged(self, data: MetricsData | None) -> MetricsData | None:
        with self._lock:
            metrics = self._metrics(time.time_ns())
        if not metrics:
            return data
        return _merge(data, metrics, self._resource)

    def _metrics(self, now: int) -> list[tuple[InstrumentationScope, Metric]]:
        metrics = []
        for histogram in self._histograms.histograms():
            points = [
                point
                for series in histogram.all_series()
                if (point := self._point(series, now)) is not None
            ]
            if points:
                data = Histogram(data_points=points, aggregation_temporality=self._temporality)
                metric = Metric(
                    name=histogram.name,
                    description=histogram.description,
                    unit=histogram.unit,
                    data=data,
                )
                metrics.append((histogram.scope, metric))
        return metrics

    def _point(self, series: HistogramSeries, now: int) -> HistogramDataPoint | None:
        counts = list(series.counts)  # first: see the module's docstring
        total = series.sum
        if self._temporality is AggregationTemporality.DELTA:
            previous = self._sent.get(series)
            self._sent[series] = (counts, total, now)
            if previous is not None:
                last_counts, last_total, since = previous
                counts = [n - last for n, last in zip(counts, last_counts, strict=True)]
                total -= last_total
            else:
                since = series.started
            if not any(counts):
                return None
            # The smallest and largest value of an interval are not kept: unset, as
            # OTLP allows (protobuf leaves a None field out).
            return _point(series, since, now, counts, total, None, None)
        if not any(counts):
            return None
        return _point(series, series.started, now, counts, total, series.min, series.max)


def _point(
    series: HistogramSeries,
    start: int,
    now: int,
    counts: list[int],
    total: float,
    smallest: float | None,
    largest: float | None,
) -> HistogramDataPoint:
    extremes: dict[str, Any] = {"min": smallest, "max": largest}
    return HistogramDataPoint(
        attributes=series.attributes,
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=sum(counts),
        sum=total,
        bucket_counts=tuple(counts),
        explicit_bounds=series.bounds,
        **extremes,
    )


def _merge(
    data: MetricsData | None,
    metrics: list[tuple[InstrumentationScope, Metric]],
    resource: Resource,
) -> MetricsData:
    """`data` with `metrics` added: into the metric of the same name in the same scope
    when the SDK collected one, else as a metric (and a scope) of their own."""
    if data is None or not data.resource_metrics:
        data = MetricsData(
            resource_metrics=[
                ResourceMetrics(resource=resource, scope_metrics=[], schema_url=resource.schema_url)
            ]
        )
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for scope, metric in metrics:
        at = next((i for i, s in enumerate(scopes) if _same_scope(s.scope, scope)), None)
        if at is None:
            scopes.append(
                ScopeMetrics(scope=scope, metrics=[metric], schema_url=scope.schema_url or "")
            )
            continue
        found = scopes[at]
        merged = list(found.metrics)
        same = next((j for j, m in enumerate(merged) if m.name == metric.name), None)
        if same is None:
            merged.append(metric)
        else:
            merged[same] = _added(merged[same], metric)
        scopes[at] = ScopeMetrics(scope=found.scope, metrics=merged, schema_url=found.schema_url)
    resource_metrics = ResourceMetrics(
        resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url
    )
    return MetricsData(resource_metrics=[resource_metrics, *others])


def _same_scope(a: InstrumentationScope, b: InstrumentationScope) -> bool:
    return (a.name, a.version, a.schema_url) == (b.name, b.version, b.schema_url)


def _added(collected: Metric, ours: Metric) -> Metric:
    """The SDK's histogram metric with our points added (equal attribute sets summed)."""
    if not isinstance(collected.data, Histogram) or not isinstance(ours.data, Histogram):
        raise TypeError(f"{collected.name} is not a histogram in both")
    points = {frozenset((p.attributes or {}).items()): p for p in collected.data.data_points}
    for point in ours.data.data_points:
        key = frozenset((point.attributes or {}).items())
        other = points.get(key)
        points[key] = point if other is None else _sum_points(other, point)
    data = Histogram(
        data_points=list(points.values()),
        aggregation_temporality=collected.data.aggregation_temporality,
    )
    return Metric(
        name=collected.name, description=collected.description, unit=collected.unit, data=data
    )


def _sum_points(a: HistogramDataPoint, b: HistogramDataPoint) -> HistogramDataPoint:
    if tuple(map(float, a.explicit_bounds)) != tuple(map(float, b.explicit_bounds)):
        raise ValueError("histogram points with different bounds cannot be added")
    # An unset extreme (a delta point of ours) leaves the sum's unset too.
    known = a.min is not None and b.min is not None
    extremes: dict[str, Any] = {
        "min": min(a.min, b.min) if known else None,
        "max": max(a.max, b.max) if known else None,
    }
    return HistogramDataPoint(
        attributes=a.attributes,
        start_time_unix_nano=min(a.start_time_unix_nano, b.start_time_unix_nano),
        time_unix_nano=max(a.time_unix_nano, b.time_unix_nano),
        count=a.count + b.count,
        sum=a.sum + b.sum,
        bucket_counts=tuple(x + y for x, y in zip(a.bucket_counts, b.bucket_counts, strict=True)),
        explicit_bounds=a.explicit_bounds,
        exemplars=[*a.exemplars, *b.exemplars],
        **extremes,
    )
