"""One tenant tries to take the server from the others (issue 10): each abuse answers
the right status while another tenant's Gets go on, every one of them succeeding. The
victim's latency during the abuse is recorded (never asserted) for the hostile-tenant
table of docs/reliability.md.

Bounded for 2 shared cores: a few hundred calls per abuse, waits of a second or two, one
in-process server with small quotas and pools so the limits are reached quickly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import psutil
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as eb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as lk
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as rl
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc
from cachet_server.app import Application, running
from cachet_server.stats import OTHER_NAMESPACES
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import _status_details, bad_fields, channel_to, error_reason, make_settings
from .hostile import Victim, record_hostile
from .redis_procs import RedisProcess, free_port
from .redis_waits import blocked_clients, until_blocked
from .server_procs import CachetProcess

QUOTAS = {
    "max_calls": 300,
    "max_blocking_calls": 6,
    "max_subscribe_streams": 3,
    "max_hold_streams": 3,
    "retry_after": "PT0.5S",
}
COMMAND_POOL = 16
BLOCKING_POOL = 6
MESSAGE_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
async def hostile(redis_standalone: RedisProcess) -> AsyncIterator[Application]:
    settings = make_settings(
        redis_standalone.url,
        quotas=QUOTAS,
        redis_max_connections=COMMAND_POOL,
        redis_blocking_max_connections=BLOCKING_POOL,
        limits={"max_message_bytes": MESSAGE_LIMIT},
        stats_max_namespaces=40,
    )
    async with running(settings) as app:
        yield app


@pytest.fixture
async def channels(hostile: Application) -> AsyncIterator[dict[str, aio.Channel]]:
    """A channel per namespace, opened on first use."""

    class Channels(dict[str, aio.Channel]):
        def __missing__(self, namespace: str) -> aio.Channel:
            channel = self[namespace] = channel_to(hostile.port, namespace)
            return channel

    opened = Channels()
    yield opened
    for channel in opened.values():
        await channel.close()


def retry_delay(error: aio.AioRpcError) -> float:
    for detail in _status_details(error):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


def wait(seconds: float) -> Duration:
    return Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))


async def outcome(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except aio.AioRpcError as error:
        try:
            return f"{error.code().name}/{error_reason(error)}"
        except AssertionError:  # no details: a status of grpc's own (a client deadline)
            return f"{error.code().name}/-"
    return "OK"


# ---- quotas ------------------------------------------------------------------------


async def test_blocking_calls_over_quota_are_refused_and_others_go_on(hostile, channels):
    cache = cache_pb2_grpc.CacheServiceStub(channels["greedy"])
    extra = 10
    already_blocked = len(await blocked_clients(hostile))
    async with Victim(hostile.port) as victim:
        # The admitted pops wait until the test pushes to their lists, not for a time:
        # they hold the quota however late the last call arrives.
        calls = [
            asyncio.ensure_future(
                outcome(
                    cache.ListPop(
                        pb.ListPopRequest(key=f"q{i}", end=pb.LIST_END_LEFT, wait=wait(30)),
                        timeout=60,
                    )
                )
            )
            for i in range(QUOTAS["max_blocking_calls"] + extra)
        ]
        # An unblocking call of the same tenant still passes: only its waits are capped.
        got = await cache.Get(pb.GetRequest(key="x"), timeout=5)
        await until_blocked(hostile, already_blocked + QUOTAS["max_blocking_calls"])
        deadline = asyncio.get_running_loop().time() + 20
        while sum(call.done() for call in calls) < extra:
            assert asyncio.get_running_loop().time() < deadline, "the calls over quota hang"
            await asyncio.sleep(0.02)
        for i, call in enumerate(calls):
            if not call.done():
                await cache.ListPush(
                    pb.ListPushRequest(key=f"q{i}", values=[b"v"], end=pb.LIST_END_RIGHT)
                )
        answers = Counter(await asyncio.gather(*calls))
    assert not got.found
    assert answers == {
        "OK": QUOTAS["max_blocking_calls"],
        "RESOURCE_EXHAUSTED/QUOTA_EXCEEDED": extra,
    }, answers
    assert await _refused_pop(cache, hostile) == 0.5
    victim.assert_unharmed()
    stats = hostile.servicers[0].deps.stats
    assert stats.namespaces["greedy"].quota_refusals["blocking_calls"] >= extra
    record_hostile(
        f"{QUOTAS['max_blocking_calls'] + extra} ListPop waits in one namespace "
        f"(quota {QUOTAS['max_blocking_calls']})",
        ", ".join(f"{k} {v}" for k, v in sorted(answers.items())),
        victim,
    )


async def _refused_pop(cache: cache_pb2_grpc.CacheServiceStub, hostile: Application) -> float:
    """Fill the blocking quota, then answer the RetryInfo delay of one call over it."""
    already_blocked = len(await blocked_clients(hostile))
    holders = [
        asyncio.ensure_future(
            cache.ListPop(
                pb.ListPopRequest(key="r", end=pb.LIST_END_LEFT, wait=wait(1.0)), timeout=5
            )
        )
        for _ in range(QUOTAS["max_blocking_calls"])
    ]
    # Each blocked in Redis holds its quota: the next call is over it.
    await until_blocked(hostile, already_blocked + QUOTAS["max_blocking_calls"])
    try:
        await cache.ListPop(pb.ListPopRequest(key="r", end=pb.LIST_END_LEFT, wait=wait(1.0)))
        raise AssertionError("the call over quota was admitted")
    except aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return retry_delay(error)
    finally:
        await asyncio.gather(*holders)


async def test_a_thousand_waiters_never_starve_the_command_pool(hostile, channels):
    """Waiters of many namespaces (each within its quota) far outnumber both pools;
    they queue for the blocking pool, while Gets keep finding command connections."""
    namespaces = [f"crowd-{n}" for n in range(12)]
    per_namespace = QUOTAS["max_blocking_calls"]
    async with Victim(hostile.port) as victim:
        calls = [
            asyncio.ensure_future(
                outcome(
                    cache_pb2_grpc.CacheServiceStub(channels[ns]).ListPop(
                        pb.ListPopRequest(key="q", end=pb.LIST_END_LEFT, wait=wait(1.0)),
                        timeout=4,
                    )
                )
            )
            for ns in namespaces
            for _ in range(per_namespace)
        ]
        await asyncio.sleep(0.5)
        serving_during = hostile.monitor.serving
        health = await health_pb2_grpc.HealthStub(channels["any"]).Check(
            health_pb2.HealthCheckRequest(), timeout=3
        )
        answers = Counter(await asyncio.gather(*calls))
    victim.assert_unharmed()
    assert serving_during is True
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # Waiters only ever wait: an empty answer, or their deadline while queued.
    assert set(answers) <= {"OK", "DEADLINE_EXCEEDED/DEADLINE_EXCEEDED"}, answers
    record_hostile(
        f"{len(calls)} ListPop waits over {len(namespaces)} namespaces, "
        f"{BLOCKING_POOL}-connection blocking pool, {COMMAND_POOL}-connection command pool",
        ", ".join(f"{k} {v}" for k, v in sorted(answers.items())) + "; health SERVING",
        victim,
    )


async def test_a_burst_of_gets_waits_for_connections_instead_of_failing(hostile, channels):
    cache = cache_pb2_grpc.CacheServiceStub(channels["bursty"])
    await cache.Set(pb.SetRequest(key="k", value=b"v"))
    async with Victim(hostile.port) as victim:
        answers = Counter(
            await asyncio.gather(
                *(outcome(cache.Get(pb.GetRequest(key="k"), timeout=10)) for _ in range(250))
            )
        )
    assert answers == {"OK": 250}, answers
    victim.assert_unharmed()
    record_hostile(
        f"250 concurrent Gets on a {COMMAND_POOL}-connection pool",
        ", ".join(f"{k} {v}" for k, v in sorted(answers.items())),
        victim,
    )


async def test_subscribe_streams_over_quota_are_refused(hostile, channels):
    bus = eventbus_pb2_grpc.EventBusServiceStub(channels["listener"])
    other = eventbus_pb2_grpc.EventBusServiceStub(channels["other-listener"])
    streams = [bus.Subscribe(eb.SubscribeRequest(topics=[f"t{i}"])) for i in range(3)]
    try:
        for stream in streams:
            first = await stream.read()
            assert first.HasField("active")
        async with Victim(hostile.port) as victim:
            over = bus.Subscribe(eb.SubscribeRequest(topics=["more"]))
            with pytest.raises(aio.AioRpcError) as refused:
                await over.read()
            # Another tenant still subscribes.
            theirs = other.Subscribe(eb.SubscribeRequest(topics=["t"]))
            assert (await theirs.read()).HasField("active")
            theirs.cancel()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(refused.value) == "QUOTA_EXCEEDED"
        assert "subscribe streams" in refused.value.details()
    finally:
        for stream in streams:
            stream.cancel()
    victim.assert_unharmed()
    record_hostile(
        "4th Subscribe stream of one namespace (quota 3)",
        "RESOURCE_EXHAUSTED/QUOTA_EXCEEDED; another tenant subscribes",
        victim,
    )


def hold_request(name: str, ttl_ms: int, renew_ms: int = 0) -> lk.HoldRequest:
    acquire = lk.HoldAcquire(name=name, ttl=Duration(seconds=0, nanos=0))
    acquire.ttl.FromMilliseconds(ttl_ms)
    if renew_ms:
        acquire.renew_interval.FromMilliseconds(renew_ms)
    return lk.HoldRequest(acquire=acquire)


async def test_hold_streams_over_quota_are_refused(hostile, channels):
    locks = lock_pb2_grpc.LockServiceStub(channels["holder"])
    holds = []
    try:
        for i in range(QUOTAS["max_hold_streams"]):
            call = locks.Hold()
            await call.write(hold_request(f"l{i}", 2000))
            assert (await call.read()).HasField("acquired")
            holds.append(call)
        async with Victim(hostile.port) as victim:
            over = locks.Hold()
            with pytest.raises(aio.AioRpcError) as refused:
                await over.write(hold_request("more", 2000))
                await over.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(refused.value) == "QUOTA_EXCEEDED"
    finally:
        for call in holds:
            call.cancel()
    victim.assert_unharmed()
    record_hostile(
        "4th Hold stream of one namespace (quota 3)", "RESOURCE_EXHAUSTED/QUOTA_EXCEEDED", victim
    )


async def test_hold_renewals_have_a_floor_relative_to_the_ttl(hostile, channels):
    """Asked to renew every 10 ms, a 1 s Hold renews every 100 ms (ttl / 10) at most."""
    locks = lock_pb2_grpc.LockServiceStub(channels["renewer"])
    async with Victim(hostile.port) as victim:
        calls = []
        for i in range(QUOTAS["max_hold_streams"]):
            call = locks.Hold()
            await call.write(hold_request(f"fast{i}", 1000, renew_ms=10))
            assert (await call.read()).HasField("acquired")
            calls.append(call)
        loop = asyncio.get_running_loop()
        started = loop.time()
        renewals = 0

        async def count(call: aio.StreamStreamCall) -> None:
            nonlocal renewals
            while loop.time() - started < 1.0:
                if (await call.read()).HasField("renewed"):
                    renewals += 1

        await asyncio.gather(*(count(call) for call in calls))
        elapsed = loop.time() - started
        for call in calls:
            call.cancel()
    per_hold = renewals / len(calls) / elapsed
    assert per_hold <= 12, f"{per_hold:.0f} renewals/s per Hold, floor is 10/s"
    victim.assert_unharmed()
    record_hostile(
        "3 Holds of a 1 s TTL asking to renew every 10 ms",
        f"renewed {per_hold:.1f}/s each (floor ttl/10: at most 10/s; asked 100/s)",
        victim,
    )


# ---- per-credential quotas ------------------------------------------------------


@pytest.fixture(scope="module")
async def with_keys(redis_standalone: RedisProcess) -> AsyncIterator[Application]:
    def key(name: str, quotas: dict[str, int] | None = None) -> dict[str, object]:
        entry: dict[str, object] = {
            "id": name,
            "sha256": hashlib.sha256(f"secret-{name}".encode()).hexdigest(),
            "namespaces": [name],
            "roles": ["read", "write"],
        }
        if quotas:
            entry["quotas"] = quotas
        return entry

    settings = make_settings(
        redis_standalone.url,
        auth={"mode": "required", "api_keys": [key("tight", {"max_calls": 3}), key("victim")]},
        quotas=QUOTAS,
    )
    async with running(settings) as app:
        yield app


async def test_a_credential_quota_overrides_the_default(with_keys):
    metadata = [("authorization", "Bearer secret-tight")]
    async with channel_to(with_keys.port) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        async with Victim(with_keys.port, credential="secret-victim") as victim:
            waits = [
                asyncio.ensure_future(
                    cache.ListPop(
                        pb.ListPopRequest(key="q", end=pb.LIST_END_LEFT, wait=wait(1.0)),
                        metadata=metadata,
                        timeout=5,
                    )
                )
                for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            refused = await outcome(cache.Get(pb.GetRequest(key="k"), metadata=metadata))
            await asyncio.gather(*waits)
        after = await outcome(cache.Get(pb.GetRequest(key="k"), metadata=metadata))
    assert refused == "RESOURCE_EXHAUSTED/QUOTA_EXCEEDED"
    assert after == "OK"
    victim.assert_unharmed()
    record_hostile(
        "4th concurrent call of an API key whose own quota is 3 calls",
        refused,
        victim,
    )


# ---- answer sizes ------------------------------------------------------------------


async def test_large_answers_are_refused_before_they_are_read(hostile, channels, redis_standalone):
    cache = cache_pb2_grpc.CacheServiceStub(channels["hoarder"])
    bus = eventbus_pb2_grpc.EventBusServiceStub(channels["hoarder"])
    chunk = b"x" * (256 * 1024)
    # 16 MiB in each collection: eight times the message limit.
    await cache.Set(pb.SetRequest(key="big", value=chunk * 4))
    for n in range(16):
        await cache.ListPush(
            pb.ListPushRequest(key="list", values=[chunk] * 4, end=pb.LIST_END_RIGHT)
        )
        await cache.HashSet(
            pb.HashSetRequest(
                key="hash",
                fields=[pb.HashField(field=f"f{n}-{i}", value=chunk) for i in range(4)],
            )
        )
        await cache.SetAdd(
            pb.SetAddRequest(key="set", members=[chunk + f"{n}-{i}".encode() for i in range(4)])
        )
        await cache.SortedSetAdd(
            pb.SortedSetAddRequest(
                key="zset",
                members=[
                    pb.ScoredMember(member=chunk + f"{n}-{i}".encode(), score=i) for i in range(4)
                ],
            )
        )
    for _ in range(64):
        await bus.Append(eb.AppendRequest(stream="s", event=eb.Event(payload=chunk)))
    redis = redis_standalone.client()
    peak_before = int(redis.info("memory")["used_memory_peak"])
    reads = {
        "GetMany": cache.GetMany(pb.GetManyRequest(keys=["big"] * 20)),
        "HashGetAll": cache.HashGetAll(pb.HashGetAllRequest(key="hash")),
        "HashValues": cache.HashValues(pb.HashValuesRequest(key="hash")),
        "ListRange": cache.ListRange(pb.ListRangeRequest(key="list")),
        "SetMembers": cache.SetMembers(pb.SetMembersRequest(key="set")),
        "SortedSetRange": cache.SortedSetRange(
            pb.SortedSetRangeRequest(key="zset", by_rank=pb.IndexRange(start=0, end=-1))
        ),
        "Range": bus.Range(eb.RangeRequest(stream="s", page_size=64)),
        "Read": bus.Read(eb.ReadRequest(stream="s", after_id="0", count=64)),
    }
    async with Victim(hostile.port) as victim:
        answers = {name: await outcome(call) for name, call in reads.items()}
        # A small part of the same collections still reads.
        tail = await cache.ListRange(
            pb.ListRangeRequest(key="list", range=pb.IndexRange(start=-2, end=-1))
        )
        page = await bus.Range(eb.RangeRequest(stream="s", page_size=2))
    peak_after = int(redis.info("memory")["used_memory_peak"])
    redis.close()
    assert answers == dict.fromkeys(reads, "RESOURCE_EXHAUSTED/RESPONSE_TOO_LARGE"), answers
    assert len(tail.values) == 2 and len(page.events) == 2
    grown = (peak_after - peak_before) / 2**20
    # Reading any of them whole would have built a 16 MiB answer inside Redis.
    assert grown < 8, f"Redis peak memory grew {grown:.1f} MiB"
    victim.assert_unharmed()
    record_hostile(
        "GetMany, HashGetAll, HashValues, ListRange, SetMembers, SortedSetRange, Range, Read "
        "of 16 MiB each (limit 2 MiB)",
        f"all RESOURCE_EXHAUSTED/RESPONSE_TOO_LARGE; Redis peak memory +{grown:.1f} MiB",
        victim,
    )


async def test_a_consume_batch_over_the_message_limit_is_cut_and_all_delivered(hostile, channels):
    bus = eventbus_pb2_grpc.EventBusServiceStub(channels["consumer"])
    event = eb.Event(payload=b"y" * (200 * 1024))
    for _ in range(30):  # 6 MiB: three times the message limit
        await bus.Append(eb.AppendRequest(stream="c", event=event))
    await bus.CreateGroup(eb.CreateGroupRequest(stream="c", group="g", start_id="0"))
    stream = bus.Consume(
        eb.ConsumeRequest(stream="c", group="g", consumer="me", batch_size=30, block=wait(0.2))
    )
    got = 0
    answers = 0
    while got < 30:
        batch = await asyncio.wait_for(stream.read(), timeout=5)
        assert batch.ByteSize() <= MESSAGE_LIMIT
        got += len(batch.events)
        answers += 1
    stream.cancel()
    assert got == 30
    assert answers >= 3
    pending = await bus.Pending(eb.PendingRequest(stream="c", group="g"))
    assert pending.count == 30  # delivered, awaiting Ack: none left undeliverable


# ---- maxmemory -----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def full_redis() -> AsyncIterator[tuple[RedisProcess, Application]]:
    redis = RedisProcess("--maxmemory", "3mb", "--maxmemory-policy", "noeviction").start()
    try:
        async with running(make_settings(redis.url)) as app:
            yield redis, app
    finally:
        redis.stop()


async def test_every_write_that_adds_data_respects_maxmemory(full_redis):
    redis_proc, app = full_redis
    async with channel_to(app.port, "filler") as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        locks = lock_pb2_grpc.LockServiceStub(channel)
        limits = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        bus = eventbus_pb2_grpc.EventBusServiceStub(channel)
        held = await locks.Acquire(lk.AcquireRequest(name="before", ttl=wait(60)))
        async with channel_to(app.port, "victim") as victim_channel:
            victim_cache = cache_pb2_grpc.CacheServiceStub(victim_channel)
            await victim_cache.Set(pb.SetRequest(key="mine", value=b"v"))
        for n in range(200):
            if await outcome(cache.Set(pb.SetRequest(key=f"fill{n}", value=b"z" * 65536))) != "OK":
                break
        redis = redis_proc.client()
        # Well over maxmemory for the rest of the test, whatever Redis frees meanwhile.
        redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) - 256 * 1024)
        used_before = int(redis.info("memory")["used_memory"])
        keys_before = int(redis.dbsize())
        writes = {
            "Acquire": [
                locks.Acquire(lk.AcquireRequest(name=f"l{i}", ttl=wait(60))) for i in range(50)
            ],
            "AcquireSemaphore": [
                locks.AcquireSemaphore(
                    lk.AcquireSemaphoreRequest(name=f"s{i}", limit=3, ttl=wait(60))
                )
                for i in range(20)
            ],
            "Check": [
                limits.Check(
                    rl.CheckRequest(
                        target=rl.RateLimitTarget(
                            inline_limit=rl.InlineLimit(
                                key=f"k{i}",
                                limit=rl.Limit(
                                    algorithm=rl.ALGORITHM_SLIDING_WINDOW_LOG,
                                    limit=10,
                                    period=wait(60),
                                ),
                            )
                        )
                    )
                )
                for i in range(20)
            ],
            "Append": [bus.Append(eb.AppendRequest(stream="s", event=eb.Event(payload=b"e")))],
            "ListPush": [
                cache.ListPush(pb.ListPushRequest(key="l", values=[b"v"], end=pb.LIST_END_RIGHT))
            ],
            "HashSet": [
                cache.HashSet(pb.HashSetRequest(key="h", fields=[pb.HashField(field="f")]))
            ],
            "SetAdd": [cache.SetAdd(pb.SetAddRequest(key="s", members=[b"m"]))],
            "SortedSetAdd": [
                cache.SortedSetAdd(
                    pb.SortedSetAddRequest(key="z", members=[pb.ScoredMember(member=b"m")])
                )
            ],
        }
        async with Victim(app.port, write_first=False) as victim:
            answers = {
                name: Counter([await outcome(call) for call in calls])
                for name, calls in writes.items()
            }
        used = int(redis.info("memory")["used_memory"])
        keys_after = int(redis.dbsize())
        # Giving back is never refused.
        released = await outcome(
            locks.Release(lk.ReleaseRequest(name="before", owner_token=held.owner_token))
        )
        redis.flushall()
        redis.config_set("maxmemory", "3mb")
        redis.close()
    for name, counted in answers.items():
        assert counted == {"RESOURCE_EXHAUSTED/BACKEND_OUT_OF_MEMORY": len(writes[name])}, (
            name,
            counted,
        )
    assert released == "OK"
    # Not one key added (the memory figure also counts script sources and client buffers).
    assert keys_after == keys_before, (keys_before, keys_after)
    victim.assert_unharmed()
    record_hostile(
        "Redis over maxmemory (noeviction): Acquire x50, AcquireSemaphore x20, rate-limit "
        "Check x20, Append, ListPush, HashSet, SetAdd, SortedSetAdd",
        f"every one RESOURCE_EXHAUSTED/BACKEND_OUT_OF_MEMORY; Release OK; Redis grew "
        f"{(used - used_before) / 1024:.0f} KiB (script cache and client buffers), no key added",
        victim,
    )


# ---- stats cardinality ---------------------------------------------------------------


async def test_stats_count_only_admitted_namespaces_and_cap_them(hostile, channels):
    stats = hostile.servicers[0].deps.stats
    cache_any = cache_pb2_grpc.CacheServiceStub(channels["any"])
    for n in range(200):
        bad = f"bad {n}" if n % 2 else "x" * 7000
        error = await aio_error(
            cache_any.Get(pb.GetRequest(key="k"), metadata=[("cachet-namespace", bad)])
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(error.details()) < 1100
    assert not [name for name in stats.namespaces if name.startswith(("bad", "xxx"))]
    for n in range(60):
        await cache_pb2_grpc.CacheServiceStub(channels[f"many-{n}"]).Get(pb.GetRequest(key="k"))
    assert len(stats.namespaces) <= stats.max_namespaces + 1
    assert stats.namespaces[OTHER_NAMESPACES].calls > 0


async def aio_error(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


# ---- strict validation ---------------------------------------------------------------


async def test_namespace_headers_are_strict(hostile, channels):
    cache = cache_pb2_grpc.CacheServiceStub(channel_to(hostile.port))
    twice = await aio_error(
        cache.Get(
            pb.GetRequest(key="k"), metadata=[("cachet-namespace", "a"), ("cachet-namespace", "b")]
        )
    )
    assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(twice) == ["metadata:cachet-namespace"]
    # grpc clients refuse to send a newline in metadata; a raw HTTP/2 client can, so the
    # resolution itself is checked.
    from cachet_server.credentials import ANONYMOUS
    from cachet_server.errors import InvalidArgument
    from cachet_server.interceptors.auth import resolve_namespace

    limits = hostile.settings.limits
    assert resolve_namespace(["ns"], ANONYMOUS, limits) == "ns"
    for bad in ("ns\n", "ns\r\n", "\nns"):
        with pytest.raises(InvalidArgument):
            resolve_namespace([bad], ANONYMOUS, limits)


async def test_stream_ids_are_ascii_digits_only(hostile, channels):
    bus = eventbus_pb2_grpc.EventBusServiceStub(channels["ids"])
    await bus.Append(eb.AppendRequest(stream="s", event=eb.Event(payload=b"p")))
    await bus.CreateGroup(eb.CreateGroupRequest(stream="s", group="g", start_id="0"))
    for bad in ("1\n", "\u0661\u0662", "\uff11\uff12-\uff13", "1-2\n"):
        calls = [
            bus.Range(eb.RangeRequest(stream="s", start=bad)),
            bus.Read(eb.ReadRequest(stream="s", after_id=bad)),
            bus.Trim(eb.TrimRequest(stream="s", min_id=bad)),
            bus.Ack(eb.AckRequest(stream="s", group="g", ids=[bad])),
        ]
        for call in calls:
            error = await aio_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, error)


async def test_float_overflow_is_out_of_range_and_stores_nothing(hostile, channels):
    cache = cache_pb2_grpc.CacheServiceStub(channels["floats"])
    await cache.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key="z", member=b"m", delta=1.7e308)
    )
    error = await aio_error(
        cache.SortedSetIncrement(pb.SortedSetIncrementRequest(key="z", member=b"m", delta=1.7e308))
    )
    assert error_reason(error) == "OUT_OF_RANGE"
    score = await cache.SortedSetScore(pb.SortedSetScoreRequest(key="z", members=[b"m"]))
    assert score.scores[0].score == 1.7e308
    await cache.Increment(pb.IncrementRequest(key="f", by_float=1.7e308))
    error = await aio_error(cache.Increment(pb.IncrementRequest(key="f", by_float=1.7e308)))
    assert error_reason(error) == "OUT_OF_RANGE"
    assert (await cache.Get(pb.GetRequest(key="f"))).value != b"inf"


async def test_malformed_bodies_are_invalid_argument_without_a_traceback(hostile, channels, caplog):
    channel = channels["raw"]
    raw = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"]  # bad tag, short, bad UTF-8
    paths = {
        "unary": "/cachet.cache.v1.CacheService/Get",
        "server stream": "/cachet.eventbus.v1.EventBusService/Subscribe",
        "bidi stream": "/cachet.lock.v1.LockService/Hold",
        "health": "/grpc.health.v1.Health/Check",
    }
    codes: dict[str, set[str]] = {}
    with caplog.at_level(logging.DEBUG):
        for kind, path in paths.items():
            for body in raw:
                if kind == "unary" or kind == "health":
                    call = channel.unary_unary(path)(body, timeout=3)
                elif kind == "server stream":
                    call = channel.unary_stream(path)(body, timeout=3).read()
                else:
                    stream = channel.stream_stream(path)(iter([body]), timeout=3)
                    call = stream.read()
                try:
                    await call
                    codes.setdefault(kind, set()).add("OK")
                except aio.AioRpcError as error:
                    codes.setdefault(kind, set()).add(error.code().name)
    assert codes == {key: {"INVALID_ARGUMENT"} for key in paths}, codes
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_errors_never_name_redis_addresses():
    port = free_port()  # nothing listens there
    async with running(make_settings(f"redis://127.0.0.1:{port}", redis_timeout="PT0.2S")) as app:
        async with channel_to(app.port, "lost") as channel:
            error = await aio_error(
                cache_pb2_grpc.CacheServiceStub(channel).Get(pb.GetRequest(key="k"), timeout=5)
            )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert str(port) not in error.details() and "127.0.0.1" not in error.details(), error


# ---- one process of its own: memory and connections ------------------------------


def _rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


async def test_slow_subscribers_hold_bounded_memory_and_give_it_back(redis_standalone):
    """The slow-reader attack at the configured limits: subscribers that never read while
    50 MiB is published to them. Each ends SUBSCRIBER_TOO_SLOW once 2 MiB behind; the
    server's RSS stays within a bound and comes back near its baseline."""
    budget = 2 * 1024 * 1024
    server = CachetProcess(
        redis_standalone.url,
        CACHET_EVENTBUS__SUBSCRIBER_BUFFER_BYTES=str(budget),
        CACHET_LOG_LEVEL="ERROR",
    ).start()
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    event = eb.Event(payload=b"p" * (512 * 1024))
    mib = 2**20
    try:
        async with channel_to(server.port, "publisher") as publisher_channel:
            publisher = eventbus_pb2_grpc.EventBusServiceStub(publisher_channel)
            # Warm up every path once, so the baseline includes what any use allocates.
            warm = channel_to(server.port, "publisher")
            first = eventbus_pb2_grpc.EventBusServiceStub(warm).Subscribe(
                eb.SubscribeRequest(topics=["t"])
            )
            await first.read()
            await publisher.Publish(eb.PublishRequest(topic="t", event=event))
            await first.read()
            first.cancel()
            await warm.close()
            await asyncio.sleep(0.5)
            baseline = _rss(process)
            channels = [channel_to(server.port, "publisher") for _ in range(4)]
            slow = [
                eventbus_pb2_grpc.EventBusServiceStub(c).Subscribe(
                    eb.SubscribeRequest(topics=["t"])
                )
                for c in channels
            ]
            for stream in slow:
                assert (await stream.read()).HasField("active")
            peak = baseline
            async with Victim(server.port) as victim:
                for _ in range(100):
                    await publisher.Publish(eb.PublishRequest(topic="t", event=event))
                    peak = max(peak, _rss(process))
                await asyncio.sleep(0.5)
                peak = max(peak, _rss(process))
            ends: list[str] = []
            for stream in slow:
                try:
                    while True:
                        await asyncio.wait_for(stream.read(), timeout=10)
                except aio.AioRpcError as error:
                    ends.append(f"{error.code().name}/{error_reason(error)}")
            for c in channels:
                await c.close()
            await asyncio.sleep(1.0)
            after = _rss(process)
    finally:
        server.stop()
    assert ends == ["RESOURCE_EXHAUSTED/SUBSCRIBER_TOO_SLOW"] * 4, ends
    victim.assert_unharmed()
    grown, kept = (peak - baseline) / mib, (after - baseline) / mib
    print(f"\nRSS baseline {baseline / mib:.0f} MiB, peak +{grown:.1f}, after +{kept:.1f}")
    # 4 subscribers x 2 MiB of buffer, plus what grpc holds in flight per stream.
    assert grown < 64, f"RSS grew {grown:.0f} MiB"
    assert kept < 24, f"{kept:.0f} MiB still held after the streams ended"
    record_hostile(
        "4 Subscribe streams that never read, 100 Publish of 512 KiB (50 MiB each); "
        "buffer 2 MiB per subscriber",
        f"all 4 ended RESOURCE_EXHAUSTED/SUBSCRIBER_TOO_SLOW; server RSS {baseline / mib:.0f} "
        f"MiB, peak +{grown:.0f} MiB, +{kept:.0f} MiB after the streams ended",
        victim,
    )


