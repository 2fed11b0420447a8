"""Stampede protection: GetOrLease / Fill leases and XFetch early refresh, on real Redis."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, error_reason, rpc_error


def _ms(milliseconds: int) -> Duration:
    return Duration(seconds=milliseconds // 1000, nanos=(milliseconds % 1000) * 1_000_000)


async def test_fifty_concurrent_callers_grant_exactly_one_lease(cache, cachet, namespace):
    """The cold-key stampede: one caller computes, 49 wait and then read its value."""
    computations = 0
    outcomes: list[int] = []  # every answer, in arrival order
    first_outcomes: list[int] = []  # each caller's first answer

    async def caller() -> bytes:
        nonlocal computations
        first = True
        while True:
            answer = await cache.GetOrLease(pb.GetOrLeaseRequest(key="hot"))
            outcomes.append(answer.outcome)
            if first:
                first_outcomes.append(answer.outcome)
                first = False
            if answer.outcome == pb.LEASE_OUTCOME_HIT:
                return answer.value
            if answer.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED:
                computations += 1
                await asyncio.sleep(0.3)  # the expensive computation
                await cache.Fill(
                    pb.FillRequest(key="hot", lease_token=answer.lease_token, value=b"computed")
                )
                return b"computed"
            assert answer.outcome == pb.LEASE_OUTCOME_FILL_PENDING
            assert not answer.stale
            wait = answer.retry_after.ToMilliseconds()
            assert 0 < wait <= 100
            await asyncio.sleep(wait / 1000)

    stats = cachet.servicers[0].deps.stats.namespaces[namespace]
    values = await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(50))), timeout=15)

    assert computations == 1
    assert outcomes.count(pb.LEASE_OUTCOME_LEASE_GRANTED) == 1
    assert sorted(first_outcomes) == sorted(
        [pb.LEASE_OUTCOME_LEASE_GRANTED] + [pb.LEASE_OUTCOME_FILL_PENDING] * 49
    )
    assert values == [b"computed"] * 50
    assert stats.hits == 49 and stats.misses == len(outcomes) - 49
    polls = outcomes.count(pb.LEASE_OUTCOME_FILL_PENDING)
    print(f"stampede: 50 callers, 1 computation, {polls} polls while the fill ran")


async def test_hit_answers_value_and_version(cache):
    stored = await cache.Set(pb.SetRequest(key="k", value=b"v"))
    answer = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert answer.outcome == pb.LEASE_OUTCOME_HIT
    assert answer.value == b"v" and answer.version == stored.version
    assert not answer.lease_token


async def test_fill_stores_value_with_ttl_tags_and_a_new_version(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", lease_ttl=_ms(5000)))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    assert lease.lease_ttl.ToMilliseconds() == 5000
    assert len(lease.lease_token) >= 32, "the token must be unguessable"
    filled = await cache.Fill(
        pb.FillRequest(
            key="k", lease_token=lease.lease_token, value=b"v", ttl=_ms(30_000), tags=["t"]
        )
    )
    got = await cache.Get(pb.GetRequest(key="k", include_ttl=True))
    assert got.value == b"v" and got.version == filled.version > 0
    assert 29_000 <= got.ttl.ToMilliseconds() <= 30_000
    # The lease is used up: filling twice is refused.
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"again"))
    )
    assert error.code() == grpc.StatusCode.ABORTED and error_reason(error) == "LEASE_LOST"
    assert (await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["t"]))).deleted == 1


async def test_delete_during_the_fill_makes_the_late_fill_fail(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    await cache.Delete(pb.DeleteRequest(keys=["k"]))

    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"stale"))
    )

    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error) == "LEASE_LOST"
    assert "nothing was stored" in error.details()
    assert not (await cache.Get(pb.GetRequest(key="k"))).found


async def test_a_direct_write_supersedes_the_fill(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    await cache.Set(pb.SetRequest(key="k", value=b"fresh"))
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"old"))
    )
    assert error_reason(error) == "LEASE_LOST"
    assert (await cache.Get(pb.GetRequest(key="k"))).value == b"fresh"


async def test_an_abandoned_lease_lets_a_new_filler_in_after_it_expires(cache):
    first = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", lease_ttl=_ms(300)))
    assert first.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    waiting = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert waiting.outcome == pb.LEASE_OUTCOME_FILL_PENDING
    assert 0 < waiting.retry_after.ToMilliseconds() <= 100

    await asyncio.sleep(0.4)  # the first filler crashed; its lease runs out
    second = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))

    assert second.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    assert second.lease_token != first.lease_token
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="k", lease_token=first.lease_token, value=b"late"))
    )
    assert error_reason(error) == "LEASE_LOST"
    await cache.Fill(pb.FillRequest(key="k", lease_token=second.lease_token, value=b"new"))
    assert (await cache.Get(pb.GetRequest(key="k"))).value == b"new"


async def test_retry_after_never_exceeds_the_remaining_lease(cache):
    await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", lease_ttl=_ms(20)))
    waiting = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    if waiting.outcome == pb.LEASE_OUTCOME_FILL_PENDING:  # the 20 ms may be gone already
        assert 0 < waiting.retry_after.ToMilliseconds() <= 20


async def test_accept_stale_returns_the_stale_copy_during_a_refill(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    await cache.Fill(
        pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"v1", stale_ttl=_ms(10_000))
    )
    await cache.Delete(pb.DeleteRequest(keys=["k"]))  # e.g. the source changed

    refill = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert refill.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED, "someone must refill"
    reader = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert reader.outcome == pb.LEASE_OUTCOME_FILL_PENDING
    assert reader.stale and reader.value == b"v1"
    strict = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert strict.outcome == pb.LEASE_OUTCOME_FILL_PENDING
    assert not strict.stale and strict.value == b""

    await cache.Fill(pb.FillRequest(key="k", lease_token=refill.lease_token, value=b"v2"))
    hit = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert hit.outcome == pb.LEASE_OUTCOME_HIT and hit.value == b"v2"


async def test_stale_copy_outlives_a_value_that_simply_expires(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    await cache.Fill(
        pb.FillRequest(
            key="k",
            lease_token=lease.lease_token,
            value=b"v1",
            ttl=_ms(200),
            stale_ttl=_ms(10_000),
        )
    )
    await asyncio.sleep(0.3)
    assert not (await cache.Get(pb.GetRequest(key="k"))).found
    refill = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert refill.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    reader = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert reader.stale and reader.value == b"v1"


async def test_stale_copy_is_kept_only_for_its_stale_ttl(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    await cache.Fill(
        pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"v1", stale_ttl=_ms(200))
    )
    await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="k"))
    await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    reader = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert reader.stale and reader.value == b"v1"
    await asyncio.sleep(0.3)
    reader = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert reader.outcome == pb.LEASE_OUTCOME_FILL_PENDING and not reader.stale


async def test_a_plain_write_drops_the_stale_copy(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    await cache.Fill(
        pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"v1", stale_ttl=_ms(10_000))
    )
    await cache.Set(pb.SetRequest(key="k", value=b"v2"))
    await cache.Delete(pb.DeleteRequest(keys=["k"]))
    await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    reader = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k", accept_stale=True))
    assert not reader.stale, "v2 was written without a stale TTL, and v1 is superseded"


async def test_get_or_lease_on_a_collection_is_wrong_type(cache, cachet, namespace):
    from cachet_server.backend.keys import CacheKeys

    await cachet.backend.redis.hset(CacheKeys.of(namespace, "h").data, "f", "1")
    error = await rpc_error(cache.GetOrLease(pb.GetOrLeaseRequest(key="h")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "WRONG_TYPE"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.GetOrLease(pb.GetOrLeaseRequest(key="")), "key"),
        (lambda c: c.GetOrLease(pb.GetOrLeaseRequest(key="k", lease_ttl=_ms(0))), "lease_ttl"),
        (
            lambda c: c.GetOrLease(
                pb.GetOrLeaseRequest(key="k", lease_ttl=Duration(seconds=10**9))
            ),
            "lease_ttl",
        ),
        (lambda c: c.Fill(pb.FillRequest(key="k", value=b"v")), "lease_token"),
        (lambda c: c.Fill(pb.FillRequest(key="", lease_token="t")), "key"),
        (
            lambda c: c.Fill(pb.FillRequest(key="k", lease_token="t", ttl=Duration(seconds=-1))),
            "ttl",
        ),
        (
            lambda c: c.Fill(
                pb.FillRequest(key="k", lease_token="t", stale_ttl=Duration(seconds=10**9))
            ),
            "stale_ttl",
        ),
        (
            lambda c: c.Fill(
                pb.FillRequest(key="k", lease_token="t", stale_ttl=Duration(seconds=-1))
            ),
            "stale_ttl",
        ),
        (lambda c: c.Fill(pb.FillRequest(key="k", lease_token="t", tags=[""])), "tags[0]"),
        (
            lambda c: c.Fill(pb.FillRequest(key="k", lease_token="t", value=b"x" * (2**20 + 1))),
            "value",
        ),
    ],
)
async def test_bad_lease_requests(cache, call, field):
    error = await rpc_error(call(cache))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


async def test_fill_with_a_made_up_token_stores_nothing(cache):
    error = await rpc_error(cache.Fill(pb.FillRequest(key="k", lease_token="guess", value=b"v")))
    assert error_reason(error) == "LEASE_LOST"
    assert not (await cache.Get(pb.GetRequest(key="k"))).found


# XFetch: P(should_refresh) = exp(-remaining_ttl / (recompute_time * beta)).


async def _refresh_rate(cache, key: str, ttl_ms: int, recompute_ms: int, trials: int) -> float:
    await cache.Set(
        pb.SetRequest(key=key, value=b"v", ttl=_ms(ttl_ms), recompute_time=_ms(recompute_ms))
    )
    answers = await asyncio.gather(
        *(cache.Get(pb.GetRequest(key=key, early_refresh_beta=1.0)) for _ in range(trials))
    )
    return sum(a.should_refresh for a in answers) / trials


async def test_xfetch_hint_follows_the_recompute_time(cache):
    trials = 400
    # Recompute 1000 s against 10 s left: expected rate exp(-0.01) = 0.99.
    assert await _refresh_rate(cache, "slow", 10_000, 1_000_000, trials) >= 0.95
    # Recompute 1 ms against 60 s left: expected rate exp(-60000), i.e. never.
    assert await _refresh_rate(cache, "fast", 60_000, 1, trials) == 0.0
    # Recompute = remaining / ln 2: expected rate 0.5 (sd 0.025 over 400 trials).
    rate = await _refresh_rate(cache, "even", 60_000, round(60_000 / math.log(2)), trials)
    assert 0.38 <= rate <= 0.62
    print(f"XFetch: rate {rate:.3f} where 0.5 is expected")


async def test_xfetch_hint_needs_beta_and_a_recompute_time(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"v", ttl=_ms(1000)))
    got = await cache.Get(pb.GetRequest(key="k", early_refresh_beta=100.0))
    assert not got.should_refresh, "no recompute time recorded"
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="f"))
    await cache.Fill(
        pb.FillRequest(
            key="f",
            lease_token=lease.lease_token,
            value=b"v",
            ttl=_ms(10_000),
            recompute_time=_ms(10**7),
        )
    )
    assert not (await cache.Get(pb.GetRequest(key="f"))).should_refresh, "beta 0: no hint"
    hints = [
        (await cache.Get(pb.GetRequest(key="f", early_refresh_beta=1.0))).should_refresh
        for _ in range(20)
    ]
    assert sum(hints) >= 15, "Fill records the recompute time too"
