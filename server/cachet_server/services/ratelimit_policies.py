"""Rate-limit policies from the configuration, and how a request finds the one that applies.

Named policies are looked up by name. Descriptor rules are matched the way envoyproxy/ratelimit
matches them: within a domain, each request entry descends one level of the rule tree, taking
the rule for its exact key and value, else the first configured `prefix*` rule its value
starts with, else the rule for its key with an empty value (any value). The limit applies
only if the path ends on a rule with a `rate_limit` exactly at the request's last entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..backend.ratelimit import Algorithm, LimitSpec
from ..config import (
    DescriptorPath,
    FailMode,
    RateLimitAlgorithmName,
    RateLimitDescriptor,
    RateLimitRule,
    RateLimitSettings,
    descriptor_rule_name,
    walk_descriptors,
)

ALGORITHMS = {
    RateLimitAlgorithmName.FIXED_WINDOW: Algorithm.FIXED_WINDOW,
    RateLimitAlgorithmName.SLIDING_WINDOW_LOG: Algorithm.SLIDING_WINDOW_LOG,
    RateLimitAlgorithmName.SLIDING_WINDOW_COUNTER: Algorithm.SLIDING_WINDOW_COUNTER,
    RateLimitAlgorithmName.TOKEN_BUCKET: Algorithm.TOKEN_BUCKET,
    RateLimitAlgorithmName.GCRA: Algorithm.GCRA,
}


@dataclass(frozen=True)
class Policy:
    """One configured rule: a named policy (no domain) or a descriptor rule of a domain."""

    name: str
    domain: str
    entries: DescriptorPath
    spec: LimitSpec
    shadow_mode: bool
    fail_open: bool


@dataclass
class _Level:
    """One level of a domain's rule tree, indexed at load so that a request entry costs a
    dict lookup (plus a scan of the `prefix*` rules of its own key only, if any)."""

    exact: dict[tuple[str, str], _Level] = field(default_factory=dict)
    # Per key, its `prefix*` rules in configuration order.
    prefixes: dict[str, list[tuple[str, _Level]]] = field(default_factory=dict)
    any_value: dict[str, _Level] = field(default_factory=dict)
    policy: Policy | None = None

    def child(self, key: str, value: str) -> _Level | None:
        found = self.exact.get((key, value))
        if found is not None:
            return found
        for prefix, level in self.prefixes.get(key, ()):
            if value.startswith(prefix):
                return level
        return self.any_value.get(key)


def _spec(rule: RateLimitRule) -> LimitSpec:
    return LimitSpec(ALGORITHMS[rule.algorithm], rule.requests_per_unit, rule.period_ms, rule.burst)


class PolicyTable:
    """The policies of a RateLimitSettings (validated there), ready for lookups."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.by_name: dict[str, Policy] = {}
        self.domains: dict[str, _Level] = {}

        def fail_open(mode: FailMode | None) -> bool:
            return (mode or settings.fail_mode) is FailMode.FAIL_OPEN

        for named in settings.policies:
            self.by_name[named.name] = Policy(
                named.name, "", (), _spec(named.rate_limit), named.shadow_mode,
                fail_open(named.fail_mode),
            )  # fmt: skip
        for domain in settings.domains:
            root = self.domains[domain.domain] = _Level()
            levels: dict[DescriptorPath, _Level] = {(): root}
            for path, descriptor in walk_descriptors(domain.descriptors):
                level = levels[path] = _Level()
                self._attach(levels[path[:-1]], descriptor, level)
                if descriptor.rate_limit is not None:
                    name = descriptor_rule_name(domain.domain, path, descriptor.rate_limit)
                    level.policy = self.by_name[name] = Policy(
                        name, domain.domain, path, _spec(descriptor.rate_limit),
                        descriptor.shadow_mode, fail_open(descriptor.fail_mode),
                    )  # fmt: skip

    @staticmethod
    def _attach(parent: _Level, descriptor: RateLimitDescriptor, level: _Level) -> None:
        if not descriptor.value:
            parent.any_value[descriptor.key] = level
        elif descriptor.value.endswith("*"):
            parent.prefixes.setdefault(descriptor.key, []).append((descriptor.value[:-1], level))
        else:
            parent.exact[(descriptor.key, descriptor.value)] = level

    def has_domain(self, domain: str) -> bool:
        return domain in self.domains

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Policy | None:
        """The rule that applies to a request's descriptor, or None (unknown domain, or no
        rule ends exactly at the last entry)."""
        level = self.domains.get(domain)
        for key, value in entries:
            if level is None:
                return None
            level = level.child(key, value)
        return level.policy if level is not None else None

    def listing(self, domain: str = "") -> list[Policy]:
        """Every policy (of one domain, when given), ordered by name."""
        return sorted(
            (p for p in self.by_name.values() if not domain or p.domain == domain),
            key=lambda p: p.name,
        )
