"""RateLimitService: Check, CheckMany, Reset and ListPolicies (see docs/ratelimit.md).

A request's targets are validated and resolved to state keys and limits first, so a bad item
fails the call before anything is consumed; then the Limiter decides them, one script per
Redis Cluster slot, applying each rule's failure mode when Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar, NamedTuple

from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as pb
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..access import ADMIN, READ, CallSpec, Role, calls
from ..backend.ratelimit import (
    Algorithm,
    Decision,
    GroupDecision,
    LimitCheck,
    LimitSpec,
    RateLimitStore,
    state_key,
)
from ..callcontext import current_call, current_namespace
from ..config import MAX_RATE_LIMIT, MAX_RATE_PERIOD, FailMode
from ..errors import InvalidArgument, NotFound, Unavailable, domain_error
from ..pagination import PageTokens, malformed_token
from ..validation import Validator
from .base import Context, Dependencies, Servicer
from .ratelimit_policies import Policy, PolicyTable

log = logging.getLogger(__name__)

MAX_DESCRIPTOR_ENTRIES = 16
_MAX_PERIOD_MS = MAX_RATE_PERIOD // timedelta(milliseconds=1)
_FAIL_OPEN_WARNING_INTERVAL = 10.0  # seconds
_DEFAULT_PAGE_SIZE = 100
_MAX_PAGE_SIZE = 1000
_PROTO_ALGORITHMS = {
    pb.ALGORITHM_UNSPECIFIED: Algorithm.TOKEN_BUCKET,
    pb.ALGORITHM_FIXED_WINDOW: Algorithm.FIXED_WINDOW,
    pb.ALGORITHM_SLIDING_WINDOW_LOG: Algorithm.SLIDING_WINDOW_LOG,
    pb.ALGORITHM_SLIDING_WINDOW_COUNTER: Algorithm.SLIDING_WINDOW_COUNTER,
    pb.ALGORITHM_TOKEN_BUCKET: Algorithm.TOKEN_BUCKET,
    pb.ALGORITHM_GCRA: Algorithm.GCRA,
}
_ALGORITHM_PROTOS = {
    algorithm: value
    for value, algorithm in _PROTO_ALGORITHMS.items()
    if value != pb.ALGORITHM_UNSPECIFIED
}
_MODES = {
    pb.CHECK_MANY_MODE_UNSPECIFIED: False,
    pb.CHECK_MANY_MODE_INDEPENDENT: False,
    pb.CHECK_MANY_MODE_ALL_OR_NOTHING: True,
}


def duration_us(us: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


def timestamp_us(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


# One encoder for every descriptor key: json.dumps builds a new one per call for these options.
_DESCRIPTOR_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def descriptor_key(entries: Sequence[tuple[str, str]]) -> str:
    """The limited key of a matched descriptor: all its entries, unambiguously (a JSON array
    of [key, value] arrays)."""
    return _DESCRIPTOR_JSON.encode(entries)


def descriptor_entries(
    check: Validator, entries: Sequence[tuple[str, str]], field: str
) -> list[tuple[str, str]]:
    """Descriptor entries, each key and value non-empty; 1 to 16 of them."""
    if not entries:
        raise InvalidArgument.field(field, "must have at least one entry")
    if len(entries) > MAX_DESCRIPTOR_ENTRIES:
        raise InvalidArgument.field(field, f"has more than {MAX_DESCRIPTOR_ENTRIES} entries")
    for i, (key, value) in enumerate(entries):
        check.key(key, f"{field}[{i}].key")
        check.key(value, f"{field}[{i}].value")
    return list(entries)


class Resolved(NamedTuple):
    """A target resolved to its state key and limit, and the rule that applies (if any).
    A NamedTuple: built per decision, and cheaper to build than a frozen dataclass."""

    check: LimitCheck
    policy: Policy | None
    fail_open: bool

    @classmethod
    def for_policy(cls, namespace: str, policy: Policy, key: str, hits: int) -> Resolved:
        return cls.of_policy(policy, state_key(namespace, policy.spec, policy.name, key), hits)

    @staticmethod
    def of_policy(policy: Policy, limited: str, hits: int) -> Resolved:
        """`policy` on its state key `limited` (from state_key)."""
        return Resolved(
            LimitCheck(limited, policy.spec, hits, policy.shadow_mode), policy, policy.fail_open
        )

    @classmethod
    def for_limit(
        cls, namespace: str, spec: LimitSpec, key: str, hits: int, *, fail_open: bool, scope: str
    ) -> Resolved:
        check = LimitCheck(state_key(namespace, spec, scope, key), spec, hits)
        return cls(check, None, fail_open)


# How many resolved targets a Limiter remembers: a bound on memory, not on correctness (a
# forgotten target is resolved again, to the same key).
TARGET_CACHE_SIZE = 4096
# The longest state key remembered. Envoy's descriptors are short (an address, a route, a
# user id); a descriptor may be up to 16 entries of max_key_bytes each, and 4096 of those
# would hold hundreds of MiB for a caller who sends unique ones. Longer ones are resolved
# every time.
TARGET_CACHE_MAX_KEY = 512


class DescriptorTargets:
    """The rule and state key a descriptor resolves to, remembered per (namespace, domain,
    entries): Envoy sends the same few descriptors over and over, and validating, matching
    and spelling the key (JSON, then the state key) cost more than the lookup. Bounded:
    past TARGET_CACHE_SIZE the oldest entry goes, and a descriptor whose state key is over
    TARGET_CACHE_MAX_KEY characters is not remembered. Only valid descriptors are
    remembered, and the Validator's rules do not change while a server runs, so a
    remembered descriptor is valid again."""

    def __init__(self, check: Validator, policies: PolicyTable, size: int = TARGET_CACHE_SIZE):
        self.check = check
        self.policies = policies
        self.size = size
        self._known: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[Policy, str] | None]
        self._known = {}

    def resolve(
        self, namespace: str, domain: str, entries: tuple[tuple[str, str], ...], field: str
    ) -> tuple[Policy, str] | None:
        """The rule that limits the descriptor and its state key, or None if no rule does;
        INVALID_ARGUMENT (naming `field`) for invalid entries."""
        known = self._known
        cache_key = (namespace, domain, entries)
        try:
            return known[cache_key]
        except KeyError:
            pass
        target = self.resolve_uncached(namespace, domain, entries, field)
        if target is not None and len(target[1]) > TARGET_CACHE_MAX_KEY:
            return target
        if len(known) >= self.size:
            del known[next(iter(known))]
        known[cache_key] = target
        return target

    def resolve_uncached(
        self, namespace: str, domain: str, entries: Sequence[tuple[str, str]], field: str
    ) -> tuple[Policy, str] | None:
        valid = descriptor_entries(self.check, entries, field)
        policy = self.policies.match(domain, valid)
        if policy is None:
            return None
        return policy, state_key(namespace, policy.spec, policy.name, descriptor_key(valid))


class Limiter:
    """Decides resolved targets; shared by RateLimitService and Envoy's RateLimitService."""

    def __init__(self, deps: Dependencies) -> None:
        self.store = RateLimitStore(deps.backend)
        self.stats = deps.stats
        self.policies = PolicyTable(deps.settings.ratelimit)
        self.fail_open = deps.settings.ratelimit.fail_mode is FailMode.FAIL_OPEN
        self.descriptors = DescriptorTargets(deps.validator, self.policies)
        self._warned_at = -math.inf

    def _warn_failing_open(self, reason: str) -> None:
        # Once per interval: an outage at thousands of checks per second must not flood the log.
        now = time.monotonic()
        if now - self._warned_at >= _FAIL_OPEN_WARNING_INTERVAL:
            self._warned_at = now
            log.warning("rate limits failing open (Redis unreachable): %s", reason)

    async def _decide_group(
        self, items: Sequence[Resolved], group: list[int], all_or_nothing: bool
    ) -> GroupDecision:
        """The decisions on the items of one slot (in `group` order): one script run, or
        fail-open verdicts while Redis is unreachable if every one of them may."""
        try:
            return await self.store.check(
                [items[i].check for i in group], all_or_nothing=all_or_nothing
            )
        except Exception as exc:
            error = domain_error(exc)
            if not isinstance(error, Unavailable) or not all(items[i].fail_open for i in group):
                if error is exc:
                    raise
                raise error from exc
            self._warn_failing_open(error.message)
            return GroupDecision([Decision.failed_open(items[i].check.spec) for i in group], True)

    async def decide(
        self, items: Sequence[Resolved], *, all_or_nothing: bool = False
    ) -> GroupDecision:
        """One decision per item, and whether they all passed (shadow and fail-open items
        pass). Independent items are decided one script per slot, the slots concurrently; an
        all-or-nothing call is one script, refused on every topology when its keys span
        Cluster slots, and passes only as a whole. While Redis is unreachable, a slot's items
        fail open only if every one of them may."""
        keys = [item.check.key for item in items]
        if all_or_nothing:
            self.store.backend.require_one_slot(
                keys,
                "the keys of an all-or-nothing rate-limit check",
                "{tenant:7}:a and {tenant:7}:b",
            )
        groups = [list(range(len(items)))] if all_or_nothing else self.store.slot_groups(keys)
        if len(groups) == 1:
            # The common case (one item, or one slot): the group's decisions are the items'
            # in order, whether the group is all the items (all-or-nothing, one item) or the
            # one slot group, which lists the indexes in order.
            outcome = await self._decide_group(items, groups[0], all_or_nothing)
            self._record(items, outcome.decisions)
            return outcome
        # Independent slots (Cluster): their scripts go out together rather than one round
        # trip after another; the first failing group, in order, fails the call.
        answers = await asyncio.gather(
            *(self._decide_group(items, group, False) for group in groups),
            return_exceptions=True,
        )
        outcomes = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            outcomes.append(answer)
        decisions: dict[int, Decision] = {}
        allowed = True
        for group, outcome in zip(groups, outcomes, strict=True):
            decisions.update(zip(group, outcome.decisions, strict=True))
            allowed = allowed and outcome.allowed
        ordered = [decisions[i] for i in range(len(items))]
        self._record(items, ordered)
        return GroupDecision(ordered, allowed)

    def _record(self, items: Sequence[Resolved], decisions: Sequence[Decision]) -> None:
        for item, decision in zip(items, decisions, strict=True):
            self.stats.record_ratelimit_decision(
                item.policy.name if item.policy else INLINE_POLICY, _outcome(item, decision)
            )


