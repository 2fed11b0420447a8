"""CacheService invalidation by tag and by pattern against a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.backend.cache import TAG_INDEX_GRACE_MS
from cachet_server.backend.keys import Kind, redis_key
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, channel_to, rpc_error

TAGS = [f"tag-{n}" for n in range(5)]


async def _gather_bounded(calls, limit: int = 64):
    gate = asyncio.Semaphore(limit)

    async def one(call):
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def _existing(cache, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        reply = await cache.Exists(pb.ExistsRequest(keys=chunk))
        found |= {key for key, flag in zip(chunk, reply.exists, strict=True) if flag}
    return found


async def test_invalidating_one_tag_removes_exactly_its_keys_and_its_index(
    cache, cachet, namespace
):
    keys = [f"item:{n}" for n in range(1000)]
    await _gather_bounded(
        cache.Set(pb.SetRequest(key=key, value=b"v", tags=[TAGS[n % 5], "all"]))
        for n, key in enumerate(keys)
    )
    index = redis_key(namespace, Kind.TAG, "tag-2")
    assert await cachet.backend.redis.scard(index) == 200

    reply = await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["tag-2"]))

    assert reply.deleted == 200
    tagged = {key for n, key in enumerate(keys) if n % 5 == 2}
    assert await _existing(cache, keys) == set(keys) - tagged
    assert not await cachet.backend.redis.exists(index), "the tag's index must be gone"
    other = redis_key(namespace, Kind.TAG, "tag-3")
    assert await cachet.backend.redis.scard(other) == 200, "other tags keep their index"
    # The shared tag still lists every key; the 200 invalidated ones are stale entries
    # now, and invalidating the shared tag deletes exactly the 800 that remain.
    assert (await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["all"]))).deleted == 800
    assert await _existing(cache, keys) == set()


async def test_a_key_rewritten_without_the_tag_survives(cache, cachet, namespace):
    for key in ("a", "b", "c"):
        await cache.Set(pb.SetRequest(key=key, value=b"tagged", tags=["promo"]))
    await cache.Set(pb.SetRequest(key="b", value=b"untagged"))
    await cache.Set(pb.SetRequest(key="c", value=b"other tag", tags=["other"]))
    await cache.Delete(pb.DeleteRequest(keys=["a"]))
    await cache.Set(pb.SetRequest(key="a", value=b"back, untagged"))

    reply = await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["promo"]))

    assert reply.deleted == 0, "every entry of the index was stale"
    got = await cache.GetMany(pb.GetManyRequest(keys=["a", "b", "c"]))
    assert [e.value for e in got.entries] == [b"back, untagged", b"untagged", b"other tag"]
    assert not await cachet.backend.redis.exists(redis_key(namespace, Kind.TAG, "promo"))


async def test_invalidate_several_tags_counts_each_key_once(cache):
    await cache.Set(pb.SetRequest(key="both", value=b"1", tags=["x", "y"]))
    await cache.Set(pb.SetRequest(key="only-x", value=b"2", tags=["x"]))
    await cache.Set(pb.SetRequest(key="none", value=b"3"))
    reply = await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["x", "y", "never-used"]))
    assert reply.deleted == 2
    assert list((await cache.Exists(pb.ExistsRequest(keys=["both", "only-x", "none"]))).exists) == [
        False,
        False,
        True,
    ]


async def test_tag_index_outlives_its_keys(cache, cachet, namespace):
    await cache.Set(pb.SetRequest(key="short", value=b"v", ttl=Duration(seconds=5), tags=["t"]))
    index = redis_key(namespace, Kind.TAG, "t")
    ttl = await cachet.backend.redis.pttl(index)
    assert 5000 < ttl <= 5000 + TAG_INDEX_GRACE_MS
    await cache.Set(pb.SetRequest(key="long", value=b"v", ttl=Duration(seconds=600), tags=["t"]))
    assert await cachet.backend.redis.pttl(index) > 600_000
    await cache.Set(pb.SetRequest(key="later", value=b"v", ttl=Duration(seconds=1), tags=["t"]))
    assert await cachet.backend.redis.pttl(index) > 600_000, "an index never gets shorter"
    # Expire and Persist stretch the index with the key.
    await cache.Expire(pb.ExpireRequest(key="short", ttl=Duration(seconds=3600)))
    assert await cachet.backend.redis.pttl(index) > 3_600_000
    await cache.Persist(pb.PersistRequest(key="short"))
    assert await cachet.backend.redis.pttl(index) == -1
    assert (await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["t"]))).deleted == 3


async def test_invalidation_voids_a_fill_in_progress(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    await cache.Set(pb.SetRequest(key="k", value=b"written meanwhile", tags=["t"]))
    await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["t"]))
    again = await cache.GetOrLease(pb.GetOrLeaseRequest(key="k"))
    assert again.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="k", lease_token=lease.lease_token, value=b"late"))
    )
    assert error.code() == grpc.StatusCode.ABORTED


async def test_tagged_writes_racing_an_invalidation_stay_listed(cache, cachet, namespace):
    """A key written while its tag is invalidated is either deleted or still listed in
    the index, so the next invalidation catches it: none may survive unlisted."""
    keys = [f"race:{n}" for n in range(300)]
    await _gather_bounded(cache.Set(pb.SetRequest(key=k, value=b"old", tags=["r"])) for k in keys)

    writes = _gather_bounded(
        cache.Set(pb.SetRequest(key=k, value=b"new", tags=["r"])) for k in keys
    )
    await asyncio.gather(
        writes,
        cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["r"])),
        cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["r"])),
    )

    survivors = await _existing(cache, keys)
    listed = {
        m.decode() for m in await cachet.backend.redis.smembers(redis_key(namespace, Kind.TAG, "r"))
    }
    assert survivors <= listed, f"tagged but unlisted: {sorted(survivors - listed)[:5]}"
    await cache.InvalidateTags(pb.InvalidateTagsRequest(tags=["r"]))
    assert await _existing(cache, keys) == set()


async def test_pattern_invalidation_over_10000_keys_stays_in_its_namespace(cachet, namespace):
    other_namespace = f"{namespace}-other"
    families = {
        "user": [f"user:{n}:profile" for n in range(5000)],
        "post": [f"post:{n}" for n in range(4000)],
        "tagged": [f"{{user:7}}:cart:{n}" for n in range(1000)],
    }
    every_key = [key for keys in families.values() for key in keys]
    async with (
        channel_to(cachet.port, namespace) as mine,
        channel_to(cachet.port, other_namespace) as theirs,
    ):
        cache = cache_pb2_grpc.CacheServiceStub(mine)
        other = cache_pb2_grpc.CacheServiceStub(theirs)
        for stub in (cache, other):
            await asyncio.gather(
                *(
                    stub.SetMany(
                        pb.SetManyRequest(
                            entries=[
                                pb.SetManyEntry(key=k, value=b"v")
                                for k in every_key[start : start + 1000]
                            ]
                        )
                    )
                    for start in range(0, len(every_key), 1000)
                )
            )

        started = asyncio.get_running_loop().time()
        reply = await cache.InvalidatePattern(
            pb.InvalidatePatternRequest(pattern="user:*", batch_size=500)
        )
        elapsed = asyncio.get_running_loop().time() - started
        print(f"InvalidatePattern: 5000 of 10000 keys in {elapsed:.2f}s")

        assert reply.deleted == 5000
        assert await _existing(cache, every_key) == set(families["post"] + families["tagged"])
        reply = await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="{user:7}:*"))
        assert reply.deleted == 1000
        assert await _existing(cache, every_key) == set(families["post"])
        assert await _existing(other, every_key) == set(every_key), "another namespace"
        again = await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="user:*"))
        assert again.deleted == 0
        await other.InvalidatePattern(pb.InvalidatePatternRequest(pattern="*"))
        await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="*"))


async def test_pattern_glob_features_and_metadata_cleanup(cache, cachet, namespace):
    for key in ("a1", "a2", "b1", "a10", "x{y}z"):
        await cache.Set(pb.SetRequest(key=key, value=b"v", tags=["t"]))
    assert (await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="a?"))).deleted == 2
    assert (
        await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="[ab]1*"))
    ).deleted == 2
    assert (await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="x*"))).deleted == 1
    for key in ("a1", "a10", "x{y}z"):
        assert not await cachet.backend.redis.exists(redis_key(namespace, Kind.META, key))


async def test_pattern_invalidation_voids_leases_of_keys_being_filled(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="report:1"))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    reply = await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="report:*"))
    assert reply.deleted == 0, "there was no value yet, only a lease"
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="report:1", lease_token=lease.lease_token, value=b"old"))
    )
    assert error.code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.InvalidateTagsRequest(), "tags"),
        (pb.InvalidateTagsRequest(tags=[""]), "tags[0]"),
        (pb.InvalidateTagsRequest(tags=["ok", "x" * 257]), "tags[1]"),
        (pb.InvalidateTagsRequest(tags=["t"] * 1001), "tags"),
        (pb.InvalidatePatternRequest(), "pattern"),
        (pb.InvalidatePatternRequest(pattern="p" * 1025), "pattern"),
        (pb.InvalidatePatternRequest(pattern="ends-with\\"), "pattern"),
        (pb.InvalidatePatternRequest(pattern="*", batch_size=-1), "batch_size"),
        (pb.InvalidatePatternRequest(pattern="*", batch_size=1001), "batch_size"),
    ],
)
async def test_bad_invalidation_requests(cache, request_, field):
    call = (
        cache.InvalidateTags(request_)
        if isinstance(request_, pb.InvalidateTagsRequest)
        else cache.InvalidatePattern(request_)
    )
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


async def test_escaped_backslash_pattern_is_fine(cache):
    await cache.Set(pb.SetRequest(key="dir\\", value=b"v"))
    reply = await cache.InvalidatePattern(pb.InvalidatePatternRequest(pattern="dir\\\\"))
    assert reply.deleted == 1
