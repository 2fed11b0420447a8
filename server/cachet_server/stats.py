"""Counters this process keeps about its own traffic, for AdminService/GetServiceStats.

Per process, in memory: each cachet replica reports its own traffic. Updated on
the event loop only, so plain integers suffice. They are also what the metrics report
(metrics.py): lookups and calls in flight are read from here at collection time, call
durations and rate-limit decisions are recorded here as they happen; one place per
event, so GetServiceStats and /metrics cannot disagree. The workers of one
`--workers N` server publish them to each other (see workers.py), so any worker answers
GetServiceStats for the whole server; /metrics stays per worker.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from .histograms import HistogramSeries
from .metrics import OTHER_NAMESPACES, histograms, instruments


class SiblingStats(Protocol):
    """Where the other workers of this server published their counters."""

    def siblings(self) -> list[dict[str, Any]]: ...


@dataclass
class NamespaceStats:
    hits: int = 0
    misses: int = 0
    calls: int = 0
    # Calls refused by a quota (interceptors/quota.py), by quota name.
    quota_refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class _CappedNamespaces(dict[str, NamespaceStats]):
    """Entries made on first use, up to `cap` of them; past it, a new name's entry is
    the shared OTHER_NAMESPACES one."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def __missing__(self, namespace: str) -> NamespaceStats:
        if len(self) >= self.cap and namespace != OTHER_NAMESPACES:
            return self[OTHER_NAMESPACES]
        entry = self[namespace] = NamespaceStats()
        return entry


@dataclass
class MethodStats:
    calls: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total_seconds: float = 0.0


class MethodCounter:
    """One method's calls: in flight, then counted with their duration and status, here
    and in the `rpc.server.call.duration` histogram. Everything a call needs is looked up
    once per method (the histogram's series once per status), so a call costs a few
    integer updates and one pre-aggregated record (histograms.py), none while no metrics
    reader collects the histogram (metrics off)."""

    __slots__ = (
        "_entry",
        "_namespaces",
        "_ok",
        "_rpc_method",
        "_series",
        "active",
        "method",
        "stats",
    )

    def __init__(self, stats: ServiceStats, method: str) -> None:
        self.stats = stats
        self.method = method
        self.active = stats.active
        self._namespaces = stats.namespaces
        self._rpc_method = method.lstrip("/")
        # Made on the first call that ends: GetServiceStats lists only methods called.
        self._entry: MethodStats | None = None
        # The series of successful calls, and of failed ones by status.
        self._ok: HistogramSeries | None = None
        self._series: dict[grpc.StatusCode, HistogramSeries] = {}

    def start(self, namespace: str) -> None:
        """A call of `namespace` (validated and authorized) starts."""
        self._namespaces[namespace].calls += 1
        self.active[self.method] += 1

    def end(self, code: grpc.StatusCode | None, seconds: float) -> None:
        """The call ended (after `start`); `code` is the status of a failed call, None
        for success."""
        self.active[self.method] -= 1
        entry = self._entry
        if entry is None:
            entry = self._entry = self.stats.methods[self.method]
        entry.calls += 1
        entry.total_seconds += seconds
        if code is None:
            series = self._ok
            if series is None:
                if not histograms.read:
                    return
                series = self._ok = self._new_series(None)
        else:
            entry.errors += 1
            entry.errors_by_code[code.name] += 1
            if not histograms.read:
                return
            found = self._series.get(code)
            if found is None:
                found = self._series[code] = self._new_series(code)
            series = found
        series.record(seconds)

    def _new_series(self, code: grpc.StatusCode | None) -> HistogramSeries:
        return instruments.rpc_duration.series(
            {
                "rpc.system.name": "grpc",
                "rpc.method": self._rpc_method,
                "rpc.response.status_code": code.name if code is not None else "OK",
            }
        )


