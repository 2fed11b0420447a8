"""Counters this process keeps about its own traffic, for AdminService/GetServiceStats.

Per process, in memory: each cachet replica reports its own traffic. Updated on
the event loop only, so plain integers suffice. They are also what the metrics report
(metrics.py): lookups and calls in flight are read from here at collection time, call
durations and rate-limit decisions are recorded here as they happen; one place per
event, so GetServiceStats and /metrics cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .metrics import instruments


@dataclass
class NamespaceStats:
    hits: int = 0
    misses: int = 0
    calls: int = 0

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass
class MethodStats:
    calls: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total_seconds: float = 0.0


class ServiceStats:
    """Hits and misses per namespace; calls, errors and time per RPC method."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceStats] = defaultdict(NamespaceStats)
        self.methods: dict[str, MethodStats] = defaultdict(MethodStats)
        # Rate-limit checks admitted unchecked because Redis was unreachable (fail_open).
        self.ratelimit_fail_open = 0
        # Calls being served now, per method.
        self.active: dict[str, int] = defaultdict(int)
        instruments.observe(self)

    def record_lookups(self, namespace: str, hits: int, misses: int) -> None:
        entry = self.namespaces[namespace]
        entry.hits += hits
        entry.misses += misses

    def record_namespace_call(self, namespace: str) -> None:
        self.namespaces[namespace].calls += 1

    def record_call_start(self, method: str) -> None:
        self.active[method] += 1

    def record_call(self, method: str, code: str | None, seconds: float) -> None:
        """A call ended (after record_call_start); `code` is the gRPC status name of a
        failed call, None for success."""
        self.active[method] -= 1
        entry = self.methods[method]
        entry.calls += 1
        entry.total_seconds += seconds
        if code is not None:
            entry.errors += 1
            entry.errors_by_code[code] += 1
        instruments.rpc_duration.record(
            seconds,
            {
                "rpc.system.name": "grpc",
                "rpc.method": method.lstrip("/"),
                "rpc.response.status_code": code or "OK",
            },
        )

    def record_ratelimit_decision(self, policy: str, outcome: str, count: int = 1) -> None:
        """`outcome`: allowed, denied, shadow_denied or fail_open."""
        if outcome == "fail_open":
            self.ratelimit_fail_open += count
        instruments.ratelimit_decisions.add(
            count, {"cachet.ratelimit.policy": policy, "cachet.ratelimit.outcome": outcome}
        )
