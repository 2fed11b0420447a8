"""The one Settings object: environment variables `CACHET_*` plus an optional YAML file.

Scalars come from the environment (`CACHET_REDIS_URL`, `CACHET_LISTEN`, ...);
structured parts (rate-limit policies, API keys) come from the YAML file named by
`CACHET_CONFIG_FILE`. An environment variable wins over the same key in the file.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .access import Role
from .backend.keys import NAMESPACE_PATTERN


class Limits(BaseModel):
    """Bounds enforced on every request; each answers INVALID_ARGUMENT when exceeded."""

    max_key_bytes: int = Field(1024, ge=1, le=65536, description="Longest key, in UTF-8 bytes.")
    max_value_bytes: int = Field(
        1024 * 1024, ge=1, le=512 * 1024 * 1024, description="Largest value or payload."
    )
    max_batch: int = Field(1000, ge=1, le=100_000, description="Most items in one request.")
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest gRPC message received or sent."
    )
    max_ttl: timedelta = Field(timedelta(days=30), description="Longest TTL a write may ask for.")
    default_ttl: timedelta = Field(
        timedelta(hours=1), description="TTL of a write that names none."
    )
    max_namespace_bytes: int = Field(64, ge=1, le=200, description="Longest namespace name.")


class Quotas(BaseModel):
    """Per-namespace concurrency quotas (env `CACHET_QUOTAS__<FIELD>`, YAML `quotas:`).

    Each bounds what one namespace holds at once in one server process; a call beyond a
    quota answers RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with a RetryInfo, and never touches
    another namespace's share. A credential may override them (`quotas:` on an API key or
    mTLS identity); JWTs use these defaults."""

    model_config = ConfigDict(extra="forbid")

    max_calls: int = Field(
        512, ge=1, le=1_000_000, description="Calls of one namespace in flight at once."
    )
    max_blocking_calls: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Calls of one namespace waiting at once: ListPop/ListMove with `wait`, "
        "Acquire/AcquireSemaphore with `wait`, Read with `block`, and Consume.",
    )
    max_subscribe_streams: int = Field(
        100, ge=1, le=100_000, description="Subscribe streams of one namespace open at once."
    )
    max_hold_streams: int = Field(
        100, ge=1, le=100_000, description="Hold streams of one namespace open at once."
    )
    max_watch_streams: int = Field(
        100,
        ge=1,
        le=100_000,
        description="WatchInvalidations streams of one namespace open at once.",
    )
    retry_after: timedelta = Field(
        timedelta(seconds=1),
        gt=timedelta(0),
        description="The RetryInfo delay a refused call is told to wait.",
    )


class QuotaOverrides(BaseModel):
    """A credential's own quotas; a field left out keeps the `quotas:` default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(None, ge=1, le=1_000_000)
    max_blocking_calls: int | None = Field(None, ge=1, le=100_000)
    max_subscribe_streams: int | None = Field(None, ge=1, le=100_000)
    max_hold_streams: int | None = Field(None, ge=1, le=100_000)
    max_watch_streams: int | None = Field(None, ge=1, le=100_000)


