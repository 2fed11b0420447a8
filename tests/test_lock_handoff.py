"""Lock details that only show at a hand-off or a flush: the next waiter learns the new
holder's TTL, `waited` of a free lock is zero, fencing survives a namespace flush, and
the server warns when Redis may evict fencing counters."""

from __future__ import annotations

import asyncio
import logging

from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from cachet_server.app import running

from .conftest import channel_to, make_settings
from .proto_time import ms
from .redis_procs import standalone


async def _queued(locks: lock_pb2_grpc.LockServiceStub, name: str, count: int) -> None:
    for _ in range(500):
        if (await locks.Inspect(pb.InspectRequest(name=name))).waiters >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} waiters never queued on {name!r}")


async def test_the_waiter_next_in_line_after_a_handoff_is_granted_when_that_holder_expires(
    redis_url,
):
    """A holds; W1 (250 ms TTL) and W2 queue; A releases, W1 is granted and never
    releases. W2 must look again when W1's TTL runs out, not at its safety recheck
    (set to 10 s here, so it cannot be what grants W2)."""
    settings = make_settings(redis_url, lock={"recheck_interval": "PT10S", "waiter_lease": "PT20S"})
    async with running(settings) as app, channel_to(app.port, "handoff") as channel:
        locks = lock_pb2_grpc.LockServiceStub(channel)
        delays = []
        for trial in range(3):
            name = f"job-{trial}"
            held = await locks.Acquire(pb.AcquireRequest(name=name, ttl=ms(5000)))
            first = asyncio.ensure_future(
                locks.Acquire(pb.AcquireRequest(name=name, ttl=ms(250), wait=ms(20_000)))
            )
            await _queued(locks, name, 1)
            second = asyncio.ensure_future(
                locks.Acquire(pb.AcquireRequest(name=name, ttl=ms(5000), wait=ms(20_000)))
            )
            await _queued(locks, name, 2)
            await locks.Release(pb.ReleaseRequest(name=name, owner_token=held.owner_token))
            w1 = await first
            w2 = await asyncio.wait_for(second, 15)
            expired_us = w1.expire_time.seconds * 1_000_000 + w1.expire_time.nanos // 1000
            granted_us = w2.server_time.seconds * 1_000_000 + w2.server_time.nanos // 1000
            delays.append((granted_us - expired_us) / 1000)
            assert w2.fencing_token == w1.fencing_token + 1
        print(f"\nW2 granted {', '.join(f'{d:.1f}' for d in delays)} ms after W1 expired")
        assert max(delays) < 5000, "W2 waited for its 10 s safety recheck"


async def test_waited_is_exactly_zero_on_a_free_lock(channel):
    locks = lock_pb2_grpc.LockServiceStub(channel)
    for n in range(10):
        grant = await locks.Acquire(pb.AcquireRequest(name=f"free-{n}", ttl=ms(1000)))
        assert (grant.waited.seconds, grant.waited.nanos) == (0, 0)
        grant = await locks.Acquire(
            pb.AcquireRequest(name=f"free-w-{n}", ttl=ms(1000), wait=ms(500))
        )
        assert (grant.waited.seconds, grant.waited.nanos) == (0, 0)
    # A grant after a wait still reports how long it waited.
    held = await locks.Acquire(pb.AcquireRequest(name="busy", ttl=ms(150)))
    after = await locks.Acquire(pb.AcquireRequest(name="busy", ttl=ms(1000), wait=ms(3000)))
    assert after.fencing_token == held.fencing_token + 1
    assert after.waited.ToMilliseconds() >= 50


async def test_fencing_tokens_keep_growing_across_a_namespace_flush(channel, namespace):
    locks = lock_pb2_grpc.LockServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    permit = None
    for _ in range(5):
        if permit is not None:
            await locks.ReleaseSemaphore(
                pb.ReleaseSemaphoreRequest(name="pool", owner_token=permit.owner_token)
            )
        grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
        await locks.Release(pb.ReleaseRequest(name="job", owner_token=grant.owner_token))
        permit = await locks.AcquireSemaphore(
            pb.AcquireSemaphoreRequest(name="pool", limit=2, ttl=ms(5000))
        )
    # The last permit stays held: the flush frees it too.
    assert grant.fencing_token == 5 and permit.fencing_token == 5
    flushed = await admin.FlushNamespace(admin_pb2.FlushNamespaceRequest(confirm=namespace))
    assert flushed.deleted_keys > 0
    state = await locks.InspectSemaphore(pb.InspectSemaphoreRequest(name="pool"))
    assert not state.holders, "the flush freed the semaphore's permits"
    grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    permit = await locks.AcquireSemaphore(
        pb.AcquireSemaphoreRequest(name="pool", limit=2, ttl=ms(5000))
    )
    assert grant.fencing_token == 6 and permit.fencing_token == 6


async def test_startup_warns_when_redis_may_evict_fencing_counters(caplog):
    with standalone() as redis_proc:
        redis_proc.client().config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING):
            async with running(make_settings(redis_proc.url)):
                pass
        warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert warned and "allkeys-lru" in warned[0]
        caplog.clear()
        redis_proc.client().config_set("maxmemory-policy", "noeviction")
        with caplog.at_level(logging.WARNING):
            async with running(make_settings(redis_proc.url)):
                pass
        assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
