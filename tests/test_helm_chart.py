"""The Helm chart renders what Kubernetes accepts (validated offline against the schemas of
two pinned Kubernetes versions), refuses bad or inconsistent values with a readable
message, and its Deployment's command and environment start a serving cachet."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .server_procs import CachetProcess

ROOT = Path(__file__).resolve().parent.parent
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "helm" / "cachet"
# The oldest and a recent Kubernetes the chart is checked against (native gRPC probes
# are GA from 1.27); kubernetes-validate ships both schemas.
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
CREDENTIAL = "auth.existingSecret=cachet-auth"
# Custom resources of prometheus-operator: Kubernetes ships no schema for them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

VALUE_SETS = {
    "minimal": [CREDENTIAL],
    "tls-mtls-and-network-policy": [
        CREDENTIAL,
        "tls.existingSecret=cachet-tls",
        "tls.clientAuth=true",
        "networkPolicy.enabled=true",
        "networkPolicy.egress.enabled=true",
        "networkPolicy.clientsFrom[0].podSelector.matchLabels.app=api",
    ],
    "monitoring": [
        CREDENTIAL,
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.dashboard.enabled=true",
    ],
    "autoscaled-with-otel-and-spread": [
        "config.auth.api_keys[0].id=ops",
        f"config.auth.api_keys[0].sha256={'a' * 64}",
        "config.auth.api_keys[0].namespaces[0]=*",
        "config.auth.api_keys[0].roles[0]=admin",
        "autoscaling.enabled=true",
        "autoscaling.minReplicas=3",
        "autoscaling.maxReplicas=6",
        "pdb.minAvailable=2",
        "env.OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317",
        "env.OTEL_SERVICE_NAME=cachet-prod",
        "extraEnv[0].name=OTEL_RESOURCE_ATTRIBUTES",
        "extraEnv[0].value=deployment.environment=prod",
        "envFrom[0].secretRef.name=otel-headers",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    ],
    "auth-off-metrics-off-text-logs": [
        "auth.mode=off",
        "metrics.enabled=false",
        "logFormat=text",
        "pdb.create=false",
        "externalRedis.existingSecret=redis-creds",
        "config.ratelimit.fail_mode=fail_open",
    ],
}


def helm_template(*sets: str) -> subprocess.CompletedProcess[str]:
    # No --kube-version: the helm `make setup` builds must render the chart as it is.
    args = [str(HELM), "template", "demo", str(CHART)]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def render(*sets: str) -> list[dict]:
    result = helm_template(*sets)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


def container_of(docs: list[dict]) -> dict:
    (container,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_lint_is_clean():
    result = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / "lint-values.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_manifests_validate_against_kubernetes(value_set, kube_version):
    docs = render(*VALUE_SETS[value_set])
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_default_values_refuse_to_render_without_a_credential():
    result = helm_template()
    assert result.returncode != 0
    assert "auth.mode is required but no credential is configured" in result.stderr
    assert "auth.existingSecret" in result.stderr


def test_defaults_are_secure_and_probes_split_liveness_from_readiness():
    docs = render(CREDENTIAL)
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    container = container_of(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    env = {e["name"]: e for e in container["env"]}
    assert env["CACHET_AUTH__MODE"]["value"] == "required"
    assert env["CACHET_AUTH__API_KEYS_FILE"]["value"] == "/etc/cachet/auth/api-keys.yaml"
    assert env["CACHET_METRICS__LISTEN"]["value"] == "0.0.0.0:9464"
    assert env["CACHET_LOG_FORMAT"]["value"] == "json"
    assert env["CACHET_SHUTDOWN_GRACE"]["value"] == "PT20S"
    assert pod["terminationGracePeriodSeconds"] == 25
    ports = {p["name"]: p for p in by_kind(docs)["Service"]["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == 9464 and ports["metrics"]["targetPort"] == "metrics"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["auth"] == "/etc/cachet/auth"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "cachet-auth"


def test_tls_secret_is_mounted_and_probes_use_the_plaintext_health_port():
    docs = render(*VALUE_SETS["tls-mtls-and-network-policy"])
    container = container_of(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CACHET_TLS__CERT_FILE"] == "/etc/cachet/tls/tls.crt"
    assert env["CACHET_TLS__KEY_FILE"] == "/etc/cachet/tls/tls.key"
    assert env["CACHET_TLS__CLIENT_CA_FILE"] == "/etc/cachet/tls/ca.crt"
    assert env["CACHET_HEALTH_LISTEN"] == "[::]:50052"
    assert container["livenessProbe"]["grpc"]["port"] == 50052
    assert container["readinessProbe"]["grpc"]["port"] == 50052
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "cachet-tls"
    policy = by_kind(docs)["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    grpc_rule = policy["ingress"][0]
    assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {"app": "api"}}}]


def test_monitoring_objects():
    docs = by_kind(render(*VALUE_SETS["monitoring"]))
    endpoint = docs["ServiceMonitor"]["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    rules = {r["alert"]: r for r in docs["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "CachetHighErrorRatio",
        "CachetHighLatencyP99",
        "CachetRedisUnreachable",
        "CachetQuotaRefusals",
    }
    assert "cachet_quota_refusals_total" in rules["CachetQuotaRefusals"]["expr"]
    assert "cachet_redis_reachable" in rules["CachetRedisUnreachable"]["expr"]
    dashboard = json.loads(docs["ConfigMap"]["data"]["cachet.json"])
    assert docs["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for shown in ("call rate", "errors", "latency", "hit ratio", "lock", "rate-limit", "event"):
        assert shown in titles


def test_otel_variables_extra_env_env_from_and_spread():
    docs = render(*VALUE_SETS["autoscaled-with-otel-and-spread"])
    container = container_of(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=prod"
    assert container["envFrom"] == [{"secretRef": {"name": "otel-headers"}}]
    assert env["CACHET_CONFIG_FILE"] == "/etc/cachet/config/cachet.yaml"
    assert "CACHET_AUTH__API_KEYS_FILE" not in env
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "cachet"
    assert by_kind(docs)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    assert "replicas" not in by_kind(docs)["Deployment"]["spec"]


SCHEMA_REFUSES = [
    "typoKey=1",
    "metrics.serviceMonitor.enabeld=true",
    "resources.limits.memory=lots",
    "resources.requests.cpu=fast",
    "externalRedis.url=http://nope",
    "port=70000",
    "env.NOT_CACHET=x",
    "replicaCount=0",
    "auth.mode=maybe",
    "logFormat=xml",
    "extraEnv[0].name=1BAD",
    "pdb.minAvailable=lots",
]


@pytest.mark.parametrize("bad", SCHEMA_REFUSES)
def test_schema_refuses_bad_values(bad):
    result = helm_template(CREDENTIAL, bad)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"],
            "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)",
        ),
        (["replicaCount=2", "pdb.minAvailable=3"], "pdb.minAvailable (3) must be below the"),
        (["replicaCount=2", "pdb.minAvailable=2"], "replica count (2, replicaCount)"),
        (["tls.clientAuth=true"], "tls.clientAuth needs tls.existingSecret"),
        (["auth.mode=off"], "auth.existingSecret is set but auth.mode is off"),
        (
            ["metrics.enabled=false", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_readable_message(values, message):
    result = helm_template(CREDENTIAL, *values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_rendered_deployment_starts_a_serving_process(redis_standalone, tmp_path):
    """The Deployment's command and environment, with its mounts pointed at local files
    (the Secret's api-keys.yaml, the ConfigMap's cachet.yaml) and its addresses at
    loopback, start a cachet that serves authenticated calls."""
    key = secrets.token_urlsafe(24)
    docs = render(
        CREDENTIAL,
        "config.ratelimit.fail_mode=fail_open",
        f"externalRedis.url={redis_standalone.url}",
    )
    container = container_of(docs)
    assert container["command"] == ["cachet-server"]
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    local = {name: tmp_path / name for name in mounts}
    for folder in local.values():
        folder.mkdir()
    (local["auth"] / "api-keys.yaml").write_text(
        yaml.safe_dump(
            [
                {
                    "id": "chart-test",
                    "sha256": hashlib.sha256(key.encode()).hexdigest(),
                    "namespaces": ["*"],
                    "roles": ["read", "write"],
                }
            ]
        )
    )
    (local["config"] / "cachet.yaml").write_text(by_kind(docs)["ConfigMap"]["data"]["cachet.yaml"])
    env: dict[str, str] = {}
    for entry in container["env"]:
        value = entry["value"]
        for name, path in mounts.items():
            value = value.replace(str(path), str(local[name]))
        env[entry["name"]] = value
    assert env.pop("CACHET_LISTEN") == "[::]:50051"
    assert env.pop("CACHET_METRICS__LISTEN") == "0.0.0.0:9464"
    # CachetProcess puts the listen addresses on free loopback ports.
    server = CachetProcess(env["CACHET_REDIS_URL"], **env).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "liveness"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            metadata = [("authorization", f"Bearer {key}"), ("cachet-namespace", "chart")]
            cache.Set(cache_pb2.SetRequest(key="k", value=b"v"), metadata=metadata, timeout=5)
            assert cache.Get(cache_pb2.GetRequest(key="k"), metadata=metadata, timeout=5).found
            with pytest.raises(grpc.RpcError) as refused:
                cache.Get(cache_pb2.GetRequest(key="k"), metadata=metadata[1:], timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert server.terminate() == 0
    finally:
        server.stop()


def test_chart_readme_is_generated_from_values():
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "scripts" / "chart_readme.py"),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (CHART / "README.md").read_text()
    for documented in ("auth.existingSecret", "tls.existingSecret", "networkPolicy.enabled"):
        assert f"`{documented}`" in readme