def test_connection_cap_keeps_health_answering(redis_standalone):
    health_port = free_port()
    server = CachetProcess(
        redis_standalone.url,
        CACHET_CONNECTIONS__MAX_CONNECTIONS="4",
        CACHET_HEALTH_LISTEN=f"127.0.0.1:{health_port}",
        CACHET_LOG_LEVEL="ERROR",
    ).start()
    # A local subchannel pool each, so every channel opens a TCP connection of its own.
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.address, options=local) for _ in range(12)]
    try:
        codes = []
        for channel in channels:
            try:
                cache_pb2_grpc.CacheServiceStub(channel).Get(pb.GetRequest(key="k"), timeout=2)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            health = health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
    finally:
        for channel in channels:
            channel.close()
        server.stop()
    counted = Counter(codes)
    assert counted["OK"] >= 1 and counted["OK"] <= 4, counted
    assert set(counted) <= {"OK", "UNAVAILABLE"}, counted
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    print(f"\n[hostile tenant] 12 connections, cap 4: {dict(counted)}; health port SERVING")


async def _burst(port: int, count: int) -> Counter[str]:
    async with channel_to(port, "burst") as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        await cache.Set(pb.SetRequest(key="k", value=b"v"))
        return Counter(
            await asyncio.gather(
                *(outcome(cache.Get(pb.GetRequest(key="k"), timeout=10)) for _ in range(count))
            )
        )


