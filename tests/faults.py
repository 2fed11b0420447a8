"""Steady load and measurement for the fault tests, and the results files that
scripts/reliability_report.py turns into the table of docs/reliability.md.

A `Load` runs workers against a CacheService stub until told to stop. Each call is
recorded with its start, end and status code, so a test can tell when calls failed
and for how long. Two kinds of work:

- "unique": every write creates a key of its own; at the end, `lost_acknowledged`
  reads back every key whose write was acknowledged (answered OK) and counts those
  missing or different: acknowledged writes lost.
- "overwrite": each worker cycles over a few keys of its own, writing then reading
  back; a read must answer the last acknowledged value, or one whose write failed
  (it may or may not have applied). Anything else is a wrong value.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from grpc import aio

from .conftest import error_reason

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("CACHET_RELIABILITY_DIR") or ROOT / "build" / "reliability")

# The statuses a call may end with while Redis is failing: never INTERNAL or UNKNOWN.
FAULT_CODES = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def record_result(scenario: str, topology: str, outcome: str, figure: str, **details: Any) -> None:
    """Write one row of docs/reliability.md (scenario, topology, outcome, figure)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{scenario}-{topology}".lower()).strip("-")
    row = {
        "scenario": scenario,
        "topology": topology,
        "outcome": outcome,
        "figure": figure,
        "details": details,
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (RESULTS_DIR / f"{slug}.json").write_text(json.dumps(row, indent=2, default=str))
    print(f"\n[reliability] {scenario} [{topology}]: {outcome}; {figure}")


@dataclass
class Call:
    kind: str
    started: float
    ended: float
    code: str
    reason: str = ""
    detail: str = ""


@dataclass
class _KeyState:
    # Values the key may hold now: the last acknowledged one, plus any whose write
    # failed since (None: the key may be absent).
    possible: set[bytes | None] = field(default_factory=lambda: {None})


class Load:
    def __init__(
        self,
        cache: Any,
        *,
        mode: str = "unique",
        workers: int = 8,
        deadline: float = 1.0,
        prefix: str = "",
        keys_per_worker: int = 4,
        pause: float = 0.005,
    ) -> None:
        assert mode in ("unique", "overwrite")
        self.cache = cache
        self.mode = mode
        self.workers = workers
        self.deadline = deadline
        self.prefix = prefix
        self.keys_per_worker = keys_per_worker
        self.pause = pause
        self.calls: list[Call] = []
        self.acknowledged: dict[str, bytes] = {}
        self.wrong_reads: list[tuple[str, bytes | None, set[bytes | None]]] = []
        self._states: dict[str, _KeyState] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- running -------------------------------------------------------------------

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _call(self, kind: str, call: Any) -> tuple[str, Any]:
        started = time.monotonic()
        try:
            reply = await call
            code, reason, detail = "OK", "", ""
        except aio.AioRpcError as error:
            reply, code, detail = None, error.code().name, error.details() or ""
            try:
                reason = error_reason(error)
            except AssertionError:
                reason = ""
        self.calls.append(Call(kind, started, time.monotonic(), code, reason, detail))
        return code, reply

    async def _worker(self, worker: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            if self.mode == "unique":
                key = f"{self.prefix}w{worker}-{seq}"
                value = key.encode()
                code, _ = await self._call(
                    "write",
                    self.cache.Set(pb.SetRequest(key=key, value=value), timeout=self.deadline),
                )
                if code == "OK":
                    self.acknowledged[key] = value
            else:
                await self._overwrite_then_read(worker, seq)
            await asyncio.sleep(self.pause)

    async def _overwrite_then_read(self, worker: int, seq: int) -> None:
        key = f"{self.prefix}w{worker}-k{seq % self.keys_per_worker}"
        state = self._states.setdefault(key, _KeyState())
        value = f"{worker}:{seq}".encode()
        code, _ = await self._call(
            "write", self.cache.Set(pb.SetRequest(key=key, value=value), timeout=self.deadline)
        )
        if code == "OK":
            state.possible = {value}
            self.acknowledged[key] = value
        else:
            state.possible.add(value)
        code, reply = await self._call(
            "read", self.cache.Get(pb.GetRequest(key=key), timeout=self.deadline)
        )
        if code == "OK":
            seen = reply.value if reply.found else None
            if seen not in state.possible:
                self.wrong_reads.append((key, seen, set(state.possible)))
            state.possible = {seen}

    # -- measuring -----------------------------------------------------------------

    def codes(self, since: float = 0.0) -> Counter[str]:
        return Counter(c.code for c in self.calls if c.started >= since)

    def reasons(self, since: float = 0.0) -> Counter[str]:
        return Counter(
            f"{c.code}/{c.reason}" if c.reason else c.code
            for c in self.calls
            if c.started >= since and c.code != "OK"
        )

    def failures(self, since: float = 0.0) -> list[Call]:
        return [c for c in self.calls if c.started >= since and c.code != "OK"]

    def outage(self, since: float) -> float:
        """Seconds from the first failed call (started after `since`) to the end of
        the last one: how long callers saw errors."""
        failed = self.failures(since)
        if not failed:
            return 0.0
        return max(c.ended for c in failed) - min(c.started for c in failed)

    def ok_after(self, moment: float) -> int:
        return sum(1 for c in self.calls if c.started >= moment and c.code == "OK")

    def healthy_for(self, seconds: float) -> bool:
        """Every call of the last `seconds` (and at least one) answered OK."""
        now = time.monotonic()
        recent = [c for c in self.calls if c.started >= now - seconds]
        return bool(recent) and all(c.code == "OK" for c in recent)

    def latencies(self, since: float = 0.0, code: str | None = None) -> list[float]:
        return [
            c.ended - c.started
            for c in self.calls
            if c.started >= since and (code is None or c.code == code)
        ]

    async def lost_acknowledged(self, batch: int = 500) -> list[str]:
        """Acknowledged keys that are missing or hold another value now."""
        lost: list[str] = []
        keys = list(self.acknowledged)
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            reply = await self.cache.GetMany(pb.GetManyRequest(keys=chunk), timeout=10)
            for key, entry in zip(chunk, reply.entries, strict=True):
                if not entry.found or entry.value != self.acknowledged[key]:
                    lost.append(key)
        return lost


async def wait_for(predicate: Any, within: float, what: str, interval: float = 0.1) -> float:
    """Poll a sync or async predicate; answer the seconds it took, or fail the test."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {within} s")


async def wait_for_sync(predicate: Any, within: float, what: str, interval: float = 0.1) -> float:
    """Like wait_for, but the predicate blocks (a sync Redis client): run it in a thread."""

    async def check() -> bool:
        try:
            return bool(await asyncio.to_thread(predicate))
        except Exception:
            return False

    return await wait_for(check, within, what, interval)


def describe_codes(counts: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.most_common())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


__all__ = ["FAULT_CODES", "Load", "grpc", "record_result"]