class ConnectionSettings(BaseModel):
    """Client connections to the gRPC port (env `CACHET_CONNECTIONS__<FIELD>`, YAML
    `connections:`), enforced by grpc core through server options."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(
        4096,
        ge=1,
        description="Most client connections open at once on the gRPC port "
        "(grpc.max_allowed_incoming_connections); beyond it new connections are closed at "
        "once. Probes keep answering on `health_listen`, a separate port.",
    )
    max_streams_per_connection: int = Field(
        4096,
        ge=1,
        le=65536,
        description="Most calls in flight on one HTTP/2 connection (grpc.max_concurrent_streams); "
        "the server refuses streams beyond it (REFUSED_STREAM) and the client answers "
        "UNAVAILABLE: grpc's Python client was seen not to queue them (1,518 of a 3,000-call "
        "burst on one connection with a limit of 1,000).",
    )
    max_pending_calls: int = Field(
        10_000,
        ge=1,
        description="Most calls that have arrived but that the server has not picked up yet "
        "(grpc.server.max_pending_requests and its hard limit): grpc.aio picks calls up one "
        "at a time from its event loop, so a burst queues in grpc core first. Beyond it, "
        "grpc core refuses a call, and the client sees CANCELLED for a call it never "
        "cancelled (grpc's defaults, 1,000 and 3,000, did that to bursts of 3,000 Gets).",
    )
    idle_timeout: timedelta = Field(
        timedelta(minutes=5),
        gt=timedelta(0),
        description="A connection without any call for this long is closed with GOAWAY "
        "(grpc.max_connection_idle_ms); clients reconnect transparently.",
    )
    keepalive_time: timedelta = Field(
        timedelta(minutes=1),
        gt=timedelta(0),
        description="The server pings a connection this often (grpc.keepalive_time_ms) ...",
    )
    keepalive_timeout: timedelta = Field(
        timedelta(seconds=20),
        gt=timedelta(0),
        description="... and closes it when the ping is not answered within this "
        "(grpc.keepalive_timeout_ms): dead peers do not hold a connection slot.",
    )
    min_client_ping_interval: timedelta = Field(
        timedelta(seconds=10),
        gt=timedelta(0),
        description="Clients may ping no more often than this "
        "(grpc.http2.min_ping_interval_without_data_ms); two pings too early "
        "(grpc.http2.max_ping_strikes) close the connection with ENHANCE_YOUR_CALM.",
    )

    def grpc_options(self) -> list[tuple[str, int]]:
        def ms(delta: timedelta) -> int:
            return int(delta / timedelta(milliseconds=1))

        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_connection_idle_ms", ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval)),
            ("grpc.http2.max_ping_strikes", 2),
            # Soft and hard limit equal: refusal past the limit, never at random before it.
            ("grpc.server.max_pending_requests", self.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_calls),
        ]


class LockSettings(BaseModel):
    """LockService settings (env `CACHET_LOCK__<FIELD>`, YAML `lock:`)."""

    max_ttl: timedelta = Field(
        timedelta(hours=1), description="Longest TTL of a lock grant, renewal or semaphore permit."
    )
    max_wait: timedelta = Field(
        timedelta(minutes=5),
        description="Longest time Acquire, Hold and AcquireSemaphore may ask to wait.",
    )
    max_semaphore_limit: int = Field(
        10_000, ge=1, le=1_000_000, description="Largest number of permits of one semaphore."
    )
    recheck_interval: timedelta = Field(
        timedelta(seconds=1),
        description="Longest a waiter sleeps without a release notification before it looks "
        "again (a safety net for a lost notification); also how often it refreshes its "
        "queue entry.",
    )
    waiter_lease: timedelta = Field(
        timedelta(seconds=3),
        description="How long a waiter's queue entry outlives its last refresh: the longest a "
        "waiter of a crashed server can hold up the queue. Must exceed recheck_interval.",
    )

    min_renew_interval: timedelta = Field(
        timedelta(milliseconds=50),
        description="Floor of a Hold's renew interval, with ttl / 10 (whichever is longer): a "
        "shorter renew_interval asked for is raised to it, so a Hold costs Redis what its TTL "
        "implies, not what the client asks. At most 50 ms keeps a 100 ms TTL holdable.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LockSettings:
        if not timedelta(0) < self.min_renew_interval <= timedelta(milliseconds=50):
            raise ValueError("lock.min_renew_interval must be from 1 to 50 ms")
        for name in ("max_ttl", "max_wait", "recheck_interval", "waiter_lease"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"lock.{name} must be positive")
        if self.waiter_lease <= self.recheck_interval:
            raise ValueError("lock.waiter_lease must be longer than lock.recheck_interval")
        return self


class FailMode(StrEnum):
    """What a rate-limit check answers while Redis is unreachable."""

    FAIL_CLOSED = "fail_closed"  # UNAVAILABLE
    FAIL_OPEN = "fail_open"  # allowed, marked fail_open, counted


class RateLimitAlgorithmName(StrEnum):
    """How a configured limit counts hits (see docs/ratelimit.md)."""

    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW_LOG = "sliding_window_log"
    SLIDING_WINDOW_COUNTER = "sliding_window_counter"
    TOKEN_BUCKET = "token_bucket"
    GCRA = "gcra"


class RateLimitUnit(StrEnum):
    """Envoy's rate-limit units; a month is 30 days and a year 365 days, as in Envoy."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


UNIT_PERIODS = {
    RateLimitUnit.SECOND: timedelta(seconds=1),
    RateLimitUnit.MINUTE: timedelta(minutes=1),
    RateLimitUnit.HOUR: timedelta(hours=1),
    RateLimitUnit.DAY: timedelta(days=1),
    RateLimitUnit.MONTH: timedelta(days=30),
    RateLimitUnit.YEAR: timedelta(days=365),
}
MAX_RATE_LIMIT = 1_000_000_000
MAX_RATE_PERIOD = timedelta(days=366)


