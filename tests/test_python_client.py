"""The Python client (`cachet_client.connect` and `connect_sync`) against a live
cachet-server process on real Redis.

Most tests run once per client flavor: the `client` fixture is the async client or the
sync one, and `r(...)` awaits what the async client answers (the sync client's answers
pass through), so one test body checks both surfaces. The server is a separate process,
so the sync client may block the test's event loop without starving it.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cachet_client
import grpc
import pytest
from cachet_client import serializers

from .conftest import r
from .server_procs import CachetProcess

pytestmark = pytest.mark.topologies(
    "standalone",
    reason="the wrappers are topology-neutral: the server's own tests cover every topology",
)


POLICIES = """
ratelimit:
  policies:
    - name: login
      rate_limit: {requests_per_unit: 2, unit: minute, algorithm: sliding_window_log}
"""


@pytest.fixture(scope="module")
def server(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CachetProcess]:
    config = tmp_path_factory.mktemp("config") / "cachet.yaml"
    config.write_text(POLICIES)
    proc = CachetProcess(
        topology.url,
        CACHET_AUTH__MODE="off",
        CACHET_ALLOW_PERSIST="true",
        CACHET_CONFIG_FILE=str(config),
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


def open_client(flavor: str, server: CachetProcess, namespace: str, **settings: Any) -> Any:
    if flavor == "async":
        return cachet_client.connect(server.address, namespace=namespace, **settings)
    return cachet_client.connect_sync(server.address, namespace=namespace, **settings)


async def close(client: Any) -> None:
    await r(client.close())


@pytest.fixture
async def client(flavor: str, server: CachetProcess, namespace: str) -> AsyncIterator[Any]:
    opened = open_client(flavor, server, namespace)
    try:
        yield opened
    finally:
        await close(opened)


@pytest.fixture
async def json_client(flavor: str, server: CachetProcess, namespace: str) -> AsyncIterator[Any]:
    opened = open_client(flavor, server, namespace, serializer=serializers.JSON)
    try:
        yield opened
    finally:
        await close(opened)


# -- cache: strings and counters ---------------------------------------------------


async def test_strings_round_trip_and_compare_and_set(client):
    cache = client.cache
    assert await r(cache.get("user:1")) is None
    version = await r(cache.set("user:1", b"alice", ttl=timedelta(minutes=1)))
    value = await r(cache.get("user:1"))
    assert value.data == b"alice" and value.value == b"alice" and value.version == version
    await r(cache.set("user:1", b"bob", if_version=value.version))
    with pytest.raises(cachet_client.VersionMismatch) as stale:
        await r(cache.set("user:1", b"carol", if_version=value.version))
    assert stale.value.reason == "VERSION_MISMATCH" and stale.value.code.name == "ABORTED"
    with pytest.raises(cachet_client.KeyExists):
        await r(cache.set("user:1", b"dave", condition="if_absent"))
    with pytest.raises(cachet_client.KeyNotFound):
        await r(cache.set("nobody", b"x", condition="if_present"))
    assert (await r(cache.exchange("swap", b"first"))) is None
    previous = await r(cache.exchange("swap", b"second", ttl=60))
    assert previous.data == b"first" and (await r(cache.get("swap"))).data == b"second"
    assert await r(cache.set_many({"a": b"1", "b": b"2"}, ttl=60)) != []
    assert set(await r(cache.get_many(["user:1", "a", "b", "nope"]))) == {"user:1", "a", "b"}
    assert await r(cache.exists("a", "b", "nope")) == 2
    assert await r(cache.expire("a", timedelta(seconds=30))) is True
    assert await r(cache.expire("nope", 30)) is False
    remaining = await r(cache.ttl("a"))
    assert timedelta(seconds=25) < remaining <= timedelta(seconds=30)
    assert await r(cache.ttl("nope")) is None
    assert await r(cache.increment("hits", 5)) == 5
    assert await r(cache.increment("hits")) == 6
    assert await r(cache.increment_float("temp", 1.5)) == 1.5
    assert await r(cache.delete("user:1", "a", "b", "nope")) == 3


async def test_bits(client):
    cache = client.cache
    assert await r(cache.set_bit("flags", 7, True)) is False
    assert await r(cache.get_bit("flags", 7)) is True
    assert await r(cache.bit_count("flags")) == 1
    assert await r(cache.bit_count("flags", 0, 7, unit="bit")) == 1


async def test_serializers_per_client(json_client, flavor, server, namespace):
    await r(json_client.cache.set("profile", {"name": "alice", "tags": [1, 2]}))
    assert (await r(json_client.cache.get("profile"))).value == {"name": "alice", "tags": [1, 2]}
    with pytest.raises(TypeError):
        await r(open_client(flavor, server, namespace).cache.set("raw", {"not": "bytes"}))
    text = open_client(flavor, server, namespace, serializer=serializers.STR)
    pickled = open_client(flavor, server, namespace, serializer=serializers.PICKLE)
    try:
        await r(text.cache.set("greeting", "héllo"))
        assert (await r(text.cache.get("greeting"))).data == "héllo".encode()
        await r(pickled.cache.set("obj", {1, 2, 3}))
        assert (await r(pickled.cache.get("obj"))).value == {1, 2, 3}
    finally:
        await close(text)
        await close(pickled)


def test_msgpack_serializer_round_trips_or_names_its_extra():
    try:
        import msgpack  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"cachet-client\[msgpack\]"):
            serializers.msgpack()
        return
    codec = serializers.msgpack()
    assert codec.loads(codec.dumps({"a": [1, b"x"]})) == {"a": [1, b"x"]}


# -- cache: collections ----------------------------------------------------------------


async def test_collections(json_client):
    cache = json_client.cache
    assert await r(cache.hash_set("h", {"a": 1, "b": {"x": 2}}, ttl=60)) == 2
    assert await r(cache.hash_get("h", "a", "zz")) == {"a": 1}
    assert await r(cache.hash_get_all("h")) == {"a": 1, "b": {"x": 2}}
    assert await r(cache.hash_increment("h", "a", 4)) == 5
    assert await r(cache.hash_increment_float("h", "f", 0.5)) == 0.5
    assert sorted(await r(cache.hash_keys("h"))) == ["a", "b", "f"]
    assert len(await r(cache.hash_values("h"))) == 3
    assert await r(cache.hash_length("h")) == 3
    fields, token = await r(cache.hash_scan("h", match="a"))
    assert fields == {"a": 5} and token == ""
    assert await r(cache.hash_delete("h", "a", "zz")) == 1

    assert await r(cache.list_push("l", 1, 2, 3, ttl=60)) == 3
    assert await r(cache.list_push("l", 0, end="left")) == 4
    assert await r(cache.list_range("l")) == [0, 1, 2, 3]
    assert await r(cache.list_pop("l", end="right", count=2)) == [3, 2]
    assert await r(cache.list_length("l")) == 2
    assert await r(cache.list_remove("l", 0)) == 1
    assert await r(cache.list_trim("l", 0, 0)) == 1
    assert await r(cache.list_pop("empty", wait=0.2)) == []
    await r(cache.list_push("{q}:a", "job"))
    assert await r(cache.list_move("{q}:a", "{q}:b", wait=0.2)) == (True, "job")

    assert await r(cache.set_add("s", "x", "y", "z", ttl=60)) == 3
    assert await r(cache.set_remove("s", "z", "nope")) == 1
    assert sorted(await r(cache.set_members("s"))) == ["x", "y"]
    assert await r(cache.set_is_member("s", "x", "q")) == [True, False]
    assert await r(cache.set_cardinality("s")) == 2
    assert len(await r(cache.set_random_members("s", 5))) == 2
    await r(cache.set_add("{g}:1", "a", "b"))
    await r(cache.set_add("{g}:2", "b", "c"))
    assert await r(cache.set_combine("intersect", "{g}:1", "{g}:2")) == ["b"]
    assert await r(cache.set_move("{g}:1", "{g}:2", "a")) is True
    assert len(await r(cache.set_pop("{g}:2", 10))) == 3

    assert await r(cache.sorted_set_add("z", {"a": 1.0, "b": 2.0, "c": 3.0}, ttl=60)) == 3
    assert await r(cache.sorted_set_increment("z", "a", 10)) == 11.0
    assert await r(cache.sorted_set_rank("z", "a")) == 2
    assert await r(cache.sorted_set_rank("z", "nope")) is None
    assert await r(cache.sorted_set_range("z", 0, 0, descending=True)) == [("a", 11.0)]
    assert await r(cache.sorted_set_range_by_score("z", 2, 3)) == [("b", 2.0), ("c", 3.0)]
    assert await r(cache.sorted_set_count("z", 2, 3, max_exclusive=True)) == 1
    assert await r(cache.sorted_set_score("z", "b", "nope")) == [2.0, None]
    assert await r(cache.sorted_set_remove("z", "b")) == 1
    assert await r(cache.sorted_set_remove_range("z", scores=(0, 5))) == 1
    assert await r(cache.sorted_set_cardinality("z")) == 1


async def test_wrong_type_and_bad_input_are_typed_errors(client):
    await r(client.cache.set("str", b"x"))
    with pytest.raises(cachet_client.WrongType) as wrong:
        await r(client.cache.list_push("str", b"y"))
    assert wrong.value.code.name == "FAILED_PRECONDITION"
    with pytest.raises(cachet_client.InvalidArgument) as bad:
        await r(client.cache.get(""))
    assert bad.value.field_violations and bad.value.field_violations[0].field == "key"
    with pytest.raises(cachet_client.NotANumber):
        await r(client.cache.increment("str"))
    assert isinstance(bad.value, cachet_client.CachetError)


def test_every_reason_of_the_servers_error_table_has_its_class():
    from cachet_client import errors

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = text[text.index("| status | when | reasons |") :]
    rows = table[: table.index("\n\n")].splitlines()[2:]
    assert len(rows) >= 10
    for row in rows:
        status, _, reasons = (cell.strip() for cell in row.strip("|").split("|"))
        code = grpc.StatusCode[status.strip("`")]
        assert code in errors._BY_CODE, code
        for reason in re.findall(r"`([A-Z_]+)`", reasons):
            if reason in {"INVALID_ARGUMENT", "INTERNAL"}:
                continue  # the status's own class
            assert issubclass(errors._BY_REASON[reason], errors._BY_CODE[code]), reason


# -- cache: tags, patterns, Txn, leases, the decorator ---------------------------------


async def test_invalidation_by_tag_and_pattern(client):
    cache = client.cache
    await r(cache.set("user:1", b"a", tags=["team:red"]))
    await r(cache.set("user:2", b"b", tags=["team:red", "team:blue"]))
    await r(cache.set("page:1", b"c", tags=["team:blue"]))
    assert await r(cache.invalidate_tags("team:red")) == 2
    assert await r(cache.get("page:1")) is not None
    await r(cache.set("page:2", b"d"))
    assert await r(cache.invalidate_pattern("page:*")) == 2
    assert await r(cache.exists("user:1", "user:2", "page:1", "page:2")) == 0


async def test_txn_builder(json_client):
    cache = json_client.cache
    version = await r(cache.set("{o}:stock", 10))
    txn = (
        cache.txn()
        .compare("{o}:stock", "version", "==", version)
        .then_set("{o}:stock", 9)
        .then_increment("{o}:sold")
        .then_get("{o}:stock")
        .else_get("{o}:stock")
    )
    done = await r(cache.commit(txn))
    assert done.succeeded and done.results[1].int_value == 1 and done.results[2].value == 9
    again = await r(cache.commit(txn))  # the version moved on: the else branch runs
    assert not again.succeeded and again.results[0].value == 9
    absent = await r(cache.commit(cache.txn().compare("{o}:nope", "exists", "==", True)))
    assert not absent.succeeded and absent.results == []


OTHER_PROCESS = """
import sys, time
import cachet_client

