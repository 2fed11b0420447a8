"""What the hostile-tenant tests share: the victim (another tenant's Gets, measured
while the abuse runs) and the row each test writes for docs/reliability.md's
"hostile tenant" table (scripts/reliability_report.py collects them)."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field

from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from grpc import aio

from .conftest import channel_to
from .faults import RESULTS_DIR

VICTIM_NAMESPACE = "victim"


@dataclass
class Victim:
    """Another tenant that keeps calling Get while the abuse runs. Every Get must
    succeed; its latencies are the figure."""

    port: int
    workers: int = 4
    timeout: float = 5.0
    # An API key, when the server requires one.
    credential: str | None = None
    # Write the key first (off where Redis refuses writes: the test writes it).
    write_first: bool = True
    # The victim calls for at least this long, so a short abuse still gets a sample.
    min_seconds: float = 0.5
    _started: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channel: aio.Channel | None = None

    async def __aenter__(self) -> Victim:
        self._channel = channel_to(self.port, VICTIM_NAMESPACE)
        stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        if self.write_first:
            await stub.Set(
                pb.SetRequest(key="mine", value=b"v" * 100),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        self._started = time.monotonic()
        self._tasks = [asyncio.create_task(self._loop(stub)) for _ in range(self.workers)]
        return self

    async def _loop(self, stub: cache_pb2_grpc.CacheServiceStub) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                got = await stub.Get(
                    pb.GetRequest(key="mine"), timeout=self.timeout, metadata=self.metadata
                )
                if not got.found:
                    self.failures.append("NOT_FOUND")
            except aio.AioRpcError as error:
                self.failures.append(error.code().name)
            self.latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(max(0.0, self._started + self.min_seconds - time.monotonic()))
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._channel is not None:
            await self._channel.close()

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.credential}")] if self.credential else []

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def success_rate(self) -> float:
        return 1.0 - len(self.failures) / self.calls if self.calls else 0.0

    def latency_ms(self) -> tuple[float, float, float]:
        """p50, p99 and max of the victim's Gets, in ms."""
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return statistics.median(ordered) * 1000, p99 * 1000, ordered[-1] * 1000

    def assert_unharmed(self) -> None:
        assert self.calls > 0, "the victim made no call during the abuse"
        assert not self.failures, f"the victim's Gets failed: {self.failures[:10]}"


def record_hostile(
    abuse: str, attacker: str, victim: Victim, topology: str = "standalone", **extra: object
) -> None:
    """One row of the hostile-tenant table: what the abuse was, what the attacker got,
    and the victim's Get success rate and latency during it."""
    p50, p99, worst = victim.latency_ms()
    row = {
        "table": "hostile_tenant",
        "scenario": abuse,
        "topology": topology,
        "attacker": attacker,
        "victim_gets": victim.calls,
        "victim_success": f"{victim.success_rate * 100:.0f} %",
        "victim_latency": f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.0f} ms",
        "details": extra,
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", f"hostile-{abuse}-{topology}".lower()).strip("-")[:120]
    (RESULTS_DIR / f"{slug}.json").write_text(json.dumps(row, indent=2, default=str))
    print(
        f"\n[hostile tenant] {abuse}: attacker {attacker}; victim {victim.calls} Gets, "
        f"{row['victim_success']}, {row['victim_latency']} {extra or ''}"
    )
