"""`make bench`: cachet's RPCs against their baselines, every figure from one run.

Starts, on free loopback ports, one redis-server and against it: a cachet-server (auth
off), a second one with an API key required, a third with `--workers 2`, a bare
grpc.aio echo server of Get's message shape (and the same as two processes sharing a
port, in the two-worker server's placement), and envoyproxy/ratelimit (built from the Go
module proxy at the version the Makefile pins). Servers and Redis are pinned with
taskset to the first CPU, load generators (ghz, the Go driver in bench/driver,
redis-benchmark, the redis.asyncio client) to the second; the two-worker server gets
both CPUs, so its load generator shares a core with it (stated in the report).

Four more cachet-servers measure what telemetry costs on Get (metrics off and tracing
off, metrics without Redis command metrics, tracing alone, both); every cachet-server
otherwise runs as deployed by default (metrics on, tracing off).

Every row runs for a fixed time at concurrency 1 and 32 and records throughput, p50,
p99 and the server's CPU time per call (utime + stime from /proc, the whole process
tree). Writes bench/results/latest.json (`machine`, `placement`, `rows`, `ratios`,
`targets`), bench/results/latest.md and bench/results/latest.png.

    make bench                        # 3 interleaved repeats of 3 s per row, about 7 minutes
    make bench BENCH_ARGS=--short     # one pass of 1.5 s per row, to prove it works
    python bench/run.py --duration 10 --repeats 5   # longer rows, more repeats
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "bench" / "bin"
PROTOS = ROOT / "protos"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
DOC_BEGIN, DOC_END = "<!-- bench:begin -->", "<!-- bench:end -->"
NAMESPACE = "bench"
VALUE = b"x" * 100  # the value size of every read and write row
CONCURRENCY = (1, 32)
TICKS = os.sysconf("SC_CLK_TCK")
BATCH_KEYS = 100
# Connections of the rows that compare processes sharing a port: SO_REUSEPORT spreads
# connections, not calls, so one connection (ghz's default) would reach one process.
SPREAD = 8

# The issue's targets: name -> (threshold, "ge" or "le").
TARGETS: dict[str, tuple[float, str]] = {
    "unary_get_vs_echo": (0.85, "ge"),
    "get_c1_p50_vs_echo_c1_p50": (1.3, "le"),
    "getmany100_keys_vs_redis_p16": (0.40, "ge"),
    "session_get_vs_redis_p1": (0.50, "ge"),
    "should_rate_limit_vs_envoy_ratelimit": (0.50, "ge"),
    "lock_rpcs_vs_unary_get": (0.90, "ge"),
    "workers2_vs_workers1": (1.7, "ge"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (a supervisor's workers)."""
    total = 0.0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    return total


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    cpus: str


@dataclass
class Row:
    """One measured row: `name` names what ran, `concurrency` how many calls in flight."""

    name: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    cpu_us_per_call: float | None = None
    server: str = ""
    load_cpus: str = ""
    note: str = ""