class ServiceStats:
    """Hits and misses per namespace; calls, errors and time per RPC method.

    Only namespaces that passed validation and auth are ever recorded (the corridor's
    telemetry and quota stages run inside auth), and at most `max_namespaces` of them
    get an entry of their own: the rest are counted together under OTHER_NAMESPACES, so
    a caller cycling through names cannot grow this without bound."""

    def __init__(
        self,
        max_namespaces: int = 1000,
        share: SiblingStats | None = None,
        *,
        observed: bool = True,
    ) -> None:
        """`share`: where sibling workers publish (workers.py); `observed`: the metrics
        read these counters (false for a merged copy)."""
        self.share = share
        self.max_namespaces = max_namespaces
        self.namespaces: dict[str, NamespaceStats] = _CappedNamespaces(max_namespaces)
        self.methods: dict[str, MethodStats] = defaultdict(MethodStats)
        # Rate-limit checks admitted unchecked because Redis was unreachable (fail_open).
        self.ratelimit_fail_open = 0
        # Calls being served now, per method.
        self.active: dict[str, int] = defaultdict(int)
        # The decisions counter's entry per policy and outcome (PlainCounter.series), found
        # once: policies come from the configuration, so there are few.
        self._decision_series: dict[tuple[str, str], list[Any]] = {}
        if observed:
            instruments.observe(self)

    def _namespace(self, namespace: str) -> NamespaceStats:
        return self.namespaces[namespace]

    def record_lookups(self, namespace: str, hits: int, misses: int) -> None:
        entry = self._namespace(namespace)
        entry.hits += hits
        entry.misses += misses

    def record_quota_refusal(self, namespace: str, quota: str) -> None:
        """A call refused by a quota, by namespace and quota name (one of four); also the
        `cachet.quota.refusals` metric, whose namespace labels are capped."""
        self._namespace(namespace).quota_refusals[quota] += 1
        instruments.quota_refusals.add(1, {**instruments.ns(namespace), "cachet.quota": quota})

    def method_counter(self, method: str) -> MethodCounter:
        """What the telemetry stage counts one method's calls with (built once per method)."""
        return MethodCounter(self, method)

    def record_ratelimit_decision(self, policy: str, outcome: str, count: int = 1) -> None:
        """`outcome`: allowed, denied, shadow_denied or fail_open."""
        if outcome == "fail_open":
            self.ratelimit_fail_open += count
        series = self._decision_series.get((policy, outcome))
        if series is None:
            series = self._decision_series[policy, outcome] = (
                instruments.ratelimit_decisions.series(
                    {"cachet.ratelimit.policy": policy, "cachet.ratelimit.outcome": outcome}
                )
            )
        series[1] += count

    # ---- across workers (see workers.py) -----------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON-ready data."""
        return {
            "namespaces": {
                name: {
                    "hits": entry.hits,
                    "misses": entry.misses,
                    "calls": entry.calls,
                    "quota_refusals": dict(entry.quota_refusals),
                }
                for name, entry in self.namespaces.items()
            },
            "methods": {
                name: {
                    "calls": entry.calls,
                    "errors": entry.errors,
                    "errors_by_code": dict(entry.errors_by_code),
                    "total_seconds": entry.total_seconds,
                }
                for name, entry in self.methods.items()
            },
            "ratelimit_fail_open": self.ratelimit_fail_open,
        }

    def add(self, snapshot: dict[str, Any]) -> None:
        """Add another process's snapshot to these counters."""
        for name, counted in snapshot.get("namespaces", {}).items():
            entry = self.namespaces[name]
            entry.hits += int(counted["hits"])
            entry.misses += int(counted["misses"])
            entry.calls += int(counted["calls"])
            for quota, n in counted.get("quota_refusals", {}).items():
                entry.quota_refusals[quota] += int(n)
        for name, counted in snapshot.get("methods", {}).items():
            method = self.methods[name]
            method.calls += int(counted["calls"])
            method.errors += int(counted["errors"])
            method.total_seconds += float(counted["total_seconds"])
            for code, n in counted["errors_by_code"].items():
                method.errors_by_code[code] += int(n)
        self.ratelimit_fail_open += int(snapshot.get("ratelimit_fail_open", 0))

    def across_workers(self) -> ServiceStats:
        """These counters, plus those the sibling workers of a `--workers N` server last
        published; just these in a single-process server."""
        if self.share is None:
            return self
        combined = ServiceStats(self.max_namespaces, observed=False)
        combined.add(self.snapshot())
        for snapshot in self.share.siblings():
            combined.add(snapshot)
        return combined
