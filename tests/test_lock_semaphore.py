"""Counted semaphores: permits with their own tokens and TTLs, limits, waiting."""

from __future__ import annotations

import asyncio

import grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, error_reason, rpc_error
from .proto_time import ms


def take(
    name: str = "pool", limit: int = 3, ttl: int = 5000, **extra
) -> pb.AcquireSemaphoreRequest:
    return pb.AcquireSemaphoreRequest(name=name, limit=limit, ttl=ms(ttl), **extra)


async def test_up_to_limit_holders_each_with_own_token(locks):
    grants = [await locks.AcquireSemaphore(take(holder=f"w{i}")) for i in range(3)]
    assert [g.holders for g in grants] == [1, 2, 3]
    assert [g.fencing_token for g in grants] == [1, 2, 3]
    assert len({g.owner_token for g in grants}) == 3
    error = await rpc_error(locks.AcquireSemaphore(take()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "SEMAPHORE_FULL"
    state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
    assert state.limit == 3 and state.fencing_token == 3 and state.waiters == 0
    assert [h.holder for h in state.holders] == ["w0", "w1", "w2"]
    assert all(0 < h.remaining_ttl.ToMilliseconds() <= 5000 for h in state.holders)
    released = await locks.ReleaseSemaphore(
        pb.ReleaseSemaphoreRequest(name="pool", owner_token=grants[1].owner_token)
    )
    assert released.holders == 2
    again = await locks.AcquireSemaphore(take())
    assert again.fencing_token == 4 and again.holders == 3


async def test_semaphore_and_lock_of_the_same_name_are_separate(locks):
    await locks.AcquireSemaphore(take(name="shared", limit=1))
    grant = await locks.Acquire(pb.AcquireRequest(name="shared", ttl=ms(5000)))
    assert grant.fencing_token == 1


async def test_limit_mismatch_while_holders_live_then_reset(locks):
    grant = await locks.AcquireSemaphore(take(limit=2))
    error = await rpc_error(locks.AcquireSemaphore(take(limit=5)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "SEMAPHORE_LIMIT_MISMATCH"
    await locks.ReleaseSemaphore(
        pb.ReleaseSemaphoreRequest(name="pool", owner_token=grant.owner_token)
    )
    assert (await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))).limit == 0
    assert (await locks.AcquireSemaphore(take(limit=5))).holders == 1


async def test_permits_expire_on_their_own(locks):
    short = await locks.AcquireSemaphore(take(limit=2, ttl=50))
    await locks.AcquireSemaphore(take(limit=2, ttl=5000))
    await asyncio.sleep(0.1)
    state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
    assert len(state.holders) == 1
    error = await rpc_error(
        locks.ExtendSemaphore(
            pb.ExtendSemaphoreRequest(name="pool", owner_token=short.owner_token, ttl=ms(5000))
        )
    )
    assert error_reason(error) == "LOCK_NOT_OWNED"
    assert (await locks.AcquireSemaphore(take(limit=2))).holders == 2


async def test_extend_and_release_only_by_owner(locks):
    grant = await locks.AcquireSemaphore(take(ttl=1000))
    extended = await locks.ExtendSemaphore(
        pb.ExtendSemaphoreRequest(name="pool", owner_token=grant.owner_token, ttl=ms(8000))
    )
    assert extended.fencing_token == grant.fencing_token
    assert extended.ttl.ToMilliseconds() == 8000
    for call in (
        locks.ExtendSemaphore(
            pb.ExtendSemaphoreRequest(name="pool", owner_token="nope", ttl=ms(8000))
        ),
        locks.ReleaseSemaphore(pb.ReleaseSemaphoreRequest(name="pool", owner_token="nope")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "LOCK_NOT_OWNED"
    state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
    assert len(state.holders) == 1 and state.holders[0].remaining_ttl.ToMilliseconds() > 7000


async def test_waiter_is_woken_when_a_permit_is_released(locks):
    grants = [await locks.AcquireSemaphore(take(limit=2)) for _ in range(2)]
    waiter = asyncio.ensure_future(locks.AcquireSemaphore(take(limit=2, wait=ms(5000))))
    for _ in range(500):
        state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
        if state.waiters == 1:
            break
        await asyncio.sleep(0.005)
    assert state.waiters == 1
    await locks.ReleaseSemaphore(
        pb.ReleaseSemaphoreRequest(name="pool", owner_token=grants[0].owner_token)
    )
    grant = await waiter
    assert grant.holders == 2 and grant.fencing_token == 3
    assert grant.waited.ToMilliseconds() > 0


async def test_waiter_deadline_leaves_no_queue_entry(locks):
    await locks.AcquireSemaphore(take(limit=1))
    error = await rpc_error(locks.AcquireSemaphore(take(limit=1, wait=ms(60_000)), timeout=0.4))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
        if state.waiters == 0:
            break
        await asyncio.sleep(0.02)
    assert state.waiters == 0


async def test_bad_semaphore_requests(locks, cachet):
    maximum = cachet.settings.lock.max_semaphore_limit
    cases = [
        (locks.AcquireSemaphore(take(name="")), "name"),
        (locks.AcquireSemaphore(take(limit=0)), "limit"),
        (locks.AcquireSemaphore(take(limit=-1)), "limit"),
        (locks.AcquireSemaphore(take(limit=maximum + 1)), "limit"),
        (locks.AcquireSemaphore(pb.AcquireSemaphoreRequest(name="pool", limit=3)), "ttl"),
        (locks.AcquireSemaphore(take(ttl=0)), "ttl"),
        (locks.AcquireSemaphore(take(ttl=3_600_001)), "ttl"),
        (locks.AcquireSemaphore(take(wait=Duration(seconds=301))), "wait"),
        (locks.AcquireSemaphore(take(holder="h" * 257)), "holder"),
        (locks.ReleaseSemaphore(pb.ReleaseSemaphoreRequest(name="pool")), "owner_token"),
        (
            locks.ReleaseSemaphore(pb.ReleaseSemaphoreRequest(name="", owner_token="t")),
            "name",
        ),
        (
            locks.ExtendSemaphore(pb.ExtendSemaphoreRequest(name="pool", owner_token="t")),
            "ttl",
        ),
        (locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="")), "name"),
    ]
    for call, field in cases:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert bad_fields(error) == [field]
