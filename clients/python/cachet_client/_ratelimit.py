"""RateLimitService: inline limits ("10/minute"), named policies, batches, a decorator."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar

import grpc

from ._core import Async, F, Service, Steps, Sync, duration, procedure, rpc
from .errors import RateLimited
from .proto.cachet.ratelimit.v1 import ratelimit_pb2 as pb

_SERVICE = "cachet.ratelimit.v1.RateLimitService"
CHECK = rpc(_SERVICE, "Check", pb.CheckResponse, idempotent=False)
CHECK_MANY = rpc(_SERVICE, "CheckMany", pb.CheckManyResponse, idempotent=False)
RESET = rpc(_SERVICE, "Reset", pb.ResetResponse, idempotent=True)
LIST_POLICIES = rpc(_SERVICE, "ListPolicies", pb.ListPoliciesResponse, idempotent=True)

P = ParamSpec("P")
T = TypeVar("T")

Algorithm = Literal[
    "token_bucket", "gcra", "fixed_window", "sliding_window_log", "sliding_window_counter"
]
_ALGORITHMS = {
    "token_bucket": pb.ALGORITHM_TOKEN_BUCKET,
    "gcra": pb.ALGORITHM_GCRA,
    "fixed_window": pb.ALGORITHM_FIXED_WINDOW,
    "sliding_window_log": pb.ALGORITHM_SLIDING_WINDOW_LOG,
    "sliding_window_counter": pb.ALGORITHM_SLIDING_WINDOW_COUNTER,
}
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "millisecond": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "sec": timedelta(seconds=1),
    "second": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "minute": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "hour": timedelta(hours=1),
    "d": timedelta(days=1),
    "day": timedelta(days=1),
}
_RATE = re.compile(
    r"^\s*(?P<limit>\d+)\s*(?:/|per)\s*(?P<count>\d+)?\s*(?P<unit>[a-z]+?)s?\s*$", re.IGNORECASE
)


def parse_rate(rate: str) -> tuple[int, timedelta]:
    """("10/minute" | "10 per minute" | "100/15 minutes" | "5/s") -> (limit, period)."""
    match = _RATE.match(rate)
    unit = _UNITS.get(match.group("unit").lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"bad rate {rate!r}: expected like '10/minute', '100 per 15 minutes' or '5/s'"
        )
    return int(match.group("limit")), unit * int(match.group("count") or 1)


@dataclass(frozen=True)
class RateLimit:
    """A limited key: an inline limit ("10/minute", or `limit` + `period`) or a named
    policy from the server's configuration."""

    key: str
    limit: str | int | None = None
    period: timedelta | None = None
    policy: str | None = None
    algorithm: Algorithm = "token_bucket"
    burst: int = 0

    def target(self) -> pb.RateLimitTarget:
        """The RateLimitTarget message."""
        if self.policy is not None:
            if self.limit is not None:
                raise ValueError("RateLimit: give a limit or a policy, not both")
            return pb.RateLimitTarget(policy=pb.PolicyRef(name=self.policy, key=self.key))
        if isinstance(self.limit, str):
            if self.period is not None:
                raise ValueError("RateLimit: a '10/minute' rate already names its period")
            limit, period = parse_rate(self.limit)
        elif self.limit is not None and self.period is not None:
            limit, period = self.limit, self.period
        else:
            raise ValueError("RateLimit: give '10/minute', limit= and period=, or policy=")
        return pb.RateLimitTarget(
            inline_limit=pb.InlineLimit(
                key=self.key,
                limit=pb.Limit(
                    algorithm=_ALGORITHMS[self.algorithm],
                    limit=limit,
                    period=duration(period),
                    burst=self.burst,
                ),
            )
        )


