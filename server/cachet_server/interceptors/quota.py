"""The quota stage: how much of this process one namespace may hold at once.

Runs inside auth (so it counts only namespaces that passed validation and auth) and
outside telemetry. Each call takes a slot of its namespace's `calls` quota; a call that
its CallSpec declares blocking (for this request) takes a `blocking` slot too; a
Subscribe, Hold or WatchInvalidations stream takes one of its kind for as long as it
stays open. A call over
any of them answers RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with a RetryInfo before its
handler runs, and only its own namespace's counts decide that: another tenant's load
never refuses it.

Limits come from the `quotas:` config, overridden per credential (`quotas:` on an API key
or mTLS identity). Counts are per namespace, so two credentials of one namespace share
them, each bounded by its own limit. Counters of a namespace with nothing in flight are
dropped, so the table holds only what is in flight.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from ..access import CallSpec, StreamKind
from ..callcontext import Identity, current_call
from ..config import QuotaOverrides, Quotas
from ..errors import ResourceExhausted
from ..stats import ServiceStats
from ._stage import Context


class Resource(enum.StrEnum):
    """What a quota counts; the value names it in messages, ErrorInfo and stats."""

    CALLS = "calls"
    BLOCKING = "blocking_calls"
    SUBSCRIBE = "subscribe_streams"
    HOLD = "hold_streams"
    WATCH = "watch_streams"


_STREAM_RESOURCE = {
    StreamKind.SUBSCRIBE: Resource.SUBSCRIBE,
    StreamKind.HOLD: Resource.HOLD,
    StreamKind.WATCH: Resource.WATCH,
}
_LIMIT_FIELD = {
    Resource.CALLS: "max_calls",
    Resource.BLOCKING: "max_blocking_calls",
    Resource.SUBSCRIBE: "max_subscribe_streams",
    Resource.HOLD: "max_hold_streams",
    Resource.WATCH: "max_watch_streams",
}


class QuotaCounts:
    """In-flight counts per namespace and resource; an entry lives only while non-zero.
    Keyed by namespace, then resource, so a call's check and update allocate nothing but
    a namespace's first entry."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[Resource, int]] = {}

    def in_flight(self, namespace: str, resource: Resource) -> int:
        held = self._counts.get(namespace)
        return held.get(resource, 0) if held is not None else 0

    def take_within(
        self, namespace: str, resources: tuple[Resource, ...], limits: Mapping[Resource, int]
    ) -> Resource | None:
        """Take `resources` unless one of them already has its limit in flight: then take
        nothing and answer that one (the first, in `resources` order)."""
        held = self._counts.get(namespace)
        for resource in resources:
            if (held.get(resource, 0) if held is not None else 0) >= limits[resource]:
                return resource
        if held is None:
            held = self._counts[namespace] = {}
        for resource in resources:
            held[resource] = held.get(resource, 0) + 1
        return None

    def give_back(self, namespace: str, resources: tuple[Resource, ...]) -> None:
        held = self._counts[namespace]
        for resource in resources:
            left = held[resource] - 1
            if left:
                held[resource] = left
            else:
                del held[resource]
        if not held:
            del self._counts[namespace]

    def __len__(self) -> int:
        return sum(len(held) for held in self._counts.values())


class QuotaStage:
    def __init__(
        self, defaults: Quotas, table: Mapping[str, CallSpec], stats: ServiceStats
    ) -> None:
        self.defaults = defaults
        self.table = table
        self.stats = stats
        self.counts = QuotaCounts()
        # Effective limits per credential override (a handful: one per configured
        # credential with `quotas:`).
        self._limits: dict[QuotaOverrides, dict[Resource, int]] = {}
        self._default_limits = {r: int(getattr(defaults, f)) for r, f in _LIMIT_FIELD.items()}

    def limits_for(self, identity: Identity) -> Mapping[Resource, int]:
        overrides = identity.quotas
        if overrides is None:
            return self._default_limits
        limits = self._limits.get(overrides)
        if limits is None:
            limits = self._limits[overrides] = _merged(self._default_limits, overrides)
        return limits

    def stage_for(self, method: str, *, response_streaming: bool) -> _Admit | None:
        spec = self.table.get(method)
        if spec is None:
            # Health and reflection: not namespace traffic, never refused here.
            return None
        return _Admit(self, spec)


class _Admit:
    """One method's quota check; `enter` answers the resources the call holds."""

    __slots__ = ("blocking", "counts", "defaults", "may_block", "quota", "resources", "spec")

    def __init__(self, quota: QuotaStage, spec: CallSpec) -> None:
        self.quota = quota
        self.spec = spec
        self.counts = quota.counts
        self.defaults = quota._default_limits
        # What a call of this method holds, without and with a blocking wait: built once.
        self.resources: tuple[Resource, ...] = (Resource.CALLS,)
        if spec.stream is not None:
            self.resources += (_STREAM_RESOURCE[spec.stream],)
        self.blocking = (*self.resources, Resource.BLOCKING)
        self.may_block = spec.blocking_if is not None

    def enter(self, request: Any, context: Context) -> tuple[Resource, ...]:
        call = current_call()
        namespace = call.namespace
        resources = (
            self.blocking if self.may_block and self.spec.blocks(request) else self.resources
        )
        identity = call.identity
        limits = self.defaults if identity.quotas is None else self.quota.limits_for(identity)
        over = self.counts.take_within(namespace, resources, limits)
        if over is not None:
            quota = self.quota
            limit = limits[over]
            quota.stats.record_quota_refusal(namespace, over.value)
            call.status = ResourceExhausted.code
            call.reason = "QUOTA_EXCEEDED"
            raise ResourceExhausted(
                f"namespace {namespace!r} already has {limit} "
                f"{over.value.replace('_', ' ')} in flight (its quota); retry later",
                retry_after=quota.defaults.retry_after,
                reason="QUOTA_EXCEEDED",
                metadata={"quota": over.value, "limit": str(limit)},
            )
        return resources

    def leave(self, resources: tuple[Resource, ...], error: BaseException | None) -> None:
        self.counts.give_back(current_call().namespace, resources)


def _merged(defaults: Mapping[Resource, int], overrides: QuotaOverrides) -> dict[Resource, int]:
    limits = dict(defaults)
    for resource, field in _LIMIT_FIELD.items():
        value = getattr(overrides, field)
        if value is not None:
            limits[resource] = int(value)
    return limits