@dataclass
class Bench:
    duration: float
    server_cpus: str
    load_cpus: str
    workdir: Path
    servers: list[Server] = field(default_factory=list)

    def taskset(self, cpus: str, args: list[str]) -> list[str]:
        return ["taskset", "-c", cpus, *args]

    def start(self, name: str, args: list[str], port: int, cpus: str, **env: str) -> Server:
        log_path = self.workdir / (name.replace("/", "_").replace(" ", "_") + ".log")
        log = log_path.open("wb")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CACHET_", "OTEL_"))}
        process = subprocess.Popen(
            self.taskset(cpus, args),
            env={**clean, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(name, port, process, cpus)
        self.servers.append(server)
        try:
            wait_for_port(port)
        except RuntimeError:
            raise RuntimeError(f"{name} did not start: {log_path.read_text()[-2000:]}") from None
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in reversed(self.servers):
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

    def measured(self, server: Server | None, run: Callable[[], Row]) -> Row:
        before = cpu_seconds(server.process.pid) if server else 0.0
        row = run()
        if server is not None:
            spent = cpu_seconds(server.process.pid) - before
            row.cpu_us_per_call = spent * 1e6 / row.calls if row.calls else None
            row.server = f"{server.name} on CPU {server.cpus}"
        return row

    # ---- load generators ----------------------------------------------------------

    def ghz(
        self,
        name: str,
        server: Server,
        call: str,
        data: object,
        concurrency: int,
        *,
        proto: str = "cachet/cache/v1/cache.proto",
        metadata: dict[str, str] | None = None,
        load_cpus: str | None = None,
        connections: int = 1,
    ) -> Row:
        cpus = load_cpus or self.load_cpus
        args = [
            str(BIN / "ghz"),
            "--insecure",
            "--format=json",
            f"--import-paths={PROTOS}",
            f"--proto={PROTOS / proto}",
            f"--call={call}",
            f"--data={json.dumps(data)}",
            f"--metadata={json.dumps(metadata or {'cachet-namespace': NAMESPACE})}",
            f"--concurrency={concurrency}",
            f"--connections={min(connections, concurrency)}",
            f"--duration={self.duration}s",
            "--duration-stop=wait",
            "--total=1000000000",
            f"--cpus={len(cpus.split(','))}",
            f"127.0.0.1:{server.port}",
        ]

        def run() -> Row:
            out = subprocess.run(
                self.taskset(cpus, args),
                capture_output=True,
                text=True,
                check=True,
                timeout=self.duration + 60,
            )
            report = json.loads(out.stdout)
            codes = report.get("statusCodeDistribution", {})
            failed = {code: n for code, n in codes.items() if code != "OK"}
            if failed:
                raise RuntimeError(
                    f"{name}: failed calls {failed}: {report.get('errorDistribution')}"
                )
            latencies = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
            return Row(
                name,
                concurrency,
                report["rps"],
                latencies[50],
                latencies[99],
                report["count"],
                load_cpus=cpus,
            )

        return self.measured(server, run)

    def driver(self, name: str, server: Server, mode: str, concurrency: int, *extra: str) -> Row:
        args = [
            str(BIN / "cachet-bench-driver"),
            f"-addr=127.0.0.1:{server.port}",
            f"-mode={mode}",
            f"-c={concurrency}",
            f"-duration={self.duration}s",
            f"-namespace={NAMESPACE}",
            *extra,
        ]

        def run() -> Row:
            out = subprocess.run(
                self.taskset(self.load_cpus, args),
                capture_output=True,
                text=True,
                timeout=self.duration + 60,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{name}: driver failed: {out.stdout}{out.stderr}")
            report = json.loads(out.stdout)
            messages = report.get("messages")
            return Row(
                name,
                concurrency,
                report["rps"],
                report["p50_ms"],
                report["p99_ms"],
                report["calls"],
                load_cpus=self.load_cpus,
                note=f"{report['calls'] / messages:.1f} per message" if messages else "",
            )

        return self.measured(server, run)

    def redis_benchmark(self, redis_port: int, pipeline: int, concurrency: int) -> Row:
        # redis-benchmark has no time limit: size the run from a generous rate guess and
        # bound it with a timeout.
        requests = int((20_000 if pipeline == 1 else 150_000) * self.duration)
        args = [
            "redis-benchmark",
            "-p",
            str(redis_port),
            "-t",
            "get",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-P",
            str(pipeline),
            "-d",
            str(len(VALUE)),
            "--csv",
        ]
        out = subprocess.run(
            self.taskset(self.load_cpus, args),
            capture_output=True,
            text=True,
            check=True,
            timeout=self.duration * 10 + 60,
        )
        lines = [line.replace('"', "").split(",") for line in out.stdout.strip().splitlines()]
        record = dict(zip(lines[0], lines[1], strict=False))
        return Row(
            f"redis-benchmark GET -P{pipeline}",
            concurrency,
            float(record["rps"]),
            float(record["p50_latency_ms"]),
            float(record["p99_latency_ms"]),
            requests,
            server=f"redis-server on CPU {self.server_cpus}",
            load_cpus=self.load_cpus,
        )

    def redis_client(self, redis_port: int, concurrency: int) -> Row:
        args = [
            sys.executable,
            str(ROOT / "bench" / "redis_client.py"),
            str(redis_port),
            str(concurrency),
            str(self.duration),
        ]
        out = subprocess.run(
            self.taskset(self.load_cpus, args),
            capture_output=True,
            text=True,
            check=True,
            timeout=self.duration + 60,
        )
        report = json.loads(out.stdout)
        return Row(
            "redis.asyncio + hiredis GET",
            concurrency,
            report["rps"],
            report["p50_ms"],
            report["p99_ms"],
            report["calls"],
            server=f"redis-server on CPU {self.server_cpus}",
            load_cpus=self.load_cpus,
        )


def _yaml(document: object) -> str:
    return json.dumps(document)  # JSON is YAML


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _median_rows(rounds: list[list[Row]]) -> list[Row]:
    """Per (name, concurrency), the repeat with the median throughput."""
    merged: list[Row] = []
    for i, first in enumerate(rounds[0]):
        candidates = sorted((r[i] for r in rounds), key=lambda row: row.rps)
        chosen = candidates[len(candidates) // 2]
        if len(rounds) > 1:
            median = f"median of {len(rounds)}: " + ", ".join(f"{c.rps:,.0f}" for c in candidates)
            chosen.note = f"{chosen.note}; {median}" if chosen.note else median
        merged.append(chosen)
        assert chosen.name == first.name
    return merged


def _median_ratios(rounds: list[list[Row]]) -> dict[str, float]:
    """Each ratio is computed within each repeat (its two rows ran minutes apart at most,
    under the same neighbours), then the median over the repeats is taken."""
    per_repeat = [_ratios(rows) for rows in rounds]
    return {name: statistics.median(r[name] for r in per_repeat) for name in per_repeat[0]}


def _ratios(rows: list[Row]) -> dict[str, float]:
    by = {(row.name, row.concurrency): row for row in rows}

    def rps(name: str, c: int = 32) -> float:
        return by[(name, c)].rps

    ratios = {
        "unary_get_vs_echo": rps("cachet Get") / rps("echo Get (grpc.aio + uvloop)"),
        "get_c1_p50_vs_echo_c1_p50": by[("cachet Get", 1)].p50_ms
        / by[("echo Get (grpc.aio + uvloop)", 1)].p50_ms,
        "getmany100_keys_vs_redis_p16": rps("cachet GetMany(100)")
        * BATCH_KEYS
        / rps("redis-benchmark GET -P16"),
        "session_get_vs_redis_p1": rps("cachet Session Get") / rps("redis-benchmark GET -P1"),
        "should_rate_limit_vs_envoy_ratelimit": rps("cachet ShouldRateLimit")
        / rps("envoyproxy/ratelimit ShouldRateLimit"),
        # Lock RPCs against Gets sent the same way (the Go driver's workers, each call
        # when its last answered); the ghz Get row, for comparison with earlier runs.
        "lock_rpcs_vs_unary_get": 2
        * rps("cachet Acquire+Release pair")
        / rps("cachet Get (Go driver)"),
        "lock_rpcs_vs_unary_get_ghz": 2 * rps("cachet Acquire+Release pair") / rps("cachet Get"),
        "workers2_vs_workers1": rps(f"cachet Get, --workers 2, {SPREAD} connections")
        / rps(f"cachet Get, {SPREAD} connections"),
        "auth_get_vs_get": rps("cachet Get, API key") / rps("cachet Get"),
        "get_vs_redis_asyncio_hiredis": rps("cachet Get") / rps("redis.asyncio + hiredis GET"),
        "batch100_keys_vs_getmany100_keys": rps("cachet Batch(100 gets)")
        / rps("cachet GetMany(100)"),
    }

    # The framework's ceiling for two targets, from the same pass: the ratio cachet would
    # reach if a GetMany(100) or a ShouldRateLimit cost no more than one call of the bare
    # echo server (no Redis, no per-key work). A target above its ceiling cannot be met
    # by cachet's own code on this machine, only by a cheaper gRPC server than grpc.aio.
    echo = rps("echo Get (grpc.aio + uvloop)")
    ratios["ceiling_getmany100_keys_vs_redis_p16"] = (
        echo * BATCH_KEYS / rps("redis-benchmark GET -P16")
    )
    ratios["ceiling_should_rate_limit_vs_envoy_ratelimit"] = echo / rps(
        "envoyproxy/ratelimit ShouldRateLimit"
    )
    # Two echo processes in the --workers 2 server's placement: what a second process
    # can add on this machine when it shares a CPU with the load generator.
    ratios["ceiling_workers2_vs_workers1"] = rps(
        f"echo Get, 2 processes, {SPREAD} connections"
    ) / rps(f"echo Get, {SPREAD} connections")

    def cpu(name: str, c: int = 32) -> float:
        return by[(name, c)].cpu_us_per_call or float("nan")

    # On a loaded machine throughput swings with the neighbours, CPU time per call much
    # less: these are the same comparisons as calls per CPU-second (what the ratio
    # would be if both sides were CPU-bound on equal cores).
    ratios["cpu_unary_get_vs_echo"] = cpu("echo Get (grpc.aio + uvloop)") / cpu("cachet Get")
    ratios["cpu_should_rate_limit_vs_envoy_ratelimit"] = cpu(
        "envoyproxy/ratelimit ShouldRateLimit"
    ) / cpu("cachet ShouldRateLimit")
    ratios["cpu_lock_rpcs_vs_unary_get"] = (
        2 * cpu("cachet Get (Go driver)") / cpu("cachet Acquire+Release pair")
    )
    ratios["cpu_session_get_vs_unary_get"] = cpu("cachet Get") / cpu("cachet Session Get")
    ratios["cpu_us_per_key_getmany100"] = cpu("cachet GetMany(100)") / BATCH_KEYS
    # What each key adds beyond the call itself (a unary Get is one call and one key).
    ratios["cpu_us_per_key_getmany100_marginal"] = (
        cpu("cachet GetMany(100)") - cpu("cachet Get")
    ) / (BATCH_KEYS - 1)
    ratios["cpu_us_per_key_batch100"] = cpu("cachet Batch(100 gets)") / BATCH_KEYS
    ratios["auth_cpu_us_per_call_added"] = cpu("cachet Get, API key") - cpu("cachet Get")
    telemetry_off = "cachet Get, metrics off, tracing off"
    if (telemetry_off, 32) in by:
        ratios["metrics_cpu_us_per_call_added"] = cpu("cachet Get") - cpu(telemetry_off)
        ratios["metrics_and_tracing_cpu_us_per_call_added"] = cpu(
            "cachet Get, metrics on, tracing on"
        ) - cpu(telemetry_off)
    return ratios


def _targets(ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (threshold, sense) in TARGETS.items():
        value = ratios[name]
        met = value >= threshold if sense == "ge" else value <= threshold
        out[name] = {
            "value": round(value, 3),
            "target": f"{'≥' if sense == 'ge' else '≤'} {threshold}",
            "met": met,
        }
    return out


def _markdown(result: dict[str, Any]) -> str:
    placement = result["placement"]
    lines = [
        "# cachet benchmark",
        "",
        f"{result['machine']['time_utc']} on {result['machine']['host']} "
        f"({result['machine']['cpus']} CPUs, {result['machine']['cpu_model']}), load average "
        f"at start {', '.join(f'{x:.2f}' for x in result['machine']['load_average_at_start'])}. "
        f"{result['duration_s']} s per row, {result['repeats']} repeat(s). Placement: "
        f"{placement['summary']}",
        "",
        "| row | c | calls/s | p50 ms | p99 ms | server CPU µs/call |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cpu = f"{row['cpu_us_per_call']:,.0f}" if row["cpu_us_per_call"] else "—"
        lines.append(
            f"| {row['name']} | {row['concurrency']} | {row['rps']:,.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cpu} |"
        )
    lines += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    for name, value in result["ratios"].items():
        target = result["targets"].get(name)
        lines.append(
            f"| `{name}` | {value:.3f} | {target['target'] if target else ''} | "
            f"{('yes' if target['met'] else '**no**') if target else ''} |"
        )
    return "\n".join(lines) + "\n"


def _chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["concurrency"] == 32]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 7), width_ratios=[3, 2])
    names = [row["name"] for row in rows]
    left.barh(
        names,
        [row["rps"] for row in rows],
        color=["tab:blue" if row["name"].startswith("cachet") else "tab:gray" for row in rows],
    )
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_xlabel("calls/s at concurrency 32 (log scale); grey: baselines")
    ratio_names = list(result["targets"])
    values = [result["targets"][n]["value"] for n in ratio_names]
    colors = ["tab:green" if result["targets"][n]["met"] else "tab:red" for n in ratio_names]
    right.barh(ratio_names, values, color=colors)
    for i, name in enumerate(ratio_names):
        threshold = TARGETS[name][0]
        right.plot([threshold, threshold], [i - 0.4, i + 0.4], color="black")
    right.invert_yaxis()
    right.set_xlabel("ratio (black tick: target; green met, red missed)")
    figure.suptitle(
        f"cachet bench {result['machine']['time_utc']} — {result['placement']['summary']}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


@contextlib.contextmanager
def bench_environment(args: argparse.Namespace) -> Iterator[Bench]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = str(cpus[0])
    load_cpus = str(cpus[1]) if len(cpus) > 1 else str(cpus[0])
    workdir = Path(tempfile.mkdtemp(prefix="cachet-bench-"))
    bench = Bench(args.duration, server_cpus, load_cpus, workdir)
    try:
        yield bench
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    parser.add_argument("--short", action="store_true", help="1.5 s per row")
    parser.add_argument(
        "--repeats", type=int, help="interleaved repeats, medians reported (default 3; --short: 1)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: recompute ratios, table and chart from the rows of latest.json",
    )
    args = parser.parse_args()
    if args.render_only:
        result = json.loads((args.output_dir / "latest.json").read_text())
        rounds = result.get("repeat_rows") or [result["rows"]]
        ratios = _median_ratios([[Row(**row) for row in repeat] for repeat in rounds])
        result["ratios"] = {name: round(value, 4) for name, value in ratios.items()}
        result["targets"] = _targets(ratios)
        _write(result, args.output_dir)
        return
    if args.short:
        args.duration = 1.5
    if args.repeats is None:
        args.repeats = 1 if args.short else 3
    for tool in ("ghz", "cachet-bench-driver", "ratelimit"):
        if not (BIN / tool).exists():
            sys.exit(f"{BIN / tool} is missing: run `make bench` (it builds the pinned tools)")
    if shutil.which("taskset") is None or shutil.which("redis-benchmark") is None:
        sys.exit("taskset and redis-benchmark are needed (util-linux, redis-tools)")
    started = time.monotonic()
    with bench_environment(args) as bench:
        result = run_all(bench, args)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    _write(result, args.output_dir)
    print(f"measured in {result['wall_seconds']} s")


def _write(result: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    (output_dir / "latest.md").write_text(markdown)
    _chart(result, output_dir / "latest.png")
    print(markdown)
    print(f"wrote {output_dir}/latest.json, latest.md and latest.png")
    if output_dir.resolve() == RESULTS.resolve() and DOC.exists():
        # docs/performance.md shows the last run: its tables between the markers.
        head, rest = DOC.read_text().split(DOC_BEGIN, 1)
        _, tail = rest.split(DOC_END, 1)
        table = markdown.split("\n", 2)[2].strip()  # without the "# cachet benchmark" title
        DOC.write_text(f"{head}{DOC_BEGIN}\n{table}\n{DOC_END}{tail}")
        print(f"updated the tables in {DOC.relative_to(ROOT)}")


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    server_cpus, load_cpus = bench.server_cpus, bench.load_cpus
    workers_cpus = ",".join(sorted({server_cpus, load_cpus}))
    redis_port = free_port()
    redis = bench.start(
        "redis-server",
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
            str(bench.workdir),
        ],
        redis_port,
        server_cpus,
    )
    del redis
    api_key = secrets.token_urlsafe(32)
    ratelimit_rules = {
        "domains": [
            {
                "domain": "bench",
                "descriptors": [
                    {"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": 10**9}}
                ],
            }
        ]
    }
    plain_config = bench.workdir / "cachet.yaml"
    plain_config.write_text(_yaml({"ratelimit": ratelimit_rules}))
    auth_config = bench.workdir / "cachet-auth.yaml"
    auth_config.write_text(
        _yaml(
            {
                "ratelimit": ratelimit_rules,
                "auth": {
                    "mode": "required",
                    "api_keys": [
                        {
                            "id": "bench",
                            "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                            "namespaces": [NAMESPACE],
                            "roles": ["read", "write"],
                        }
                    ],
                },
            }
        )
    )

    def cachet(name: str, cpus: str, *extra: str, auth: bool = False, **telemetry: str) -> Server:
        """A cachet-server as deployed by default (metrics on, tracing off) unless
        `telemetry` says otherwise; its metrics endpoint on a free port (a worker serves
        on that port plus its slot)."""
        port = free_port()
        env = {
            "CACHET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "CACHET_LISTEN": f"127.0.0.1:{port}",
            "CACHET_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
            "CACHET_LOG_LEVEL": "WARNING",
            "CACHET_CONFIG_FILE": str(auth_config if auth else plain_config),
            **telemetry,
        }
        if not auth:
            env["CACHET_AUTH__MODE"] = "off"
        return bench.start(name, [sys.executable, "-m", "cachet_server", *extra], port, cpus, **env)

    one = cachet("cachet", server_cpus)
    authed = cachet("cachet (auth required)", server_cpus, auth=True)
    two = cachet("cachet --workers 2", workers_cpus, "--workers", "2")
    # What telemetry costs: Get on one process per combination. Tracing exports over
    # OTLP to an address nothing listens on, so spans are built, batched and dropped.
    telemetry_servers = {
        label: cachet(f"cachet ({label})", server_cpus, **case)
        for label, case in _telemetry_cases().items()
    }

    def echo_server(name: str, cpus: str, *extra: str) -> Server:
        port = free_port()
        script = [sys.executable, str(ROOT / "bench" / "echo_server.py")]
        return bench.start(
            name, [*script, f"127.0.0.1:{port}", str(len(VALUE)), *extra], port, cpus
        )

    echo = echo_server("echo", server_cpus)
    echo2 = echo_server("echo, 2 processes", workers_cpus, "--processes", "2")
    envoy = _start_envoy_ratelimit(bench, redis_port)

    encoded = base64.b64encode(VALUE).decode()
    many_keys = [f"bench:many:{i}" for i in range(BATCH_KEYS)]
    preload = [*many_keys, "k"]
    cache = "cachet.cache.v1.CacheService/"
    # Data every read row finds, and a warm-up of each server.
    subprocess.run(
        [
            str(BIN / "ghz"),
            "--insecure",
            f"--import-paths={PROTOS}",
            f"--proto={PROTOS / 'cachet/cache/v1/cache.proto'}",
            f"--call={cache}SetMany",
            f"--data={json.dumps({'entries': [{'key': k, 'value': encoded} for k in preload]})}",
            f"--metadata={json.dumps({'cachet-namespace': NAMESPACE})}",
            "-n",
            "200",
            "-c",
            "4",
            f"127.0.0.1:{one.port}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    bearer = {"cachet-namespace": NAMESPACE, "authorization": f"Bearer {api_key}"}
    rls = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    rls_proto = "envoy/service/ratelimit/v3/rls.proto"
    rls_request = {"domain": "bench", "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}
    check_request = {
        "target": {
            "inline_limit": {
                "key": "bench",
                "limit": {"algorithm": "ALGORITHM_FIXED_WINDOW", "limit": 10**9, "period": "1s"},
            }
        }
    }
    publish = {"topic": "bench", "event": {"type": "bench", "payload": encoded}}

    def spread(name: str, server: Server) -> Callable[[int], Row | None]:
        def step(c: int) -> Row | None:
            if c == 1:
                return None
            return bench.ghz(
                f"{name}, {SPREAD} connections",
                server,
                f"{cache}Get",
                {"key": "k"},
                c,
                connections=SPREAD,
            )

        return step

    # Rows a ratio compares run next to each other (each ratio is taken within a repeat),
    # so a neighbour's burst of load hits both sides alike.
    plan: list[Callable[[int], Row | None]] = [
        lambda c: bench.ghz("echo Get (grpc.aio + uvloop)", echo, f"{cache}Get", {"key": "k"}, c),
        lambda c: bench.ghz("cachet Get", one, f"{cache}Get", {"key": "k"}, c),
        # One process against two on the same connections, at c32 only (c1 is one
        # connection, which reaches one process).
        *(
            spread(name, server)
            for name, server in (
                ("echo Get", echo),
                ("echo Get, 2 processes", echo2),
                ("cachet Get", one),
                ("cachet Get, --workers 2", two),
            )
        ),
        lambda c: bench.ghz(
            "cachet Get, API key", authed, f"{cache}Get", {"key": "k"}, c, metadata=bearer
        ),
        lambda c: bench.driver("cachet Get (Go driver)", one, "get", c),
        lambda c: bench.driver("cachet Acquire+Release pair", one, "lockpair", c),
        lambda c: bench.driver("cachet Session Get", one, "session", c),
        lambda c: bench.driver("cachet Session Get, one per message", one, "session", c, "-pack=1"),
        lambda c: bench.redis_benchmark(redis_port, 1, c),
        lambda c: bench.ghz("cachet GetMany(100)", one, f"{cache}GetMany", {"keys": many_keys}, c),
        lambda c: bench.redis_benchmark(redis_port, 16, c),
        lambda c: bench.ghz(
            "cachet Batch(100 gets)",
            one,
            f"{cache}Batch",
            {"operations": [{"get": {"key": k}} for k in many_keys]},
            c,
        ),
        lambda c: bench.ghz(
            "cachet Set",
            one,
            f"{cache}Set",
            {"key": "bench:set:{{.RequestNumber}}", "value": encoded},
            c,
        ),
        lambda c: bench.ghz("cachet Increment", one, f"{cache}Increment", {"key": "counter"}, c),
        lambda c: bench.ghz(
            "cachet SetMany(100)",
            one,
            f"{cache}SetMany",
            {"entries": [{"key": k, "value": encoded} for k in many_keys]},
            c,
        ),
        lambda c: bench.ghz(
            "cachet RateLimit Check",
            one,
            "cachet.ratelimit.v1.RateLimitService/Check",
            check_request,
            c,
            proto="cachet/ratelimit/v1/ratelimit.proto",
        ),
        lambda c: bench.ghz("cachet ShouldRateLimit", one, rls, rls_request, c, proto=rls_proto),
        lambda c: bench.ghz(
            "envoyproxy/ratelimit ShouldRateLimit", envoy, rls, rls_request, c, proto=rls_proto
        ),
        lambda c: bench.ghz(
            "cachet Publish",
            one,
            "cachet.eventbus.v1.EventBusService/Publish",
            publish,
            c,
            proto="cachet/eventbus/v1/eventbus.proto",
        ),
        lambda c: bench.redis_client(redis_port, c),
        *(
            lambda c, label=label, server=server: bench.ghz(
                f"cachet Get, {label}", server, f"{cache}Get", {"key": "k"}, c
            )
            for label, server in telemetry_servers.items()
        ),
    ]
    rounds: list[list[Row]] = []
    for repeat in range(args.repeats):
        rows: list[Row] = []
        for step in plan:
            for c in CONCURRENCY:
                row = step(c)
                if row is None:
                    continue
                print(
                    f"[{repeat + 1}/{args.repeats}] {row.name} c{c}: {row.rps:,.0f}/s "
                    f"p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms "
                    f"cpu {row.cpu_us_per_call or 0:,.0f} µs/call",
                    flush=True,
                )
                rows.append(row)
        rounds.append(rows)
    rows = _median_rows(rounds)
    ratios = _median_ratios(rounds)
    return {
        "machine": _machine(),
        "placement": {
            "servers_cpus": server_cpus,
            "load_generator_cpus": load_cpus,
            "workers2_cpus": workers_cpus,
            "summary": (
                f"redis-server, cachet, the echo server and envoyproxy/ratelimit on CPU "
                f"{server_cpus}; load generators on CPU {load_cpus}; the --workers 2 server "
                f"and the two-process echo server on CPUs {workers_cpus}, sharing CPU {load_cpus} "
                f"with their load generator"
            ),
        },
        "duration_s": args.duration,
        "repeats": args.repeats,
        "value_bytes": len(VALUE),
        "envoy_ratelimit_version": (BIN / "ratelimit.version").read_text().strip()
        if (BIN / "ratelimit.version").exists()
        else "",
        "rows": [asdict(row) for row in rows],
        "repeat_rows": [[asdict(row) for row in repeat] for repeat in rounds],
        "ratios": {name: round(value, 4) for name, value in ratios.items()},
        "targets": _targets(ratios),
    }


def _telemetry_cases() -> dict[str, dict[str, str]]:
    """Label -> environment of each telemetry combination measured on Get (the default
    deployment, metrics on and tracing off, is the `cachet Get` row itself)."""
    collector = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return {
        "metrics off, tracing off": {"CACHET_METRICS__LISTEN": ""},
        "metrics on without Redis command metrics": {"CACHET_METRICS__REDIS_COMMANDS": "false"},
        "metrics off, tracing on": {
            "CACHET_METRICS__LISTEN": "",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
        },
        "metrics on, tracing on": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
    }


def _start_envoy_ratelimit(bench: Bench, redis_port: int) -> Server:
    """envoyproxy/ratelimit on the same Redis with the same rule as cachet's."""
    runtime = bench.workdir / "ratelimit-runtime"
    (runtime / "ratelimit" / "config").mkdir(parents=True)
    (runtime / "ratelimit" / "config" / "bench.yaml").write_text(
        _yaml(
            {
                "domain": "bench",
                "descriptors": [
                    {"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": 10**9}}
                ],
            }
        )
    )
    grpc_port = free_port()
    return bench.start(
        "envoyproxy/ratelimit",
        [str(BIN / "ratelimit")],
        grpc_port,
        bench.server_cpus,
        GRPC_HOST="127.0.0.1",
        GRPC_PORT=str(grpc_port),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        DEBUG_HOST="127.0.0.1",
        DEBUG_PORT=str(free_port()),
        USE_STATSD="false",
        LOG_LEVEL="warn",
        REDIS_SOCKET_TYPE="tcp",
        REDIS_URL=f"127.0.0.1:{redis_port}",
        RUNTIME_ROOT=str(runtime),
        RUNTIME_SUBDIRECTORY="ratelimit",
        RUNTIME_WATCH_ROOT="false",
        GOMAXPROCS="1",
    )


if __name__ == "__main__":
    main()
