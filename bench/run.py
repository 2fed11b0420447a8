"""Load harness: cachet's RPCs against raw Redis, measured in one run on one machine.

Starts a throwaway redis-server and a `cachet-server` process on free loopback
ports, drives cachet with ghz (gRPC load generator) and the same Redis with
redis-benchmark at the same concurrency, and writes bench/report.md with
throughput and latency per operation and the ratio cachet/Redis. The ratio is
what to compare across changes; absolute numbers depend on the machine.

    make bench                      # defaults
    python bench/run.py --requests 20000 --concurrency 32

It also measures what telemetry costs: Get with metrics and tracing each on and off,
one fresh cachet process per combination (tracing exports to a collector address
nothing listens on, so spans are built, batched and dropped: the cost on the server).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "bin"
NAMESPACE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Result:
    operation: str
    rps: float
    p50_ms: float
    p99_ms: float
    # CPU time the cachet process spent per call (user + system), when measured: less
    # sensitive than throughput to other load on a shared machine.
    cpu_us: float | None = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ghz(port: int, call: str, data: dict[str, object], requests: int, concurrency: int) -> Result:
    out = subprocess.run(
        [
            str(TOOLS / "ghz"),
            "--insecure",
            "--format",
            "json",
            "--import-paths",
            str(ROOT / "protos"),
            "--proto",
            str(ROOT / "protos" / "cachet" / "cache" / "v1" / "cache.proto"),
            "--call",
            call,
            "-d",
            json.dumps(data),
            "-m",
            json.dumps({"cachet-namespace": NAMESPACE}),
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    report = json.loads(out.stdout)
    codes = report.get("statusCodeDistribution", {})
    if any(code != "OK" for code in codes):
        raise RuntimeError(f"{call}: failed calls: {codes}")
    latencies = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
    return Result(call.rsplit("/", 1)[1], report["rps"], latencies[50], latencies[99])


def redis_benchmark(port: int, tests: str, requests: int, concurrency: int) -> dict[str, Result]:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-t",
            tests,
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-d",
            "64",
            "--csv",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    results: dict[str, Result] = {}
    lines = [line.replace('"', "").split(",") for line in out.stdout.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    for row in rows:
        record = dict(zip(header, row, strict=False))
        name = record["test"].split(" ")[0]
        results[name] = Result(
            name, float(record["rps"]), float(record["p50_latency_ms"]),
            float(record["p99_latency_ms"]),
        )  # fmt: skip
    return results


# (label, environment): metrics via the Prometheus endpoint, tracing via OTLP.
TELEMETRY_CASES = [
    ("metrics off, tracing off", {"CACHET_METRICS__LISTEN": ""}),
    ("metrics on, tracing off", {}),
    ("metrics on without Redis command metrics", {"CACHET_METRICS__REDIS_COMMANDS": "false"}),
    ("metrics off, tracing on", {"CACHET_METRICS__LISTEN": "", "TRACING": "on"}),
    ("metrics on, tracing on", {"TRACING": "on"}),
]


def cachet_env(redis_port: int, cachet_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHET_", "OTEL_"))}
    return {
        **env,
        "CACHET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CACHET_LISTEN": f"127.0.0.1:{cachet_port}",
        "CACHET_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
        "CACHET_LOG_LEVEL": "WARNING",
        "CACHET_AUTH__MODE": "off",
        **extra,
    }


def telemetry_overhead(redis_port: int, requests: int, concurrency: int) -> list[Result]:
    """Get throughput and latency per telemetry combination, each in a fresh process."""
    results = []
    for label, case in TELEMETRY_CASES:
        extra = {k: v for k, v in case.items() if k != "TRACING"}
        if case.get("TRACING"):
            extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "cachet_server"], env=cachet_env(redis_port, port, **extra)
        )
        try:
            wait_for_port(port)
            call = "cachet.cache.v1.CacheService/Get"
            ghz(port, call, {"key": "k"}, 500, 4)  # warm up
            before = cpu_seconds(process.pid)
            result = ghz(port, call, {"key": "k"}, requests, concurrency)
            cpu_us = (cpu_seconds(process.pid) - before) / requests * 1e6
            results.append(Result(label, result.rps, result.p50_ms, result.p99_ms, cpu_us))
        finally:
            process.terminate()
            process.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "report.md")
    args = parser.parse_args()
    if not (TOOLS / "ghz").exists():
        sys.exit("ghz is missing: run `make bench` (it installs the pinned ghz)")

    workdir = Path(tempfile.mkdtemp(prefix="cachet-bench-"))
    redis_port, cachet_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    cachet = None
    try:
        wait_for_port(redis_port)
        env = cachet_env(redis_port, cachet_port)
        cachet = subprocess.Popen([sys.executable, "-m", "cachet_server"], env=env)
        wait_for_port(cachet_port)
        encoded = base64.b64encode(b"x" * 64).decode()
        ghz(cachet_port, "cachet.cache.v1.CacheService/Set", {"key": "k", "value": encoded}, 500, 4)
        n, c = args.requests, args.concurrency
        cachet_results = [
            ghz(cachet_port, "cachet.cache.v1.CacheService/Set",
                {"key": "bench:{{.RequestNumber}}", "value": encoded}, n, c),
            ghz(cachet_port, "cachet.cache.v1.CacheService/Get", {"key": "k"}, n, c),
            ghz(cachet_port, "cachet.cache.v1.CacheService/Increment", {"key": "counter"}, n, c),
            ghz(cachet_port, "cachet.cache.v1.CacheService/GetMany",
                {"keys": [f"bench:{i}" for i in range(10)]}, n, c),
        ]  # fmt: skip
        baseline = redis_benchmark(redis_port, "set,get,incr,mset", n, c)
        pairs = {"Set": "SET", "Get": "GET", "Increment": "INCR", "GetMany": "MSET"}
        cachet.terminate()
        cachet.wait(timeout=30)
        cachet = None
        telemetry = telemetry_overhead(redis_port, n, c)
    finally:
        if cachet is not None:
            cachet.terminate()
            cachet.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        "# cachet benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({os.cpu_count()} cores), {args.requests} requests per operation, "
        f"concurrency {args.concurrency}, 64-byte values. cachet: one `cachet-server` process "
        "driven by ghz; baseline: redis-benchmark against the same redis-server. The ratio is "
        "cachet throughput / Redis throughput for the nearest Redis command (GetMany(10) is "
        "set against MSET of 10 keys, the closest multi-key command redis-benchmark has).",
        "",
        "| operation | cachet rps | p50 ms | p99 ms | Redis command | Redis rps | Redis p99 ms "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in cachet_results:
        base = baseline[pairs[result.operation]]
        lines.append(
            f"| {result.operation} | {result.rps:,.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {base.operation} | {base.rps:,.0f} | {base.p99_ms:.2f} | "
            f"{result.rps / base.rps:.3f} |"
        )
    off = telemetry[0]
    lines += [
        "",
        "## Telemetry overhead",
        "",
        "Get, same requests and concurrency, one fresh process per row. Metrics: the OTel SDK "
        "with the Prometheus reader and redis-py's command metrics; tracing: a server span "
        "per call and a client span per Redis command, exported over OTLP to an address "
        "nothing listens on (built, batched and dropped). Cost = throughput lost against the "
        "first row; the CPU time the server process spent per call is the steadier figure "
        "on a shared machine.",
        "",
        "| telemetry | rps | p50 ms | p99 ms | throughput vs. off | server CPU µs per call "
        "| CPU vs. off |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in telemetry:
        assert result.cpu_us is not None and off.cpu_us is not None
        lines.append(
            f"| {result.operation} | {result.rps:,.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.rps / off.rps - 1:+.1%} | {result.cpu_us:,.0f} | "
            f"{result.cpu_us / off.cpu_us - 1:+.1%} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
