"""LockService against real Redis: grants, owner checks, fencing, waiting, replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from cachet_server.backend.keys import Kind, redis_key
from cachet_server.backend.locks import new_secret
from cachet_server.backend.topology import TopologyKind
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from .conftest import bad_fields, error_reason, rpc_error
from .proto_time import ms, us

WAKE_TRIALS = 20
# Written on every run outside the tracked tree; bench/lock_wake_latency.md is a kept copy.
WAKE_REPORT = Path(__file__).resolve().parent.parent / "build" / "reports" / "lock_wake_latency.md"
_wake_sections: dict[str, str] = {}


async def test_acquire_release_and_fencing_tokens_increase(locks):
    first = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), holder="worker-1"))
    assert first.fencing_token == 1
    assert len(first.owner_token) >= 22, "at least 128 bits of randomness"
    assert first.ttl.ToMilliseconds() == 5000
    assert us(first.expire_time) - us(first.server_time) in range(4_000_000, 5_000_001)
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.held and state.holder == "worker-1" and state.fencing_token == 1
    assert 4000 < state.remaining_ttl.ToMilliseconds() <= 5000
    released = await locks.Release(pb.ReleaseRequest(name="job", owner_token=first.owner_token))
    assert us(released.server_time) >= us(first.server_time)
    second = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    assert second.fencing_token == 2 and second.owner_token != first.owner_token
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.held and state.holder == "" and state.fencing_token == 2


async def test_held_lock_refuses_a_second_owner(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    error = await rpc_error(locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "LOCK_HELD"
    assert 4000 < int(error_metadata(error)["remaining_ttl_ms"]) <= 5000
    error = await rpc_error(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(200)))
    )
    assert error_reason(error) == "LOCK_HELD"
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.fencing_token == held.fencing_token and state.waiters == 0


async def test_fencing_token_survives_expiry_and_deletion(locks, namespace, redis):
    first = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(50)))
    await asyncio.sleep(0.1)
    assert not (await locks.Inspect(pb.InspectRequest(name="job"))).held
    # Even if the lock's own keys vanish (operator DEL), the counter goes on.
    holders = redis_key(namespace, Kind.LOCK, "job")
    owners = redis_key(namespace, Kind.LOCK_OWNERS, "job")
    await redis.delete(holders, owners)
    second = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    assert second.fencing_token > first.fencing_token
    assert await redis.pttl(redis_key(namespace, Kind.LOCK_FENCE, "job")) == -1


async def test_release_and_extend_only_by_the_owner(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    for call in (
        locks.Release(pb.ReleaseRequest(name="job", owner_token="not-the-owner")),
        locks.Extend(pb.ExtendRequest(name="job", owner_token="not-the-owner", ttl=ms(9000))),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "LOCK_NOT_OWNED"
        assert int(error_metadata(error)["server_time_us"]) >= us(held.server_time)
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.held and state.remaining_ttl.ToMilliseconds() <= 5000
    assert state.fencing_token == held.fencing_token
    extended = await locks.Extend(
        pb.ExtendRequest(name="job", owner_token=held.owner_token, ttl=ms(9000))
    )
    assert extended.fencing_token == held.fencing_token
    assert extended.ttl.ToMilliseconds() == 9000
    assert us(extended.expire_time) - us(extended.server_time) in range(8_000_000, 9_000_001)
    await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    error = await rpc_error(
        locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    )
    assert error_reason(error) == "LOCK_NOT_OWNED", "a second release is refused"


async def test_expired_lock_cannot_be_extended_or_released(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(30)))
    await asyncio.sleep(0.08)
    taken = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    for call in (
        locks.Extend(pb.ExtendRequest(name="job", owner_token=held.owner_token, ttl=ms(5000))),
        locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token)),
    ):
        assert error_reason(await rpc_error(call)) == "LOCK_NOT_OWNED"
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.held and state.fencing_token == taken.fencing_token


async def test_inspect_of_unknown_lock(locks):
    state = await locks.Inspect(pb.InspectRequest(name="never"))
    assert not state.held and state.fencing_token == 0 and state.waiters == 0
    assert not state.HasField("remaining_ttl") and state.server_time.seconds > 0


async def test_locks_are_per_namespace_and_hash_tags_work(locks, cachet):
    from .conftest import channel_to

    await locks.Acquire(pb.AcquireRequest(name="{user:1}:job", ttl=ms(5000)))
    async with channel_to(cachet.port, "other-namespace-for-locks") as other:
        stub = lock_pb2_grpc.LockServiceStub(other)
        grant = await stub.Acquire(pb.AcquireRequest(name="{user:1}:job", ttl=ms(5000)))
        await stub.Release(pb.ReleaseRequest(name="{user:1}:job", owner_token=grant.owner_token))


async def test_waiter_is_woken_by_release(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    waiter = asyncio.ensure_future(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(5000)))
    )
    await wait_for_waiters(locks, "job", 1)
    released = await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    grant = await waiter
    assert grant.fencing_token == held.fencing_token + 1
    assert us(grant.server_time) >= us(released.server_time)
    assert grant.waited.ToMilliseconds() > 0
    assert (await locks.Inspect(pb.InspectRequest(name="job"))).waiters == 0


async def test_waiter_gets_the_lock_when_it_expires(locks):
    await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(300)))
    started = time.monotonic()
    grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(5000)))
    assert grant.fencing_token == 2
    assert time.monotonic() - started < 1.5, "woken at expiry, not at the next safety look"


async def test_waiters_are_served_in_arrival_order(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    order: list[int] = []

    async def wait_in_line(position: int) -> None:
        grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(8000)))
        order.append(position)
        await locks.Release(pb.ReleaseRequest(name="job", owner_token=grant.owner_token))

    tasks = []
    for position in range(5):
        tasks.append(asyncio.ensure_future(wait_in_line(position)))
        await wait_for_waiters(locks, "job", position + 1)
    await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_try_once_does_not_jump_the_queue(locks):
    held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    waiter = asyncio.ensure_future(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(5000)))
    )
    await wait_for_waiters(locks, "job", 1)
    await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
    # Whatever the interleaving, the queued waiter gets the lock, not a newcomer.
    newcomer = await asyncio.gather(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000))), return_exceptions=True
    )
    grant = await waiter
    assert grant.fencing_token == held.fencing_token + 1
    assert isinstance(newcomer[0], grpc.aio.AioRpcError)


async def test_deadline_while_waiting_leaves_no_queue_entry(locks, namespace, redis):
    await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    error = await rpc_error(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(60_000)), timeout=0.5)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    queue = redis_key(namespace, Kind.LOCK_QUEUE, "job")
    waiters = redis_key(namespace, Kind.LOCK_WAITERS, "job")
    # The server's own wait ends just before the deadline; allow it a moment to finish.
    for _ in range(50):
        if await redis.exists(queue) == 0 and await redis.exists(waiters) == 0:
            break
        await asyncio.sleep(0.02)
    assert await redis.exists(queue) == 0 and await redis.exists(waiters) == 0
    assert (await locks.Inspect(pb.InspectRequest(name="job"))).waiters == 0


async def test_wait_shorter_than_deadline_answers_lock_held(locks, namespace, redis):
    await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
    error = await rpc_error(
        locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(300)), timeout=5)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "LOCK_HELD"
    assert await redis.exists(redis_key(namespace, Kind.LOCK_QUEUE, "job")) == 0


async def test_stale_fencing_token_is_rejected_by_the_cache(locks, cache):
    old = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(50)))
    await asyncio.sleep(0.1)
    new = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000)))
    await cache.Set(
        cache_pb2.SetRequest(key="report", value=b"new", fencing_token=new.fencing_token)
    )
    error = await rpc_error(
        cache.Set(cache_pb2.SetRequest(key="report", value=b"old", fencing_token=old.fencing_token))
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error) == "FENCING_TOKEN_STALE"
    assert (await cache.Get(cache_pb2.GetRequest(key="report"))).value == b"new"


async def test_replica_acknowledgement(locks, cachet):
    # The test deployments: standalone has no replica; Sentinel's and Cluster's have one.
    replicas = 0 if cachet.backend.kind is TopologyKind.STANDALONE else 1
    wanted = pb.ReplicationRequirement(min_replicas=1, timeout=ms(2000))
    started = time.monotonic()
    if replicas == 0:
        error = await rpc_error(
            locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), replication=wanted))
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "REPLICATION_INCOMPLETE"
        assert not (await locks.Inspect(pb.InspectRequest(name="job"))).held
        return
    grant = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), replication=wanted))
    assert grant.replicas_acked >= 1
    print(f"\nAcquire with WAIT 1 replica: {(time.monotonic() - started) * 1000:.2f} ms")
    extended = await locks.Extend(
        pb.ExtendRequest(
            name="job", owner_token=grant.owner_token, ttl=ms(5000), replication=wanted
        )
    )
    assert extended.replicas_acked >= 1
    too_many = pb.ReplicationRequirement(min_replicas=5, timeout=ms(100))
    error = await rpc_error(
        locks.Extend(
            pb.ExtendRequest(
                name="job", owner_token=grant.owner_token, ttl=ms(7000), replication=too_many
            )
        )
    )
    assert error_reason(error) == "REPLICATION_INCOMPLETE"
    state = await locks.Inspect(pb.InspectRequest(name="job"))
    assert state.remaining_ttl.ToMilliseconds() > 5000, "the extension stays in effect"
    released = await locks.Release(
        pb.ReleaseRequest(name="job", owner_token=grant.owner_token, replication=wanted)
    )
    assert released.replicas_acked >= 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.AcquireRequest(name="", ttl=ms(1000)), "name"),
        (pb.AcquireRequest(name="x" * 1025, ttl=ms(1000)), "name"),
        (pb.AcquireRequest(name="job"), "ttl"),
        (pb.AcquireRequest(name="job", ttl=ms(0)), "ttl"),
        (pb.AcquireRequest(name="job", ttl=Duration(seconds=-1)), "ttl"),
        (pb.AcquireRequest(name="job", ttl=Duration(seconds=3601)), "ttl"),
        (pb.AcquireRequest(name="job", ttl=ms(1000), wait=Duration(seconds=301)), "wait"),
        (pb.AcquireRequest(name="job", ttl=ms(1000), wait=Duration(seconds=-1)), "wait"),
        (pb.AcquireRequest(name="job", ttl=ms(1000), holder="h" * 257), "holder"),
        (
            pb.AcquireRequest(
                name="job", ttl=ms(1000), replication=pb.ReplicationRequirement(min_replicas=65)
            ),
            "replication.min_replicas",
        ),
        (
            pb.AcquireRequest(
                name="job",
                ttl=ms(1000),
                replication=pb.ReplicationRequirement(min_replicas=1, timeout=ms(10_001)),
            ),
            "replication.timeout",
        ),
    ],
)
async def test_bad_acquire_requests(locks, request_, field):
    error = await rpc_error(locks.Acquire(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


async def test_bad_release_extend_and_inspect_requests(locks):
    cases = [
        (locks.Release(pb.ReleaseRequest(name="", owner_token="t")), "name"),
        (locks.Release(pb.ReleaseRequest(name="job")), "owner_token"),
        (locks.Release(pb.ReleaseRequest(name="job", owner_token="t" * 257)), "owner_token"),
        (locks.Extend(pb.ExtendRequest(name="job", owner_token="t")), "ttl"),
        (locks.Extend(pb.ExtendRequest(name="job", owner_token="t", ttl=ms(0))), "ttl"),
        (
            locks.Extend(pb.ExtendRequest(name="job", owner_token="t", ttl=Duration(seconds=3601))),
            "ttl",
        ),
        (locks.Extend(pb.ExtendRequest(name="job", ttl=ms(10))), "owner_token"),
        (locks.Inspect(pb.InspectRequest(name="")), "name"),
    ]
    for call, field in cases:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert bad_fields(error) == [field]


async def test_wake_latency_is_measured_and_reported(locks, cachet):
    """A waiter woken by a release: Redis time from the release to the waiter's grant
    (both decisions report Redis TIME), and the time the waiting client saw."""
    redis_gaps: list[float] = []
    client_gaps: list[float] = []
    for _ in range(WAKE_TRIALS):
        held = await locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(10_000)))
        waiter = asyncio.ensure_future(
            locks.Acquire(pb.AcquireRequest(name="job", ttl=ms(5000), wait=ms(5000)))
        )
        await wait_for_waiters(locks, "job", 1)
        sent = time.monotonic()
        released = await locks.Release(pb.ReleaseRequest(name="job", owner_token=held.owner_token))
        grant = await waiter
        client_gaps.append((time.monotonic() - sent) * 1000)
        redis_gaps.append((us(grant.server_time) - us(released.server_time)) / 1000)
        await locks.Release(pb.ReleaseRequest(name="job", owner_token=grant.owner_token))
    section = wake_section(str(cachet.backend.kind), redis_gaps, client_gaps)
    print("\n" + section)
    _wake_sections[str(cachet.backend.kind)] = section
    with contextlib.suppress(OSError):  # a read-only checkout still gets the printed figures
        WAKE_REPORT.parent.mkdir(parents=True, exist_ok=True)
        WAKE_REPORT.write_text(wake_report())
    assert all(gap >= 0 for gap in redis_gaps)


def wake_section(topology: str, redis_gaps: list[float], client_gaps: list[float]) -> str:
    def line(label: str, gaps: list[float]) -> str:
        ordered = sorted(gaps)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return f"| {label} | {statistics.median(ordered):.2f} | {p95:.2f} | {ordered[-1]:.2f} |"

    return "\n".join(
        [
            f"## {topology} ({len(redis_gaps)} trials)",
            "",
            "| measured (ms) | median | p95 | max |",
            "|---|---|---|---|",
            line("Redis time: release decision -> waiter's grant decision", redis_gaps),
            line("client: Release sent -> waiter's Acquire answered", client_gaps),
            "",
        ]
    )


def wake_report() -> str:
    return "\n".join(
        [
            "# Lock wake-up latency",
            "",
            "Written by tests/test_lock.py::test_wake_latency_is_measured_and_reported. A waiter",
            "blocks in Acquire(wait=5s) until the holder releases; it is woken by the release's",
            "pub/sub notification. Client, server and Redis share this machine (loopback); the",
            "client and the server share one process and event loop. Not a timed assertion.",
            "",
            *(_wake_sections[name] for name in sorted(_wake_sections)),
        ]
    )


async def wait_for_waiters(locks, name: str, count: int) -> None:
    """Poll Inspect (for up to 5 s) until `count` callers wait on the lock."""
    for _ in range(1000):
        if (await locks.Inspect(pb.InspectRequest(name=name))).waiters >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} waiters never queued on {name}")


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.ErrorInfo metadata of a failed call."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return dict(info.metadata)
    raise AssertionError("error carries no ErrorInfo")


def test_owner_tokens_are_unique_and_never_repeated_by_a_forked_child():
    """Tokens come from a pool of OS randomness read 64 at a time (backend/locks.py
    `new_secret`): each is 192 bits of hex, handed out once, and a forked child reads
    its own instead of handing out the ones its parent still holds."""
    first = new_secret()
    assert len(first) == 48 and int(first, 16) >= 0
    tokens = {new_secret() for _ in range(1000)} | {first}
    assert len(tokens) == 1001
    new_secret()  # the pool now holds unused secrets of the parent's
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child process)
        os.close(read)
        os.write(write, " ".join(new_secret() for _ in range(64)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        from_child = set(pipe.read().split())
    os.waitpid(child, 0)
    from_parent = {new_secret() for _ in range(64)}
    assert len(from_child) == 64
    assert not from_child & from_parent, "the child repeated the parent's secrets"
