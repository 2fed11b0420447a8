"""The Helm chart renders what Kubernetes needs, and its schema refuses bad values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "helm" / "cachet"
# Native gRPC probes are stable from 1.27, the chart's floor.
KUBE_VERSION = "1.30.0"


def render(*sets: str) -> dict[str, dict]:
    args = [str(HELM), "template", "demo", str(CHART), "--kube-version", KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out.stdout) if doc}


def test_lint_is_clean():
    result = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_is_secure_and_probed_over_grpc_health():
    docs = render()
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert container["livenessProbe"]["grpc"]["port"] == 50051
    env = {e["name"]: e for e in container["env"]}
    assert env["CACHET_REDIS_URL"]["value"].startswith("redis://")
    assert env["CACHET_SHUTDOWN_GRACE"]["value"] == "PT20S"
    assert pod["terminationGracePeriodSeconds"] == 25
    assert docs["Service"]["spec"]["ports"][0]["appProtocol"] == "grpc"


def test_secret_url_config_file_and_autoscaling():
    docs = render(
        "externalRedis.existingSecret=redis-creds",
        "config.ratelimit.fail_mode=fail_open",
        "autoscaling.enabled=true",
        "env.CACHET_LIMITS__DEFAULT_TTL=PT5M",
    )
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["CACHET_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-creds",
        "key": "redis-url",
    }
    assert env["CACHET_CONFIG_FILE"]["value"] == "/etc/cachet/cachet.yaml"
    assert env["CACHET_LIMITS__DEFAULT_TTL"]["value"] == "PT5M"
    config = yaml.safe_load(docs["ConfigMap"]["data"]["cachet.yaml"])
    assert config == {"ratelimit": {"fail_mode": "fail_open"}}
    assert "replicas" not in docs["Deployment"]["spec"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 10


@pytest.mark.parametrize(
    "bad",
    ["externalRedis.url=http://nope", "port=70000", "env.NOT_CACHET=x", "replicaCount=0"],
)
def test_schema_refuses_bad_values(bad):
    result = subprocess.run(
        [str(HELM), "template", "demo", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
