"""CacheService strings and counters against a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.backend.keys import CacheKeys
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, channel_to, error_reason, rpc_error


async def test_set_then_get_round_trips_value_and_version(cache):
    stored = await cache.Set(pb.SetRequest(key="user:1", value=b"alice", ttl=Duration(seconds=60)))
    got = await cache.Get(pb.GetRequest(key="user:1", include_ttl=True))
    assert got.found and got.value == b"alice"
    assert got.version == stored.version > 0
    assert 59_000 <= got.ttl.ToMilliseconds() <= 60_000


async def test_get_missing_key_is_not_found_not_an_error(cache):
    got = await cache.Get(pb.GetRequest(key="nobody"))
    assert not got.found and got.value == b"" and got.version == 0


async def test_write_without_ttl_gets_default_ttl(cache, cachet):
    await cache.Set(pb.SetRequest(key="k", value=b"v"))
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="k"))
    default_ms = cachet.settings.limits.default_ttl.total_seconds() * 1000
    assert ttl.found and ttl.has_ttl
    assert default_ms - 2000 <= ttl.ttl.ToMilliseconds() <= default_ms


async def test_every_write_changes_the_version(cache):
    first = await cache.Set(pb.SetRequest(key="k", value=b"1"))
    second = await cache.Set(pb.SetRequest(key="k", value=b"2"))
    assert second.version > first.version
    await cache.Delete(pb.DeleteRequest(keys=["k"]))
    third = await cache.Set(pb.SetRequest(key="k", value=b"3"))
    assert third.version > second.version, "a re-created key must not repeat a version"


async def test_if_absent_and_if_present_conditions(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"1", condition=pb.SET_CONDITION_IF_ABSENT))
    error = await rpc_error(
        cache.Set(pb.SetRequest(key="k", value=b"2", condition=pb.SET_CONDITION_IF_ABSENT))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "KEY_EXISTS"
    error = await rpc_error(
        cache.Set(pb.SetRequest(key="other", value=b"2", condition=pb.SET_CONDITION_IF_PRESENT))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "KEY_NOT_FOUND"
    await cache.Set(pb.SetRequest(key="k", value=b"3", condition=pb.SET_CONDITION_IF_PRESENT))
    assert (await cache.Get(pb.GetRequest(key="k"))).value == b"3"


async def test_compare_version_set(cache):
    v1 = (await cache.Set(pb.SetRequest(key="k", value=b"1"))).version
    v2 = (await cache.Set(pb.SetRequest(key="k", value=b"2", if_version=v1))).version
    error = await rpc_error(cache.Set(pb.SetRequest(key="k", value=b"3", if_version=v1)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error) == "VERSION_MISMATCH"
    assert str(v2) in error.details()
    assert (await cache.Get(pb.GetRequest(key="k"))).value == b"2"
    # version 0 means "only if absent"
    await cache.Set(pb.SetRequest(key="fresh", value=b"x", if_version=0))
    error = await rpc_error(cache.Set(pb.SetRequest(key="fresh", value=b"y", if_version=0)))
    assert error.code() == grpc.StatusCode.ABORTED


async def test_return_previous(cache):
    first = await cache.Set(pb.SetRequest(key="k", value=b"old", return_previous=True))
    assert not first.previous_found
    second = await cache.Set(pb.SetRequest(key="k", value=b"new", return_previous=True))
    assert second.previous_found and second.previous_value == b"old"


async def test_keep_ttl(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"1", ttl=Duration(seconds=100)))
    await cache.Set(pb.SetRequest(key="k", value=b"2", keep_ttl=True))
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="k"))
    assert 98_000 <= ttl.ttl.ToMilliseconds() <= 100_000
    error = await rpc_error(
        cache.Set(pb.SetRequest(key="k", value=b"3", keep_ttl=True, ttl=Duration(seconds=1)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["keep_ttl"]


async def test_fencing_token_rejects_an_older_writer(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"from-5", fencing_token=5))
    await cache.Set(pb.SetRequest(key="k", value=b"from-7", fencing_token=7))
    error = await rpc_error(cache.Set(pb.SetRequest(key="k", value=b"from-6", fencing_token=6)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error) == "FENCING_TOKEN_STALE"
    assert (await cache.Get(pb.GetRequest(key="k"))).value == b"from-7"


async def test_get_many_keeps_request_order_with_duplicates(cache):
    await cache.SetMany(
        pb.SetManyRequest(
            entries=[
                pb.SetManyEntry(key="a", value=b"1"),
                pb.SetManyEntry(key="b", value=b"2", ttl=Duration(seconds=5)),
            ]
        )
    )
    got = await cache.GetMany(pb.GetManyRequest(keys=["b", "missing", "a", "b"]))
    assert [(e.key, e.found, e.value) for e in got.entries] == [
        ("b", True, b"2"),
        ("missing", False, b""),
        ("a", True, b"1"),
        ("b", True, b"2"),
    ]
    assert all(e.version > 0 for e in got.entries if e.found)
    assert not any(e.HasField("ttl") for e in got.entries), "TTLs only when asked for"
    timed = await cache.GetMany(pb.GetManyRequest(keys=["b", "missing"], include_ttl=True))
    assert 0 < timed.entries[0].ttl.ToMilliseconds() <= 5000
    assert not timed.entries[1].HasField("ttl")
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="b"))
    assert ttl.ttl.ToMilliseconds() <= 5000


async def test_get_many_entries_match_get_for_every_kind_of_entry(cache, redis_client, namespace):
    """Each of GetMany's entries is what Get answers for the same key, for values
    empty, binary and large, keys tagged, Unicode and of many slots (one script per
    slot group, put back in request order), with and without a TTL, and versions of
    any size."""
    cases = {
        "empty": b"",
        "binary": bytes(range(256)) * 3,
        "crlf": b"\r\n$5\r\n*1\r\n",
        "large": b"x" * 300_000,
        "ümlaut-κλειδί-🔑": b"unicode key",
        "{tag}:one": b"tagged 1",
        "{tag}:two": b"tagged 2",
        **{f"spread:{i}": f"value {i}".encode() for i in range(40)},
    }
    await cache.SetMany(
        pb.SetManyRequest(
            entries=[
                pb.SetManyEntry(key=key, value=value, ttl=Duration(seconds=600))
                for key, value in cases.items()
            ]
        )
    )
    await cache.Set(pb.SetRequest(key="forever", value=b"no ttl"))
    await cache.Persist(pb.PersistRequest(key="forever"))
    # A version past 2^32.
    redis_client.hset(CacheKeys.of(namespace, "spread:0").meta, "v", 2**40 + 7)
    keys = ["missing", *cases, "forever", "missing", "{tag}:one"]
    for include_ttl in (False, True):
        got = await cache.GetMany(pb.GetManyRequest(keys=keys, include_ttl=include_ttl))
        assert [entry.key for entry in got.entries] == keys
        for entry in got.entries:
            one = await cache.Get(pb.GetRequest(key=entry.key, include_ttl=include_ttl))
            expected = pb.Entry(
                key=entry.key, found=one.found, value=one.value, version=one.version
            )
            if include_ttl and one.HasField("ttl"):
                expected.ttl.CopyFrom(one.ttl)
                # The two reads ran moments apart: compare the TTLs within a second.
                assert abs(entry.ttl.ToMilliseconds() - one.ttl.ToMilliseconds()) < 1000
                entry.ttl.CopyFrom(one.ttl)
            assert entry == expected, entry.key
        assert got.entries[1 + list(cases).index("spread:0")].version == 2**40 + 7
        assert not got.entries[-3].HasField("ttl"), "a value without expiry answers no TTL"


async def test_get_many_over_the_message_size_is_refused_before_reading(cache):
    big = b"v" * 600_000
    for first in (0, 8):
        await cache.SetMany(
            pb.SetManyRequest(
                entries=[
                    pb.SetManyEntry(key=f"big:{i}", value=big) for i in range(first, first + 8)
                ]
            )
        )
    error = await rpc_error(cache.GetMany(pb.GetManyRequest(keys=[f"big:{i}" for i in range(16)])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "RESPONSE_TOO_LARGE"
    got = await cache.GetMany(pb.GetManyRequest(keys=["big:0", "big:1"]))
    assert [entry.value for entry in got.entries] == [big, big]


async def test_set_many_rejects_duplicate_keys(cache):
    error = await rpc_error(
        cache.SetMany(
            pb.SetManyRequest(
                entries=[pb.SetManyEntry(key="a", value=b"1"), pb.SetManyEntry(key="a", value=b"2")]
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["entries[1].key"]


async def test_delete_and_exists(cache):
    for key in ("a", "b", "c"):
        await cache.Set(pb.SetRequest(key=key, value=b"x"))
    exists = await cache.Exists(pb.ExistsRequest(keys=["a", "zz", "c"]))
    assert exists.count == 2 and list(exists.exists) == [True, False, True]
    deleted = await cache.Delete(pb.DeleteRequest(keys=["a", "b", "zz", "a"]))
    assert deleted.deleted == 2
    assert list((await cache.Exists(pb.ExistsRequest(keys=["a", "b", "c"]))).exists) == [
        False,
        False,
        True,
    ]


async def test_expire_persist_and_ttl(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"v"))
    assert (await cache.Expire(pb.ExpireRequest(key="k", ttl=Duration(seconds=7)))).found
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="k"))
    assert 6000 <= ttl.ttl.ToMilliseconds() <= 7000
    assert (await cache.Persist(pb.PersistRequest(key="k"))).found
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="k"))
    assert ttl.found and not ttl.has_ttl
    assert not (await cache.Expire(pb.ExpireRequest(key="gone", ttl=Duration(seconds=1)))).found
    assert not (await cache.GetTtl(pb.GetTtlRequest(key="gone"))).found


async def test_short_ttl_really_expires(cache):
    await cache.Set(pb.SetRequest(key="k", value=b"v", ttl=Duration(nanos=50_000_000)))
    await asyncio.sleep(0.2)
    assert not (await cache.Get(pb.GetRequest(key="k"))).found


async def test_persist_refused_unless_allowed(redis_standalone):
    from cachet_server.app import running

    from .conftest import make_settings

    async with running(make_settings(redis_standalone.url)) as app:
        async with channel_to(app.port, "persist-off") as chan:
            from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc

            stub = cache_pb2_grpc.CacheServiceStub(chan)
            await stub.Set(pb.SetRequest(key="k", value=b"v"))
            error = await rpc_error(stub.Persist(pb.PersistRequest(key="k")))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(error) == "PERSIST_DISABLED"


async def test_increment_integer_and_float(cache):
    created = await cache.Increment(pb.IncrementRequest(key="n", ttl=Duration(seconds=30)))
    assert created.created and created.int_value == 1
    assert (await cache.Increment(pb.IncrementRequest(key="n", by_int=41))).int_value == 42
    assert (await cache.Increment(pb.IncrementRequest(key="n", by_int=-50))).int_value == -8
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="n"))
    assert 28_000 <= ttl.ttl.ToMilliseconds() <= 30_000, "increment must keep the TTL"
    f = await cache.Increment(pb.IncrementRequest(key="f", by_float=1.5))
    f = await cache.Increment(pb.IncrementRequest(key="f", by_float=0.25))
    assert f.float_value == pytest.approx(1.75)
    assert (await cache.Get(pb.GetRequest(key="n"))).value == b"-8"


async def test_increment_errors(cache):
    await cache.Set(pb.SetRequest(key="text", value=b"hello"))
    error = await rpc_error(cache.Increment(pb.IncrementRequest(key="text", by_int=1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "NOT_A_NUMBER"
    await cache.Set(pb.SetRequest(key="big", value=b"9223372036854775807"))
    error = await rpc_error(cache.Increment(pb.IncrementRequest(key="big", by_int=1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "OUT_OF_RANGE"
    for bad in (float("nan"), float("inf")):
        error = await rpc_error(cache.Increment(pb.IncrementRequest(key="f", by_float=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == ["by_float"]


async def test_bits(cache):
    assert not (await cache.SetBit(pb.SetBitRequest(key="flags", offset=3, value=True))).previous
    assert (await cache.SetBit(pb.SetBitRequest(key="flags", offset=3, value=True))).previous
    await cache.SetBit(pb.SetBitRequest(key="flags", offset=17, value=True))
    assert (await cache.GetBit(pb.GetBitRequest(key="flags", offset=3))).value
    assert not (await cache.GetBit(pb.GetBitRequest(key="flags", offset=4))).value
    assert not (await cache.GetBit(pb.GetBitRequest(key="flags", offset=999))).value
    assert (await cache.BitCount(pb.BitCountRequest(key="flags"))).count == 2
    first_byte = pb.BitCountRequest(key="flags", range=pb.IndexRange(start=0, end=0))
    assert (await cache.BitCount(first_byte)).count == 1
    bits = pb.BitCountRequest(
        key="flags", range=pb.IndexRange(start=0, end=3), unit=pb.BIT_UNIT_BIT
    )
    assert (await cache.BitCount(bits)).count == 1
    assert (await cache.GetTtl(pb.GetTtlRequest(key="flags"))).has_ttl
    error = await rpc_error(cache.SetBit(pb.SetBitRequest(key="flags", offset=2**40, value=True)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == ["offset"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.SetRequest(key="", value=b"v"), "key"),
        (pb.SetRequest(key="k" * 1025, value=b"v"), "key"),
        (pb.SetRequest(key="k", value=b"v" * (1024 * 1024 + 1)), "value"),
        (pb.SetRequest(key="k", value=b"v", ttl=Duration(seconds=-1)), "ttl"),
        (pb.SetRequest(key="k", value=b"v", ttl=Duration(seconds=0)), "ttl"),
        (pb.SetRequest(key="k", value=b"v", ttl=Duration(seconds=10**9)), "ttl"),
        (pb.SetRequest(key="k", value=b"v", ttl=Duration(seconds=1, nanos=2 * 10**9)), "ttl"),
        (pb.SetRequest(key="k", value=b"v", condition=77), "condition"),
        (pb.SetRequest(key="k", value=b"v", tags=[""]), "tags[0]"),
    ],
)
async def test_bad_set_requests_are_invalid_argument(cache, request_, field):
    error = await rpc_error(cache.Set(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]
    assert field.split("[")[0] in error.details()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.Get(pb.GetRequest(key="")),
        lambda c: c.GetMany(pb.GetManyRequest(keys=[])),
        lambda c: c.GetMany(pb.GetManyRequest(keys=["k"] * 1001)),
        lambda c: c.Delete(pb.DeleteRequest(keys=["ok", ""])),
        lambda c: c.Exists(pb.ExistsRequest(keys=[])),
        lambda c: c.Expire(pb.ExpireRequest(key="k")),
        lambda c: c.Expire(pb.ExpireRequest(key="k", ttl=Duration(seconds=-5))),
        lambda c: c.Increment(pb.IncrementRequest(key="k", ttl=Duration(seconds=10**9))),
        lambda c: c.GetTtl(pb.GetTtlRequest(key="x" * 2000)),
        lambda c: c.Get(pb.GetRequest(key="k", early_refresh_beta=-1)),
        lambda c: c.BitCount(pb.BitCountRequest(key="k", unit=9)),
    ],
)
async def test_bad_input_on_every_rpc(cache, call):
    error = await rpc_error(call(cache))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error)


async def test_wrong_type_is_failed_precondition(cache, namespace, redis_client):
    redis_client.hset(CacheKeys.of(namespace, "h").data, "field", "1")
    for call in (
        cache.Get(pb.GetRequest(key="h")),
        cache.Set(pb.SetRequest(key="h", value=b"v")),
        cache.Increment(pb.IncrementRequest(key="h")),
        cache.GetBit(pb.GetBitRequest(key="h", offset=1)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "WRONG_TYPE"
        assert "kind of value" in error.details()


async def test_namespaces_never_collide(cachet):
    async with channel_to(cachet.port, "tenant-a") as a, channel_to(cachet.port, "tenant-b") as b:
        from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc

        cache_a = cache_pb2_grpc.CacheServiceStub(a)
        cache_b = cache_pb2_grpc.CacheServiceStub(b)
        await cache_a.Set(pb.SetRequest(key="shared", value=b"A"))
        await cache_b.Set(pb.SetRequest(key="shared", value=b"B"))
        assert (await cache_a.Get(pb.GetRequest(key="shared"))).value == b"A"
        assert (await cache_b.Get(pb.GetRequest(key="shared"))).value == b"B"
        assert (await cache_a.Delete(pb.DeleteRequest(keys=["shared"]))).deleted == 1
        assert not (await cache_a.Get(pb.GetRequest(key="shared"))).found
        assert (await cache_b.Get(pb.GetRequest(key="shared"))).value == b"B"


async def test_default_namespace_and_bad_namespace(cachet):
    from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc

    async with channel_to(cachet.port) as chan:
        stub = cache_pb2_grpc.CacheServiceStub(chan)
        await stub.Set(pb.SetRequest(key="default-ns-key", value=b"d"))
        got = await stub.Get(
            pb.GetRequest(key="default-ns-key"), metadata=[("cachet-namespace", "default")]
        )
        assert got.value == b"d"
        for bad in ("has space", "curly{brace}", "colon:ns", "x" * 65):
            error = await rpc_error(
                stub.Get(pb.GetRequest(key="k"), metadata=[("cachet-namespace", bad)])
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad_fields(error) == ["metadata:cachet-namespace"]


async def test_hash_tagged_keys_keep_their_tag(cache, namespace):
    from redis.cluster import key_slot

    await cache.Set(pb.SetRequest(key="{user:1}:profile", value=b"p"))
    await cache.Set(pb.SetRequest(key="{user:1}:settings", value=b"s"))
    slots = {
        key_slot(CacheKeys.of(namespace, k).data.encode())
        for k in ("{user:1}:profile", "{user:1}:settings")
    }
    assert slots == {key_slot(b"user:1")}
    assert (await cache.Get(pb.GetRequest(key="{user:1}:profile"))).value == b"p"
    # A literal "{x}" key and the plain key "x" are different keys.
    await cache.Set(pb.SetRequest(key="x", value=b"plain"))
    await cache.Set(pb.SetRequest(key="{x}", value=b"braced"))
    assert (await cache.Get(pb.GetRequest(key="x"))).value == b"plain"
    assert (await cache.Get(pb.GetRequest(key="{x}"))).value == b"braced"


async def test_compare_version_loses_no_update_under_contention(cache):
    """20 workers x 50 read-modify-write cycles through the version condition."""
    await cache.Set(pb.SetRequest(key="counter", value=b"0"))
    conflicts = 0

    async def worker() -> None:
        nonlocal conflicts
        for _ in range(50):
            while True:
                current = await cache.Get(pb.GetRequest(key="counter"))
                new_value = str(int(current.value) + 1).encode()
                try:
                    await cache.Set(
                        pb.SetRequest(key="counter", value=new_value, if_version=current.version)
                    )
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.ABORTED
                    conflicts += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(20))), timeout=60)
    assert (await cache.Get(pb.GetRequest(key="counter"))).value == b"1000"
    assert conflicts > 0, "the workers never actually contended"
