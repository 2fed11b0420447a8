"""The one Settings object: environment variables `CACHET_*` plus an optional YAML file.

Scalars come from the environment (`CACHET_REDIS_URL`, `CACHET_LISTEN`, ...);
structured parts (rate-limit policies, API keys) come from the YAML file named by
`CACHET_CONFIG_FILE`. An environment variable wins over the same key in the file.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @model_validator(mode="after")
    def _consistent(self) -> LockSettings:
        for name in ("max_ttl", "max_wait", "recheck_interval", "waiter_lease"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"lock.{name} must be positive")
        if self.waiter_lease <= self.recheck_interval:
            raise ValueError("lock.waiter_lease must be longer than lock.recheck_interval")
        return self


class RateLimitSettings(BaseModel):
    """RateLimitService settings (env `CACHET_RATELIMIT__<FIELD>`, YAML `ratelimit:`)."""


class EventBusSettings(BaseModel):
    """EventBusService settings (env `CACHET_EVENTBUS__<FIELD>`, YAML `eventbus:`)."""


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
        "answers PERMISSION_DENIED). Env: a JSON list.",
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

    model_config = SettingsConfigDict(
        env_prefix="CACHET_", env_nested_delimiter="__", extra="ignore"
    )

    redis_url: str | None = Field(
        None,
        description="redis://, rediss://, redis+sentinel:// or redis+cluster:// URL. "
        "Unset: an embedded redis-server is started for local use only.",
    )
    listen: str = Field("[::]:50051", description="gRPC listen address, host:port.")
    config_file: Path | None = Field(None, description="Optional YAML file with structured parts.")
    limits: Limits = Field(default_factory=Limits)
    lock: LockSettings = Field(default_factory=LockSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    eventbus: EventBusSettings = Field(default_factory=EventBusSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
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
        256, ge=1, description="Connection pool size per Redis node."
    )
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="Most RPCs served at once; the rest get RESOURCE_EXHAUSTED."
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    log_level: str = Field("INFO", description="Python logging level.")
    otel_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC collector address (e.g. http://otel-collector:4317) for traces; "
        "unset: tracing off. OTEL_* variables of the OpenTelemetry SDK apply too.",
    )
    otel_service_name: str = Field("cachet", description="service.name of exported traces.")

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, url: object) -> object:
        return None if url == "" else url

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
        explicitly_set = from_env.model_dump(exclude_unset=True)
        return cls(**_deep_merge(file_values, explicitly_set))
