"""The duration histograms recorded pre-aggregated (server/cachet_server/histograms.py), on a
live cachet-server process and a real Redis: /metrics counts, sums and buckets are exactly
what the calls imply, concurrent calls lose no count, multiplexed commands are counted in
redis-py's own metric, and an OTLP collector receives the same points, cumulative or (when
asked) as deltas that add up to the totals. Unit tests of the aggregation follow."""

from __future__ import annotations

import itertools
import math
import threading
from concurrent import futures

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2, lock_pb2_grpc
from cachet_server.histograms import PreaggregatedHistograms
from cachet_server.metrics import DURATION_BUCKETS
from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.parser import text_string_to_metric_families

from .redis_procs import free_port, standalone, wait_until
from .server_procs import CachetProcess

NS = [("cachet-namespace", "hist")]
GET = "cachet.cache.v1.CacheService/Get"
RPC = "rpc_server_call_duration_seconds"
REDIS = "db_client_operation_duration_seconds"


class Series:
    """One scraped histogram series: cumulative bucket counts by bound, count and sum."""

    def __init__(self) -> None:
        self.buckets: dict[float, float] = {}
        self.count = 0.0
        self.sum = 0.0


def histograms(port: int, name: str) -> dict[frozenset[tuple[str, str]], Series]:
    """The series of histogram `name` on /metrics, by their labels (without `le`)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[frozenset[tuple[str, str]], Series] = {}
    families = [f for f in text_string_to_metric_families(text) if f.name == name]
    assert len(families) <= 1, f"one {name} family"
    for family in families:
        for sample in family.samples:
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            series = found.setdefault(frozenset(labels.items()), Series())
            if sample.name == f"{name}_bucket":
                assert le is not None
                series.buckets[float(le)] = sample.value
            elif sample.name == f"{name}_count":
                series.count = sample.value
            elif sample.name == f"{name}_sum":
                series.sum = sample.value
    return found


def settled(port: int, name: str, calls: int) -> dict[frozenset[tuple[str, str]], Series]:
    """The series of `name` once they count `calls` in all."""
    return wait_until(
        lambda: (found := histograms(port, name)) and total(found) == calls and found,
        timeout=15,
        what=f"{calls} calls counted in {name}",
    )


def only(found: dict[frozenset[tuple[str, str]], Series], **labels: str) -> Series:
    (series,) = [s for key, s in found.items() if set(labels.items()) <= key]
    return series


def total(found: dict[frozenset[tuple[str, str]], Series], **labels: str) -> float:
    return sum(s.count for key, s in found.items() if set(labels.items()) <= key)


def assert_consistent(series: Series) -> None:
    """Cumulative buckets over exactly DURATION_BUCKETS and +Inf, never decreasing, the
    last equal to the count; the sum within what the buckets allow."""
    assert list(series.buckets) == [*DURATION_BUCKETS, math.inf]
    counts = list(series.buckets.values())
    assert counts == sorted(counts)
    assert counts[-1] == series.count
    lower = upper = 0.0
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in series.buckets.items():
        inside = count - previous_count
        if inside:
            lower += inside * previous_bound
            upper += inside * bound
        previous_bound, previous_count = bound, count
    assert series.sum > 0
    assert lower <= series.sum <= upper


@pytest.fixture(scope="module")
def redis_server():
    with standalone() as proc:
        yield proc


def test_scraped_histograms_are_exactly_what_the_calls_imply(redis_server):
    server = CachetProcess(redis_server.url).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            cache.Set(cache_pb2.SetRequest(key="k", value=b"v"), metadata=NS)
            for _ in range(25):
                assert cache.Get(cache_pb2.GetRequest(key="k"), metadata=NS).found
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as bad:
                    cache.Get(cache_pb2.GetRequest(key=""), metadata=NS)
                assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            locks = lock_pb2_grpc.LockServiceStub(channel)
            locks.Acquire(lock_pb2.AcquireRequest(name="L", ttl=Duration(seconds=30)), metadata=NS)
            # Held: this one waits its 0.3 s in vain, a call above the 0.25 s bound.
            with pytest.raises(grpc.RpcError):
                locks.Acquire(
                    lock_pb2.AcquireRequest(
                        name="L", ttl=Duration(seconds=30), wait=Duration(nanos=300_000_000)
                    ),
                    metadata=NS,
                )

            # A call is counted as it ends, which may be just after its caller has the answer.
            found = settled(server.metrics_port, RPC, 1 + 25 + 3 + 2)
            ok = only(found, rpc_method=GET, rpc_response_status_code="OK")
            assert ok.count == 25
            invalid = only(found, rpc_method=GET, rpc_response_status_code="INVALID_ARGUMENT")
            assert invalid.count == 3
            for series in found.values():
                assert_consistent(series)
            acquires = [
                s
                for key, s in found.items()
                if ("rpc_method", "cachet.lock.v1.LockService/Acquire") in key
            ]
            assert sorted(s.count for s in acquires) == [1, 1]
            for single in acquires:
                # One call: its duration is the sum, and each bucket counts it iff it fits.
                assert single.buckets == {
                    bound: float(single.sum <= bound) for bound in single.buckets
                }
            # The waiting one is above the 0.25 s bound, so buckets past the first were checked.
            assert max(s.sum for s in acquires) > 0.25

            # 200 concurrent Gets lose no count.
            calls = [
                cache.Get.future(cache_pb2.GetRequest(key="k"), metadata=NS) for _ in range(200)
            ]
            assert all(call.result(timeout=60).found for call in calls)
            found = settled(server.metrics_port, RPC, 1 + 225 + 3 + 2)
            ok = only(found, rpc_method=GET, rpc_response_status_code="OK")
            assert ok.count == 225
            assert_consistent(ok)
    finally:
        server.stop()


def test_multiplexed_commands_count_in_redis_pys_metric(redis_url, topology):
    """On every topology: each Get is one EVALSHA, counted once in redis-py's metric
    under the node that ran it (on Cluster, several nodes)."""
    server = CachetProcess(redis_url).start()
    keys = [f"k{i}" for i in range(10)]  # on Cluster, in slots of every master
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            for key in keys:
                cache.Set(cache_pb2.SetRequest(key=key, value=b"v"), metadata=NS)
            before = histograms(server.metrics_port, REDIS)
            for key in keys:
                cache.Get(cache_pb2.GetRequest(key=key), metadata=NS)
            calls = [
                cache.Get.future(cache_pb2.GetRequest(key=keys[i % 10]), metadata=NS)
                for i in range(100)
            ]
            assert all(call.result(timeout=60).found for call in calls)
            settled(server.metrics_port, RPC, 10 + 10 + 100)
            after = histograms(server.metrics_port, REDIS)
        evalsha = {"db_operation_name": "EVALSHA"}
        assert total(after, **evalsha) - total(before, **evalsha) == 110
        nodes = set()
        for key, series in after.items():
            labels = dict(key)
            if labels["db_operation_name"] != "EVALSHA":
                continue
            assert labels["db_system"] == "redis"
            assert labels["db_namespace"] == "0"
            assert labels["otel_scope_name"] == "redis-py"
            assert labels["server_address"] == labels["network_peer_address"]
            assert labels["server_port"] == labels["network_peer_port"]
            nodes.add(labels["server_port"])
            counts = list(series.buckets.values())
            assert counts == sorted(counts) and counts[-1] == series.count and series.sum > 0
        if topology.kind == "cluster":
            assert len(nodes) == 3, "the keys' scripts ran on every master"
    finally:
        server.stop()


def test_redis_command_durations_off_records_none(redis_server):
    server = CachetProcess(redis_server.url, CACHET_METRICS__REDIS_COMMANDS="false").start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            calls = [
                cache.Get.future(cache_pb2.GetRequest(key="k"), metadata=NS) for _ in range(20)
            ]
            for call in calls:
                call.result(timeout=60)
        settled(server.metrics_port, RPC, 20)
        assert histograms(server.metrics_port, REDIS) == {}
    finally:
        server.stop()


# Run in a process of its own: metrics set up as cachet-server does (a global meter
# provider, redis-py's observability), then commands on redis-py's ordinary path (its
# pool, as the health probe, the event bus and RETRY_ALONE take) against a real Redis.
_ORDINARY_PATH = r"""
import asyncio, json, sys, urllib.request
from opentelemetry.sdk.metrics._internal import measurement_consumer
from prometheus_client.parser import text_string_to_metric_families
import redis.asyncio as aioredis
from cachet_server.metrics import setup_metrics

