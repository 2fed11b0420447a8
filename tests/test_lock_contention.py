"""Locks and semaphores under contention, judged by a checker over recorded holds.

Every hold is recorded as an interval of Redis time: from its grant's server_time
to its release's server_time (or, for a hold that was left to expire, to its
expire_time). The checker needs no clock of ours: all times come from Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass

import grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb

from .conftest import error_reason
from .proto_time import ms, us

LOCK_CONTENTION_SECONDS = 20.0
LOCK_CONTENDERS = 50
SEMAPHORE_CONTENTION_SECONDS = 8.0
SEMAPHORE_CONTENDERS = 30
SEMAPHORE_LIMIT = 3
# Every this-many holds, a contender leaves its lock to expire instead of releasing it.
EXPIRE_EVERY = 20


@dataclass(frozen=True)
class Hold:
    start_us: int
    end_us: int
    fencing_token: int
    expired: bool


def max_overlap(holds: list[Hold]) -> int:
    """Most holds in force at one instant; a hold ending at t does not overlap one
    starting at t."""
    events = sorted(
        [(h.start_us, 1) for h in holds] + [(h.end_us, -1) for h in holds],
        key=lambda event: (event[0], event[1]),
    )
    current = most = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def assert_fencing_increases_in_grant_order(holds: list[Hold]) -> None:
    ordered = sorted(holds, key=lambda h: (h.start_us, h.fencing_token))
    tokens = [h.fencing_token for h in ordered]
    assert all(a < b for a, b in itertools.pairwise(tokens)), (
        "fencing tokens must strictly increase in grant order"
    )


async def contend(
    acquire,
    release,
    *,
    until: float,
    wait_ms: int,
    ttl_ms: int,
    holds: list[Hold],
    counters: dict[str, int],
    seed: int,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        let_expire = rng.randrange(EXPIRE_EVERY) == 0
        try:
            grant = await acquire(30 if let_expire else ttl_ms, wait_ms)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            assert error_reason(error) in ("LOCK_HELD", "SEMAPHORE_FULL")
            counters["busy"] += 1
            await asyncio.sleep(0.005 + rng.random() * 0.015)
            continue
        if let_expire:
            await asyncio.sleep(0.06)
        else:
            await asyncio.sleep(rng.random() * 0.003)
        try:
            released = await release(grant.owner_token)
            holds.append(
                Hold(us(grant.server_time), us(released.server_time), grant.fencing_token, False)
            )
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "LOCK_NOT_OWNED", error
            # It expired: it was in force until its expiry, no longer.
            holds.append(
                Hold(us(grant.server_time), us(grant.expire_time), grant.fencing_token, True)
            )
            counters["expired"] += 1


async def test_lock_contention_never_overlaps(locks):
    holds: list[Hold] = []
    counters = {"busy": 0, "expired": 0}

    async def acquire(ttl_ms: int, wait_ms: int) -> pb.AcquireResponse:
        return await locks.Acquire(
            pb.AcquireRequest(name="hot", ttl=ms(ttl_ms), wait=ms(wait_ms)), timeout=10
        )

    async def release(token: str) -> pb.ReleaseResponse:
        return await locks.Release(pb.ReleaseRequest(name="hot", owner_token=token), timeout=10)

    until = time.monotonic() + LOCK_CONTENTION_SECONDS
    # Most contenders queue; a fifth of them try once and come back (no queue entry).
    await asyncio.gather(
        *(
            contend(
                acquire,
                release,
                until=until,
                wait_ms=0 if i % 5 == 0 else 2000,
                ttl_ms=5000,
                holds=holds,
                counters=counters,
                seed=i,
            )
            for i in range(LOCK_CONTENDERS)
        )
    )
    print(
        f"\n{LOCK_CONTENDERS} contenders, {LOCK_CONTENTION_SECONDS:.0f} s: {len(holds)} holds "
        f"({len(holds) / LOCK_CONTENTION_SECONDS:.0f}/s), {counters['expired']} left to expire, "
        f"{counters['busy']} refusals"
    )
    assert len(holds) > LOCK_CONTENDERS, "the lock must change hands many times"
    assert counters["expired"] > 0
    assert max_overlap(holds) == 1, "two holds of one lock overlapped"
    assert_fencing_increases_in_grant_order(holds)
    state = await locks.Inspect(pb.InspectRequest(name="hot"))
    assert state.fencing_token == max(h.fencing_token for h in holds)
    assert state.waiters == 0


async def test_semaphore_contention_never_exceeds_the_limit(locks):
    holds: list[Hold] = []
    counters = {"busy": 0, "expired": 0}

    async def acquire(ttl_ms: int, wait_ms: int) -> pb.AcquireSemaphoreResponse:
        return await locks.AcquireSemaphore(
            pb.AcquireSemaphoreRequest(
                name="pool", limit=SEMAPHORE_LIMIT, ttl=ms(ttl_ms), wait=ms(wait_ms)
            ),
            timeout=10,
        )

    async def release(token: str) -> pb.ReleaseSemaphoreResponse:
        return await locks.ReleaseSemaphore(
            pb.ReleaseSemaphoreRequest(name="pool", owner_token=token), timeout=10
        )

    until = time.monotonic() + SEMAPHORE_CONTENTION_SECONDS
    await asyncio.gather(
        *(
            contend(
                acquire,
                release,
                until=until,
                wait_ms=0 if i % 5 == 0 else 2000,
                ttl_ms=5000,
                holds=holds,
                counters=counters,
                seed=1000 + i,
            )
            for i in range(SEMAPHORE_CONTENDERS)
        )
    )
    most = max_overlap(holds)
    print(
        f"\nsemaphore of {SEMAPHORE_LIMIT}, {SEMAPHORE_CONTENDERS} contenders: {len(holds)} "
        f"holds, at most {most} at once, {counters['expired']} left to expire"
    )
    assert most <= SEMAPHORE_LIMIT
    assert most == SEMAPHORE_LIMIT, "the permits must actually be used concurrently"
    assert_fencing_increases_in_grant_order(holds)
    assert len({h.fencing_token for h in holds}) == len(holds)
