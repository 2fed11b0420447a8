"""Envoy's envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, on the same policies
and the same Redis state as cachet.ratelimit.v1 (see docs/ratelimit.md, "Envoy").

It answers as envoyproxy/ratelimit does: a descriptor that no rule matches (or any descriptor
of an unknown domain) is OK with no current_limit; a shadow-mode rule reports OK even when it
would deny; overall_code is OVER_LIMIT when any descriptor is. Unlike envoyproxy/ratelimit, a
denied request consumes nothing, and bad requests get INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

from cachet_client.proto.envoy.config.core.v3 import base_pb2
from cachet_client.proto.envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from cachet_client.proto.envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ..access import CallSpec, Role, calls
from ..backend.ratelimit import Algorithm, Decision, LimitSpec
from ..callcontext import current_namespace
from ..config import MAX_RATE_LIMIT, UNIT_PERIODS, RateLimitUnit
from ..errors import InvalidArgument
from .base import Context, Dependencies, Servicer
from .ratelimit import Limiter, Resolved, descriptor_entries, descriptor_key

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
DescriptorStatus = rls_pb2.RateLimitResponse.DescriptorStatus
Statuses = RepeatedCompositeFieldContainer[DescriptorStatus]
# Enum values read once: each `Code.X` is a Python-level lookup in protobuf's enum wrapper.
_OK = Code.OK
_OVER_LIMIT = Code.OVER_LIMIT
OverrideLimit = common_pb2.RateLimitDescriptor.RateLimitOverride
_UNITS_BY_MS = {
    period // timedelta(milliseconds=1): Unit.Value(unit.name)
    for unit, period in UNIT_PERIODS.items()
}
_MAX_UINT32 = 2**32 - 1
# Names an override's state apart from every policy (policy names never start with '@').
_OVERRIDE_SCOPE = "@override:"


def _rate_limit(spec: LimitSpec, name: str) -> rls_pb2.RateLimitResponse.RateLimit:
    return rls_pb2.RateLimitResponse.RateLimit(
        name=name,
        requests_per_unit=min(spec.limit, _MAX_UINT32),
        unit=_UNITS_BY_MS.get(spec.period_ms, Unit.UNKNOWN),
    )


class EnvoyRateLimitService(Servicer, rls_pb2_grpc.RateLimitServiceServicer):
    # A mesh credential holds the ratelimit role and nothing else.
    CALLS: ClassVar[dict[str, CallSpec]] = {"ShouldRateLimit": calls(Role.RATELIMIT)}

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.limiter = Limiter(deps)
        self.policies = self.limiter.policies
        self.descriptors = self.limiter.descriptors
        self.headers = deps.settings.ratelimit.response_headers
        # The `current_limit` of each configured rule, built once (a response copies it).
        self.current_limits = {
            name: _rate_limit(policy.spec, name) for name, policy in self.policies.by_name.items()
        }

    @staticmethod
    def _override(override: OverrideLimit, field: str) -> LimitSpec:
        """A descriptor's own limit, set by Envoy's route configuration: a fixed window."""
        if not 1 <= override.requests_per_unit <= MAX_RATE_LIMIT:
            raise InvalidArgument.field(
                f"{field}.requests_per_unit", f"must be from 1 to {MAX_RATE_LIMIT}"
            )
        units = {unit.name: unit for unit in RateLimitUnit}
        unit = units.get(ratelimit_unit_pb2.RateLimitUnit.Name(override.unit))
        if unit is None:
            raise InvalidArgument.field(f"{field}.unit", "must be SECOND to YEAR")
        period = UNIT_PERIODS[unit] // timedelta(milliseconds=1)
        return LimitSpec(Algorithm.FIXED_WINDOW, override.requests_per_unit, period)

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Context
    ) -> rls_pb2.RateLimitResponse:
        namespace = current_namespace()
        if not request.domain:
            raise InvalidArgument.field("domain", "must not be empty")
        self.check.batch(len(request.descriptors), "descriptors")
        request_hits = request.hits_addend or 1
        known_domain = self.policies.has_domain(request.domain)
        items: list[Resolved | None] = []
        for i, descriptor in enumerate(request.descriptors):
            entries = tuple([(e.key, e.value) for e in descriptor.entries])
            overridden = known_domain and descriptor.HasField("limit")
            if overridden:
                # Its own limit comes with each request: its key is spelled every time.
                key = descriptor_key(
                    descriptor_entries(self.check, entries, f"descriptors[{i}].entries")
                )
            else:
                target = self.descriptors.resolve(
                    namespace, request.domain, entries, f"descriptors[{i}].entries"
                )
            hits = request_hits
            if descriptor.HasField("hits_addend"):
                hits = descriptor.hits_addend.value
                if hits > MAX_RATE_LIMIT:
                    raise InvalidArgument.field(
                        f"descriptors[{i}].hits_addend", f"must be at most {MAX_RATE_LIMIT}"
                    )
            if overridden:
                spec = self._override(descriptor.limit, f"descriptors[{i}].limit")
                items.append(
                    Resolved.for_limit(
                        namespace, spec, key, hits,
                        fail_open=self.limiter.fail_open, scope=_OVERRIDE_SCOPE + request.domain,
                    )
                )  # fmt: skip
            else:
                items.append(None if target is None else Resolved.of_policy(*target, hits))
        limited = [item for item in items if item is not None]
        decisions = iter((await self.limiter.decide(limited)).decisions if limited else ())
        # Statuses are built in place in the response: a status built apart is copied when
        # it is added to the repeated field.
        response = rls_pb2.RateLimitResponse()
        statuses = response.statuses
        shadow_denials = []
        over_limit = False
        for item in items:
            if item is None:
                statuses.add(code=_OK)  # a descriptor no rule limits
                continue
            decision = next(decisions)
            over = not decision.allowed and not item.check.shadow
            if item.check.shadow and not decision.allowed:
                shadow_denials.append(item.policy.name if item.policy else "")
            over_limit = over_limit or over
            self._add_status(statuses, item, decision, over)
        response.overall_code = _OVER_LIMIT if over_limit else _OK
        if self.headers.enabled:
            response.response_headers_to_add.extend(self._headers(statuses))
        if shadow_denials:
            response.dynamic_metadata.CopyFrom(
                struct_pb2.Struct(
                    fields={
                        "shadow_mode_would_deny": struct_pb2.Value(
                            list_value=struct_pb2.ListValue(
                                values=[struct_pb2.Value(string_value=n) for n in shadow_denials]
                            )
                        )
                    }
                )
            )
        return response

    def _add_status(
        self, statuses: Statuses, item: Resolved, decision: Decision, over: bool
    ) -> None:
        policy = item.policy
        current_limit = (
            self.current_limits[policy.name] if policy else _rate_limit(item.check.spec, "")
        )
        reset_us = decision.reset_after_us
        statuses.add(
            code=_OVER_LIMIT if over else _OK,
            current_limit=current_limit,
            limit_remaining=min(decision.remaining, _MAX_UINT32),
            # Not Duration.FromMicroseconds: Python code in protobuf, about as dear as the
            # rest of the status.
            duration_until_reset=duration_pb2.Duration(
                seconds=reset_us // 1_000_000, nanos=reset_us % 1_000_000 * 1000
            ),
        )

    def _headers(self, statuses: Sequence[DescriptorStatus]) -> list[base_pb2.HeaderValue]:
        """RateLimit-Limit/-Remaining/-Reset of the descriptor nearest its limit (an over-limit
        one first), as envoyproxy/ratelimit adds them; none if no descriptor has a limit."""
        limited = [s for s in statuses if s.HasField("current_limit")]
        if not limited:
            return []
        over = [s for s in limited if s.code == _OVER_LIMIT]
        nearest = over[-1] if over else min(limited, key=lambda s: s.limit_remaining)
        reset_seconds = math.ceil(nearest.duration_until_reset.ToMicroseconds() / 1_000_000)
        return [
            base_pb2.HeaderValue(
                key=self.headers.limit, value=str(nearest.current_limit.requests_per_unit)
            ),
            base_pb2.HeaderValue(key=self.headers.remaining, value=str(nearest.limit_remaining)),
            base_pb2.HeaderValue(key=self.headers.reset, value=str(reset_seconds)),
        ]
