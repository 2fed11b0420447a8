"""Near-cache benchmark, per client language: hit latency and throughput against unary
Get, invalidation delay from a write's acknowledgement to the watcher's receipt, and
(Python) the server's CPU cost per watching client. The Python part starts its own
redis-server and cachet-server; the Go benchmarks and the TypeScript script start theirs
through their test harnesses. `make bench` runs it.

    .venv/bin/python bench/near_cache.py [--out bench/results/near_cache.json] [--python-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from cachet_client._nearcache import NearCache, apply
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from grpc import aio

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Servers:
    def __init__(self) -> None:
        self.redis_port, self.port = free_port(), free_port()
        self.folder = tempfile.mkdtemp(prefix="cachet-bench-")

    def __enter__(self) -> Servers:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--save", "", "--dir", self.folder],
            stdout=subprocess.DEVNULL,
        )
        env = {
            **os.environ,
            "CACHET_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CACHET_LISTEN": f"127.0.0.1:{self.port}",
            "CACHET_AUTH__MODE": "off",
            "CACHET_LOG_LEVEL": "WARNING",
        }
        self.cachet = subprocess.Popen(
            [sys.executable, "-m", "cachet_server"], env=env, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                return self
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        for process in (self.cachet, self.redis):
            process.terminate()
            process.wait(timeout=20)


def _metadata() -> list[tuple[str, str]]:
    return [("cachet-namespace", "bench")]


async def measure(port: int, hits: int, gets: int, writes: int, watchers: int) -> dict[str, float]:
    target = f"127.0.0.1:{port}"
    async with aio.insecure_channel(target) as channel, aio.insecure_channel(target) as other:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        writer = cache_pb2_grpc.CacheServiceStub(other)
        await writer.Set(pb.SetRequest(key="hot", value=b"x" * 100), metadata=_metadata())

        # Unary Get at concurrency 1.
        latencies = []
        for _ in range(gets):
            started = time.perf_counter()
            await cache.Get(pb.GetRequest(key="hot"), metadata=_metadata())
            latencies.append(time.perf_counter() - started)
        get_p50 = statistics.median(latencies)
        get_rate = len(latencies) / sum(latencies)

        # Near-cache hits, once the key is near-cached.
        near = NearCache()
        stream = cache.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=_metadata())
        apply(near, await stream.read())
        ticket = near.begin()
        reply = await cache.Get(pb.GetRequest(key="hot", include_ttl=True), metadata=_metadata())
        near.fill(
            ticket, "hot", reply.value, reply.version, reply.ttl.ToTimedelta().total_seconds()
        )
        samples = []
        for _ in range(hits // 1000):
            started = time.perf_counter()
            for _ in range(1000):
                near.get("hot")
            samples.append((time.perf_counter() - started) / 1000)
        hit_p50 = statistics.median(samples)
        hit_rate = 1 / statistics.mean(samples)

        # Invalidation delay: write acknowledged -> event received.
        delays = []
        for i in range(writes):
            await writer.Set(pb.SetRequest(key=f"d{i}", value=b"1"), metadata=_metadata())
            acked = time.perf_counter()
            while True:
                event = await stream.read()
                if event.WhichOneof("event") == "keys" and f"d{i}" in event.keys.keys:
                    delays.append(max(0.0, time.perf_counter() - acked))
                    break
        stream.cancel()
        return {
            "unary_get_c1_p50_us": get_p50 * 1e6,
            "unary_get_c1_per_s": get_rate,
            "near_hit_p50_us": hit_p50 * 1e6,
            "near_hit_per_s": hit_rate,
            "near_hits_vs_unary_get": hit_rate / get_rate,
            "invalidation_delay_p50_ms": statistics.median(delays) * 1000,
            "invalidation_delay_p99_ms": percentile(delays, 0.99) * 1000,
        }


async def watcher_cost(port: int, pid: int, watchers: int, writes: int) -> dict[str, float]:
    """Server CPU per write with `watchers` streams open, less the same with none."""
    target = f"127.0.0.1:{port}"

    async def writes_cpu(streams: int) -> float:
        async with aio.insecure_channel(target) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            opened = [
                cache.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=_metadata())
                for _ in range(streams)
            ]
            drains = []
            for call in opened:
                await call.read()  # synced

                async def drain(call: aio.UnaryStreamCall = call) -> None:
                    async for _ in call:
                        pass

                drains.append(asyncio.create_task(drain()))
            before = cpu_seconds(pid)
            for i in range(writes):
                await cache.Set(pb.SetRequest(key=f"c{i}", value=b"1"), metadata=_metadata())
            await asyncio.sleep(0.5)
            spent = cpu_seconds(pid) - before
            for call in opened:
                call.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            return spent

    alone = await writes_cpu(0)
    watched = await writes_cpu(watchers)
    return {
        "watchers": watchers,
        "server_cpu_per_write_us_no_watchers": alone / writes * 1e6,
        "server_cpu_per_write_per_watcher_us": max(0.0, watched - alone) / writes / watchers * 1e6,
    }


_GO_LINE = re.compile(r"^(BenchmarkNearCache\w+?)(?:-\d+)?\s+\d+\s+(.*)$")


def go_figures() -> dict[str, dict[str, float]]:
    """`go test -bench NearCache` in clients/go: each benchmark's reported metrics."""
    output = subprocess.run(
        [
            "go",
            "test",
            "-count=1",
            "-run",
            "^$",
            "-bench",
            "NearCache",
            "-benchtime",
            "2s",
            "./client/",
        ],
        cwd=ROOT / "clients" / "go",
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    figures: dict[str, dict[str, float]] = {}
    for line in output.splitlines():
        match = _GO_LINE.match(line.strip())
        if match:
            values = match.group(2).split()
            figures[match.group(1)] = {
                unit: float(value) for value, unit in zip(values[::2], values[1::2], strict=False)
            }
    return figures


def typescript_figures() -> Any:
    """The TypeScript client's bench script (it prints one JSON object)."""
    folder = ROOT / "clients" / "typescript"
    subprocess.run(["npm", "run", "--silent", "build"], cwd=folder, check=True, timeout=300)
    output = subprocess.run(
        ["node", "dist/test/nearcache.bench.js"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(output[output.index("{") :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "near_cache.json"))
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--gets", type=int, default=2_000)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--python-only", action="store_true")
    args = parser.parse_args()
    with Servers() as servers:
        python = asyncio.run(measure(servers.port, args.hits, args.gets, args.writes, 0))
        python |= asyncio.run(
            watcher_cost(servers.port, servers.cachet.pid, args.watchers, args.writes)
        )
    figures: dict[str, Any] = {"python": python}
    if not args.python_only:
        figures["go"] = go_figures()
        figures["typescript"] = typescript_figures()
    figures["machine"] = {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