class RateLimitRule(BaseModel):
    """A `rate_limit:` block: Envoy's `requests_per_unit` and `unit`, plus cachet's own
    `period`, `algorithm` and `burst`."""

    model_config = ConfigDict(extra="forbid")

    requests_per_unit: int = Field(
        ge=1, le=MAX_RATE_LIMIT, description="Hits allowed per unit (the sustained rate)."
    )
    unit: RateLimitUnit | None = Field(
        None, description="second, minute, hour, day, month (30 days) or year (365 days)."
    )
    period: timedelta | None = Field(
        None, description="Instead of `unit`: any whole-millisecond period up to 366 days."
    )
    algorithm: RateLimitAlgorithmName = Field(
        RateLimitAlgorithmName.FIXED_WINDOW,
        description="Counting algorithm; fixed_window (Envoy's own) unless set.",
    )
    burst: int = Field(
        0,
        ge=0,
        le=MAX_RATE_LIMIT,
        description="Capacity of token_bucket and gcra; 0 means requests_per_unit.",
    )
    name: str | None = Field(
        None, description="Policy name of the rule; a descriptor rule's default is its path."
    )

    @field_validator("unit", mode="before")
    @classmethod
    def _unit_any_case(cls, unit: Any) -> Any:
        return unit.lower() if isinstance(unit, str) else unit

    @model_validator(mode="after")
    def _one_period(self) -> RateLimitRule:
        if (self.unit is None) == (self.period is None):
            raise ValueError("rate_limit needs exactly one of `unit` and `period`")
        if self.period is not None:
            if not timedelta(milliseconds=1) <= self.period <= MAX_RATE_PERIOD:
                raise ValueError("rate_limit.period must be from 1 ms to 366 days")
            if self.period % timedelta(milliseconds=1):
                raise ValueError("rate_limit.period must be a whole number of milliseconds")
        return self

    @property
    def period_ms(self) -> int:
        period = self.period if self.unit is None else UNIT_PERIODS[self.unit]
        assert period is not None
        return period // timedelta(milliseconds=1)


class RateLimitDescriptor(BaseModel):
    """One level of a domain's descriptor tree, as in envoyproxy/ratelimit."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, description="Descriptor entry key, e.g. remote_address.")
    value: str = Field(
        "",
        description="Entry value to match: exact; `prefix*` matches by prefix; empty matches "
        "any value (each distinct value is limited separately).",
    )
    rate_limit: RateLimitRule | None = Field(
        None, description="The limit of a request whose descriptor ends at this level."
    )
    shadow_mode: bool = Field(False, description="Count and report, but never deny.")
    fail_mode: FailMode | None = Field(
        None, description="Overrides ratelimit.fail_mode for this rule."
    )
    descriptors: list[RateLimitDescriptor] = Field(
        default_factory=list, description="Rules for the next descriptor entry."
    )


class RateLimitDomain(BaseModel):
    """The descriptor rules of one domain (one envoyproxy/ratelimit config file)."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1, description="Domain named by requests, e.g. edge-proxy.")
    descriptors: list[RateLimitDescriptor] = Field(
        default_factory=list, description="Rules for the first descriptor entry."
    )


class RateLimitPolicy(BaseModel):
    """A named limit, applied to caller-chosen keys with PolicyRef."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Unique name, e.g. login.")
    rate_limit: RateLimitRule = Field(description="The limit.")
    shadow_mode: bool = Field(False, description="Count and report, but never deny.")
    fail_mode: FailMode | None = Field(
        None, description="Overrides ratelimit.fail_mode for this policy."
    )


class RateLimitHeaders(BaseModel):
    """RateLimit-* response headers in Envoy answers, as envoyproxy/ratelimit adds them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Add the three headers to ShouldRateLimit answers.")
    limit: str = Field("RateLimit-Limit", min_length=1, description="Header with the limit.")
    remaining: str = Field(
        "RateLimit-Remaining", min_length=1, description="Header with the hits remaining."
    )
    reset: str = Field(
        "RateLimit-Reset", min_length=1, description="Header with the seconds until reset."
    )


DescriptorPath = tuple[tuple[str, str], ...]


def walk_descriptors(
    descriptors: list[RateLimitDescriptor], parent: DescriptorPath = ()
) -> Iterator[tuple[DescriptorPath, RateLimitDescriptor]]:
    """Every level of a descriptor tree with its (key, value) path from the root."""
    for descriptor in descriptors:
        path = (*parent, (descriptor.key, descriptor.value))
        yield path, descriptor
        yield from walk_descriptors(descriptor.descriptors, path)


def descriptor_rule_name(domain: str, path: DescriptorPath, rule: RateLimitRule) -> str:
    """A descriptor rule's policy name: its own `name`, else its path written as
    envoyproxy/ratelimit writes it (`domain.key_value.key`)."""
    if rule.name:
        return rule.name
    return ".".join([domain, *(f"{key}_{value}" if value else key for key, value in path)])