async def test_a_burst_of_3000_gets_on_one_connection_all_answer(redis_standalone):
    """Before: 126 UNAVAILABLE ("Too many connections") and 605 CANCELLED of 3,000."""
    server = CachetProcess(redis_standalone.url, CACHET_LOG_LEVEL="ERROR").start()
    try:
        async with Victim(server.port) as victim:
            answers = await _burst(server.port, 3000)
    finally:
        server.stop()
    assert answers == {"OK": 3000}, answers
    victim.assert_unharmed()
    record_hostile(
        "3,000 concurrent Gets on one connection (default settings)",
        ", ".join(f"{k} {v}" for k, v in sorted(answers.items())),
        victim,
    )


async def test_cancelled_comes_from_the_pending_call_backlog(redis_standalone):
    """Where the spurious CANCELLED came from: grpc core refuses calls the server has not
    picked up yet beyond grpc.server.max_pending_requests, and the client sees CANCELLED.
    With the backlog made tiny, a burst shows it; those calls never reach a handler."""
    server = CachetProcess(
        redis_standalone.url,
        CACHET_CONNECTIONS__MAX_PENDING_CALLS="20",
        CACHET_LOG_LEVEL="ERROR",
    ).start()
    try:
        answers = await _burst(server.port, 1000)
        async with channel_to(server.port) as channel:
            from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc

            served = await admin_pb2_grpc.AdminServiceStub(channel).GetServiceStats(
                admin_pb2.GetServiceStatsRequest()
            )
    finally:
        server.stop()
    handled = {m.method: m.calls for m in served.methods}["/cachet.cache.v1.CacheService/Get"]
    assert answers["CANCELLED/-"] > 0, answers
    assert set(answers) <= {"OK", "CANCELLED/-"}, answers
    assert handled == answers["OK"]
    print(f"\n[hostile tenant] backlog 20, burst 1000: {dict(answers)}; handled {handled}")


def test_blocking_commands_are_told_apart_with_their_timeouts():
    from cachet_server.backend.topology import _block_timeout, is_blocking

    assert is_blocking(("BLPOP", "k", 1.5)) and _block_timeout(("BLPOP", "k", 1.5)) == 1.5
    assert is_blocking((b"BLMOVE", "a", "b", 0.2, "LEFT", "LEFT"))
    read = ("XREAD", "COUNT", 1, b"BLOCK", 250, "STREAMS", "s", "0-0")
    assert is_blocking(read) and _block_timeout(read) == 0.25
    assert _block_timeout(("BLPOP", "k", 0)) is None  # 0 is "forever" to Redis
    assert not is_blocking(("XREAD", "COUNT", 1, "STREAMS", "s", "0-0"))
    assert not is_blocking(("GET", "k")) and not is_blocking(())


async def test_request_ids_are_anchored_at_the_very_end(hostile, channels):
    cache = cache_pb2_grpc.CacheServiceStub(channels["ids"])
    await cache.Increment(pb.IncrementRequest(key="n", by_int=1, request_id="r-1"))
    error = await aio_error(
        cache.Increment(pb.IncrementRequest(key="n", by_int=1, request_id="r-1\n"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["request_id"]