address, namespace = sys.argv[1], sys.argv[2]
with cachet_client.connect_sync(address, namespace=namespace) as client:
    def compute():
        client.cache.increment("computations")
        time.sleep(1.5)
        return b"from another process"
    print("calling", flush=True)
    print(client.cache.get_or_set("report", compute, ttl=60).decode(), flush=True)
"""


async def test_get_or_set_computes_once_across_processes_clients_and_threads(server, namespace):
    """Callers in another process, in two async clients and in threads of a sync client
    ask for the same missing key at once: one computes, the others wait for its Fill."""

    def slow_local() -> bytes:
        sync_client.cache.increment("computations")
        time.sleep(1.5)
        return b"from this process"

    async def async_local() -> bytes:
        return await asyncio.to_thread(slow_local)

    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OTHER_PROCESS,
        server.address,
        namespace,
        stdout=asyncio.subprocess.PIPE,
    )
    assert other.stdout is not None
    assert (await asyncio.wait_for(other.stdout.readline(), 30)).strip() == b"calling"
    async_clients = [cachet_client.connect(server.address, namespace=namespace) for _ in range(2)]
    sync_client = cachet_client.connect_sync(server.address, namespace=namespace)
    try:
        answers = await asyncio.gather(
            *(c.cache.get_or_set("report", async_local, ttl=60) for c in async_clients * 2),
            *(
                asyncio.to_thread(sync_client.cache.get_or_set, "report", slow_local, ttl=60)
                for _ in range(3)
            ),
        )
        remote = (await asyncio.wait_for(other.stdout.readline(), 30)).strip().decode()
        assert await asyncio.wait_for(other.wait(), 30) == 0
        assert len({*answers, remote.encode()}) == 1, (answers, remote)
        assert (await async_clients[0].cache.get("computations")).data == b"1"
        print(f"\n[get_or_set] 8 callers in 2 processes, computed once: {remote!r}")
    finally:
        for c in async_clients:
            await c.close()
        sync_client.close()


async def test_get_or_set_serves_the_stale_copy_during_a_refill(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        await client.cache.get_or_set("feed", lambda: b"v1", ttl=0.3, stale_ttl=60)
        deadline = time.monotonic() + 10
        while await client.cache.get("feed") is not None:
            assert time.monotonic() < deadline, "the value never expired"
            await asyncio.sleep(0.05)
        refilling, release = asyncio.Event(), asyncio.Event()

        async def slow_refill() -> bytes:
            refilling.set()
            await release.wait()
            return b"v2"

        refill = asyncio.create_task(
            client.cache.get_or_set("feed", slow_refill, ttl=60, stale_ttl=60)
        )
        await asyncio.wait_for(refilling.wait(), 5)
        # Meanwhile another caller is answered the stale copy at once.
        stale = await client.cache.get_or_set("feed", lambda: b"never", ttl=60, stale_ttl=60)
        assert stale == b"v1"
        release.set()
        assert await refill == b"v2"
        assert (await client.cache.get("feed")).data == b"v2"


async def test_get_or_set_keeps_a_newer_write_when_its_lease_is_lost(client):
    async def overwritten_meanwhile() -> bytes:
        await r(client.cache.set("cfg", b"newer"))  # voids the lease
        return b"computed"

    def overwritten_meanwhile_sync() -> bytes:
        client.cache.set("cfg", b"newer")
        return b"computed"

    factory = (
        overwritten_meanwhile
        if isinstance(client, cachet_client.AsyncClient)
        else (overwritten_meanwhile_sync)
    )
    assert await r(client.cache.get_or_set("cfg", factory, ttl=60)) == b"computed"
    assert (await r(client.cache.get("cfg"))).data == b"newer"


async def test_cached_decorator_async_and_sync(server, namespace):
    calls: list[str] = []
    async with cachet_client.connect(
        server.address, namespace=namespace, serializer=serializers.JSON
    ) as client:

        @client.cache.cached(ttl=60, key="user:{user_id}", tags=["users"])
        async def load_user(user_id: int) -> dict[str, Any]:
            calls.append(f"async {user_id}")
            return {"id": user_id}

        @client.cache.cached(ttl=60)
        def plain(x: int, y: int = 2) -> int:
            calls.append(f"plain {x}")
            return x * y

        assert await load_user(1) == {"id": 1}
        assert await load_user(user_id=1) == {"id": 1}
        assert await plain(3) == 6 and await plain(3) == 6
        assert calls == ["async 1", "plain 3"]
        assert (await client.cache.get("user:1")).value == {"id": 1}
        await client.cache.invalidate_tags("users")
        assert await load_user(1) == {"id": 1}
        assert calls == ["async 1", "plain 3", "async 1"]

    with cachet_client.connect_sync(
        server.address, namespace=namespace, serializer=serializers.JSON
    ) as sync_client:

        @sync_client.cache.cached(ttl=60, key=lambda user_id: f"user:{user_id}")
        def load_user_sync(user_id: int) -> dict[str, Any]:
            calls.append(f"sync {user_id}")
            return {"id": user_id, "sync": True}

        # Filled by the async client above: the sync one reads the same entry.
        assert load_user_sync(1) == {"id": 1}
        assert load_user_sync(2) == {"id": 2, "sync": True}
        assert load_user_sync(2) == {"id": 2, "sync": True}
        assert calls[-1] == "sync 2" and calls.count("sync 2") == 1


# -- locks ------------------------------------------------------------------------------


async def test_acquire_extend_release_and_fencing(client):
    locks, cache = client.locks, client.cache
    lease = await r(locks.acquire("invoice:7", ttl=timedelta(seconds=5)))
    assert lease.fencing_token > 0
    with pytest.raises(cachet_client.LockHeld) as held:
        await r(locks.acquire("invoice:7", ttl=1))
    assert held.value.code.name == "FAILED_PRECONDITION"
    info = await r(locks.inspect("invoice:7"))
    assert info.held and info.fencing_token == lease.fencing_token
    extended = await r(locks.extend(lease, ttl=30))
    assert extended.fencing_token == lease.fencing_token
    assert (await r(locks.inspect("invoice:7"))).remaining_ttl > timedelta(seconds=20)
    await r(cache.set("invoice:7", b"paid", fencing_token=lease.fencing_token))
    await r(locks.release(lease))
    with pytest.raises(cachet_client.LockNotOwned):
        await r(locks.release(lease))
    later = await r(locks.acquire("invoice:7", ttl=5, wait=1))
    assert later.fencing_token > lease.fencing_token
    await r(cache.set("invoice:7", b"refunded", fencing_token=later.fencing_token))
    with pytest.raises(cachet_client.FencingTokenStale):
        await r(cache.set("invoice:7", b"late", fencing_token=lease.fencing_token))
    await r(locks.release(later))
    assert not (await r(locks.inspect("invoice:7"))).held


async def test_semaphores(client):
    locks = client.locks
    first = await r(locks.acquire_semaphore("pool", limit=2, ttl=10))
    second = await r(locks.acquire_semaphore("pool", limit=2, ttl=10))
    with pytest.raises(cachet_client.SemaphoreFull):
        await r(locks.acquire_semaphore("pool", limit=2, ttl=10))
    with pytest.raises(cachet_client.SemaphoreLimitMismatch):
        await r(locks.acquire_semaphore("pool", limit=3, ttl=10))
    info = await r(locks.inspect_semaphore("pool"))
    assert info.limit == 2 and len(info.holders) == 2
    await r(locks.extend_semaphore(first, ttl=20))
    assert await r(locks.release_semaphore(first)) == 1
    assert await r(locks.release_semaphore(second)) == 0


async def test_async_hold_and_semaphore_blocks(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        async with client.locks.hold("job", ttl=timedelta(seconds=2)) as held:
            assert held.fencing_token > 0 and not held.lost.is_set()
            with pytest.raises(cachet_client.LockHeld):
                await client.locks.acquire("job", ttl=1)
        later = await client.locks.acquire("job", ttl=1, wait=2)
        assert later.fencing_token > held.fencing_token
        assert not held.lost.is_set()
        with pytest.raises(cachet_client.LockHeld):
            async with client.locks.hold("job", ttl=1):
                raise AssertionError("granted while held")
        await client.locks.release(later)
        async with client.locks.semaphore("slots", limit=1, ttl=5) as slot:
            assert slot.fencing_token > 0
            with pytest.raises(cachet_client.SemaphoreFull):
                await client.locks.acquire_semaphore("slots", limit=1, ttl=5)
        assert (await client.locks.inspect_semaphore("slots")).holders == []


def test_sync_hold_and_semaphore_blocks(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        with client.locks.hold("job", ttl=timedelta(seconds=2)) as held:
            assert held.fencing_token > 0 and not held.lost.is_set()
            with pytest.raises(cachet_client.LockHeld):
                client.locks.acquire("job", ttl=1)
        later = client.locks.acquire("job", ttl=1, wait=2)
        assert later.fencing_token > held.fencing_token
        with pytest.raises(cachet_client.LockHeld):
            with client.locks.hold("job", ttl=1):
                raise AssertionError("granted while held")
        client.locks.release(later)
        with client.locks.semaphore("slots", limit=1, ttl=5):
            with pytest.raises(cachet_client.SemaphoreFull):
                client.locks.acquire_semaphore("slots", limit=1, ttl=5)
        assert client.locks.inspect_semaphore("slots").holders == []


async def test_hold_reports_a_lost_lock(flavor, server, namespace, redis_client):
    from cachet_server.backend.keys import Kind, redis_key

    def steal() -> None:  # an operator deletes the lock: the next renewal finds it gone
        redis_client.delete(redis_key(namespace, Kind.LOCK, "job"))

    if flavor == "async":
        async with cachet_client.connect(server.address, namespace=namespace) as client:
            async with client.locks.hold("job", ttl=60, renew_interval=0.1) as held:
                steal()
                await asyncio.wait_for(held.lost.wait(), 10)
    else:
        with cachet_client.connect_sync(server.address, namespace=namespace) as client:
            with client.locks.hold("job", ttl=60, renew_interval=0.1) as held:
                steal()
                assert held.lost.wait(10)
    assert held.lost_reason.startswith("LOST_REASON_NOT_OWNED")


# -- rate limits ------------------------------------------------------------------------


async def test_rate_limits(client):
    limits = client.rate_limits
    verdicts = [await r(limits.check("api:alice", "3/minute")) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[2].remaining == 0 and verdicts[3].retry_after > timedelta(0)
    assert not (await r(limits.peek("api:alice", "3/minute"))).allowed
    inline = await r(limits.check("api:bob", 2, period=timedelta(seconds=30), algorithm="gcra"))
    assert inline.allowed and inline.limit == 2
    many = await r(
        limits.check_many(
            [
                cachet_client.RateLimit("{u}:a", "1/hour"),
                (cachet_client.RateLimit("{u}:b", "5 per hour", algorithm="fixed_window"), 2),
            ],
            all_or_nothing=True,
        )
    )
    assert many.allowed and [d.remaining for d in many.results] == [0, 3]
    assert await r(limits.reset(cachet_client.RateLimit("api:alice", "3/minute"))) >= 1
    assert (await r(limits.check("api:alice", "3/minute"))).allowed
    with pytest.raises(cachet_client.PolicyNotFound) as missing:
        await r(limits.check("api:alice", policy="no-such-policy"))
    assert missing.value.code.name == "NOT_FOUND"
    assert [p.name for p in await r(limits.list_policies())] == ["login"]
    named = [await r(limits.check("alice", policy="login")) for _ in range(3)]
    assert [d.allowed for d in named] == [True, True, False]
    assert named[0].matched_policy == "login" and named[0].limit == 2
    assert not (await r(limits.peek("alice", policy="login"))).allowed
    assert await r(limits.reset(cachet_client.RateLimit("alice", policy="login"))) >= 1
    assert (await r(limits.check("alice", policy="login"))).allowed
    with pytest.raises(ValueError, match="bad rate"):
        await r(limits.check("k", "10/fortnight"))


def test_rate_strings():
    assert cachet_client.parse_rate("10/minute") == (10, timedelta(minutes=1))
    assert cachet_client.parse_rate("100 per 15 minutes") == (100, timedelta(minutes=15))
    assert cachet_client.parse_rate("5/s") == (5, timedelta(seconds=1))
    assert cachet_client.parse_rate("2/3 hours") == (2, timedelta(hours=3))
    for bad in ("ten/minute", "10", "10/minute/2", "10/week"):
        with pytest.raises(ValueError):
            cachet_client.parse_rate(bad)


async def test_rate_limit_decorator(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:

        @client.rate_limits.limit("2/minute", key="send:{0}")
        async def send(user: str) -> str:
            return f"sent to {user}"

        assert [await send("al"), await send("al")] == ["sent to al"] * 2
        with pytest.raises(cachet_client.RateLimited) as denied:
            await send("al")
        assert denied.value.retry_after is not None and denied.value.retry_after > timedelta(0)
        assert await send("bo") == "sent to bo"

    with cachet_client.connect_sync(server.address, namespace=namespace) as sync_client:

        @sync_client.rate_limits.limit("1/minute", key=lambda user: f"sync:{user}")
        def send_sync(user: str) -> str:
            return user

        assert send_sync("al") == "al"
        with pytest.raises(cachet_client.RateLimited):
            send_sync("al")


# -- events -----------------------------------------------------------------------------


async def test_async_publish_subscribe_append_consume(server, namespace):
    async with cachet_client.connect(
        server.address, namespace=namespace, serializer=serializers.JSON
    ) as client:
        events = client.events
        subscription = await events.subscribed("orders", patterns=["audit.*"])
        assert await events.publish("orders", {"id": 1}, type="order.created") == 1
        assert await events.publish("audit.login", {"who": "al"}) == 1
        first = await asyncio.wait_for(anext(subscription), 5)
        second = await asyncio.wait_for(anext(subscription), 5)
        assert (first.topic, first.value, first.type) == ("orders", {"id": 1}, "order.created")
        assert (second.topic, second.value) == ("audit.login", {"who": "al"})
        await subscription.aclose()

        await events.create_group("jobs", "workers", start_id="0")
        ids = [await events.append("jobs", {"n": n}, attributes={"k": "v"}) for n in range(3)]
        got = []
        async for delivery in events.consume("jobs", "workers", "w1", block=0.5):
            got.append(delivery.event.value)
            assert delivery.event.attributes == {"k": "v"}
            await delivery.ack()
            if len(got) == 3:
                break
        assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert (await events.pending("jobs", "workers")).count == 0
        read, last = await events.read("jobs", after_id="0")
        assert [e.id for e in read] == ids and last == ids[-1]
        page, token = await events.range("jobs", page_size=2)
        assert [e.id for e in page] == ids[:2] and token
        info = await events.info("jobs")
        assert info.length == 3 and info.groups[0].name == "workers"
        assert await events.trim("jobs", max_len=1) == 2
        assert await events.delete_group("jobs", "workers") is True
        with pytest.raises(cachet_client.GroupNotFound):
            await events.ack("jobs", "workers", ids[0])


def test_sync_publish_subscribe_append_consume(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        events = client.events
        subscription = events.subscribed("news")
        assert events.publish("news", b"hello") == 1
        assert next(subscription).payload == b"hello"
        subscription.close()

        events.create_group("jobs", "workers", start_id="0")
        events.append("jobs", b"a")
        events.append("jobs", b"b")
        got = []
        for delivery in events.consume("jobs", "workers", "w1", block=0.5):
            got.append(delivery.event.payload)
            delivery.ack()
            if len(got) == 2:
                break
        assert got == [b"a", b"b"]
        assert events.pending("jobs", "workers").count == 0


async def test_claim_and_dead_letters(client):
    events = client.events
    await r(events.create_group("mail", "senders", start_id="0", max_deliveries=1))
    poison = await r(events.append("mail", b"poison"))
    # Delivered once to w1, never acked.
    if isinstance(client, cachet_client.AsyncClient):
        async for delivery in events.consume("mail", "senders", "w1", block=0.5):
            assert delivery.event.id == poison
            break
    else:
        for delivery in events.consume("mail", "senders", "w1", block=0.5):
            assert delivery.event.id == poison
            break
    pending = await r(events.list_pending("mail", "senders"))
    assert [p.id for p in pending.entries] == [poison]
    # Claiming it again would be its second delivery: it goes to the dead letters.
    claimed = await r(events.claim("mail", "senders", "w2", min_idle=0.001, ids=[poison]))
    assert claimed.events == [] and claimed.dead_lettered_ids == [poison]
    dead, _ = await r(events.dead_letters("mail"))
    assert [e.payload for e in dead] == [b"poison"]
    assert dead[0].dead_letter.original_id == poison and dead[0].dead_letter.group == "senders"


# -- admin ------------------------------------------------------------------------------


async def test_admin(client, namespace):
    admin = client.admin
    await r(client.cache.set("report:1", b"x" * 100))
    info = await r(admin.server_info())
    assert info.redis_version and info.nodes
    keys, _ = await r(admin.scan_keys("report:*"))
    assert keys == ["report:1"]
    inspected = await r(admin.inspect_key("report:1"))
    assert inspected.found and inspected.size == 100
    assert await r(admin.key_memory_usage("report:1")) > 100
    assert await r(admin.key_memory_usage("nope")) is None
    assert (await r(admin.big_keys())).keys[0].key == "report:1"
    assert (await r(admin.service_stats())).methods
    assert (await r(admin.memory_stats())).nodes
    assert (await r(admin.list_clients())).clients
    assert (await r(admin.slow_log(page_size=5))).DESCRIPTOR.name == "GetSlowLogResponse"
    assert await r(admin.reset_slow_log()) >= 1
    whitelist = (await r(admin.get_config())).whitelist
    assert whitelist
    with pytest.raises(cachet_client.ConfigNotWhitelisted) as refused:
        await r(admin.set_config({"requirepass": "x"}))
    assert isinstance(refused.value, cachet_client.PermissionDenied)
    assert await r(admin.flush_namespace(confirm=namespace, dry_run=True)) >= 1
    with pytest.raises(cachet_client.ConfirmationMismatch):
        await r(admin.flush_namespace(confirm="other"))
    assert await r(admin.flush_namespace(confirm=namespace)) >= 1
    assert await r(client.cache.get("report:1")) is None


# -- settings ---------------------------------------------------------------------------


async def test_namespace_is_sent_on_unary_and_streaming_calls(flavor, server):
    one, two = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    a, b = open_client(flavor, server, one), open_client(flavor, server, two)
    try:
        await r(a.cache.set("k", b"one"))
        assert await r(b.cache.get("k")) is None
        await r(a.events.append("s", b"in one"))
        await r(a.events.create_group("s", "g", start_id="0"))
        with pytest.raises(cachet_client.GroupNotFound):  # the stream of `one` is not `two`'s
            stream = b.events.consume("s", "g", "c", block=0.2)
            if flavor == "async":
                await anext(stream)
            else:
                next(stream)
    finally:
        await close(a)
        await close(b)


async def test_blocking_calls_wait_beyond_the_default_deadline(flavor, server, namespace):
    client = open_client(flavor, server, namespace, timeout=0.3)
    try:
        # A blocking call may wait its own time on top of the default deadline.
        assert await r(client.cache.list_pop("empty", wait=0.6)) == []
    finally:
        await close(client)


def test_async_client_made_before_the_event_loop_runs(server, namespace):
    client = cachet_client.connect(server.address, namespace=namespace)  # no loop yet

    async def use() -> bytes:
        async with client:
            await client.cache.set("k", b"made early")
            return (await client.cache.get("k")).data

    assert asyncio.run(use()) == b"made early"


async def test_watch_invalidations_async(server, namespace):
    async with cachet_client.connect(server.address, namespace=namespace) as client:
        stream = client.cache.watch_invalidations("user:")
        assert await asyncio.wait_for(anext(stream), 10) == cachet_client.Invalidation(synced=True)
        await client.cache.set("page:1", b"not watched")
        await client.cache.set("user:1", b"alice")
        event = await asyncio.wait_for(anext(stream), 10)
        assert event == cachet_client.Invalidation(keys=("user:1",))
        await stream.aclose()


def test_watch_invalidations_sync(server, namespace):
    with cachet_client.connect_sync(server.address, namespace=namespace) as client:
        stream = client.cache.watch_invalidations()
        assert next(stream).synced
        client.cache.delete("gone")  # nothing existed: no change
        client.cache.set("k", b"v")
        assert next(stream).keys == ("k",)
        stream.close()


# -- near-cache (issue 13) ------------------------------------------------------------


async def test_near_cache_serves_get_and_get_many_locally_and_is_invalidated(
    flavor, server, namespace
):
    reader = open_client(flavor, server, namespace)
    writer = open_client(flavor, server, namespace)
    try:
        near = await r(reader.enable_near_cache(max_entries=100))
        assert near.synced
        with pytest.raises(RuntimeError):
            await r(reader.enable_near_cache())
        await r(writer.cache.set("user:1", b"v1"))
        await r(writer.cache.set("user:2", b"w1"))
        deadline = time.monotonic() + 10
        while near.stats().invalidations < 2:  # the writes' own invalidations came by
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await r(reader.cache.get("user:1"))).data == b"v1"
        assert (await r(reader.cache.get("user:1"))).data == b"v1"
        many = await r(reader.cache.get_many(["user:1", "user:2", "absent"]))
        assert {key: value.data for key, value in many.items()} == {
            "user:1": b"v1",
            "user:2": b"w1",
        }
        assert (await r(reader.cache.get_many(["user:2"])))["user:2"].data == b"w1"
        stats = near.stats()
        assert stats.hits >= 3 and stats.entries == 2, stats
        seen = stats.invalidations
        await r(writer.cache.set("user:1", b"v2"))
        while near.stats().invalidations == seen:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await r(reader.cache.get("user:1"))).data == b"v2"
        assert await r(reader.cache.get("absent")) is None
    finally:
        await close(reader)
        await close(writer)
    assert reader.cache._near is None, "close stops the near-cache"
