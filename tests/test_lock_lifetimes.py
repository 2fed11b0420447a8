"""The lifetimes of a lock's Redis keys, which lock_permits.lua relies on to skip work:
holders and owners expire together at the latest permit's expiry, queue and waiters
together at the latest waiter lease, so an absent holders zset means no owners hash
and an absent waiters zset an empty queue. Also: what such a pair left over by an
older layout (or a lost write) does not break."""

from __future__ import annotations

import asyncio

from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_server.backend.keys import Kind, redis_key

from .proto_time import ms


def expire_ms(stamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


async def expiry_of(redis, key: str) -> int:
    """The key's absolute expiry in Redis ms (-2: no key, -1: no expiry)."""
    return int(await redis.execute_command("PEXPIRETIME", key))


def take(limit: int, ttl_ms: int, **extra) -> pb.AcquireSemaphoreRequest:
    return pb.AcquireSemaphoreRequest(name="pool", limit=limit, ttl=ms(ttl_ms), **extra)


async def test_holders_and_owners_expire_together_at_the_latest_permit(locks, namespace, redis):
    holders = redis_key(namespace, Kind.SEMAPHORE, "pool")
    owners = redis_key(namespace, Kind.SEMAPHORE_OWNERS, "pool")
    short = await locks.AcquireSemaphore(take(3, 20_000))
    longest = await locks.AcquireSemaphore(take(3, 60_000))
    middle = await locks.AcquireSemaphore(take(3, 40_000))
    assert await expiry_of(redis, holders) == expire_ms(longest.expire_time)
    assert await expiry_of(redis, owners) == expire_ms(longest.expire_time)

    # Giving back the latest permit shortens both keys' lives to the next latest.
    await locks.ReleaseSemaphore(
        pb.ReleaseSemaphoreRequest(name="pool", owner_token=longest.owner_token)
    )
    assert await expiry_of(redis, holders) == expire_ms(middle.expire_time)
    assert await expiry_of(redis, owners) == expire_ms(middle.expire_time)

    for grant in (short, middle):
        await locks.ReleaseSemaphore(
            pb.ReleaseSemaphoreRequest(name="pool", owner_token=grant.owner_token)
        )
    assert await redis.exists(holders, owners) == 0


async def test_a_lock_released_leaves_no_key_but_its_fence(locks, namespace, redis):
    grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(30_000)))
    holders = redis_key(namespace, Kind.LOCK, "job")
    owners = redis_key(namespace, Kind.LOCK_OWNERS, "job")
    assert await expiry_of(redis, holders) == expire_ms(grant.expire_time)
    assert await expiry_of(redis, owners) == expire_ms(grant.expire_time)
    await locks.Release(pb.ReleaseRequest(name="job", owner_token=grant.owner_token))
    kinds = (Kind.LOCK, Kind.LOCK_OWNERS, Kind.LOCK_QUEUE, Kind.LOCK_WAITERS)
    assert await redis.exists(*(redis_key(namespace, kind, "job") for kind in kinds)) == 0
    assert await redis.exists(redis_key(namespace, Kind.LOCK_FENCE, "job")) == 1


async def test_queue_and_waiters_expire_together_at_the_latest_lease(locks, namespace, redis):
    queue = redis_key(namespace, Kind.LOCK_QUEUE, "job")
    waiters = redis_key(namespace, Kind.LOCK_WAITERS, "job")
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(30_000)))
    waiter = asyncio.ensure_future(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(20_000)), timeout=30)
    )
    try:
        for _ in range(200):
            if await redis.exists(waiters):
                break
            await asyncio.sleep(0.02)
        # The waiter renews its lease when it looks again: compare the two keys
        # between two equal readings of one.
        for _ in range(20):
            lease_end = await expiry_of(redis, waiters)
            queue_end = await expiry_of(redis, queue)
            if await expiry_of(redis, waiters) == lease_end:
                break
        assert lease_end > 0
        assert queue_end == lease_end
        await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
        grant = await waiter
    finally:
        waiter.cancel()
    assert grant.fencing_token == held.fencing_token + 1
    assert await redis.exists(queue, waiters) == 0


async def test_a_queue_left_without_waiters_does_not_hold_up_a_new_waiter(locks, namespace, redis):
    # A ticket in the queue with no lease in waiters (a layout whose queue outlived its
    # waiters by a moment, or a lost write) is no one's: it must not stand first in line.
    queue = redis_key(namespace, Kind.LOCK_QUEUE, "job")
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(30_000)))
    await redis.zadd(queue, {"stale-ticket": 1})
    await redis.pexpire(queue, 60_000)
    waiter = asyncio.ensure_future(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(20_000)), timeout=30)
    )
    try:
        for _ in range(200):
            if await redis.exists(redis_key(namespace, Kind.LOCK_WAITERS, "job")):
                break
            await asyncio.sleep(0.02)
        await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
        # Woken by the release, well before its wait ends or a lease could lapse.
        grant = await asyncio.wait_for(asyncio.shield(waiter), 10)
    finally:
        waiter.cancel()
    assert grant.fencing_token == held.fencing_token + 1
    assert await redis.zscore(queue, "stale-ticket") is None


async def test_an_owners_hash_left_without_holders_does_not_set_the_limit(locks, namespace, redis):
    # An owners hash whose holders are gone speaks for no live permit: its '#limit'
    # must not refuse a different limit.
    owners = redis_key(namespace, Kind.SEMAPHORE_OWNERS, "pool")
    await redis.hset(owners, mapping={"#limit": 1, "gone-token": "9\nsomeone"})
    grant = await locks.AcquireSemaphore(take(3, 20_000))
    assert grant.holders == 1
    state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
    assert state.limit == 3
    assert [holder.fencing_token for holder in state.holders] == [grant.fencing_token]
