"""A live cachet-server process: /metrics counts exactly what it served, readiness follows
Redis while liveness does not, JSON log lines carry the caller's trace id, a collector
that is down does not hold up shutdown, and bad settings are clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2, lock_pb2_grpc
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from .redis_procs import free_port, standalone, wait_until
from .server_procs import CachetProcess

NS = [("cachet-namespace", "obs")]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01")
POLICY = """
ratelimit:
  policies:
    - name: once
      rate_limit: {requests_per_unit: 1, unit: hour}
"""


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


@pytest.fixture(scope="module")
def redis_server():
    with standalone() as proc:
        yield proc


def test_metrics_count_exactly_the_calls_served(redis_server, tmp_path):
    config = tmp_path / "cachet.yaml"
    config.write_text(POLICY)
    server = CachetProcess(redis_server.url, CACHET_CONFIG_FILE=str(config)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            cache.Set(cache_pb2.SetRequest(key="a", value=b"1"), metadata=NS)
            assert cache.Get(cache_pb2.GetRequest(key="a"), metadata=NS).found
            for missing in ("b", "c"):
                assert not cache.Get(cache_pb2.GetRequest(key=missing), metadata=NS).found
            with pytest.raises(grpc.RpcError) as bad:
                cache.Get(cache_pb2.GetRequest(key=""), metadata=NS)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            deleted = cache.Delete(cache_pb2.DeleteRequest(keys=["a", "never-set"]), metadata=NS)
            assert deleted.deleted == 1

            locks = lock_pb2_grpc.LockServiceStub(channel)
            locks.Acquire(lock_pb2.AcquireRequest(name="L", ttl=Duration(seconds=30)), metadata=NS)

            limits = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
            target = ratelimit_pb2.RateLimitTarget(
                policy=ratelimit_pb2.PolicyRef(name="once", key="user-1")
            )
            answers = [
                limits.Check(ratelimit_pb2.CheckRequest(target=target), metadata=NS).result.allowed
                for _ in range(2)
            ]
            assert answers == [True, False]

            bus = eventbus_pb2_grpc.EventBusServiceStub(channel)
            bus.Append(
                eventbus_pb2.AppendRequest(stream="jobs", event=eventbus_pb2.Event()), metadata=NS
            )
            bus.CreateGroup(
                eventbus_pb2.CreateGroupRequest(
                    stream="jobs",
                    group="workers",
                    start_id="0",
                    dead_letter=eventbus_pb2.DeadLetterPolicy(max_deliveries=1, max_len=100),
                ),
                metadata=NS,
            )
            consume = bus.Consume(
                eventbus_pb2.ConsumeRequest(stream="jobs", group="workers", consumer="w1"),
                metadata=NS,
            )
            assert len(next(consume).events) == 1
            consume.cancel()
            time.sleep(0.05)
            claimed = bus.Claim(
                eventbus_pb2.ClaimRequest(
                    stream="jobs", group="workers", consumer="w2", min_idle=Duration(nanos=10**6)
                ),
                metadata=NS,
            )
            assert len(claimed.dead_lettered_ids) == 1

        samples = scrape(server.metrics_port)
        ns = {"cachet_namespace": "obs"}
        assert value(samples, "cachet_cache_hits_total", **ns) == 1
        assert value(samples, "cachet_cache_misses_total", **ns) == 2
        get = {"rpc_method": "cachet.cache.v1.CacheService/Get"}
        calls = "rpc_server_call_duration_seconds_count"
        assert value(samples, calls, **get, rpc_response_status_code="OK") == 3
        assert value(samples, calls, **get, rpc_response_status_code="INVALID_ARGUMENT") == 1
        assert value(samples, calls, rpc_method="cachet.cache.v1.CacheService/Set") == 1
        assert value(samples, "cachet_lock_grants_total") == 1
        assert value(samples, "cachet_lock_wait_duration_seconds_count") == 1
        assert value(samples, "cachet_cache_invalidations_total", **ns) == 1
        decisions = "cachet_ratelimit_decisions_total"
        once = {"cachet_ratelimit_policy": "once"}
        assert value(samples, decisions, **once, cachet_ratelimit_outcome="allowed") == 1
        assert value(samples, decisions, **once, cachet_ratelimit_outcome="denied") == 1
        assert value(samples, "cachet_eventbus_dead_lettered_total", **ns) == 1
        assert value(samples, "cachet_eventbus_published_total", **ns) == 1
        assert value(samples, "cachet_eventbus_delivered_total", **ns) == 1
        assert value(samples, "cachet_rpc_server_active_calls") == 0
        assert value(samples, "cachet_redis_reachable") == 1
        # Redis command durations come from redis-py's own instruments, by operation.
        assert (
            value(
                samples, "db_client_operation_duration_seconds_count", db_operation_name="EVALSHA"
            )
            > 0
        )
        # Health checks are not calls of the corridor.
        assert not any("grpc.health" in dict(series).get("rpc_method", "") for _, series in samples)
        assert server.terminate() == 0
        assert "cachet.access" not in server.output(), "off by default"
    finally:
        server.stop()


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            .status
        )


def test_readiness_follows_redis_while_liveness_stays_serving():
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    with standalone() as redis:
        server = CachetProcess(redis.url).start()
        try:
            assert health(server.address, "") == serving
            assert health(server.address, "liveness") == serving
            redis.kill()
            wait_until(
                lambda: health(server.address, "") == not_serving,
                timeout=15,
                what="readiness to follow Redis down",
            )
            assert health(server.address, "cachet.cache.v1.CacheService") == not_serving
            assert value(scrape(server.metrics_port), "cachet_redis_reachable") == 0
            for _ in range(5):
                assert health(server.address, "liveness") == serving
                time.sleep(0.1)
        finally:
            server.stop()


def test_json_logs_carry_the_callers_trace_and_a_down_collector_costs_no_wait(redis_server):
    """Tracing on, exporting to a collector address nothing listens on."""
    server = CachetProcess(
        redis_server.url,
        CACHET_LOG_FORMAT="json",
        CACHET_LOG_ACCESS_SAMPLE="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_SERVICE_NAME="cachet-under-test",
    ).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            for i in range(20):
                cache.Set(
                    cache_pb2.SetRequest(key=f"k{i}", value=b"secret-value"),
                    metadata=[*NS, TRACEPARENT],
                )
        started = time.monotonic()
        assert server.terminate() == 0
        shutdown = time.monotonic() - started
        output = server.output()
    finally:
        server.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [line for line in lines if line.get("logger") == "cachet.access"]
    assert len(access) == 20
    assert {line["trace_id"] for line in access} == {TRACE_ID}
    assert all(line["status"] == "OK" and line["namespace"] == "obs" for line in access)
    assert "secret-value" not in output
    # The exit waits for no collector: drain is immediate with nothing in flight, and the
    # span flush is bounded at 1 s (the margin is for a loaded machine).
    print(f"shutdown with a down collector: {shutdown:.2f} s")
    assert shutdown < 5


def run_server(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CACHET_")}
    return subprocess.run(
        [sys.executable, "-m", "cachet_server"],
        env={**clean, "CACHET_METRICS__LISTEN": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CACHET_LOG_LEVEL": "bogus"}, "log_level: Input should be 'DEBUG'"),
        (
            {"CACHET_DEFAULT_TTL": "PT5M"},
            "CACHET_DEFAULT_TTL (did you mean CACHET_LIMITS__DEFAULT_TTL",
        ),
        ({"CACHET_LOG_FORMAT": "xml"}, "log_format"),
        ({"CACHET_METRICS__LISTN": "x"}, "did you mean CACHET_METRICS__LISTEN"),
    ],
)
def test_bad_settings_are_clean_configuration_errors(env, expected, tmp_path):
    result = run_server(env, tmp_path)
    assert result.returncode == 1
    assert "bad configuration" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_yaml_key_is_refused_with_the_nearest_name(tmp_path):
    config = tmp_path / "cachet.yaml"
    config.write_text(
        "limits:\n  max_batchh: 5\n"
        "ratelimit:\n  policies:\n    - name: a\n"
        "      rate_limit: {requests_per_unit: 1, unit: hour}\n      shadow: true\n"
    )
    result = run_server({"CACHET_CONFIG_FILE": str(config)}, tmp_path)
    assert result.returncode == 1
    assert "unknown key limits.max_batchh (did you mean max_batch?)" in result.stderr
    assert "unknown key ratelimit.policies[0].shadow (did you mean shadow_mode?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_namespace_labels_are_capped():
    from cachet_server.metrics import OTHER_NAMESPACES, NamespaceLabels

    labels = NamespaceLabels(limit=2)
    assert [labels(n) for n in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        OTHER_NAMESPACES,
        "a",
        OTHER_NAMESPACES,
        "b",
    ]


class _Collector:
    """An OTLP/gRPC trace collector on a free loopback port that keeps what it gets."""

    def __init__(self) -> None:
        from concurrent import futures

        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        received = self.received = []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                received.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def spans(self):
        return [
            (resource_spans.resource, span)
            for request in self.received
            for resource_spans in request.resource_spans
            for scope in resource_spans.scope_spans
            for span in scope.spans
        ]


def test_the_standard_otel_variables_alone_export_traces(redis_server):
    collector = _Collector()
    server = CachetProcess(
        redis_server.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_SERVICE_NAME="cachet-orders",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            cache.Get(cache_pb2.GetRequest(key="exported"), metadata=[*NS, TRACEPARENT])
        wait_until(
            lambda: any(s.kind == s.SPAN_KIND_SERVER for _, s in collector.spans()),
            timeout=15,
            what="the RPC span at the collector",
        )
        assert server.terminate() == 0
    finally:
        server.stop()
        collector.server.stop(0)
    spans = collector.spans()
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "cachet-orders"
    assert resource["deployment.environment"] == "test"
    (rpc,) = [s for _, s in spans if s.name == "cachet.cache.v1.CacheService/Get"]
    assert rpc.trace_id.hex() == TRACE_ID
    children = [s for _, s in spans if s.parent_span_id == rpc.span_id]
    assert children and all(s.trace_id.hex() == TRACE_ID for s in children)
    assert {s.name for s in children} == {"EVALSHA cache_get"}