class RateLimitSettings(BaseModel):
    """RateLimitService settings (env `CACHET_RATELIMIT__<FIELD>`, YAML `ratelimit:`)."""

    fail_mode: FailMode = Field(
        FailMode.FAIL_CLOSED,
        description="While Redis is unreachable: fail_closed answers UNAVAILABLE, fail_open "
        "admits the check unchecked (marked fail_open and counted).",
    )
    policies: list[RateLimitPolicy] = Field(
        default_factory=list, description="Named policies, addressed by PolicyRef."
    )
    domains: list[RateLimitDomain] = Field(
        default_factory=list,
        description="Envoy-style descriptor rules per domain, for DescriptorMatch and "
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit.",
    )
    response_headers: RateLimitHeaders = Field(
        default_factory=RateLimitHeaders, description="RateLimit-* headers for Envoy."
    )

    @model_validator(mode="after")
    def _unambiguous(self) -> RateLimitSettings:
        names = [policy.name for policy in self.policies]
        domains: set[str] = set()
        for domain in self.domains:
            if domain.domain in domains:
                raise ValueError(f"ratelimit: domain {domain.domain!r} is configured twice")
            domains.add(domain.domain)
            levels: set[tuple[DescriptorPath, tuple[str, str]]] = set()
            for path, descriptor in walk_descriptors(domain.descriptors):
                level = (path[:-1], path[-1])
                if level in levels:
                    where = ".".join(f"{k}={v}" for k, v in path)
                    raise ValueError(f"ratelimit: {domain.domain}: {where} is configured twice")
                levels.add(level)
                if descriptor.rate_limit is not None:
                    names.append(descriptor_rule_name(domain.domain, path, descriptor.rate_limit))
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"ratelimit: policy name {name!r} is used twice")
            if (
                not name.isprintable()
                or "{" in name
                or "}" in name
                or name.startswith("@")
                or len(name) > 256
            ):
                raise ValueError(
                    f"ratelimit: policy name {name!r} must be printable, at most 256 "
                    "characters, without braces, not starting with '@' (give the rule a `name`)"
                )
            seen.add(name)
        return self


class EventBusSettings(BaseModel):
    """EventBusService settings (env `CACHET_EVENTBUS__<FIELD>`, YAML `eventbus:`)."""

    max_event_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest event (payload, attributes and the other fields, as encoded) "
        "that Publish or Append accepts.",
    )
    subscriber_buffer: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Events buffered per Subscribe call while its client reads slowly; when "
        "full, the call ends with RESOURCE_EXHAUSTED / SUBSCRIBER_TOO_SLOW.",
    )
    subscriber_buffer_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Bytes of events buffered per Subscribe call (beside `subscriber_buffer` "
        "events): a subscriber further behind ends with RESOURCE_EXHAUSTED / "
        "SUBSCRIBER_TOO_SLOW. At least max_event_bytes.",
    )
    max_subscribers: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most Subscribe calls open at once in one server process (each holds one "
        "Redis connection of its own); beyond it Subscribe answers RESOURCE_EXHAUSTED.",
    )
    max_subscriptions: int = Field(
        100, ge=1, le=10_000, description="Most topics plus patterns in one Subscribe call."
    )
    reconnect_window: timedelta = Field(
        timedelta(seconds=30),
        description="How long a Subscribe call keeps trying to restore a dropped Redis "
        "connection before it ends with UNAVAILABLE.",
    )
    max_block: timedelta = Field(
        timedelta(seconds=60),
        description="Longest wait a Read (`block`) or one Consume round may ask for.",
    )
    max_blocking_reads: int = Field(
        64,
        ge=1,
        description="Most blocking stream reads (XREAD/XREADGROUP BLOCK) in flight at once per "
        "process; each holds a pooled Redis connection while it waits. Beyond it, readers "
        "poll every `poll_interval` instead, so the command pool is never drained.",
    )
    poll_interval: timedelta = Field(
        timedelta(milliseconds=100),
        description="How often a reader without a blocking slot, or a Consume paused by "
        "`max_pending`, looks again.",
    )

    @model_validator(mode="after")
    def _positive_durations(self) -> EventBusSettings:
        if self.subscriber_buffer_bytes < self.max_event_bytes:
            raise ValueError("eventbus.subscriber_buffer_bytes must be at least max_event_bytes")
        for name in ("reconnect_window", "max_block", "poll_interval"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"eventbus.{name} must be positive")
        return self


# Redis parameters that hold or lead to secrets: never readable or settable through cachet.
SECRET_REDIS_PARAMETERS = frozenset(
    {
        "requirepass",
        "masterauth",
        "masteruser",
        "aclfile",
        "tls-key-file",
        "tls-key-file-pass",
        "tls-client-key-file",
        "tls-client-key-file-pass",
        "dir",
        "dbfilename",
    }
)


class InvalidationSettings(BaseModel):
    """CacheService/WatchInvalidations (env `CACHET_INVALIDATIONS__<FIELD>`, YAML
    `invalidations:`)."""

    watcher_buffer: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Events buffered per WatchInvalidations stream while its client reads "
        "slowly; on overflow the stream sends flush_all (then synced) instead.",
    )
    check_interval: timedelta = Field(
        timedelta(seconds=1),
        description="How often an idle tracking connection is pinged and the topology "
        "compared: the longest a silently dead connection or a failover goes unnoticed "
        "before watchers get flush_all.",
    )
    max_watchers: int = Field(
        10_000,
        ge=1,
        description="Most WatchInvalidations streams one process serves at once; beyond it "
        "RESOURCE_EXHAUSTED / TOO_MANY_WATCHERS.",
    )

    @model_validator(mode="after")
    def _positive(self) -> InvalidationSettings:
        if self.check_interval <= timedelta(0):
            raise ValueError("invalidations.check_interval must be positive")
        return self