# The policy label of a limit given inline in the request (it has no name).
INLINE_POLICY = "_inline"


def _outcome(item: Resolved, decision: Decision) -> str:
    if decision.fail_open:
        return "fail_open"
    if decision.allowed:
        return "allowed"
    return "shadow_denied" if item.check.shadow else "denied"


def limit_proto(spec: LimitSpec) -> pb.Limit:
    return pb.Limit(
        algorithm=_ALGORITHM_PROTOS[spec.algorithm],
        limit=spec.limit,
        period=duration_us(spec.period_ms * 1000),
        burst=spec.burst,
    )


def _result(item: Resolved, decision: Decision) -> pb.CheckResult:
    shadow = item.check.shadow
    result = pb.CheckResult(
        allowed=decision.allowed or shadow,
        limit=decision.capacity,
        remaining=decision.remaining,
        reset_after=duration_us(decision.reset_after_us),
        shadow_mode=shadow,
        shadow_would_deny=shadow and not decision.allowed,
        matched_policy=item.policy.name if item.policy else "",
        applied_limit=limit_proto(item.check.spec),
        hits=item.check.hits,
        fail_open=decision.fail_open,
    )
    if not result.allowed and decision.retry_after_us is not None:
        result.retry_after.CopyFrom(duration_us(decision.retry_after_us))
    if decision.server_time_us is not None:
        result.server_time.CopyFrom(timestamp_us(decision.server_time_us))
    return result


