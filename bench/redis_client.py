"""Baseline: what a user writes instead of calling cachet, redis.asyncio with hiredis
doing GET of one key from `tasks` concurrent tasks for a fixed time; prints JSON.

    python bench/redis_client.py 6379 32 5.0
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio as redis
import uvloop
from redis.utils import HIREDIS_AVAILABLE


async def run(port: int, tasks: int, seconds: float) -> dict[str, object]:
    if not HIREDIS_AVAILABLE:
        raise SystemExit("hiredis is not installed: the baseline would measure redis-py's parser")
    client = redis.Redis(host="127.0.0.1", port=port, max_connections=tasks)
    await client.set("bench:redis-client", b"x" * 100)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while (began := time.perf_counter()) < deadline:
            await client.get("bench:redis-client")
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    latencies.sort()
    return {
        "calls": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "hiredis": HIREDIS_AVAILABLE,
    }


if __name__ == "__main__":
    port, tasks, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(uvloop.run(run(port, tasks, seconds))))
