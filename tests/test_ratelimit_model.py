"""Each rate-limit algorithm under contention, replayed against a reference model.

20 concurrent callers send 500 checks each (mixed costs, peeks, and costs above the capacity)
at one key. Every answer carries the Redis time it was decided at; the model, written here
from the algorithm's definition in exact arithmetic (Fractions, integer microseconds), replays
the decisions in that order and must reach the same verdict, remaining, reset-after and
retry-after for every single one: admitted count equal to the model, no over-admission at all.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as pb
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc
from google.protobuf.duration_pb2 import Duration

CALLERS = 20
REQUESTS_PER_CALLER = 500


@dataclass(frozen=True)
class Observed:
    """One answer of the service."""

    time_us: int
    hits: int  # 0 = peek
    allowed: bool
    remaining: int
    reset_after_us: int
    retry_after_us: int | None


Verdict = tuple[bool, int, int, int | None]  # allowed, remaining, reset_after, retry_after


def ceil(x: Fraction | int) -> int:
    return math.ceil(x)


@dataclass
class FixedWindow:
    limit: int
    period: int  # µs
    window: int | None = None
    count: int = 0

    def decide(self, now: int, hits: int) -> Verdict:
        start = now // self.period * self.period
        if self.window is None or self.window < start:
            self.window, self.count = start, 0
        cost = max(hits, 1)
        reset = self.window + self.period - now
        if self.count + cost <= self.limit:
            self.count += hits
            return True, self.limit - self.count, reset, None
        retry = reset if cost <= self.limit else None
        return False, self.limit - self.count, reset, retry


@dataclass
class SlidingWindowLog:
    limit: int
    period: int
    log: list[tuple[int, int]] = field(default_factory=list)  # (time, hits) of admissions

    def decide(self, now: int, hits: int) -> Verdict:
        self.log = [(t, h) for t, h in self.log if t > now - self.period]
        used = sum(h for _, h in self.log)
        cost = max(hits, 1)
        if used + cost <= self.limit:
            if hits:
                self.log.append((now, hits))
            used += hits
            reset = self.log[-1][0] + self.period - now if self.log else 0
            return True, self.limit - used, reset, None
        reset = self.log[-1][0] + self.period - now if self.log else 0
        if cost > self.limit:
            return False, self.limit - used, reset, None
        freed, excess = 0, used + cost - self.limit
        for t, h in self.log:
            freed += h
            if freed >= excess:
                return False, self.limit - used, reset, t + self.period - now
        raise AssertionError("unreachable")


@dataclass
class SlidingWindowCounter:
    limit: int
    period: int
    window: int | None = None
    current: int = 0
    previous: int = 0

    def estimate(self, now: int) -> Fraction:
        elapsed = now - self.window
        return self.current + Fraction(self.previous * (self.period - elapsed), self.period)

    def decide(self, now: int, hits: int) -> Verdict:
        start = now // self.period * self.period
        if self.window is None or self.window < start:
            self.previous = self.current if self.window == start - self.period else 0
            self.window, self.current = start, 0
        cost = max(hits, 1)
        admitted = self.estimate(now) + cost <= self.limit
        if admitted:
            self.current += hits
        remaining = max(0, math.floor(self.limit - self.estimate(now)))
        if self.current:
            reset = self.window + 2 * self.period - now
        elif self.previous:
            reset = self.window + self.period - now
        else:
            reset = 0
        if admitted:
            return True, remaining, reset, None
        if cost > self.limit:
            return False, remaining, reset, None
        room = self.limit - self.current - cost
        if room >= 0:
            # the earliest elapsed time e with previous * (P - e) / P <= room
            elapsed = ceil(self.period - Fraction(room * self.period, self.previous))
            return False, remaining, reset, self.window + elapsed - now
        elapsed = max(
            0, ceil(self.period - Fraction((self.limit - cost) * self.period, self.current))
        )
        return False, remaining, reset, self.window + self.period + elapsed - now


@dataclass
class TokenBucket:
    limit: int
    period: int
    burst: int
    tokens: Fraction | None = None
    last: int = 0

    def decide(self, now: int, hits: int) -> Verdict:
        rate = Fraction(self.limit, self.period)  # tokens per µs
        level = Fraction(self.burst)
        if self.tokens is not None:
            level = min(level, self.tokens + (now - self.last) * rate)
        cost = max(hits, 1)
        if level >= cost:
            if hits:
                level -= hits
                self.tokens, self.last = level, now
            return True, math.floor(level), ceil((self.burst - level) / rate), None
        retry = ceil((cost - level) / rate) if cost <= self.burst else None
        return False, math.floor(level), ceil((self.burst - level) / rate), retry


@dataclass
class Gcra:
    limit: int
    period: int
    burst: int
    tat: Fraction | None = None  # theoretical arrival time, µs

    def decide(self, now: int, hits: int) -> Verdict:
        interval = Fraction(self.period, self.limit)
        tolerance = self.burst * interval
        tat = max(self.tat if self.tat is not None else Fraction(now), Fraction(now))
        cost = max(hits, 1)
        arrival = tat + cost * interval
        if arrival - now <= tolerance:
            if hits:
                tat = self.tat = tat + hits * interval
            remaining = math.floor((tolerance - (tat - now)) / interval)
            return True, remaining, ceil(tat - now), None
        remaining = max(0, math.floor((tolerance - (tat - now)) / interval))
        retry = ceil(arrival - now - tolerance) if cost <= self.burst else None
        return False, remaining, ceil(tat - now), retry


CASES = {
    "fixed_window": (pb.ALGORITHM_FIXED_WINDOW, 40, 250, 0, lambda: FixedWindow(40, 250_000)),
    "sliding_window_log": (
        pb.ALGORITHM_SLIDING_WINDOW_LOG, 40, 300, 0, lambda: SlidingWindowLog(40, 300_000),
    ),
    "sliding_window_counter": (
        pb.ALGORITHM_SLIDING_WINDOW_COUNTER, 40, 300, 0,
        lambda: SlidingWindowCounter(40, 300_000),
    ),
    "token_bucket": (
        pb.ALGORITHM_TOKEN_BUCKET, 170, 1000, 30, lambda: TokenBucket(170, 1_000_000, 30),
    ),
    "gcra": (pb.ALGORITHM_GCRA, 130, 700, 25, lambda: Gcra(130, 700_000, 25)),
}  # fmt: skip


def _replay(model_factory, observed: list[Observed]) -> None:
    """Replay in server-time order; answers decided in the same microsecond (rare) may have
    run in any order, so such a group must match some order of itself."""
    model = model_factory()
    ordered = sorted(observed, key=lambda o: o.time_us)
    for _, same_time in itertools.groupby(ordered, key=lambda o: o.time_us):
        group = list(same_time)
        for order in itertools.permutations(group):
            trial = model_factory()
            trial.__dict__.update({k: _copy(v) for k, v in model.__dict__.items()})
            if all(
                trial.decide(o.time_us, o.hits)
                == (o.allowed, o.remaining, o.reset_after_us, o.retry_after_us)
                for o in order
            ):
                model = trial
                break
        else:
            o = group[0]
            expected = model_factory()
            expected.__dict__.update({k: _copy(v) for k, v in model.__dict__.items()})
            raise AssertionError(
                f"at {o.time_us} µs, hits={o.hits}: service answered "
                f"{(o.allowed, o.remaining, o.reset_after_us, o.retry_after_us)}, model says "
                f"{expected.decide(o.time_us, o.hits)}"
            )


def _copy(value):
    return list(value) if isinstance(value, list) else value


def _us(duration: Duration) -> int:
    return duration.seconds * 1_000_000 + duration.nanos // 1000


@pytest.mark.topologies(
    "standalone",
    "cluster",
    reason="a decision is one script on one primary; Sentinel only changes how that primary "
    "is found, which test_ratelimit.py covers",
)
@pytest.mark.parametrize("name", list(CASES))
async def test_concurrent_callers_match_the_reference_model(cachet, channel, name):
    algorithm, limit, period_ms, burst, model_factory = CASES[name]
    stub = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
    target = pb.RateLimitTarget(
        inline_limit=pb.InlineLimit(
            key=f"contended:{name}",
            limit=pb.Limit(
                algorithm=algorithm,
                limit=limit,
                period=Duration(nanos=period_ms * 1_000_000)
                if period_ms < 1000
                else Duration(seconds=period_ms // 1000),
                burst=burst,
            ),
        )
    )
    capacity = burst or limit
    observed: list[Observed] = []

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(REQUESTS_PER_CALLER):
            hits = rng.choice([1, 1, 1, 1, 2, 3, 0]) if rng.random() > 0.01 else capacity + 1
            result = (await stub.Check(pb.CheckRequest(target=target, hits=hits))).result
            observed.append(
                Observed(
                    time_us=_us(result.server_time),
                    hits=hits,
                    allowed=result.allowed,
                    remaining=result.remaining,
                    reset_after_us=_us(result.reset_after),
                    retry_after_us=_us(result.retry_after)
                    if result.HasField("retry_after")
                    else None,
                )
            )

    started = time.monotonic()
    await asyncio.gather(*(caller(seed) for seed in range(CALLERS)))
    elapsed = time.monotonic() - started

    assert len(observed) == CALLERS * REQUESTS_PER_CALLER
    _replay(model_factory, observed)
    admitted = sum(o.hits for o in observed if o.allowed)
    denied = sum(1 for o in observed if not o.allowed)
    print(
        f"\n{name}: {len(observed)} checks in {elapsed:.1f}s "
        f"({len(observed) / elapsed:.0f}/s), {admitted} hits admitted, {denied} checks denied; "
        "every decision equals the model"
    )
    assert admitted > capacity and denied > 0, "the run must exercise both verdicts"
