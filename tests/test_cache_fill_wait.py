"""Fill leases: every write voids them (collections included), and GetOrLease(wait)
blocks until the fill lands instead of polling."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.app import Application
from cachet_server.backend import cache as backend_cache
from cachet_server.backend.keys import CacheKeys
from cachet_server.services.cache import CacheService
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, error_reason, rpc_error
from .proto_time import ms

_TTL = pb.CollectionTtl(ttl=ms(60_000))


async def _expire_now(cache, key: str) -> None:
    await cache.Expire(pb.ExpireRequest(key=key, ttl=ms(1)))
    for _ in range(400):
        if not (await cache.Exists(pb.ExistsRequest(keys=[key]))).exists[0]:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{key} did not expire")


# Each collection write that can create the collection at `key`.
COLLECTION_WRITES = {
    "HashSet": lambda c, key: c.HashSet(
        pb.HashSetRequest(key=key, fields=[pb.HashField(field="f", value=b"v")], ttl=_TTL)
    ),
    "HashIncrement": lambda c, key: c.HashIncrement(
        pb.HashIncrementRequest(key=key, field="f", by_int=1, ttl=_TTL)
    ),
    "ListPush": lambda c, key: c.ListPush(
        pb.ListPushRequest(key=key, values=[b"v"], end=pb.LIST_END_RIGHT, ttl=_TTL)
    ),
    "SetAdd": lambda c, key: c.SetAdd(pb.SetAddRequest(key=key, members=[b"v"], ttl=_TTL)),
    "SortedSetAdd": lambda c, key: c.SortedSetAdd(
        pb.SortedSetAddRequest(key=key, members=[pb.ScoredMember(member=b"m", score=1)], ttl=_TTL)
    ),
    "SortedSetIncrement": lambda c, key: c.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key=key, member=b"m", delta=1, ttl=_TTL)
    ),
}


@pytest.mark.parametrize("write", sorted(COLLECTION_WRITES))
async def test_a_collection_write_voids_the_fill_lease(cache, write):
    key = "{filled}:" + write
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key=key))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    await COLLECTION_WRITES[write](cache, key)
    # The collection expires (which leaves leases alone): the fill must still not land
    # the value it computed before the write.
    await _expire_now(cache, key)
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key=key, lease_token=lease.lease_token, value=b"old"))
    )
    assert error.code() == grpc.StatusCode.ABORTED and error_reason(error) == "LEASE_LOST"
    assert not (await cache.Get(pb.GetRequest(key=key))).found


@pytest.mark.parametrize("write", ["ListMove", "SetMove"])
async def test_a_move_voids_the_fill_lease_of_its_destination(cache, write):
    source, destination = "{moved}:source", "{moved}:" + write
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key=destination))
    if write == "ListMove":
        await cache.ListPush(
            pb.ListPushRequest(key=source, values=[b"v"], end=pb.LIST_END_RIGHT, ttl=_TTL)
        )
        await cache.ListMove(
            pb.ListMoveRequest(
                source=source,
                destination=destination,
                ttl=_TTL,
                **{"from": pb.LIST_END_LEFT, "to": pb.LIST_END_RIGHT},
            )
        )
    else:
        await cache.SetAdd(pb.SetAddRequest(key=source, members=[b"v"], ttl=_TTL))
        await cache.SetMove(
            pb.SetMoveRequest(source=source, destination=destination, member=b"v", ttl=_TTL)
        )
    await _expire_now(cache, destination)
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key=destination, lease_token=lease.lease_token, value=b"x"))
    )
    assert error_reason(error) == "LEASE_LOST"


async def _script_calls(cachet) -> int:
    """EVALSHA + EVAL calls so far on every primary: the Redis round trips of scripts."""
    total = 0
    for node in await cachet.backend.primaries():
        stats = await node.info("commandstats")
        total += sum(
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval")
        )
    return total


async def _stampede(cache, key: str, callers: int, *, wait: bool) -> tuple[list[bytes], int, float]:
    """`callers` concurrent readers of a cold key, one 300 ms fill. Answers every
    caller's value, how many FILL_PENDING answers they got in all (polls), and how
    long after the Fill returned the last of them had its value (ms)."""
    polls = 0
    filled_at = 0.0
    answered_at: list[float] = []

    async def caller() -> bytes:
        nonlocal polls, filled_at
        request = pb.GetOrLeaseRequest(key=key, wait=ms(5000) if wait else None)
        while True:
            answer = await cache.GetOrLease(request, timeout=10)
            if answer.outcome == pb.LEASE_OUTCOME_HIT:
                answered_at.append(time.monotonic())
                return answer.value
            if answer.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED:
                await asyncio.sleep(0.3)  # the expensive computation
                await cache.Fill(
                    pb.FillRequest(key=key, lease_token=answer.lease_token, value=b"computed")
                )
                filled_at = time.monotonic()
                return b"computed"
            polls += 1
            await asyncio.sleep(answer.retry_after.ToMilliseconds() / 1000)

    values = await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(callers))), 20)
    late_ms = max(0.0, max(answered_at) - filled_at) * 1000
    return values, polls, late_ms


async def test_waiting_callers_get_the_fill_without_polling(cache, cachet):
    """30 callers, one 300 ms fill: with `wait` each caller makes one GetOrLease call
    and is answered the value when the fill lands; without it they poll."""
    callers = 30
    before = await _script_calls(cachet)
    values, polls, polled_late = await _stampede(cache, "cold-polled", callers, wait=False)
    polled_scripts = await _script_calls(cachet) - before
    assert values == [b"computed"] * callers

    before = await _script_calls(cachet)
    values, waited_polls, waited_late = await _stampede(cache, "cold-waited", callers, wait=True)
    waited_scripts = await _script_calls(cachet) - before
    assert values == [b"computed"] * callers
    print(
        f"\n{callers} callers, one 300 ms fill: polling {polls} FILL_PENDING answers, "
        f"{polled_scripts} script round trips, last value {polled_late:.0f} ms after the "
        f"fill; with wait {waited_polls} FILL_PENDING, {waited_scripts} script round trips, "
        f"last value {waited_late:.0f} ms after the fill"
    )
    assert waited_polls == 0, "a waiting caller was answered FILL_PENDING"
    # One look before the wait and one after the wake per waiter, plus the Fill.
    assert waited_scripts <= 2 * callers + 1 + callers // 2


async def test_a_waiter_takes_over_an_expired_lease(cache):
    first = await cache.GetOrLease(pb.GetOrLeaseRequest(key="abandoned", lease_ttl=ms(300)))
    assert first.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    taken = await cache.GetOrLease(pb.GetOrLeaseRequest(key="abandoned", wait=ms(5000)), timeout=10)
    assert taken.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    assert taken.lease_token != first.lease_token


async def _until_asleep_on_the_wake(cachet: Application, namespace: str, key: str) -> None:
    """Wait until a GetOrLease(wait) of `key` has looked, found the fill pending and
    sleeps on its wake: an event registered for the lease that a task awaits (the
    dispatcher's registry and asyncio.Event's waiters, both private, looked at here only).
    """
    service = next(s for s in cachet.servicers if isinstance(s, CacheService))
    registered = service.store.fill_wakes._events
    lease = CacheKeys.of(namespace, key).lease
    deadline = time.monotonic() + 10
    while not any(event._waiters for event in registered.get(lease, ())):
        assert time.monotonic() < deadline, f"no waiter asleep on the wake of {key}"
        await asyncio.sleep(0.01)


async def test_a_write_that_voids_the_lease_answers_the_waiters(
    cache, cachet, namespace, monkeypatch
):
    # Only the wake answers the waiter in time: its own next look is 60 s away.
    monkeypatch.setattr(backend_cache, "FILL_RECHECK_S", 60.0)
    first = await cache.GetOrLease(pb.GetOrLeaseRequest(key="voided", lease_ttl=ms(30_000)))
    waiter = asyncio.ensure_future(
        cache.GetOrLease(pb.GetOrLeaseRequest(key="voided", wait=ms(20_000)), timeout=30)
    )
    await _until_asleep_on_the_wake(cachet, namespace, "voided")
    assert not waiter.done()
    await cache.Set(pb.SetRequest(key="voided", value=b"written"))
    answer = await asyncio.wait_for(waiter, 10)
    assert answer.outcome == pb.LEASE_OUTCOME_HIT and answer.value == b"written"
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="voided", lease_token=first.lease_token, value=b"old"))
    )
    assert error_reason(error) == "LEASE_LOST"


async def test_the_wait_ends_with_fill_pending_and_the_stale_copy(cache):
    await cache.GetOrLease(pb.GetOrLeaseRequest(key="slow"))
    answer = await cache.GetOrLease(pb.GetOrLeaseRequest(key="slow", wait=ms(200)))
    assert answer.outcome == pb.LEASE_OUTCOME_FILL_PENDING
    # Bounded by the deadline: an answer, not DEADLINE_EXCEEDED.
    answer = await cache.GetOrLease(pb.GetOrLeaseRequest(key="slow", wait=ms(60_000)), timeout=0.6)
    assert answer.outcome == pb.LEASE_OUTCOME_FILL_PENDING


@pytest.mark.parametrize("wait", [Duration(seconds=-1), Duration(seconds=10**8)])
async def test_a_bad_wait_is_refused(cache, wait):
    error = await rpc_error(cache.GetOrLease(pb.GetOrLeaseRequest(key="k", wait=wait)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["wait"]
