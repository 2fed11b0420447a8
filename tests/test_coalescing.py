"""Adaptive coalescing (backend/multiplex.py): under concurrency, scripts bound for one
node share kept connections and their writes, and each call still gets exactly its own
answer and its own error; a lost script cache, a killed connection and a paused Redis
are handled per call."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import Application
from cachet_server.backend.cache import _GET
from cachet_server.backend.keys import CacheKeys
from cachet_server.backend.multiplex import RETRY_ALONE, CoalescingStats, Multiplexer
from cachet_server.backend.scripts import Script
from grpc import aio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .conftest import channel_to

NAMESPACES = 12
KEYS_PER_NAMESPACE = 8


@contextlib.asynccontextmanager
async def kept_connection(
    url: str, *, socket_timeout: float, stats: CoalescingStats | None = None, **options: Any
) -> AsyncIterator[Multiplexer]:
    """A multiplexer of its own keeping one connection to `url`, over a redis-py pool of
    its own; both closed on the way out."""
    client = Redis.from_url(url)
    pool = client.connection_pool
    multiplexer = Multiplexer(
        "test",
        pool.get_connection,
        pool.release,
        socket_timeout=socket_timeout,
        stats=stats or CoalescingStats(),
        size=1,
        **options,
    )
    try:
        yield multiplexer
    finally:
        await multiplexer.close()
        await client.aclose()


async def test_concurrent_calls_of_many_namespaces_each_read_exactly_their_own(
    cachet: Application, namespace: str
):
    """Many namespaces at once, on keys of many slots (and nodes, on Cluster), the same
    user keys in every namespace: each namespace reads back only its own values, both
    at whatever concurrency arises and when every read of a node is made to share one
    write (its multiplexer held until all 96 reads are queued)."""
    backend = cachet.backend
    names = [f"{namespace}-{n}" for n in range(NAMESPACES)]
    channels = [channel_to(cachet.port, name) for name in names]
    stubs = [cache_pb2_grpc.CacheServiceStub(channel) for channel in channels]
    wanted = [
        (name, stub, i)
        for name, stub in zip(names, stubs, strict=True)
        for i in range(KEYS_PER_NAMESPACE)
    ]

    async def read_all() -> None:
        replies = await asyncio.gather(
            *(stub.Get(pb.GetRequest(key=f"k{i}")) for _, stub, i in wanted)
        )
        for (name, _, i), reply in zip(wanted, replies, strict=True):
            assert reply.found and reply.value == f"{name}/{i}".encode()

    try:
        await asyncio.gather(
            *(
                stub.Set(pb.SetRequest(key=f"k{i}", value=f"{name}/{i}".encode()))
                for name, stub, i in wanted
            )
        )
        await read_all()
        multiplexers = {
            id(m): m
            for name, _, i in wanted
            if (m := backend._multiplexer_of([CacheKeys.of(name, f"k{i}").data])) is not None
        }.values()
        assert multiplexers and not any(m.waiting() for m in multiplexers), "nothing else runs"
        before = backend.coalescing.writes, backend.coalescing.commands
        for multiplexer in multiplexers:
            multiplexer.held = True
        reading = asyncio.ensure_future(read_all())
        for _ in range(1000):
            if sum(m.waiting() for m in multiplexers) == len(wanted) or reading.done():
                break
            await asyncio.sleep(0.01)
        queued = sum(m.waiting() for m in multiplexers)
        for multiplexer in multiplexers:
            multiplexer.held = False
        await reading
        writes = backend.coalescing.writes - before[0]
        commands = backend.coalescing.commands - before[1]
    finally:
        for channel in channels:
            await channel.close()
    assert queued == len(wanted)
    assert commands == len(wanted)
    # One write per kept connection of each node at most.
    assert writes <= 2 * len(multiplexers), (writes, len(multiplexers))


async def test_a_failing_script_fails_only_its_own_call(cachet: Application, namespace: str, cache):
    """A script that errors (GET on a hash: WRONGTYPE) in the middle of concurrent reads:
    that call alone raises; its neighbours, in the same pipelines, get their values."""
    await cache.Set(pb.SetRequest(key="good", value=b"fine"))
    good = CacheKeys.of(namespace, "good")
    wrong = CacheKeys.of(namespace, "wrong")
    backend = cachet.backend
    await backend.redis.hset(wrong.data, "field", "x")
    before = backend.coalescing.writes, backend.coalescing.commands

    async def read(keys: CacheKeys) -> object:
        try:
            return await backend.run(_GET, [keys.data, keys.meta], ["0"])
        except ResponseError as error:
            return error

    targets = [wrong if n % 5 == 2 else good for n in range(40)]
    answers = await asyncio.gather(*(read(keys) for keys in targets))
    for keys, answer in zip(targets, answers, strict=True):
        if keys is wrong:
            assert isinstance(answer, ResponseError) and "WRONGTYPE" in str(answer)
        else:
            assert isinstance(answer, list) and answer[0] == b"fine"
    writes = backend.coalescing.writes - before[0]
    commands = backend.coalescing.commands - before[1]
    assert commands == len(targets)
    assert writes < commands, "the reads were not coalesced"


async def test_a_script_redis_does_not_know_goes_again_per_call(
    cachet: Application, namespace: str
):
    """A batch of EVALSHAs of a script Redis has never seen (as after a restart or
    SCRIPT FLUSH): each answers NOSCRIPT in the pipeline, and each call goes again on
    the ordinary path (EVAL) and gets its own answer."""
    backend = cachet.backend
    source = f"-- {uuid.uuid4()}\nreturn ARGV[1]"
    unknown = Script("echo", source, hashlib.sha1(source.encode()).hexdigest())
    key = CacheKeys.of(namespace, "noscript").data
    multiplexer = backend._multiplexer_of([key])
    assert multiplexer is not None
    retried_before = backend.coalescing.retried_alone
    # Hold the writes, so all of them share one.
    multiplexer.held = True
    calls = [asyncio.create_task(backend.run(unknown, [key], [str(n)])) for n in range(30)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if multiplexer.waiting() >= 30:
            break
    multiplexer.held = False
    answers = await asyncio.gather(*calls)
    assert answers == [str(n).encode() for n in range(30)]
    assert backend.coalescing.retried_alone - retried_before == 30


async def test_a_killed_connection_sends_its_waiting_calls_the_ordinary_way_and_reconnects(
    cachet: Application, namespace: str, cache
):
    """CLIENT KILL of the kept connections while 40 reads wait on the multiplexer's writes:
    each read still gets its own value (the ordinary path answers the ones cut off), and
    the multiplexer carries the next reads on new connections."""
    await cache.Set(pb.SetRequest(key="killed", value=b"still-here"))
    backend = cachet.backend
    keys = CacheKeys.of(namespace, "killed")
    multiplexer = backend._multiplexer_of([keys.data])
    assert multiplexer is not None
    await backend.run(_GET, [keys.data, keys.meta], ["0"])  # opens the kept connections
    multiplexer.held = True
    reads = [
        asyncio.create_task(backend.run(_GET, [keys.data, keys.meta], ["0"])) for _ in range(40)
    ]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if multiplexer.waiting() >= 40:
            break
    # Only the multiplexer's own connections: the server is shared with later tests.
    sockets = [kept.connection._writer.get_extra_info("sockname") for kept in multiplexer._kept]
    addresses = [f"{host}:{port}" for host, port, *_ in sockets]
    assert addresses
    for node in await backend.primaries():
        for address in addresses:
            await node.execute_command("CLIENT", "KILL", "ADDR", address, "SKIPME", "yes")
    await asyncio.sleep(0.05)
    multiplexer.held = False
    answers = await asyncio.wait_for(asyncio.gather(*reads), 30)
    assert all(answer[0] == b"still-here" for answer in answers)
    # Within a few of its open backoffs, the multiplexer carries reads again.
    writes = backend.coalescing.writes
    for _ in range(50):
        again = await asyncio.gather(
            *(backend.run(_GET, [keys.data, keys.meta], ["0"]) for _ in range(20))
        )
        assert all(answer[0] == b"still-here" for answer in again)
        if backend.coalescing.writes > writes:
            break
        await asyncio.sleep(0.1)
    assert backend.coalescing.writes > writes, "the multiplexer did not reconnect"


async def test_a_cancelled_call_leaves_the_connection_serving_the_others(
    cachet: Application, namespace: str, cache
):
    """Callers cancelled while their commands wait (as a deadline does): their answers
    are read and dropped, and the calls queued beside them on the same connection get
    exactly their own answers."""
    backend = cachet.backend
    keys = [CacheKeys.of(namespace, f"c{n}") for n in range(20)]
    for n in range(len(keys)):
        await cache.Set(pb.SetRequest(key=f"c{n}", value=f"v{n}".encode()))
    multiplexer = backend._multiplexer_of([keys[0].data])
    assert multiplexer is not None
    multiplexer.held = True
    calls = [asyncio.create_task(backend.run(_GET, [k.data, k.meta], ["0"])) for k in keys]
    await asyncio.sleep(0.02)
    for call in calls[::2]:
        call.cancel()
    multiplexer.held = False
    answers = await asyncio.gather(*calls[1::2])
    assert [answer[0] for answer in answers] == [f"v{n}".encode() for n in range(1, 20, 2)]
    # The connection still answers in order afterwards.
    again = await asyncio.gather(*(backend.run(_GET, [k.data, k.meta], ["0"]) for k in keys))
    assert [answer[0] for answer in again] == [f"v{n}".encode() for n in range(20)]


async def test_a_lone_command_goes_out_at_once_and_the_ones_behind_it_gather(
    cachet: Application, namespace: str, cache
):
    """A command queued while nothing else is outstanding on its node is written in its
    caller's own loop turn: a lone caller (concurrency 1) waits out no gathering turns.
    Commands queued while it is outstanding still share writes."""
    await cache.Set(pb.SetRequest(key="lone", value=b"v"))
    keys = CacheKeys.of(namespace, "lone")
    backend = cachet.backend
    multiplexer = backend._multiplexer_of([keys.data])
    assert multiplexer is not None
    await backend.run(_GET, [keys.data, keys.meta], ["0"])  # a kept connection is open
    assert multiplexer.waiting() == 0
    await asyncio.sleep(0.01)  # longer ago than LONE_GAP: no neighbour's command is due
    writes = backend.coalescing.writes
    lone = asyncio.create_task(backend.run(_GET, [keys.data, keys.meta], ["0"]))
    # One loop turn: the task queues its command, then this test resumes, before any
    # callback the task scheduled.
    await asyncio.sleep(0)
    assert backend.coalescing.writes == writes + 1
    assert (await lone)[0] == b"v"
    writes = backend.coalescing.writes
    answers = await asyncio.gather(
        *(backend.run(_GET, [keys.data, keys.meta], ["0"]) for _ in range(20))
    )
    assert all(answer[0] == b"v" for answer in answers)
    # The first goes alone, the other 19 gather behind it.
    assert backend.coalescing.writes - writes <= 3


@pytest.mark.topologies("standalone", reason="the pause itself is the same on every topology")
async def test_paused_redis_ends_coalesced_calls_within_their_deadline_and_the_lane_recovers(
    topology, cachet: Application, cache
):
    """SIGSTOP on Redis while 40 calls with a 300 ms deadline wait on the multiplexer:
    every call ends DEADLINE_EXCEEDED or UNAVAILABLE, none hangs, and after SIGCONT
    the answers written meanwhile are read and dropped and nothing is left waiting."""
    await cache.Set(pb.SetRequest(key="paused", value=b"v"))
    codes: list[str] = []

    async def one_call() -> None:
        try:
            await cache.Get(pb.GetRequest(key="paused"), timeout=0.3)
            codes.append("OK")
        except aio.AioRpcError as error:
            codes.append(error.code().name)

    topology.pause()
    try:
        # The client's own deadline ends every call; the bound here only keeps a hung
        # server from hanging the test.
        await asyncio.wait_for(asyncio.gather(*(one_call() for _ in range(40))), 10)
    finally:
        topology.resume()
    assert set(codes) <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, codes
    replies = await asyncio.gather(
        *(cache.Get(pb.GetRequest(key="paused"), timeout=5) for _ in range(20))
    )
    assert all(reply.value == b"v" for reply in replies)
    multiplexer = cachet.backend._multiplexer
    assert multiplexer is not None and multiplexer.waiting() == 0


async def test_coalescing_off_sends_every_script_alone(topology):
    """CACHET_REDIS_COALESCE=false: the same concurrent reads, no pipeline at all."""
    from cachet_server.app import running

    from .conftest import make_settings

    async with running(make_settings(topology.url, redis_coalesce=False)) as app:
        channel = channel_to(app.port, "coalesce-off")
        try:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Set(pb.SetRequest(key="k", value=b"v"))
            replies = await asyncio.gather(*(stub.Get(pb.GetRequest(key="k")) for _ in range(40)))
        finally:
            await channel.close()
        assert all(reply.value == b"v" for reply in replies)
        assert app.backend.coalescing.writes == 0
        assert app.backend.coalescing.commands == 0


async def test_scripts_without_keys_are_coalesced_or_sent_alone(cachet: Application):
    """A script with no keys (Publish without a request id is one) shares the
    multiplexer outside Cluster and goes the ordinary path on Cluster; either way each
    gets its own answer."""
    echo = Script("echo_no_keys", "return ARGV[1]", hashlib.sha1(b"return ARGV[1]").hexdigest())
    answers = await asyncio.gather(*(cachet.backend.run(echo, [], [str(n)]) for n in range(30)))
    assert answers == [str(n).encode() for n in range(30)]


@pytest.mark.topologies("standalone", reason="the pause itself is the same on every topology")
async def test_large_writes_wait_for_the_socket_and_each_land_whole(topology, namespace: str):
    """A multiplexer of its own (one connection, a 64 KiB write buffer limit), 1 MiB
    SETs in eight waves of 8 while Redis is paused: the socket stops taking bytes, so
    later writers wait for it to drain rather than pile more onto its buffer; after the
    pause every command is answered and every value is whole."""
    stats = CoalescingStats()
    values = {f"{namespace}:big{n}": bytes([n]) * (1024 * 1024) for n in range(64)}
    items = list(values.items())
    async with kept_connection(
        topology.url, socket_timeout=30, stats=stats, write_buffer_limit=64 * 1024
    ) as multiplexer:
        assert await multiplexer.call(("PING",)) == b"PONG"  # opening needs Redis
        topology.pause()
        try:
            calls = []
            for start in range(0, 64, 8):
                calls += [
                    asyncio.ensure_future(multiplexer.call(("SET", key, value)))
                    for key, value in items[start : start + 8]
                ]
                await asyncio.sleep(0.1)
        finally:
            topology.resume()
        assert await asyncio.wait_for(asyncio.gather(*calls), 30) == [b"OK"] * 64
        assert stats.drains > 0, "no writer waited for the socket"
        for key, value in items:
            assert await multiplexer.call(("GET", key)) == value, key


# A script that keeps Redis busy for about 200 ms.
_BUSY_200MS = (
    "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] "
    "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] - start > 200000 "
    "return 1"
)


@pytest.mark.topologies("standalone", reason="the pause itself is the same on every topology")
async def test_answers_stalled_past_the_socket_timeout_retire_the_connection(topology):
    """A multiplexer of its own with a 0.5 s socket timeout. Four commands that Redis takes
    200 ms each to answer, written 150 ms apart: 0.8 s of answers outstanding in all, but
    an answer every 200 ms, so the connection serves them all. Then Redis is paused: no
    answer for 0.5 s retires the connection, its waiting calls answer RETRY_ALONE (the
    ordinary path takes them), and once Redis is back the next call opens a new one."""
    async with kept_connection(topology.url, socket_timeout=0.5) as multiplexer:
        assert await multiplexer.call(("PING",)) == b"PONG"
        slow = []
        for _ in range(4):  # written 150 ms apart: Redis answers each as it finishes it
            slow.append(asyncio.ensure_future(multiplexer.call(("EVAL", _BUSY_200MS, 0))))
            await asyncio.sleep(0.15)
        assert await asyncio.wait_for(asyncio.gather(*slow), 10) == [1, 1, 1, 1]
        topology.pause()
        try:
            stalled = await asyncio.wait_for(
                asyncio.gather(*(multiplexer.call(("PING",)) for _ in range(5))), 10
            )
        finally:
            topology.resume()
        assert stalled == [RETRY_ALONE] * 5
        assert multiplexer.waiting() == 0
        assert await asyncio.wait_for(multiplexer.call(("PING",)), 10) == b"PONG"


@pytest.mark.topologies("standalone", reason="the reply itself is the same on every topology")
async def test_a_connection_error_reply_retires_the_connection(topology):
    """A reply redis-py treats as a connection error (LOADING: Redis is loading its data)
    fails the kept connection as redis-py's own parser would: that call and the calls
    queued behind it answer RETRY_ALONE (the ordinary path retries them with backoff),
    and the next call gets a new connection."""
    loading = "return redis.error_reply('LOADING Redis is loading the dataset in memory')"
    async with kept_connection(topology.url, socket_timeout=5) as multiplexer:
        assert await multiplexer.call(("PING",)) == b"PONG"
        multiplexer.held = True
        calls = [asyncio.ensure_future(multiplexer.call(("EVAL", loading, 0)))]
        calls += [asyncio.ensure_future(multiplexer.call(("PING",))) for _ in range(5)]
        await asyncio.sleep(0.01)
        multiplexer.held = False
        assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [RETRY_ALONE] * 6
        assert await asyncio.wait_for(multiplexer.call(("PING",)), 10) == b"PONG"


@pytest.mark.topologies("standalone", reason="the multiplexer's queueing is the same everywhere")
async def test_queueing_a_command_asks_for_no_running_loop(topology, monkeypatch):
    """Once its connections are kept, queueing a command, alone or gathered, uses the
    loop the connection keeps: asyncio.get_running_loop() costs a getpid() system call
    per call on Python 3.11. (One kept connection: opening another asks, once.)"""
    import cachet_server.backend.multiplex as multiplex

    async with kept_connection(topology.url, socket_timeout=5) as multiplexer:
        assert await multiplexer.call(("PING",)) == b"PONG"  # opens the kept connection
        asked: list[int] = []
        real = asyncio.get_running_loop

        def counted() -> asyncio.AbstractEventLoop:
            asked.append(1)
            return real()

        monkeypatch.setattr(multiplex.asyncio, "get_running_loop", counted)
        assert await multiplexer.call(("PING",)) == b"PONG"  # a lone command
        answers = await asyncio.gather(*(multiplexer.call(("PING",)) for _ in range(20)))
        assert answers == [b"PONG"] * 20
        assert await multiplexer.call_many([("PING",), ("PING",)]) == [b"PONG"] * 2
        monkeypatch.undo()
        assert asked == []