class AdminSettings(BaseModel):
    """AdminService settings (env `CACHET_ADMIN__<FIELD>`, YAML `admin:`)."""

    config_whitelist: list[str] = Field(
        default_factory=lambda: [
            "slowlog-log-slower-than",
            "slowlog-max-len",
            "latency-monitor-threshold",
            "maxmemory",
            "maxmemory-policy",
        ],
        description="Redis parameters GetConfig/SetConfig may touch (exact names; any other "
        "answers PERMISSION_DENIED). Env: a JSON list. Secrets (passwords, ACL and TLS key "
        "files) can never be listed.",
    )
    config_int_bounds: dict[str, tuple[int, int]] = Field(
        default_factory=lambda: {
            "slowlog-log-slower-than": (-1, 60_000_000),
            "slowlog-max-len": (0, 10_000),
            "latency-monitor-threshold": (0, 60_000),
        },
        description="Inclusive [min, max] for whitelisted integer parameters; SetConfig refuses "
        "a value outside them with INVALID_ARGUMENT.",
    )

    @field_validator("config_whitelist")
    @classmethod
    def _no_secrets(cls, names: list[str]) -> list[str]:
        secret = sorted({name.lower() for name in names} & SECRET_REDIS_PARAMETERS)
        if secret:
            raise ValueError(f"admin.config_whitelist may not list {', '.join(secret)}")
        return names

    flush_enabled: bool = Field(
        True,
        description="Allow FlushNamespace at all; false answers FAILED_PRECONDITION "
        "(reason FLUSH_DISABLED), for deployments where no one should flush.",
    )
    flush_batch: int = Field(
        500, ge=1, le=10_000, description="Keys per SCAN COUNT and per UNLINK in FlushNamespace."
    )
    scan_count_max: int = Field(
        5000,
        ge=10,
        le=100_000,
        description="Largest SCAN COUNT ScanKeys/GetBigKeys use while looking for matches in a "
        "sparse keyspace.",
    )
    scan_page_time: timedelta = Field(
        timedelta(seconds=1),
        description="How long one ScanKeys page may keep scanning before it answers with fewer "
        "keys than page_size (and a token to continue).",
    )
    big_keys_time: timedelta = Field(
        timedelta(seconds=10),
        description="How long one GetBigKeys call may keep scanning before it answers with a "
        "token to continue, even if scan_budget is not used up.",
    )
    max_scan_budget: int = Field(
        1_000_000, ge=1, description="Largest scan_budget GetBigKeys accepts."
    )
    safe_eviction_policies: list[str] = Field(
        default_factory=lambda: ["noeviction"],
        description="maxmemory-policy values SetConfig may set. Every other policy can evict "
        "lock holders (volatile-*) or fencing counters and any tenant's data (allkeys-*); "
        "add one only when locks live in a Redis of their own.",
    )
    maxmemory_headroom: float = Field(
        0.1,
        ge=0,
        le=10,
        description="SetConfig refuses a maxmemory below a node's used memory times "
        "(1 + this), so a limit never stops every tenant's writes at once.",
    )


class AuthMode(StrEnum):
    """Whether calls must carry a credential."""

    REQUIRED = "required"  # every call but health (and reflection, unless protected)
    OFF = "off"  # local development only: every caller is every tenant