@dataclass(frozen=True)
class Decision:
    """One rate-limit decision, made on Redis time (`server_time`)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: timedelta
    retry_after: timedelta | None
    server_time: datetime | None
    matched_policy: str
    fail_open: bool


def _decision(result: pb.CheckResult) -> Decision:
    return Decision(
        allowed=result.allowed,
        limit=result.limit,
        remaining=result.remaining,
        reset_after=result.reset_after.ToTimedelta(),
        retry_after=result.retry_after.ToTimedelta() if result.HasField("retry_after") else None,
        server_time=result.server_time.ToDatetime() if result.HasField("server_time") else None,
        matched_policy=result.matched_policy,
        fail_open=result.fail_open,
    )


@dataclass(frozen=True)
class Decisions:
    """The decisions of a CheckMany, in order, and whether all were allowed."""

    allowed: bool
    results: list[Decision]


def _denied(key: str, decision: Decision) -> RateLimited:
    return RateLimited(
        f"rate limit on {key!r} exhausted",
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        reason="RATE_LIMITED",
        retry_after=decision.retry_after,
    )


class RateLimits(Service[F]):
    """RateLimitService calls for one namespace."""

    @procedure
    def check(
        self,
        key: str,
        limit: str | int | None = None,
        *,
        period: timedelta | None = None,
        policy: str | None = None,
        algorithm: Algorithm = "token_bucket",
        burst: int = 0,
        hits: int = 1,
    ) -> Steps[Decision]:
        """Consume `hits` against `key`: an inline limit ("10/minute", or limit= and
        period=) or a named `policy`. A denial is an answer (allowed=False, with
        retry_after), not an error, and consumes nothing."""
        target = RateLimit(key, limit, period, policy, algorithm, burst).target()
        reply = yield from self._call(
            CHECK, pb.CheckRequest(target=target, hits=hits), idempotent=hits == 0
        )
        return _decision(reply.result)

    @procedure
    def peek(
        self,
        key: str,
        limit: str | int | None = None,
        *,
        period: timedelta | None = None,
        policy: str | None = None,
        algorithm: Algorithm = "token_bucket",
        burst: int = 0,
    ) -> Steps[Decision]:
        """Read a limit's state without consuming: would one more hit be allowed now?"""
        target = RateLimit(key, limit, period, policy, algorithm, burst).target()
        reply = yield from self._call(
            CHECK, pb.CheckRequest(target=target, hits=0), idempotent=True
        )
        return _decision(reply.result)

    @procedure
    def check_many(
        self,
        limits: Iterable[RateLimit | tuple[RateLimit, int]],
        *,
        all_or_nothing: bool = False,
    ) -> Steps[Decisions]:
        """Check many limits in one call (each a RateLimit, or (RateLimit, hits)). With
        `all_or_nothing`, hits are consumed only when every item is allowed (the keys
        must then share a Cluster slot)."""
        items = []
        for item in limits:
            limit, hits = item if isinstance(item, tuple) else (item, 1)
            items.append(pb.CheckItem(target=limit.target(), hits=hits))
        mode = (
            pb.CHECK_MANY_MODE_ALL_OR_NOTHING if all_or_nothing else pb.CHECK_MANY_MODE_INDEPENDENT
        )
        reply = yield from self._call(CHECK_MANY, pb.CheckManyRequest(items=items, mode=mode))
        return Decisions(reply.allowed, [_decision(r) for r in reply.results])

    @procedure
    def reset(self, *limits: RateLimit) -> Steps[int]:
        """Forget the state of these limits (each a RateLimit); answers how many
        Redis keys were cleared."""
        reply = yield from self._call(
            RESET, pb.ResetRequest(targets=[lim.target() for lim in limits])
        )
        return reply.cleared

    @procedure
    def list_policies(self, domain: str = "") -> Steps[list[pb.Policy]]:
        """Every named policy of the server's configuration (optionally of one domain)."""
        policies: list[pb.Policy] = []
        token = ""
        while True:
            request = pb.ListPoliciesRequest(domain=domain, page_token=token)
            reply = yield from self._call(LIST_POLICIES, request)
            policies.extend(reply.policies)
            if not (token := reply.next_page_token):
                return policies


KeyOf = str | Callable[..., str]


def _key_of(key: KeyOf, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return key(*args, **kwargs) if callable(key) else key.format(*args, **kwargs)


class AsyncRateLimits(RateLimits[Async]):
    """RateLimitService on the asyncio client."""

    def limit(
        self,
        rate: str | None = None,
        *,
        key: KeyOf,
        policy: str | None = None,
        algorithm: Algorithm = "token_bucket",
        hits: int = 1,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
        """Decorate an async function so each call first spends `hits` of a limit
        (`rate` like "10/minute", or a `policy`) on `key` (a template over the
        arguments, or a function of them); a denied call raises RateLimited with
        `retry_after` and does not run."""

        def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
            @functools.wraps(function)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                name = _key_of(key, args, kwargs)
                decision = await self.check(
                    name, rate, policy=policy, algorithm=algorithm, hits=hits
                )
                if not decision.allowed:
                    raise _denied(name, decision)
                return await function(*args, **kwargs)

            return wrapper

        return decorate


class SyncRateLimits(RateLimits[Sync]):
    """RateLimitService on the blocking client."""

    def limit(
        self,
        rate: str | None = None,
        *,
        key: KeyOf,
        policy: str | None = None,
        algorithm: Algorithm = "token_bucket",
        hits: int = 1,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate a function so each call first spends `hits` of a limit (`rate` like
        "10/minute", or a `policy`) on `key` (a template over the arguments, or a
        function of them); a denied call raises RateLimited with `retry_after` and does
        not run."""

        def decorate(function: Callable[P, T]) -> Callable[P, T]:
            @functools.wraps(function)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                name = _key_of(key, args, kwargs)
                decision = self.check(name, rate, policy=policy, algorithm=algorithm, hits=hits)
                if not decision.allowed:
                    raise _denied(name, decision)
                return function(*args, **kwargs)

            return wrapper

        return decorate
