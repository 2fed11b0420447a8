"""Hold streams, and holders that pause or die: what the server and the fencing do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields
from .proto_time import ms

ROOT = Path(__file__).resolve().parent.parent


def acquire(name: str = "job", ttl: int = 900, renew: int = 0, **extra) -> pb.HoldRequest:
    spec = pb.HoldAcquire(name=name, ttl=ms(ttl), **extra)
    if renew:
        spec.renew_interval.CopyFrom(ms(renew))
    return pb.HoldRequest(acquire=spec)


@pytest.fixture
def metadata(namespace) -> tuple[tuple[str, str], ...]:
    # The shared `channel` fixture adds the namespace to unary calls only.
    return (("cachet-namespace", namespace),)


async def inspect(locks, name: str = "job") -> pb.InspectResponse:
    return await locks.Inspect(pb.InspectRequest(name=name))


async def seconds_until_free(locks, limit: float, name: str = "job") -> float:
    started = time.monotonic()
    while (await inspect(locks, name)).held:
        assert time.monotonic() - started < limit, f"lock still held after {limit} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_hold_survives_five_ttls_and_frees_on_cancel(locks, metadata):
    # The margin (ttl - renew) absorbs event-loop stalls of a loaded 2-core machine.
    ttl_ms, renew_ms = 1500, 500
    call = locks.Hold(metadata=metadata)
    await call.write(acquire(ttl=ttl_ms, renew=renew_ms, holder="holder-proc"))
    acquired = (await call.read()).acquired
    assert acquired.fencing_token == 1 and acquired.ttl.ToMilliseconds() == ttl_ms
    renewals = 0
    ends = time.monotonic() + 5 * ttl_ms / 1000
    while time.monotonic() < ends:
        event = await call.read()
        assert event.WhichOneof("event") == "renewed"
        renewals = event.renewed.renewals
        state = await inspect(locks)
        assert state.held and state.fencing_token == acquired.fencing_token
        assert state.holder == "holder-proc"
    assert renewals >= 5 * ttl_ms // renew_ms - 2
    call.cancel()
    freed_after = await seconds_until_free(locks, limit=renew_ms / 1000)
    print(f"\nHold: {renewals} renewals over 5 TTLs; free {freed_after * 1000:.1f} ms after cancel")
    assert (await inspect(locks)).fencing_token == acquired.fencing_token


async def test_release_message_and_half_close_release_with_ok(locks, metadata):
    for end_with_release_message in (True, False):
        call = locks.Hold(metadata=metadata)
        await call.write(acquire())
        assert (await call.read()).WhichOneof("event") == "acquired"
        if end_with_release_message:
            await call.write(pb.HoldRequest(release=pb.HoldRelease()))
        else:
            await call.done_writing()
        event = await call.read()
        assert event.WhichOneof("event") == "released" and event.server_time.seconds > 0
        assert await call.code() == grpc.StatusCode.OK
        assert not (await inspect(locks)).held


async def test_first_message_must_be_acquire(locks, metadata):
    call = locks.Hold(metadata=metadata)
    await call.write(pb.HoldRequest(release=pb.HoldRelease()))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = locks.Hold(metadata=metadata)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_second_acquire_ends_the_stream_and_releases(locks, metadata):
    call = locks.Hold(metadata=metadata)
    await call.write(acquire())
    await call.read()
    await call.write(acquire())
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await inspect(locks)).held


async def test_hold_waits_and_gives_up_with_lock_held(locks, metadata):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    call = locks.Hold(metadata=metadata)
    await call.write(acquire(wait=ms(200)))
    assert await call.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await call.details()
    waiter = locks.Hold(metadata=metadata)
    await waiter.write(acquire(wait=ms(5000)))
    await asyncio.sleep(0.05)
    await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    event = await waiter.read()
    assert event.acquired.fencing_token == held.fencing_token + 1
    waiter.cancel()


async def test_lost_lock_is_reported_then_aborted(locks, metadata, namespace, cachet):
    from cachet_server.backend.keys import Kind, redis_key

    call = locks.Hold(metadata=metadata)
    await call.write(acquire(ttl=600, renew=100))
    await call.read()
    # An operator deletes the lock: the next renewal finds it not owned.
    await cachet.backend.redis.delete(redis_key(namespace, Kind.LOCK, "job"))
    while (event := await call.read()).WhichOneof("event") == "renewed":
        pass
    assert event.WhichOneof("event") == "lost"
    assert event.lost.reason == pb.LOST_REASON_NOT_OWNED
    assert event.server_time.seconds > 0
    assert await call.code() == grpc.StatusCode.ABORTED


async def test_deadline_ends_the_hold_and_releases(locks, metadata):
    call = locks.Hold(metadata=metadata, timeout=0.6)
    await call.write(acquire(ttl=3000, renew=1000))
    await call.read()
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await seconds_until_free(locks, limit=1.0)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (acquire(name=""), "acquire.name"),
        (acquire(ttl=99), "acquire.ttl"),
        (pb.HoldRequest(acquire=pb.HoldAcquire(name="job")), "acquire.ttl"),
        (acquire(ttl=3_600_001), "acquire.ttl"),
        (acquire(ttl=1000, renew=501), "acquire.renew_interval"),
        (acquire(ttl=1000, renew=9), "acquire.renew_interval"),
        (acquire(wait=Duration(seconds=301)), "acquire.wait"),
        (acquire(holder="h" * 257), "acquire.holder"),
    ],
)
async def test_bad_hold_requests(locks, metadata, request_, field):
    call = locks.Hold(metadata=metadata)
    await call.write(request_)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(info.value) == [field]


# -- holders in processes of their own


@contextlib.asynccontextmanager
async def holder_process(port: int, namespace: str, mode: str, ttl_ms: int, renew_ms: int):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.lock_holder_proc",
        str(port),
        namespace,
        "job",
        mode,
        str(ttl_ms),
        str(renew_ms),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
        await process.wait()


async def next_event(process) -> dict:
    async with asyncio.timeout(15):
        line = await process.stdout.readline()
    assert line, "the holder process ended early"
    return json.loads(line)


async def test_killed_hold_client_is_released_within_one_renewal(locks, cachet, namespace):
    ttl_ms, renew_ms = 3000, 1000
    async with holder_process(cachet.port, namespace, "hold", ttl_ms, renew_ms) as process:
        acquired = await next_event(process)
        assert acquired["event"] == "acquired"
        assert (await inspect(locks)).held
        process.kill()
        await process.wait()
        freed_after = await seconds_until_free(locks, limit=renew_ms / 1000)
    print(f"\nHold client SIGKILLed: lock free {freed_after * 1000:.1f} ms later (TTL {ttl_ms} ms)")
    assert (await inspect(locks)).fencing_token == acquired["fencing_token"]


async def test_paused_holder_loses_the_lock_and_its_stale_write_is_refused(
    locks, cache, cachet, namespace
):
    ttl_ms, renew_ms = 600, 150
    async with holder_process(cachet.port, namespace, "acquire", ttl_ms, renew_ms) as process:
        paused = await next_event(process)
        assert paused["event"] == "acquired"
        os.kill(process.pid, signal.SIGSTOP)
        # The holder stops renewing; a waiter gets the lock once the TTL runs out.
        started = time.monotonic()
        grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000), wait=ms(5000)))
        waited = time.monotonic() - started
        assert grant.fencing_token > paused["fencing_token"]
        await cache.Set(
            cache_pb2.SetRequest(key="report", value=b"current", fencing_token=grant.fencing_token)
        )
        os.kill(process.pid, signal.SIGCONT)
        process.stdin.write(b"write report\n")
        await process.stdin.drain()
        outcomes = {}
        while len(outcomes) < 2:
            event = await next_event(process)
            outcomes[event["event"]] = event
        process.stdin.close()
    assert outcomes["write"]["code"] == "ABORTED"
    assert outcomes["write"]["reason"] == "FENCING_TOKEN_STALE"
    assert outcomes["renew"]["reason"] == "LOCK_NOT_OWNED"
    assert (await cache.Get(cache_pb2.GetRequest(key="report"))).value == b"current"
    print(f"\nholder paused: next holder waited {waited * 1000:.0f} ms (TTL {ttl_ms} ms)")


async def test_paused_hold_client_keeps_its_lock(locks, cachet, namespace):
    """The documented hazard: the server renews for a Hold client that is paused but
    whose connection is up, so only fencing protects the resource from it."""
    ttl_ms = 2000
    async with holder_process(cachet.port, namespace, "hold", ttl_ms, 250) as process:
        acquired = await next_event(process)
        os.kill(process.pid, signal.SIGSTOP)
        await asyncio.sleep(ttl_ms / 1000 + 0.5)
        state = await inspect(locks)
        assert state.held and state.fencing_token == acquired["fencing_token"]
        os.kill(process.pid, signal.SIGCONT)
