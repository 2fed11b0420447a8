"""Waiting survives trouble: a lost wake subscription, a waiter whose server died."""

from __future__ import annotations

import asyncio
import time

from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from cachet_server.app import running
from cachet_server.backend.keys import Kind, redis_key

from .conftest import channel_to, error_reason, make_settings, rpc_error
from .proto_time import ms
from .redis_procs import standalone


async def test_wakes_resume_after_the_subscription_is_killed():
    """Kill the server's pub/sub connection; it resubscribes by itself, and a later
    release still wakes the waiter by notification (the safety look is set to 5 s
    here, so it cannot be what wakes it)."""
    with standalone() as redis_proc:
        settings = make_settings(
            redis_proc.url, lock={"recheck_interval": "PT5S", "waiter_lease": "PT10S"}
        )
        async with running(settings) as app, channel_to(app.port, "recovery") as channel:
            locks = lock_pb2_grpc.LockServiceStub(channel)
            held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(30_000)))
            waiter = asyncio.ensure_future(
                locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(20_000)))
            )
            await wait_for(lambda: app.backend.redis.pubsub_numpat(), what="subscription")
            await wait_for(lambda: inspect_waiters(locks), what="the waiter to queue")
            killed = redis_proc.client().client_kill_filter(_type="pubsub")
            assert killed == 1
            await wait_for(lambda: app.backend.redis.pubsub_numpat(), what="resubscription")
            # The resubscription wakes every waiter once to look again; let that pass.
            await asyncio.sleep(0.2)
            sent = time.monotonic()
            await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
            grant = await waiter
            woken_after = time.monotonic() - sent
            print(f"\nwoken {woken_after * 1000:.1f} ms after the release, after a resubscription")
            assert grant.fencing_token == held.fencing_token + 1
            assert woken_after < 2.5, "woken by the notification, not the 5 s safety look"


async def test_a_dead_waiters_ticket_blocks_the_queue_only_until_its_lease_lapses(
    cachet, namespace
):
    """A waiter whose server died leaves a ticket nobody refreshes: it holds the free
    lock for the earlier arrival only until its lease lapses."""
    redis = cachet.backend.redis
    lease_ms = 400
    now_s, now_us = await redis.time()
    now_ms = now_s * 1000 + now_us // 1000
    await redis.zadd(redis_key(namespace, Kind.LOCK_QUEUE, "job"), {"ghost": 0})
    await redis.zadd(redis_key(namespace, Kind.LOCK_WAITERS, "job"), {"ghost": now_ms + lease_ms})
    async with channel_to(cachet.port, namespace) as channel:
        locks = lock_pb2_grpc.LockServiceStub(channel)
        error = await rpc_error(locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000))))
        assert error_reason(error) == "LOCK_HELD", "reserved for the earlier arrival"
        assert (await locks.Inspect(pb.InspectRequest(name="job"))).waiters == 1
        started = time.monotonic()
        grant = await locks.Acquire(
            pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(5000)), timeout=10
        )
        waited = time.monotonic() - started
        assert grant.fencing_token == 1
        assert waited < lease_ms / 1000 + 1.0
        assert (await locks.Inspect(pb.InspectRequest(name="job"))).waiters == 0


async def inspect_waiters(locks) -> bool:
    return (await locks.Inspect(pb.InspectRequest(name="job"))).waiters == 1


async def wait_for(probe, what: str) -> None:
    """Poll an async predicate for up to 5 s."""
    for _ in range(500):
        if await probe():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
