"""Batch, Session and the auto-batcher of the Python client, against a live
cachet-server process on real Redis.

Batch RPCs are counted on the server's own /metrics (rpc_server_call_duration_seconds
for CacheService/Batch), not by the client. Session messages are counted where grpc
serializes each one it writes (`SessionMessages`), which can also hold the sync client's
writer in a message so calls queue behind it. Server faults are real: the server process
is paused (SIGSTOP) so operations stay pending, killed so the stream breaks, and started
again on the same port.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cachet_client
import grpc
import pytest
from cachet_client import serializers
from cachet_client._batch import SESSION_PACK
from prometheus_client.parser import text_string_to_metric_families

from .conftest import r
from .server_procs import CachetProcess
from .test_python_client_auth import READER_TOKEN, WRITER_TOKEN, secured_server

pytestmark = pytest.mark.topologies(
    "standalone",
    reason="the wrappers are topology-neutral: the server's Batch/Session tests cover every "
    "topology",
)

BATCH_METHOD = "cachet.cache.v1.CacheService/Batch"


def batch_calls(server: CachetProcess) -> float:
    """How many Batch calls the server has answered (its /metrics)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rpc_server_call_duration_seconds_count"
        and sample.labels.get("rpc_method") == BATCH_METHOD
    )


class SessionMessages:
    """The SessionRequest messages a client writes on its Session streams: grpc calls a
    stream's request serializer once per message it sends, so wrapping it counts them on
    the way out. `sizes` holds the operations each message carried. `hold()` makes the
    stream's writer stop in the next message until `release()` (a write that takes a
    while), so the calls made meanwhile queue behind it: on the sync client grpc's
    request thread waits in that message's serializer; on the asyncio client (where the
    serializer runs in the event loop) the stream's request iterator waits, as a slow
    write does, before grpc takes the message."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.held = threading.Event()
        self._holding = False
        self._released = threading.Event()
        channel = client._runner.channels.plain
        open_stream = channel.stream_stream
        in_event_loop = isinstance(channel, grpc.aio.Channel)

        def stream_stream(path: str, *, request_serializer: Any, response_deserializer: Any) -> Any:
            def serialize(request: Any) -> bytes:
                self.sizes.append(len(request.operations) + request.HasField("operation"))
                if self._holding and not in_event_loop:
                    self._holding = False
                    self.held.set()
                    assert self._released.wait(timeout=15)
                return bytes(request_serializer(request))

            call = open_stream(
                path, request_serializer=serialize, response_deserializer=response_deserializer
            )
            if not in_event_loop:
                return call

            async def held_back(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    if self._holding:
                        self._holding = False
                        self.held.set()
                        await eventually(self._released.is_set)
                    yield request

            return lambda requests, **kwargs: call(held_back(requests), **kwargs)

        monkeypatch.setattr(channel, "stream_stream", stream_stream)

    def hold(self) -> None:
        self.held.clear()
        self._released.clear()
        self._holding = True

    def release(self) -> None:
        self._released.set()


def wait_until(condition: Any, timeout: float = 15) -> None:
    """Wait for `condition()` to hold (polled); fail past `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def eventually(condition: Any) -> None:
    """`wait_until` in the event loop: poll `condition()` without blocking the loop;
    fail past 15 s."""
    async with asyncio.timeout(15):
        while not condition():  # noqa: ASYNC110 (a queue length and a threading.Event)
            await asyncio.sleep(0.005)


def queued_behind(session: Any) -> int:
    """Operations a session has queued and not yet handed to grpc."""
    return int(session._transport._stream.requests.qsize())


@pytest.fixture
def own_server(topology: Any) -> Iterator[CachetProcess]:
    """A server of this test's own, to pause, kill and start again."""
    proc = CachetProcess(topology.url, CACHET_AUTH__MODE="off")
    try:
        yield proc.start()
    finally:
        if proc.process is not None and proc.process.poll() is None:
            os.kill(proc.process.pid, signal.SIGCONT)
        proc.stop()


def open_client(flavor: str, address: str, namespace: str, **settings: Any) -> Any:
    connect = cachet_client.connect if flavor == "async" else cachet_client.connect_sync
    return connect(address, namespace=namespace, **settings)


@pytest.fixture
async def client(flavor: str, server: CachetProcess, namespace: str) -> AsyncIterator[Any]:
    opened = open_client(flavor, server.address, namespace, serializer=serializers.JSON)
    try:
        yield opened
    finally:
        await r(opened.close())


# -- Batch ---------------------------------------------------------------------------


async def test_batch_answers_every_operation_in_order(client):
    cache = client.cache
    await r(cache.set("old", "gone"))
    await r(cache.set("counter", 40))
    version = await r(cache.set("user:1", {"name": "alice"}))
    batch = (
        cache.batch()
        .get("user:1")
        .get("missing")
        .set("user:2", {"name": "bob"}, ttl=60)
        .delete("old", "never")
        .increment("counter", 2)
        .expire("user:1", 30)
        .expire("missing", 30)
        .hash_set("cart", {"apples": 2, "pears": 1})
        .hash_get("cart", "apples", "plums")
        .increment_float("temperature", 1.5)
    )
    assert len(batch) == 10
    results = await r(batch.execute())
    assert all(result.ok for result in results), [result.error for result in results]
    user, missing, set_version, deleted, counter, expired, not_expired, added, cart, temp = (
        result.value for result in results
    )
    assert temp == 1.5
    assert user.value == {"name": "alice"} and user.version == version
    assert missing is None
    assert set_version > 0 and (await r(cache.get("user:2"))).value == {"name": "bob"}
    assert deleted == 1 and await r(cache.get("old")) is None
    assert counter == 42
    assert expired is True and not_expired is False
    assert 25 < (await r(cache.ttl("user:1"))).total_seconds() <= 30
    assert added == 2
    assert cart == {"apples": 2}
    assert await r(cache.batch().execute()) == []


async def test_a_failed_operation_has_the_unary_error_and_hides_nothing(client):
    cache = client.cache
    version = await r(cache.set("cas", "first"))
    await r(cache.set("cas", "second"))
    await r(cache.set("text", "not a number"))
    await r(cache.set("kept", "here"))
    results = await r(
        cache.batch()
        .get("")  # an empty key: INVALID_ARGUMENT, as the unary Get answers
        .set("cas", "third", if_version=version)
        .increment("text")
        .set("fresh", "x", condition="if_present")
        .get("kept")
        .increment("fine", 5)
        .execute()
    )
    bad_key, stale, not_a_number, absent, kept, fine = results
    with pytest.raises(cachet_client.InvalidArgument):
        await r(cache.get(""))
    assert isinstance(bad_key.error, cachet_client.InvalidArgument)
    assert bad_key.error.code.name == "INVALID_ARGUMENT" and "key" in bad_key.error.message
    with pytest.raises(cachet_client.VersionMismatch) as unary_stale:
        await r(cache.set("cas", "third", if_version=version))
    assert type(stale.error) is cachet_client.VersionMismatch
    assert stale.error.reason == unary_stale.value.reason == "VERSION_MISMATCH"
    assert stale.error.metadata == unary_stale.value.metadata
    assert stale.error.code == unary_stale.value.code
    assert type(not_a_number.error) is cachet_client.NotANumber
    assert type(absent.error) is cachet_client.KeyNotFound
    with pytest.raises(cachet_client.KeyNotFound):
        absent.value  # noqa: B018 - `value` raises the operation's error
    assert not stale.ok and kept.ok and fine.ok
    assert kept.value.value == "here" and fine.value == 5
    assert (await r(cache.get("cas"))).value == "second"


async def test_a_batch_past_max_batch_is_split_and_keeps_order(client, server):
    count = 2_100  # the server refuses more than 1,000 operations in one Batch
    before = batch_calls(server)
    writes = client.cache.batch()
    for i in range(count):
        writes.set(f"k{i}", i)
    versions = await r(writes.execute())
    assert [result.ok for result in versions] == [True] * count
    reads = client.cache.batch()
    for i in reversed(range(count)):
        reads.get(f"k{i}")
    results = await r(reads.execute())
    assert [result.value.value for result in results] == list(reversed(range(count)))
    assert batch_calls(server) - before == 6  # 1,000 + 1,000 + 100, twice


async def test_a_batch_of_big_values_is_split_at_a_mib_and_keeps_order(flavor, server, namespace):
    """40 sets of 300 kB are 12 MB: as one Batch call, over the server's 8 MiB message
    size, every one of them failed (RESOURCE_EXHAUSTED). The client cuts the batch at a
    MiB of operations: three sets a call, 14 calls at once, each value written."""
    client = open_client(flavor, server.address, namespace)
    try:
        values = [bytes([65 + i % 26]) * 300_000 for i in range(40)]
        writes = client.cache.batch()
        for i, value in enumerate(values):
            writes.set(f"big{i}", value)
        before = batch_calls(server)
        results = await r(writes.execute())
        assert [result.error for result in results] == [None] * 40
        assert batch_calls(server) - before == 14  # 13 calls of 3 sets, then 1
        for i, (value, result) in enumerate(zip(values, results, strict=True)):
            read = await r(client.cache.get(f"big{i}"))
            assert read.data == value and read.version == result.value, i

        # A value of the server's largest size (1 MiB) is a set over a MiB: a call of its
        # own, between the small operations around it.
        largest = b"L" * (1 << 20)
        before = batch_calls(server)
        batch = client.cache.batch().set("before", b"1").set("largest", largest).set("after", b"2")
        assert all(result.value >= 1 for result in await r(batch.execute()))
        assert batch_calls(server) - before == 3
        for key, value in (("before", b"1"), ("largest", largest), ("after", b"2")):
            assert (await r(client.cache.get(key))).data == value
    finally:
        await r(client.close())


# -- Session -------------------------------------------------------------------------


async def test_async_session_matches_hundreds_of_concurrent_answers(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        async with client.cache.session() as session:

            async def worker(n: int) -> None:
                for step in range(2):
                    key = f"w{n}:{step}"
                    version = await session.set(key, f"{n}/{step}".encode())
                    value = await session.get(key)
                    assert value.data == f"{n}/{step}".encode() and value.version == version
                    assert await session.increment(f"count:{n}", n + 1) == (n + 1) * (step + 1)

            # 300 callers at once (past the server's 256 per stream), 1,800 operations
            await asyncio.gather(*(worker(n) for n in range(300)))
            assert await session.hash_set("h", {"a": b"1"}) == 1
            assert await session.hash_get("h", "a", "b") == {"a": b"1"}
            assert await session.expire("h", 60) is True
            assert await session.delete("h", "nope") == 1
            assert await session.increment_float("t", 0.25) == 0.25
            assert session.streams_opened == 1


async def test_async_session_packs_one_loop_turn_of_calls_and_answers_each(
    server, namespace, monkeypatch
):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        sent = SessionMessages(client, monkeypatch)
        async with client.cache.session() as session:
            assert await session.set("warm", b"up") >= 1  # a lone call: a message of one
            keys = [f"k{i}" for i in range(500)]
            versions = await asyncio.gather(
                *(session.set(key, f"v{i}".encode()) for i, key in enumerate(keys))
            )
            values = await asyncio.gather(*(session.get(key) for key in keys))
            assert [value.data for value in values] == [f"v{i}".encode() for i in range(500)]
            assert [value.version for value in values] == versions
            counts = await asyncio.gather(*(session.increment(f"n{i}", i + 1) for i in range(500)))
            assert counts == [i + 1 for i in range(500)]
            assert session.streams_opened == 1
    print(f"1,501 operations in {len(sent.sizes)} messages: {sent.sizes}")
    assert sent.sizes[0] == 1 and sum(sent.sizes) == 1 + 3 * 500
    # Each gather's 500 calls are queued in one loop turn: full messages, never past the cap.
    assert max(sent.sizes) == SESSION_PACK
    assert len(sent.sizes) < 1 + 3 * 500 // 10


async def test_async_session_packs_a_mib_per_message_at_most(server, namespace, monkeypatch):
    """30 sets of 300 kB at once would be one 9 MB message, over the server's 8 MiB: the
    client packs what fits in a MiB (three of them) and carries the next one over."""
    value = b"v" * 300_000
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        sent = SessionMessages(client, monkeypatch)
        async with client.cache.session() as session:
            versions = await asyncio.gather(*(session.set(f"big{i}", value) for i in range(30)))
            assert all(version >= 1 for version in versions)
            for i in range(0, 30, 10):
                assert (await session.get(f"big{i}")).data == value
    assert sent.sizes[:10] == [3] * 10, sent.sizes


async def test_an_operation_failing_in_a_packed_message_fails_alone(server, namespace, monkeypatch):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        sent = SessionMessages(client, monkeypatch)
        async with client.cache.session() as session:
            await session.set("text", b"words")
            calls = []
            for i in range(100):
                if i % 10 == 3:
                    calls.append(session.get(""))  # INVALID_ARGUMENT: an empty key
                elif i % 10 == 7:
                    calls.append(session.increment("text"))  # not a number
                else:
                    calls.append(session.set(f"k{i}", f"v{i}".encode()))
            answers = await asyncio.gather(*calls, return_exceptions=True)
            for i, answer in enumerate(answers):
                if i % 10 == 3:
                    assert isinstance(answer, cachet_client.InvalidArgument), (i, answer)
                elif i % 10 == 7:
                    assert isinstance(answer, cachet_client.NotANumber), (i, answer)
                else:
                    assert isinstance(answer, int) and answer >= 1, (i, answer)
            values = await asyncio.gather(*(session.get(f"k{i}") for i in range(0, 100, 10)))
            assert [value.data for value in values] == [f"v{i}".encode() for i in range(0, 100, 10)]
            assert (await session.get("text")).data == b"words"
            assert session.streams_opened == 1
    assert sent.sizes == [1, 100, 10, 1]  # the failing operations went out packed


def test_sync_session_packs_the_calls_waiting_behind_a_write(server, namespace, monkeypatch):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        sent = SessionMessages(client, monkeypatch)
        with client.cache.session() as session, ThreadPoolExecutor(max_workers=40) as pool:
            session.set("warm", b"up")

            def behind_a_write(calls: list[Any]) -> list[Any]:
                """Run `calls` on threads of their own while the writer is held in the
                first message they make (it may have taken more than one of them); their
                answers (or errors), in order. All of them go in at most two messages."""
                before = len(sent.sizes)
                sent.hold()
                futures = [pool.submit(call) for call in calls]
                assert sent.held.wait(timeout=15)
                wait_until(lambda: sent.sizes[-1] + queued_behind(session) == len(calls))
                sent.release()
                answers = [future.exception(timeout=15) or future.result() for future in futures]
                wave = sent.sizes[before:]
                print(f"{len(calls)} calls from as many threads in messages of {wave}")
                assert sum(wave) == len(calls) and len(wave) <= 2
                return answers

            versions = behind_a_write(
                [functools.partial(session.set, f"k{i}", f"v{i}".encode()) for i in range(40)]
            )
            assert all(isinstance(version, int) and version >= 1 for version in versions)
            # Every fifth read has an empty key: INVALID_ARGUMENT for it alone.
            keys = ["" if i % 5 == 2 else f"k{i}" for i in range(40)]
            answers = behind_a_write([functools.partial(session.get, key) for key in keys])
            for i, answer in enumerate(answers):
                if i % 5 == 2:
                    assert isinstance(answer, cachet_client.InvalidArgument), (i, answer)
                else:
                    assert answer.data == f"v{i}".encode() and answer.version == versions[i]
            assert session.streams_opened == 1


async def test_closing_a_session_waits_for_the_answers_due(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        await client.cache.set("k", b"v")
        session = client.cache.session()
        assert (await session.get("k")).data == b"v"  # the stream is open
        pending = [asyncio.ensure_future(session.increment(f"c{i}", i)) for i in range(100)]
        await asyncio.sleep(0)  # every call is sent, none answered yet
        await session.close()  # half-closes; the server answers all it was sent
        assert [task.result() for task in pending] == list(range(100))
        with pytest.raises(RuntimeError):
            await session.get("k")


def test_sync_session_serves_many_threads(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        with client.cache.session() as session:

            def worker(n: int) -> None:
                for step in range(10):
                    key = f"w{n}:{step}"
                    session.set(key, f"{n}/{step}".encode())
                    assert session.get(key).data == f"{n}/{step}".encode()
                    assert session.increment(f"count:{n}") == step + 1

            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(worker, range(16)))  # 480 operations, re-raising failures
            assert session.streams_opened == 1
        with pytest.raises(RuntimeError):
            session.get("after close")


async def test_a_failed_operation_does_not_end_the_session(flavor, server, namespace):
    client = open_client(flavor, server.address, namespace)
    try:
        session = client.cache.session()
        await r(session.set("text", b"words"))
        with pytest.raises(cachet_client.InvalidArgument):
            await r(session.get(""))
        with pytest.raises(cachet_client.NotANumber):
            await r(session.increment("text"))
        assert (await r(session.get("text"))).data == b"words"
        assert session.streams_opened == 1
        await r(session.close())
    finally:
        await r(client.close())


async def test_a_read_only_credential_is_refused_writes_in_their_own_results(
    flavor, topology, tmp_path, namespace
):
    with secured_server(topology.url, tmp_path, namespace, mutual=False) as secured:
        tls = cachet_client.TLS(ca=secured.ca.read_bytes(), server_name="cachet.internal")
        writer = open_client(flavor, secured.address, namespace, tls=tls, credential=WRITER_TOKEN)
        reader = open_client(flavor, secured.address, namespace, tls=tls, credential=READER_TOKEN)
        try:
            await r(writer.cache.set("shared", b"hello"))
            session = reader.cache.session()
            with pytest.raises(cachet_client.PermissionDenied) as refused:
                await r(session.set("shared", b"overwritten"))
            assert refused.value.code.name == "PERMISSION_DENIED"
            assert (await r(session.get("shared"))).data == b"hello"
            with pytest.raises(cachet_client.PermissionDenied):
                await r(session.increment("visits"))
            assert await r(session.hash_get("nothing", "f")) == {}
            assert session.streams_opened == 1
            await r(session.close())
            # A Batch with a write needs the write role as a whole call.
            with pytest.raises(cachet_client.PermissionDenied):
                await r(reader.cache.batch().get("shared").set("x", b"y").execute())
            (read,) = await r(reader.cache.batch().get("shared").execute())
            assert read.value.data == b"hello"
            # The batcher keeps reads and writes in Batches apart: other callers' writes
            # never cost a reader its reads.
            batcher = reader.cache.batcher(max_in_flight=1)
            calls = [
                lambda: batcher.get("shared"),
                lambda: batcher.set("shared", b"no"),
                lambda: batcher.hash_get("nothing", "f"),
                lambda: batcher.increment("visits"),
            ]
            if flavor == "async":
                answers = await asyncio.gather(*(c() for c in calls), return_exceptions=True)
            else:
                with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                    futures = [pool.submit(c) for c in calls]
                    answers = [f.exception() or f.result() for f in futures]
            got, set_refused, hashed, increment_refused = answers
            assert got.data == b"hello" and hashed == {}
            assert isinstance(set_refused, cachet_client.PermissionDenied)
            assert isinstance(increment_refused, cachet_client.PermissionDenied)
            assert (await r(writer.cache.get("shared"))).data == b"hello"
        finally:
            await r(writer.close())
            await r(reader.close())


async def test_async_session_fails_pending_operations_when_the_server_dies_and_recovers(
    own_server, namespace, monkeypatch
):
    client = cachet_client.connect(own_server.address, namespace=namespace, timeout=15)
    try:
        sent = SessionMessages(client, monkeypatch)
        session = client.cache.session()
        await session.set("k", b"before")
        assert own_server.process is not None
        os.kill(own_server.process.pid, signal.SIGSTOP)  # nothing is answered from now on
        pending = [asyncio.ensure_future(session.get("k")) for _ in range(50)]
        await eventually(lambda: sum(sent.sizes) == 51)
        assert not any(task.done() for task in pending)
        assert sent.sizes == [1, 50]  # the pending 50 went out packed in one message
        started = time.monotonic()
        own_server.stop()  # SIGKILL: the connection drops, the stream breaks
        results = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), timeout=10
        )
        failed_after = time.monotonic() - started
        assert all(isinstance(result, cachet_client.Unavailable) for result in results), results
        print(f"50 pending operations failed UNAVAILABLE {failed_after * 1000:.0f} ms after kill")
        with pytest.raises(cachet_client.Unavailable):
            await session.get("k")  # a new stream, but no server yet
        with pytest.raises(cachet_client.Unavailable):  # the Batch call fails as a whole
            await client.cache.batch().get("k").set("j", b"v").execute()
        own_server.start()
        channel = client._runner.channels.plain
        await asyncio.wait_for(channel.channel_ready(), timeout=20)
        assert (await session.get("k")).data == b"before"
        assert session.streams_opened >= 2
        await session.close()
    finally:
        await client.close()


def test_sync_session_fails_pending_operations_when_the_server_dies_and_recovers(
    own_server, namespace, monkeypatch
):
    client = cachet_client.connect_sync(own_server.address, namespace=namespace, timeout=15)
    try:
        sent = SessionMessages(client, monkeypatch)
        session = client.cache.session()
        session.set("k", b"before")
        assert own_server.process is not None
        os.kill(own_server.process.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(max_workers=20) as pool:
            sent.hold()
            pending = [pool.submit(session.get, "k") for _ in range(20)]
            assert sent.held.wait(timeout=15)
            wait_until(lambda: sent.sizes[-1] + queued_behind(session) == 20)
            sent.release()
            wait_until(lambda: sum(sent.sizes) == 21)
            assert len(sent.sizes) <= 3  # the 20 pending went out in at most two messages
            time.sleep(0.3)
            assert not any(future.done() for future in pending)
            own_server.stop()
            errors = [future.exception(timeout=10) for future in pending]
        assert all(isinstance(error, cachet_client.Unavailable) for error in errors), errors
        with pytest.raises(cachet_client.Unavailable):
            session.get("k")
        with pytest.raises(cachet_client.Unavailable):  # the Batch call fails as a whole
            client.cache.batch().get("k").set("j", b"v").execute()
        own_server.start()
        grpc_future = grpc.channel_ready_future(client._runner.channels.plain)
        grpc_future.result(timeout=20)
        assert session.get("k").data == b"before"
        assert session.streams_opened >= 2
        session.close()
    finally:
        client.close()


async def test_a_per_operation_deadline_or_cancel_fails_that_operation_only(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace, timeout=0.5) as client:
        async with client.cache.session() as session:
            await session.set("k", b"v")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(cachet_client.DeadlineExceeded):
                    await session.get("k")
                cancelled = asyncio.ensure_future(session.get("k"))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert (await session.get("k")).data == b"v"
            assert session.streams_opened == 1


async def test_closing_the_client_fails_the_session_calls_waiting(server, namespace):
    client = cachet_client.connect(server.address, namespace=namespace, timeout=15)
    session = client.cache.session()
    await session.set("k", b"v")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        pending = [asyncio.ensure_future(session.get("k")) for _ in range(10)]
        await asyncio.sleep(0.1)
        await client.close()
        results = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), timeout=5
        )
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert all(isinstance(result, cachet_client.Cancelled) for result in results), results
    await session.close()  # nothing left to wait for; does not raise


def test_sync_per_operation_deadline_fails_that_operation_only(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace, timeout=0.5) as client:
        with client.cache.session() as session:
            session.set("k", b"v")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(cachet_client.DeadlineExceeded):
                    session.get("k")
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert session.get("k").data == b"v"
            assert session.streams_opened == 1


async def test_async_session_never_sends_a_call_cancelled_while_queued(
    server, namespace, monkeypatch
):
    """Calls queued behind a message being written whose tasks are cancelled are left
    out of the next message, so the server never runs them; those queued beside them
    go out and run."""
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        sent = SessionMessages(client, monkeypatch)
        async with client.cache.session() as session:
            assert await session.increment("warm") == 1
            sent.hold()
            first = asyncio.ensure_future(session.increment("first"))
            await eventually(sent.held.is_set)
            keys = ["kept:0", "doomed:0", "kept:1", "doomed:1"]
            calls = {key: asyncio.ensure_future(session.increment(key)) for key in keys}
            await eventually(lambda: queued_behind(session) == len(keys))
            for key in ("doomed:0", "doomed:1"):
                calls[key].cancel()
                with pytest.raises(asyncio.CancelledError):
                    await calls[key]
            before = len(sent.sizes)
            sent.release()
            assert await first == 1
            assert [await calls[key] for key in ("kept:0", "kept:1")] == [1, 1]
            assert await session.get("doomed:0") is None
            assert await session.get("doomed:1") is None
            assert sent.sizes[before : before + 2] == [1, 2], "the two kept went out packed"
            assert session.streams_opened == 1
        assert await client.cache.get("doomed:0") is None


async def test_async_session_never_sends_a_call_past_its_deadline_while_queued(
    server, namespace, monkeypatch
):
    """Calls past their deadline while queued behind a message being written are never
    sent: their increments do not apply; the message being written (its caller timed
    out too) cannot be unsent and applies, and calls made after them go out and run."""
    async with cachet_client.connect(server.address, namespace=namespace, timeout=2) as client:
        sent = SessionMessages(client, monkeypatch)
        async with client.cache.session() as session:
            assert await session.increment("warm") == 1
            sent.hold()
            first = asyncio.ensure_future(session.increment("first"))
            await eventually(sent.held.is_set)
            doomed = [asyncio.ensure_future(session.increment(f"doomed:{i}")) for i in range(3)]
            for call in [first, *doomed]:
                with pytest.raises(cachet_client.DeadlineExceeded):
                    await call
            kept = [asyncio.ensure_future(session.increment(f"kept:{i}")) for i in range(2)]
            await eventually(lambda: queued_behind(session) == len(doomed) + len(kept))
            before = len(sent.sizes)
            sent.release()
            assert await asyncio.gather(*kept) == [1, 1]
            for i in range(3):
                assert await session.get(f"doomed:{i}") is None
            assert sent.sizes[before : before + 2] == [1, 2], "first, then the kept two alone"
            assert (await session.get("first")).data == b"1"  # written before its deadline
            assert session.streams_opened == 1


def test_sync_session_never_sends_a_call_past_its_deadline_while_queued(
    server, namespace, monkeypatch
):
    """The sync client's calls past their deadline while queued behind a message being
    written are never sent; those made after them go out and run."""
    with cachet_client.connect_sync(server.address, namespace=namespace, timeout=2) as client:
        sent = SessionMessages(client, monkeypatch)
        with client.cache.session() as session, ThreadPoolExecutor(max_workers=6) as pool:
            assert session.increment("warm") == 1
            sent.hold()
            first = pool.submit(session.increment, "first")
            assert sent.held.wait(timeout=15)
            doomed = [pool.submit(session.increment, f"doomed:{i}") for i in range(3)]
            for call in [first, *doomed]:
                assert isinstance(call.exception(timeout=15), cachet_client.DeadlineExceeded)
            kept = [pool.submit(session.increment, f"kept:{i}") for i in range(2)]
            wait_until(lambda: queued_behind(session) == len(doomed) + len(kept))
            before = len(sent.sizes)
            sent.release()
            assert [call.result(timeout=15) for call in kept] == [1, 1]
            for i in range(3):
                assert session.get(f"doomed:{i}") is None
            assert sent.sizes[before : before + 1] == [2], "the kept two alone"
            assert session.get("first").data == b"1"  # written before its deadline
            assert session.streams_opened == 1


# -- the auto-batcher ----------------------------------------------------------------


async def test_async_batcher_coalesces_concurrent_calls(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        writes = client.cache.batch()
        for i in range(50):
            writes.set(f"u{i}", f"user {i}".encode())
        await writes.execute()
        batcher = client.cache.batcher()
        before = batch_calls(server)
        values = await asyncio.gather(*(batcher.get(f"u{i}") for i in range(50)))
        assert [value.data for value in values] == [f"user {i}".encode() for i in range(50)]
        assert batch_calls(server) - before == 1  # one event-loop turn: one Batch

        before = batch_calls(server)

        async def caller(n: int) -> None:
            for step in range(5):
                await asyncio.sleep(0)
                assert await batcher.increment(f"c{n}") == step + 1

        await asyncio.gather(*(caller(n) for n in range(40)))  # 200 calls
        sent = batch_calls(server) - before
        print(f"200 concurrent increments went out as {sent:.0f} Batch calls")
        assert sent <= 20


def test_sync_batcher_coalesces_concurrent_threads(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        writes = client.cache.batch()
        for i in range(32):
            writes.set(f"u{i}", f"user {i}".encode())
        writes.execute()
        batcher = client.cache.batcher()
        start = threading.Barrier(32)

        def caller(n: int) -> None:
            start.wait()
            for step in range(10):
                assert batcher.get(f"u{n}").data == f"user {n}".encode()
                assert batcher.increment(f"c{n}") == step + 1

        before = batch_calls(server)
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(caller, range(32)))  # 640 calls
        sent = batch_calls(server) - before
        print(f"640 calls from 32 threads went out as {sent:.0f} Batch calls")
        assert sent < 640 / 2


async def test_async_batcher_sends_big_values_a_mib_per_batch(server, namespace):
    """40 sets of 300 kB in one event-loop turn would be one 12 MB Batch, refused whole
    by the server (over its 8 MiB): the batcher takes a MiB of them per Batch."""
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        batcher = client.cache.batcher()
        values = [bytes([65 + i % 26]) * 300_000 for i in range(40)]
        before = batch_calls(server)
        versions = await asyncio.gather(
            *(batcher.set(f"big{i}", value) for i, value in enumerate(values))
        )
        assert all(version >= 1 for version in versions)
        assert batch_calls(server) - before == 14  # 3 sets a Batch
        for i in (0, 20, 39):
            assert (await client.cache.get(f"big{i}")).data == values[i]


def test_sync_batcher_sends_big_values_a_mib_per_batch(own_server, namespace):
    """With its one slot held by a call to a paused server, 30 callers of 300 kB sets
    queue (9 MB, over the server's 8 MiB as one Batch); when it answers they go out a
    MiB (three sets) per Batch."""
    with cachet_client.connect_sync(own_server.address, namespace=namespace, timeout=30) as client:
        batcher = client.cache.batcher(max_in_flight=1)
        coalescer: Any = batcher._transport
        value = b"v" * 300_000
        assert batcher.set("warm", b"up") >= 1
        before = batch_calls(own_server)
        assert own_server.process is not None
        os.kill(own_server.process.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(max_workers=31) as pool:
            try:
                first = pool.submit(batcher.set, "first", value)
                wait_until(lambda: coalescer._in_flight == 1)
                queued = [pool.submit(batcher.set, f"big{i}", value) for i in range(30)]
                wait_until(lambda: len(coalescer._queue) == 30)
            finally:
                os.kill(own_server.process.pid, signal.SIGCONT)
            assert first.result(timeout=30) >= 1
            assert all(call.result(timeout=30) >= 1 for call in queued)
        assert batch_calls(own_server) - before == 1 + 10
        assert batcher.get("big29").data == value


async def test_a_lone_sequential_caller_sends_one_batch_per_call(flavor, server, namespace):
    client = open_client(flavor, server.address, namespace)
    try:
        batcher = client.cache.batcher()
        await r(batcher.set("solo", b"0"))
        before = batch_calls(server)
        for i in range(10):
            assert await r(batcher.set("solo", str(i).encode())) > 0
            assert (await r(batcher.get("solo"))).data == str(i).encode()
        assert batch_calls(server) - before == 20
    finally:
        await r(client.close())


async def test_batcher_errors_stay_with_their_callers(flavor, server, namespace):
    client = open_client(flavor, server.address, namespace)
    try:
        batcher = client.cache.batcher(max_in_flight=1)
        await r(client.cache.set("text", b"words"))
        await r(client.cache.set("ok", b"fine"))
        await r(client.cache.set("gone", b"soon"))
        calls = [
            lambda: batcher.get(""),
            lambda: batcher.increment("text"),
            lambda: batcher.get("ok"),
            lambda: batcher.hash_get("ok", "f"),  # a string, not a hash: WRONG_TYPE
            lambda: batcher.delete("gone"),
        ]
        if flavor == "async":
            results = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
        else:
            with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                futures = [pool.submit(call) for call in calls]
                results = [f.exception() or f.result() for f in futures]
        bad_key, not_a_number, value, wrong_type, deleted = results
        assert isinstance(bad_key, cachet_client.InvalidArgument)
        assert isinstance(not_a_number, cachet_client.NotANumber)
        assert isinstance(wrong_type, cachet_client.WrongType)
        assert value.data == b"fine"
        assert deleted == 1
    finally:
        await r(client.close())