def _check_namespace_grants(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        name = pattern[:-1] if pattern.endswith("*") else pattern
        if pattern != "*" and not NAMESPACE_PATTERN.match(name):
            raise ValueError(
                f"namespace grant {pattern[:80]!r} must be a namespace name, or a prefix "
                "ending in '*' (letters, digits, '_', '.', '-')"
            )
    return patterns


class Grant(BaseModel):
    """Namespaces and roles held by one credential."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(
        min_length=1,
        description="Granted namespaces: exact names, or `prefix-*` for every namespace that "
        "starts with `prefix-`; `*` grants all.",
    )
    roles: list[Role] = Field(
        min_length=1, description="read, write, admin, operator and/or ratelimit."
    )
    quotas: QuotaOverrides | None = Field(
        None, description="This credential's own quotas (see `quotas:`); unset: the defaults."
    )

    _namespaces_valid = field_validator("namespaces")(_check_namespace_grants)


class ApiKey(Grant):
    """An API key, stored only as the SHA-256 hex digest of the key."""

    id: str = Field(
        min_length=1, max_length=128, description="Names the key in audit lines; never secret."
    )
    sha256: str = Field(
        pattern=r"\A[0-9a-fA-F]{64}\z", description="SHA-256 of the key, hex (64 digits)."
    )

    @field_validator("sha256")
    @classmethod
    def _lower(cls, digest: str) -> str:
        return digest.lower()


class JwtAlgorithm(StrEnum):
    HS256 = "HS256"
    RS256 = "RS256"
    ES256 = "ES256"


class JwtKey(BaseModel):
    """One key that may sign JWTs: an HMAC secret (HS256) or a PEM public key."""

    model_config = ConfigDict(extra="forbid")

    kid: str | None = Field(
        None, description="Key id; a token whose header names a kid is checked with that key."
    )
    algorithm: JwtAlgorithm = Field(description="HS256, RS256 or ES256; the only one accepted.")
    secret_file: Path | None = Field(
        None,
        description="HS256: file holding the shared secret (all its bytes but one "
        "trailing line break).",
    )
    public_key_file: Path | None = Field(
        None, description="RS256/ES256: PEM file with the public key."
    )

    @model_validator(mode="after")
    def _one_source(self) -> JwtKey:
        if self.algorithm is JwtAlgorithm.HS256:
            if self.secret_file is None or self.public_key_file is not None:
                raise ValueError("auth.jwt.keys: an HS256 key needs secret_file (only)")
        elif self.public_key_file is None or self.secret_file is not None:
            raise ValueError(f"auth.jwt.keys: an {self.algorithm} key needs public_key_file (only)")
        return self


class JwtSettings(BaseModel):
    """JWT bearer credentials (YAML `auth.jwt:`)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1, description="Required `iss` claim.")
    audience: str = Field(min_length=1, description="Required `aud` claim (one of its values).")
    leeway: timedelta = Field(
        timedelta(seconds=30), description="Clock skew allowed on exp and nbf (at most 5 min)."
    )
    keys: list[JwtKey] = Field(default_factory=list, description="Signing keys.")
    jwks_file: Path | None = Field(
        None, description="A JWKS file (RFC 7517) of public keys, matched by kid."
    )
    namespaces_claim: str = Field(
        "cachet_namespaces", min_length=1, description="Claim with the granted namespaces."
    )
    roles_claim: str = Field(
        "cachet_roles", min_length=1, description="Claim with the granted roles."
    )
    id_claim: str = Field(
        "sub", min_length=1, description="Claim that names the caller in audit lines."
    )

    @model_validator(mode="after")
    def _has_keys(self) -> JwtSettings:
        if not self.keys and self.jwks_file is None:
            raise ValueError("auth.jwt needs `keys` or `jwks_file`")
        if not timedelta(0) <= self.leeway <= timedelta(minutes=5):
            raise ValueError("auth.jwt.leeway must be from 0 to 5 minutes")
        return self


class MtlsIdentity(Grant):
    """Grants for a client certificate (mutual TLS), matched by subject or by SAN."""

    id: str = Field(min_length=1, max_length=128, description="Names it in audit lines.")
    subject: str | None = Field(
        None,
        description="The certificate's subject as an RFC 4514 string, e.g. `CN=billing,O=acme`.",
    )
    san: str | None = Field(
        None,
        description="A subject alternative name the certificate carries: a DNS name, URI "
        "(e.g. a SPIFFE id) or e-mail address.",
    )

    @model_validator(mode="after")
    def _one_match(self) -> MtlsIdentity:
        if (self.subject is None) == (self.san is None):
            raise ValueError(f"auth.mtls_identities[{self.id}]: set exactly one of subject, san")
        return self


