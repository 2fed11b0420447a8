"""bench/run.py's report: ratios, targets, table and chart from measured rows (the
measuring itself is `make bench`, too slow for the test suite)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ratios_targets_table_and_chart(tmp_path):
    bench = load_bench()
    rates = {
        "echo Get (grpc.aio + uvloop)": (2000, 0.30, 150.0),
        "cachet Get": (1000, 0.60, 500.0),
        "cachet GetMany(100)": (100, 5.0, 1400.0),
        "cachet Batch(100 gets)": (80, 6.0, 1500.0),
        "cachet Session Get": (2000, 0.40, 250.0),
        "cachet ShouldRateLimit": (900, 0.7, 600.0),
        "envoyproxy/ratelimit ShouldRateLimit": (4000, 0.2, 70.0),
        "cachet Acquire+Release pair": (480, 1.2, 1000.0),
        "cachet Get (Go driver)": (1200, 0.5, 480.0),
        "cachet Get, API key": (950, 0.62, 520.0),
        "cachet Get, 8 connections": (1100, 0.6, 480.0),
        "cachet Get, --workers 2, 8 connections": (1980, 0.6, 480.0),
        "echo Get, 8 connections": (2100, 0.3, 160.0),
        "echo Get, 2 processes, 8 connections": (3150, 0.3, 160.0),
        "redis-benchmark GET -P1": (60000, 0.1, None),
        "redis-benchmark GET -P16": (1_000_000, 0.2, None),
        "redis.asyncio + hiredis GET": (20000, 0.05, None),
    }
    rows = [
        bench.Row(name, c, rps / (4 if c == 1 else 1), p50, p50 * 3, int(rps), cpu)
        for name, (rps, p50, cpu) in rates.items()
        for c in (1, 32)
    ]
    ratios = bench._ratios(rows)
    assert ratios["unary_get_vs_echo"] == pytest.approx(0.5)
    assert ratios["get_c1_p50_vs_echo_c1_p50"] == pytest.approx(2.0)
    assert ratios["getmany100_keys_vs_redis_p16"] == pytest.approx(0.01)
    assert ratios["lock_rpcs_vs_unary_get"] == pytest.approx(0.8)
    assert ratios["lock_rpcs_vs_unary_get_ghz"] == pytest.approx(0.96)
    assert ratios["cpu_lock_rpcs_vs_unary_get"] == pytest.approx(0.96)
    assert ratios["workers2_vs_workers1"] == pytest.approx(1.8)
    assert ratios["cpu_unary_get_vs_echo"] == pytest.approx(0.3)
    assert ratios["auth_cpu_us_per_call_added"] == pytest.approx(20.0)
    assert ratios["cpu_us_per_key_getmany100_marginal"] == pytest.approx(900 / 99)
    assert ratios["ceiling_getmany100_keys_vs_redis_p16"] == pytest.approx(0.2)
    assert ratios["ceiling_should_rate_limit_vs_envoy_ratelimit"] == pytest.approx(0.5)
    assert ratios["ceiling_workers2_vs_workers1"] == pytest.approx(1.5)
    targets = bench._targets(ratios)
    assert set(targets) == set(bench.TARGETS)
    assert targets["workers2_vs_workers1"]["met"] and not targets["unary_get_vs_echo"]["met"]
    assert not targets["get_c1_p50_vs_echo_c1_p50"]["met"], "a ≤ target is met only below it"

    result = {
        "machine": {
            "host": "h",
            "cpus": os.cpu_count(),
            "cpu_model": "m",
            "load_average_at_start": [1.0, 1.0, 1.0],
            "time_utc": "t",
        },
        "placement": {"summary": "servers on CPU 0; load on CPU 1"},
        "duration_s": 1.5,
        "repeats": 1,
        "rows": [row.__dict__ for row in rows],
        "ratios": ratios,
        "targets": targets,
    }
    bench._write(result, tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["ratios"]["unary_get_vs_echo"]
    table = (tmp_path / "latest.md").read_text()
    assert "| cachet Get | 32 | 1,000 | 0.60 | 1.80 | 500 |" in table
    assert "| `unary_get_vs_echo` | 0.500 | ≥ 0.85 | **no** |" in table
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_seconds_reads_this_process():
    bench = load_bench()
    before = bench.cpu_seconds(os.getpid())
    # Spend 0.1 s of CPU (ten clock ticks: /proc counts in ticks), bounded in wall time.
    spent, started = time.process_time(), time.monotonic()
    while time.process_time() - spent < 0.1 and time.monotonic() - started < 10:
        sum(i * i for i in range(10_000))
    assert bench.cpu_seconds(os.getpid()) > before
    assert bench.cpu_seconds(2**22 + 12345) == 0.0, "a vanished process counts nothing"
