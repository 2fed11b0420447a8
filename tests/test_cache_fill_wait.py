"""Fill leases: every write voids them (collections included), and GetOrLease(wait)
blocks until the fill lands instead of polling."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from google.protobuf.duration_pb2 import Duration

from .conftest import error_reason, rpc_error


def _ms(milliseconds: int) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(milliseconds)
    return duration


_TTL = pb.CollectionTtl(ttl=_ms(60_000))


async def _expire_now(cache, key: str) -> None:
    await cache.Expire(pb.ExpireRequest(key=key, ttl=_ms(1)))
    while (await cache.Exists(pb.ExistsRequest(keys=[key]))).exists[0]:
        await asyncio.sleep(0.005)

# Each collection write that can create the collection at `key`.
COLLECTION_WRITES = {
    "HashSet": lambda c, key: c.HashSet(
        pb.HashSetRequest(key=key, fields=[pb.HashField(field="f", value=b"v")], ttl=_TTL)
    ),
    "HashIncrement": lambda c, key: c.HashIncrement(
        pb.HashIncrementRequest(key=key, field="f", by_int=1, ttl=_TTL)
    ),
    "ListPush": lambda c, key: c.ListPush(
        pb.ListPushRequest(key=key, values=[b"v"], end=pb.LIST_END_RIGHT, ttl=_TTL)
    ),
    "SetAdd": lambda c, key: c.SetAdd(pb.SetAddRequest(key=key, members=[b"v"], ttl=_TTL)),
    "SortedSetAdd": lambda c, key: c.SortedSetAdd(
        pb.SortedSetAddRequest(key=key, members=[pb.ScoredMember(member=b"m", score=1)], ttl=_TTL)
    ),
    "SortedSetIncrement": lambda c, key: c.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key=key, member=b"m", delta=1, ttl=_TTL)
    ),
}


@pytest.mark.parametrize("write", sorted(COLLECTION_WRITES))
async def test_a_collection_write_voids_the_fill_lease(cache, write):
    key = "{filled}:" + write
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key=key))
    assert lease.outcome == pb.LEASE_OUTCOME_LEASE_GRANTED
    await COLLECTION_WRITES[write](cache, key)
    # The collection expires (which leaves leases alone): the fill must still not land
    # the value it computed before the write.
    await _expire_now(cache, key)
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key=key, lease_token=lease.lease_token, value=b"old"))
    )
    assert error.code() == grpc.StatusCode.ABORTED and error_reason(error) == "LEASE_LOST"
    assert not (await cache.Get(pb.GetRequest(key=key))).found


@pytest.mark.parametrize("write", ["ListMove", "SetMove"])
async def test_a_move_voids_the_fill_lease_of_its_destination(cache, write):
    source, destination = "{moved}:source", "{moved}:" + write
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key=destination))
    if write == "ListMove":
        await cache.ListPush(
            pb.ListPushRequest(key=source, values=[b"v"], end=pb.LIST_END_RIGHT, ttl=_TTL)
        )
        await cache.ListMove(
            pb.ListMoveRequest(
                source=source,
                destination=destination,
                ttl=_TTL,
                **{"from": pb.LIST_END_LEFT, "to": pb.LIST_END_RIGHT},
            )
        )
    else:
        await cache.SetAdd(pb.SetAddRequest(key=source, members=[b"v"], ttl=_TTL))
        await cache.SetMove(
            pb.SetMoveRequest(source=source, destination=destination, member=b"v", ttl=_TTL)
        )
    await _expire_now(cache, destination)
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key=destination, lease_token=lease.lease_token, value=b"x"))
    )
    assert error_reason(error) == "LEASE_LOST"