class AuthSettings(BaseModel):
    """Authentication and authorization (env `CACHET_AUTH__<FIELD>`, YAML `auth:`)."""

    model_config = ConfigDict(extra="forbid")

    mode: AuthMode = Field(
        AuthMode.REQUIRED,
        description="required: every call but health carries `authorization: Bearer "
        "<credential>` (or a mapped client certificate); off: local development only.",
    )
    api_keys: list[ApiKey] = Field(default_factory=list, description="API keys (SHA-256 only).")
    api_keys_file: Path | None = Field(
        None,
        description="A YAML file with more API keys (a list in the `api_keys` shape), e.g. a "
        "mounted Secret; read at start-up.",
    )
    jwt: JwtSettings | None = Field(None, description="JWT bearer credentials.")
    mtls_identities: list[MtlsIdentity] = Field(
        default_factory=list,
        description="Client-certificate identities (needs tls.client_ca_file).",
    )
    protect_reflection: bool = Field(
        False, description="Server reflection needs a valid credential too."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> AuthSettings:
        seen: set[str] = set()
        for key in self.api_keys:
            if key.id in seen or key.sha256 in seen:
                raise ValueError(f"auth.api_keys: {key.id!r} or its digest is configured twice")
            seen.update((key.id, key.sha256))
        return self


class TlsSettings(BaseModel):
    """TLS on the gRPC port (env `CACHET_TLS__<FIELD>`)."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(
        None,
        description="PEM certificate chain of the server; with key_file turns TLS on. Read "
        "again when it changes on disk (cert-manager rotation), for new connections.",
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self


class MetricsSettings(BaseModel):
    """Prometheus metrics (env `CACHET_METRICS__<FIELD>`, YAML `metrics:`)."""

    model_config = ConfigDict(extra="forbid")

    listen: str | None = Field(
        "127.0.0.1:9464",
        description="host:port of the Prometheus endpoint (path /metrics); empty: no "
        "endpoint. The chart sets 0.0.0.0:9464. OTLP export of the same metrics follows the "
        "standard OTEL_EXPORTER_OTLP_* variables.",
    )
    max_namespaces: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Most distinct namespace label values per metric; calls of later "
        "namespaces are counted under the label `(other)`.",
    )

    redis_commands: bool = Field(
        True,
        description="Also record redis-py's per-command metrics (db.client.operation.duration "
        "by operation, connection errors); the commands coalescing carries are pre-aggregated "
        "into the same metric (well under a µs each, docs/observability.md).",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _empty_is_off(cls, listen: object) -> object:
        return None if listen == "" else listen


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Settings(BaseSettings):
    """Everything the server reads at start-up; see README.md for each variable."""

    # Unknown names are refused by `Settings.load` (YAML) and `check_environment`
    # (CACHET_* variables), with the nearest valid name; pydantic-settings itself would
    # not look at variables it has no field for.
    model_config = SettingsConfigDict(
        env_prefix="CACHET_", env_nested_delimiter="__", extra="forbid"
    )

    redis_url: str | None = Field(
        None,
        description="redis://, rediss://, redis+sentinel:// or redis+cluster:// URL. "
        "Unset: an embedded redis-server is started for local use only.",
    )
    listen: str = Field(
        "127.0.0.1:50051",
        description="gRPC listen address, host:port (the chart and image set [::]:50051).",
    )
    health_listen: str | None = Field(
        None,
        description="Optional plaintext host:port serving only grpc.health.v1 (for Kubernetes "
        "probes when the main port needs TLS or credentials).",
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    config_file: Path | None = Field(None, description="Optional YAML file with structured parts.")
    limits: Limits = Field(default_factory=Limits)
    lock: LockSettings = Field(default_factory=LockSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    eventbus: EventBusSettings = Field(default_factory=EventBusSettings)
    invalidations: InvalidationSettings = Field(default_factory=InvalidationSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    quotas: Quotas = Field(default_factory=Quotas)
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    stats_max_namespaces: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most namespaces GetServiceStats counts one by one; the rest are "
        "counted together as `(other)`.",
    )
    allow_persist: bool = Field(
        False, description="Allow CacheService/Persist to make a key live forever."
    )
    shutdown_grace: timedelta = Field(
        timedelta(seconds=10), description="How long SIGTERM waits for in-flight calls."
    )
    health_interval: timedelta = Field(
        timedelta(milliseconds=500), description="How often Redis is probed for health."
    )
    redis_timeout: timedelta = Field(
        timedelta(seconds=2), description="Socket timeout for one Redis command."
    )
    redis_max_connections: int = Field(
        256,
        ge=1,
        description="Connection pool size per Redis node; a command waits (within its "
        "call's deadline) for a free connection instead of failing in a burst.",
    )
    redis_blocking_max_connections: int = Field(
        128,
        ge=1,
        description="Connections per Redis node of the pool apart that serves blocking "
        "commands only (ListPop/ListMove waits, Read and Consume blocks): waiters never take "
        "a connection from the pool every other command uses.",
    )
    redis_min_replicas_acked: int = Field(
        0,
        ge=0,
        description="Replica acknowledgement: a cache write answers only after this many "
        "replicas have it (WAIT), else UNAVAILABLE / NOT_ENOUGH_REPLICAS. 0: Redis's "
        "asynchronous replication, where a failover can lose acknowledged writes.",
    )
    redis_replica_ack_timeout: timedelta = Field(
        timedelta(milliseconds=500),
        gt=timedelta(0),
        description="How long a write waits for its replica acknowledgements.",
    )
    redis_coalesce: bool = Field(
        True,
        description="Adaptive coalescing: the scripts of concurrent calls share two kept "
        "connections per Redis node, and the commands queued while the event loop is busy "
        "go out in one write (per node on Cluster). A lone call's command (nothing else "
        "outstanding on its node, no other unary call being served) goes out at once, so "
        "it adds no latency at low load; false sends every script on its own through the "
        "connection pool.",
    )
    idempotency_window: timedelta = Field(
        timedelta(minutes=2),
        gt=timedelta(0),
        le=timedelta(days=1),
        description="How long the result of a write that carries a request_id (Increment, "
        "HashIncrement, SortedSetIncrement, ListPush, Append, Publish) is remembered: a retry "
        "with the same id within it answers that result and is not applied again.",
    )
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="Most RPCs served at once; the rest get RESOURCE_EXHAUSTED."
    )
    workers: str = Field(
        "1",
        description="Serving processes sharing the port (SO_REUSEPORT) under a supervisor: "
        "a number, or `auto` for one per available CPU. One process serves on one core.",
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    log_level: LogLevel = Field(
        LogLevel.INFO, description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."
    )
    log_format: LogFormat = Field(
        LogFormat.TEXT,
        description="text, or json: one JSON object per line, with trace_id and span_id "
        "inside a call (the chart sets json).",
    )
    log_access_sample: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of calls that write an access-log line (logger cachet.access); "
        "0: none.",
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level

    @property
    def idempotency_window_ms(self) -> int:
        return int(self.idempotency_window / timedelta(milliseconds=1))

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, url: object) -> object:
        return None if url == "" else url

    @field_validator("workers", mode="before")
    @classmethod
    def _worker_count(cls, workers: object) -> object:
        text = str(workers).strip().lower()
        if text != "auto" and not (text.isdigit() and 1 <= int(text) <= 1024):
            raise ValueError("workers must be a number from 1 to 1024, or auto")
        return text

    @property
    def worker_count(self) -> int:
        """How many serving processes `workers` asks for."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)

    @field_validator("limits")
    @classmethod
    def _default_ttl_within_max(cls, limits: Limits) -> Limits:
        if not timedelta(0) < limits.default_ttl <= limits.max_ttl:
            raise ValueError("limits.default_ttl must be positive and at most limits.max_ttl")
        return limits

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment, then fill what it leaves unset from the YAML file."""
        from_env = cls(**overrides)
        if from_env.config_file is None:
            return from_env
        file_values = yaml.safe_load(from_env.config_file.read_text()) or {}
        if not isinstance(file_values, dict):
            raise ValueError(f"{from_env.config_file}: top level must be a mapping")
        unknown = _unknown_keys(cls, file_values, "")
        if unknown:
            raise ValueError(f"{from_env.config_file}: " + "; ".join(unknown))
        explicitly_set = from_env.model_dump(exclude_unset=True)
        return cls(**_deep_merge(file_values, explicitly_set))


ENV_PREFIX = "CACHET_"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field typed as a model (or an optional one)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        models = [model for arg in typing.get_args(annotation) if (model := _model_of(arg))]
        return models[0] if len(models) == 1 else None
    return None


def _item_model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field typed as a list of models."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _model_of(item)
    return None


def _nearest(name: str, candidates: typing.Iterable[str], prefix: str = "") -> str:
    """` (did you mean X?)`: settings of the same name in a section first (CACHET_MAX_TTL
    -> CACHET_LIMITS__MAX_TTL), then the closest spellings."""
    names = list(candidates)
    tail = name.removeprefix(prefix)
    matches = [c for c in names if prefix and c.endswith("__" + tail)]
    if not matches:
        matches = difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def _unknown_keys(model: type[BaseModel], data: Mapping[str, Any], path: str) -> list[str]:
    """Every key of a YAML mapping that `model` has no field for, with the nearest one."""
    problems: list[str] = []
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            problems.append(f"unknown key {path}{key}{_nearest(str(key), model.model_fields)}")
            continue
        if (sub := _model_of(field.annotation)) is not None and isinstance(value, dict):
            problems += _unknown_keys(sub, value, f"{path}{key}.")
        elif (item := _item_model_of(field.annotation)) is not None and isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    problems += _unknown_keys(item, entry, f"{path}{key}[{index}].")
    return problems


def setting_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """Every leaf setting by its environment name (`CACHET_LIMITS__MAX_TTL`), with its
    field: the names the README table lists."""
    names: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        name = prefix + field_name.upper()
        sub = _model_of(field.annotation)
        if sub is None:
            names[name] = field
        else:
            names.update(setting_names(sub, name + "__"))
    return names


def _section_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        if (sub := _model_of(field.annotation)) is not None:
            name = prefix + field_name.upper()
            names |= {name, *_section_names(sub, name + "__")}
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a CACHET_* variable that names no setting, naming the nearest one: a typo
    would otherwise be ignored silently. A section (`CACHET_LIMITS`) may be set whole,
    as JSON."""
    valid = set(setting_names())
    accepted = valid | _section_names()
    unknown = [
        f"{name} (tracing and metrics read the standard {name.removeprefix(ENV_PREFIX)})"
        if name.startswith(ENV_PREFIX + "OTEL_")
        else f"{name}{_nearest(name, valid, ENV_PREFIX)}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in accepted
    ]
    if unknown:
        raise ValueError("unknown environment variable " + ", ".join(unknown))