runtime = setup_metrics("127.0.0.1:0", 100)
consumed = []
consume = measurement_consumer.SynchronousMeasurementConsumer.consume_measurement

def counting(self, measurement):
    consumed.append(measurement.instrument.name)
    return consume(self, measurement)

measurement_consumer.SynchronousMeasurementConsumer.consume_measurement = counting

async def commands():
    client = aioredis.from_url(sys.argv[1], max_connections=4)
    await client.set("k", "v")
    for _ in range(int(sys.argv[2])):
        await client.get("k")
    # Two at once: two connections in use, then both idle.
    await asyncio.gather(client.blpop(["nothing"], timeout=0.05), client.get("k"))
    await client.aclose()

asyncio.run(commands())
during = list(consumed)  # what the flush at collection adds after this is not per command
url = f"http://127.0.0.1:{runtime.port}/metrics"
samples = [
    [sample.name, sample.labels, sample.value]
    for family in text_string_to_metric_families(urllib.request.urlopen(url).read().decode())
    for sample in family.samples
    if sample.name.startswith("db_client_")
]
print(json.dumps({"consumed": during, "samples": samples}))
runtime.shutdown(1)
"""


def test_redis_pys_own_commands_count_without_an_sdk_record_each(redis_server):
    """redis-py's ordinary path records each command's duration and counts its pool's
    connections in and out of use (four adds per command) through the SDK's synchronous
    instruments, about 160 µs of CPU per command. Those records are kept plain on the
    event loop instead: no SDK measurement per command, and the scraped series are what
    the commands imply (every GET's duration; the connections idle and in use)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    gets = 40
    out = subprocess.run(
        [sys.executable, "-c", _ORDINARY_PATH, redis_server.url, str(gets)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{root / 'server'}:{root / 'clients/python'}"},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    # Only what happens once per connection: the pool opened two and closed them.
    assert sorted(report["consumed"]) == sorted(
        ["db.client.connection.create_time", "redis.client.connection.closed"] * 2
    )

    def sample(name: str, **labels: str) -> list[float]:
        return [
            v
            for n, found, v in report["samples"]
            if n == name and set(labels.items()) <= set(found.items())
        ]

    count = "db_client_operation_duration_seconds_count"
    assert sample(count, db_operation_name="GET") == [gets + 1]
    assert sample(count, db_operation_name="SET") == [1]
    assert sample(count, db_operation_name="BLPOP") == [1]
    (blpop_sum,) = sample("db_client_operation_duration_seconds_sum", db_operation_name="BLPOP")
    assert blpop_sum >= 0.05
    # The pool made two connections and none is in use: the in-use series stays exported
    # (at 0), as the SDK's own adds leave it.
    state = "db_client_connection_state"
    assert sample("db_client_connection_count", **{state: "idle"}) == [2]
    assert sample("db_client_connection_count", **{state: "used"}) == [0]


class _MetricsCollector:
    """An OTLP/gRPC metrics collector on a free loopback port that keeps what it gets."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1 import (
            metrics_service_pb2,
            metrics_service_pb2_grpc,
        )

        received = self.received = []
        lock = self.lock = threading.Lock()

        class Service(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                with lock:
                    received.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def exports(self, name: str):
        """Per export request, the metrics called `name` (scope name, metric)."""
        with self.lock:
            requests = list(self.received)
        return [
            [
                (scope.scope.name, metric)
                for resource in request.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == name
            ]
            for request in requests
        ]


def get_points(metric, status: str):
    return [
        p
        for p in metric.histogram.data_points
        if {(a.key, a.value.string_value) for a in p.attributes}
        >= {("rpc.method", GET), ("rpc.response.status_code", status)}
    ]


def otlp_server(redis_url: str, collector: _MetricsCollector, **env: str) -> CachetProcess:
    return CachetProcess(
        redis_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        **env,
    ).start()


def get_n(cache, n: int) -> None:
    calls = [cache.Get.future(cache_pb2.GetRequest(key="k"), metadata=NS) for _ in range(n)]
    for call in calls:
        call.result(timeout=60)


def test_otlp_receives_the_same_cumulative_histograms_as_prometheus(redis_server):
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    collector = _MetricsCollector()
    server = otlp_server(redis_server.url, collector)
    try:
        with grpc.insecure_channel(server.address) as channel:
            get_n(cache_pb2_grpc.CacheServiceStub(channel), 40)
        scraped = only(settled(server.metrics_port, RPC, 40), rpc_response_status_code="OK")
        redis_scraped = only(histograms(server.metrics_port, REDIS), db_operation_name="EVALSHA")
        assert server.terminate() == 0  # the provider's shutdown exports one last time
    finally:
        server.stop()
        collector.server.stop(0)
    last = [metrics for metrics in collector.exports("rpc.server.call.duration") if metrics][-1]
    ((scope, metric),) = last
    assert scope == "cachet_server"
    assert metric.unit == "s"
    assert metric.histogram.aggregation_temporality == (
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    (point,) = get_points(metric, "OK")
    assert point.count == 40 == scraped.count
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
    cumulative = [sum(point.bucket_counts[: i + 1]) for i in range(len(point.bucket_counts))]
    assert cumulative == list(scraped.buckets.values())
    assert point.sum == pytest.approx(scraped.sum)
    assert 0 < point.min <= point.max
    # redis-py's metric: one per export, in its own scope, with the multiplexed commands.
    redis_exports = [m for m in collector.exports("db.client.operation.duration") if m]
    assert all(len(metrics) == 1 for metrics in redis_exports)
    ((scope, redis_metric),) = redis_exports[-1]
    assert scope == "redis-py"
    evalsha = [
        p
        for p in redis_metric.histogram.data_points
        if any(
            a.key == "db.operation.name" and a.value.string_value == "EVALSHA" for a in p.attributes
        )
    ]
    assert [p.count for p in evalsha] == [redis_scraped.count]


def test_otlp_delta_preference_exports_differences_that_add_up(redis_server):
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    collector = _MetricsCollector()
    server = otlp_server(
        redis_server.url, collector, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta"
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            get_n(cache, 30)
            exported = len(collector.exports("rpc.server.call.duration"))
            wait_until(
                lambda: any(collector.exports("rpc.server.call.duration")[exported:]),
                timeout=15,
                what="an export after the first calls",
            )
            get_n(cache, 20)
        scraped = only(settled(server.metrics_port, RPC, 50), rpc_response_status_code="OK")
        assert server.terminate() == 0
    finally:
        server.stop()
        collector.server.stop(0)
    points = [
        point
        for metrics in collector.exports("rpc.server.call.duration")
        for _, metric in metrics
        for point in get_points(metric, "OK")
        if metric.histogram.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    ]
    assert len(points) >= 2, "the first calls and the later ones in different exports"
    assert sum(p.count for p in points) == 50
    assert all(p.count == sum(p.bucket_counts) > 0 for p in points)
    buckets = [sum(column) for column in zip(*(p.bucket_counts for p in points), strict=True)]
    assert [sum(buckets[: i + 1]) for i in range(len(buckets))] == list(scraped.buckets.values())
    assert sum(p.sum for p in points) == pytest.approx(scraped.sum)
    # Each interval starts where the one before ended.
    for earlier, later in itertools.pairwise(points):
        assert later.start_time_unix_nano >= earlier.time_unix_nano


# ---- the aggregation itself, in process ---------------------------------------------------

SCOPE = InstrumentationScope("redis-py", "1.0.0")
BOUNDS = (0.1, 1.0)


def provider_with(*readers):
    registry = PreaggregatedHistograms()
    resource = Resource({"service.name": "unit"})
    provider = MeterProvider(resource=resource, metric_readers=list(readers))
    for reader in readers:
        registry.export_to(reader, resource)
    histogram = registry.histogram(SCOPE, "db.x", unit="s", description="d", bounds=BOUNDS)
    return provider, histogram


def collected(reader, name: str = "db.x"):
    data = reader.get_metrics_data()
    if data is None:
        return {}
    metrics = [
        (scope_metrics.scope.name, metric)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == name
    ]
    assert len(metrics) <= 1, "one metric of a name"
    return {frozenset(p.attributes.items()): p for _, m in metrics for p in m.data.data_points}


def test_values_land_in_the_buckets_the_sdk_would_use():
    reader = InMemoryMetricReader()
    provider, histogram = provider_with(reader)
    sdk = provider.get_meter("other").create_histogram(
        "sdk.x", explicit_bucket_boundaries_advisory=BOUNDS
    )
    series = histogram.series({"a": "1"})
    values = [0.05, 0.1, 0.100001, 1.0, 7.0]
    for v in values:
        series.record(v)
        sdk.record(v, {"a": "1"})
    (ours,) = collected(reader).values()
    (theirs,) = collected(reader, "sdk.x").values()
    assert ours.bucket_counts == theirs.bucket_counts == (2, 2, 1)
    assert (ours.count, ours.sum, ours.min, ours.max) == (5, sum(values), 0.05, 7.0)
    assert tuple(ours.explicit_bounds) == BOUNDS


def test_points_merge_into_the_sdks_metric_of_the_same_name_and_scope():
    reader = InMemoryMetricReader()
    provider, histogram = provider_with(reader)
    sdk = provider.get_meter(SCOPE.name, SCOPE.version).create_histogram(
        "db.x", unit="s", description="d", explicit_bucket_boundaries_advisory=BOUNDS
    )
    histogram.series({"a": "1"}).record(0.5)
    sdk.record(0.05, {"a": "1"})
    sdk.record(5.0, {"a": "2"})
    points = collected(reader)
    same = points[frozenset({("a", "1")})]
    assert (same.count, same.bucket_counts, same.min, same.max) == (2, (1, 1, 0), 0.05, 0.5)
    assert same.sum == pytest.approx(0.55)
    assert points[frozenset({("a", "2")})].bucket_counts == (0, 0, 1)


def test_a_delta_reader_gets_differences_and_a_cumulative_one_totals():
    cumulative = InMemoryMetricReader()
    delta = InMemoryMetricReader(
        preferred_temporality={HistogramInstrument: AggregationTemporality.DELTA}
    )
    _provider, histogram = provider_with(cumulative, delta)
    series = histogram.series({"a": "1"})
    histogram.series({"a": "idle"})  # made, never recorded: no point
    series.record(0.05)
    series.record(0.5)
    (first,) = collected(delta).values()
    assert (first.count, first.bucket_counts) == (2, (1, 1, 0))
    assert first.min is None and first.max is None, "an interval's extremes are not kept"
    assert collected(delta) == {}, "nothing new: no point"
    series.record(5.0)
    (second,) = collected(delta).values()
    assert (second.count, second.bucket_counts, second.sum) == (1, (0, 0, 1), 5.0)
    assert second.start_time_unix_nano >= first.time_unix_nano
    (total_point,) = collected(cumulative).values()
    assert (total_point.count, total_point.bucket_counts) == (3, (1, 1, 1))
    assert total_point.sum == pytest.approx(5.55)


def test_collections_from_another_thread_never_lose_or_tear_counts():
    reader = InMemoryMetricReader()
    _provider, histogram = provider_with(reader)
    series = histogram.series({"a": "1"})
    records = 200_000
    done = threading.Event()

    def record() -> None:
        for i in range(records):
            series.record(5.0 if i % 2 else 0.05)
        done.set()

    recorder = threading.Thread(target=record)
    recorder.start()
    seen = []
    while not done.is_set():
        for point in collected(reader).values():
            assert point.count == sum(point.bucket_counts)
            seen.append(point.count)
    recorder.join()
    assert seen == sorted(seen)
    (final,) = collected(reader).values()
    assert final.count == records
    assert final.bucket_counts == (records // 2, 0, records // 2)


def test_call_durations_are_counted_without_a_histogram_record_while_no_reader_collects(
    monkeypatch,
):
    """Metrics off (no reader was given the histograms): a call still counts in the
    service stats (GetServiceStats), but costs no histogram record; once a reader
    collects, each call is one record in its status's series."""
    from cachet_server import metrics
    from cachet_server.stats import ServiceStats

    method = "/cachet.test.v1.Unread/Call"
    stats = ServiceStats(observed=False)
    counter = stats.method_counter(method)

    def recorded() -> dict[str, int]:
        return {
            str(series.attributes["rpc.response.status_code"]): sum(series.counts)
            for series in metrics.instruments.rpc_duration.all_series()
            if series.attributes["rpc.method"] == method.lstrip("/")
        }

    monkeypatch.setattr(metrics.histograms, "read", False)
    for code in (None, grpc.StatusCode.NOT_FOUND):
        counter.start("hist")
        counter.end(code, 0.002)
    assert recorded() == {}
    entry = stats.methods[method]
    assert (entry.calls, entry.errors, dict(entry.errors_by_code)) == (2, 1, {"NOT_FOUND": 1})
    assert stats.namespaces["hist"].calls == 2 and stats.active[method] == 0

    monkeypatch.setattr(metrics.histograms, "read", True)
    for code in (None, None, grpc.StatusCode.NOT_FOUND):
        counter.start("hist")
        counter.end(code, 0.002)
    assert recorded() == {"OK": 2, "NOT_FOUND": 1}
    assert stats.methods[method].calls == 5


def test_deferred_adds_export_what_the_sdks_own_adds_would():
    """The same adds to an SDK up-down counter and, deferred, to another: every
    collection shows both with the same series and values, a set whose adds net to
    zero included."""
    from cachet_server.metrics import DeferredUpDownCounter

    reader = InMemoryMetricReader()
    registry = PreaggregatedHistograms()
    resource = Resource({"service.name": "unit"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    registry.export_to(reader, resource)
    meter = provider.get_meter("redis-py")
    direct = meter.create_up_down_counter("direct")
    deferred = DeferredUpDownCounter(meter.create_up_down_counter("deferred"))
    registry.before_collect(deferred.flush)

    def points(name: str) -> dict[frozenset[tuple[str, str]], int]:
        data = reader.get_metrics_data()
        return {
            frozenset(point.attributes.items()): point.value
            for resource_metrics in data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == name
            for point in metric.data.data_points
        }

    def add(amount: int, state: str) -> None:
        for counter in (direct, deferred):
            counter.add(amount, attributes={"state": state})

    add(1, "idle")
    add(-1, "idle")
    add(1, "used")
    add(1, "idle")
    first = points("deferred")
    assert first == points("direct")
    assert first == {frozenset({("state", "idle")}): 1, frozenset({("state", "used")}): 1}
    add(-1, "used")
    add(1, "used")
    add(-1, "used")
    second = points("deferred")
    assert second == points("direct")
    assert second[frozenset({("state", "used")})] == 0