def _is_peek(request: pb.CheckRequest | pb.CheckItem) -> bool:
    """An explicit cost of 0 reports without consuming: a read."""
    return request.HasField("hits") and request.hits == 0


def _all_peeks(request: pb.CheckManyRequest) -> bool:
    return all(_is_peek(item) for item in request.items)


class RateLimitService(Servicer, ratelimit_pb2_grpc.RateLimitServiceServicer):
    CALLS: ClassVar[dict[str, CallSpec]] = {
        "Check": calls(Role.WRITE, read_if=_is_peek, read_when="for a peek (hits: 0)"),
        "CheckMany": calls(Role.WRITE, read_if=_all_peeks, read_when="when every item peeks"),
        "ListPolicies": READ,
        "Reset": ADMIN,
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.limiter = Limiter(deps)
        self.policies = self.limiter.policies

    def _limit(self, limit: pb.Limit, field: str) -> LimitSpec:
        if limit.algorithm not in _PROTO_ALGORITHMS:
            raise InvalidArgument.field(
                f"{field}.algorithm", f"unknown algorithm {limit.algorithm}"
            )
        if not 1 <= limit.limit <= MAX_RATE_LIMIT:
            raise InvalidArgument.field(f"{field}.limit", f"must be from 1 to {MAX_RATE_LIMIT}")
        if limit.burst > MAX_RATE_LIMIT:
            raise InvalidArgument.field(f"{field}.burst", f"must be at most {MAX_RATE_LIMIT}")
        if not limit.HasField("period"):
            raise InvalidArgument.field(f"{field}.period", "is required")
        period_ms = self.check.duration_ms(limit.period, f"{field}.period")
        if limit.period.nanos % 1_000_000:
            raise InvalidArgument.field(f"{field}.period", "must be whole milliseconds")
        if not 1 <= period_ms <= _MAX_PERIOD_MS:
            raise InvalidArgument.field(f"{field}.period", "must be from 1 ms to 366 days")
        return LimitSpec(_PROTO_ALGORITHMS[limit.algorithm], limit.limit, period_ms, limit.burst)

    def _resolve(
        self, namespace: str, target: pb.RateLimitTarget, hits: int, field: str
    ) -> Resolved:
        kind = target.WhichOneof("kind")
        if kind == "inline_limit":
            inline = target.inline_limit
            key = self.check.key(inline.key, f"{field}.inline_limit.key")
            if not inline.HasField("limit"):
                raise InvalidArgument.field(f"{field}.inline_limit.limit", "is required")
            spec = self._limit(inline.limit, f"{field}.inline_limit.limit")
            return Resolved.for_limit(
                namespace, spec, key, hits, fail_open=self.limiter.fail_open, scope=""
            )
        if kind == "policy":
            if not target.policy.name:
                raise InvalidArgument.field(f"{field}.policy.name", "must not be empty")
            key = self.check.key(target.policy.key, f"{field}.policy.key")
            policy = self.policies.by_name.get(target.policy.name)
            if policy is None:
                raise NotFound(
                    f"no rate-limit policy is named {target.policy.name!r}",
                    reason="POLICY_NOT_FOUND",
                )
            return Resolved.for_policy(namespace, policy, key, hits)
        if kind == "descriptor_match":
            match = target.descriptor_match
            if not match.domain:
                raise InvalidArgument.field(f"{field}.descriptor_match.domain", "must not be empty")
            found = self.limiter.descriptors.resolve(
                namespace,
                match.domain,
                tuple([(e.key, e.value) for e in match.entries]),
                f"{field}.descriptor_match.entries",
            )
            if found is None:
                raise NotFound(
                    f"no rate-limit rule of domain {match.domain!r} matches the descriptor",
                    reason="POLICY_NOT_FOUND",
                )
            return Resolved.of_policy(*found, hits)
        raise InvalidArgument.field(field, "must set inline_limit, policy or descriptor_match")

    def _hits(self, message: pb.CheckRequest | pb.CheckItem, field: str) -> int:
        hits = message.hits if message.HasField("hits") else 1
        if hits > MAX_RATE_LIMIT:
            raise InvalidArgument.field(field, f"must be at most {MAX_RATE_LIMIT}")
        return hits

    async def Check(self, request: pb.CheckRequest, context: Context) -> pb.CheckResponse:
        namespace = current_namespace()
        item = self._resolve(namespace, request.target, self._hits(request, "hits"), "target")
        (decision,) = (await self.limiter.decide([item])).decisions
        return pb.CheckResponse(result=_result(item, decision))

    async def CheckMany(
        self, request: pb.CheckManyRequest, context: Context
    ) -> pb.CheckManyResponse:
        namespace = current_namespace()
        self.check.batch(len(request.items), "items")
        if request.mode not in _MODES:
            raise InvalidArgument.field("mode", f"unknown mode {request.mode}")
        items = [
            self._resolve(
                namespace, entry.target, self._hits(entry, f"items[{i}].hits"), f"items[{i}].target"
            )
            for i, entry in enumerate(request.items)
        ]
        outcome = await self.limiter.decide(items, all_or_nothing=_MODES[request.mode])
        results = [_result(item, d) for item, d in zip(items, outcome.decisions, strict=True)]
        response = pb.CheckManyResponse(results=results, allowed=outcome.allowed)
        times = [d.server_time_us for d in outcome.decisions if d.server_time_us is not None]
        if times:
            response.server_time.CopyFrom(timestamp_us(max(times)))
        return response

    async def Reset(self, request: pb.ResetRequest, context: Context) -> pb.ResetResponse:
        namespace = current_namespace()
        self.check.batch(len(request.targets), "targets")
        keys = [
            self._resolve(namespace, target, 1, f"targets[{i}]").check.key
            for i, target in enumerate(request.targets)
        ]
        cleared, now_us = await self.limiter.store.reset(keys)
        current_call().keys = len(keys)
        return pb.ResetResponse(cleared=cleared, server_time=timestamp_us(now_us))

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: Context
    ) -> pb.ListPoliciesResponse:
        if not 0 <= request.page_size <= _MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be from 0 to {_MAX_PAGE_SIZE}")
        size = request.page_size or _DEFAULT_PAGE_SIZE
        binding = PageTokens.binding("ListPolicies", "", request)
        position = PageTokens.decode(request.page_token, binding) or {"after": ""}
        after = position.get("after")
        if not isinstance(after, str):
            raise malformed_token()
        policies = [p for p in self.policies.listing(request.domain) if p.name > after]
        page = policies[:size]
        response = pb.ListPoliciesResponse(
            policies=[
                pb.Policy(
                    name=p.name,
                    domain=p.domain,
                    entries=[pb.DescriptorEntry(key=k, value=v) for k, v in p.entries],
                    limit=limit_proto(p.spec),
                    shadow_mode=p.shadow_mode,
                )
                for p in page
            ]
        )
        if len(policies) > size:
            response.next_page_token = PageTokens.encode(binding, {"after": page[-1].name})
        return response
