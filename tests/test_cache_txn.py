"""CacheService Txn (etcd-style compare-then-act) against a real Redis."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.backend.keys import CacheKeys
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, error_reason, rpc_error

EQ = pb.COMPARE_OPERATOR_EQUAL
NE = pb.COMPARE_OPERATOR_NOT_EQUAL
GT = pb.COMPARE_OPERATOR_GREATER
LT = pb.COMPARE_OPERATOR_LESS
GE = pb.COMPARE_OPERATOR_GREATER_OR_EQUAL
LE = pb.COMPARE_OPERATOR_LESS_OR_EQUAL


def incr(key: str, by: int) -> pb.TxnOp:
    return pb.TxnOp(increment=pb.TxnIncrement(key=key, by_int=by))


def get(key: str) -> pb.TxnOp:
    return pb.TxnOp(get=pb.TxnGet(key=key))


def only(compare: pb.Compare) -> pb.TxnRequest:
    return pb.TxnRequest(compare=[compare])


def transfer(source: str, destination: str, amount: int) -> pb.TxnRequest:
    """The seed's transferCredits, as one call: check the balance, move the credits."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=source, operator=GE, number=amount)],
        success=[incr(source, -amount), incr(destination, amount)],
        failure=[get(source)],
    )


async def test_credit_transfer_is_one_call(cache):
    await cache.Set(pb.SetRequest(key="{user}:alice:credits", value=b"100"))

    moved = await cache.Txn(transfer("{user}:alice:credits", "{user}:bob:credits", 30))

    assert moved.succeeded
    assert [r.int_value for r in moved.results] == [70, 30]
    assert all(r.version > 0 for r in moved.results)
    refused = await cache.Txn(transfer("{user}:alice:credits", "{user}:bob:credits", 71))
    assert not refused.succeeded
    assert refused.results[0].found and refused.results[0].value == b"70"
    bob = await cache.Get(pb.GetRequest(key="{user}:bob:credits", include_ttl=True))
    assert bob.value == b"30" and bob.ttl.seconds > 0, "a created counter gets the default TTL"


async def test_concurrent_transfers_keep_the_total_and_never_overdraw(cache):
    accounts = [f"{{bank}}:acct:{n}" for n in range(10)]
    await cache.SetMany(
        pb.SetManyRequest(entries=[pb.SetManyEntry(key=a, value=b"100") for a in accounts])
    )
    rng = random.Random(7)
    outcomes: list[bool] = []
    lowest_seen = 100

    async def teller() -> None:
        nonlocal lowest_seen
        for _ in range(10):
            source, destination = rng.sample(accounts, 2)
            reply = await cache.Txn(transfer(source, destination, rng.randint(1, 80)))
            outcomes.append(reply.succeeded)
            if reply.succeeded:
                lowest_seen = min(lowest_seen, reply.results[0].int_value)

    await asyncio.wait_for(asyncio.gather(*(teller() for _ in range(20))), timeout=20)

    balances = await cache.GetMany(pb.GetManyRequest(keys=accounts))
    values = [int(e.value) for e in balances.entries]
    assert sum(values) == 1000
    assert min(values) >= 0 and lowest_seen >= 0
    assert len(outcomes) == 200 and any(outcomes) and not all(outcomes), (
        "some transfers must have been refused for lack of funds"
    )
    print(f"Txn: {sum(outcomes)} of 200 concurrent transfers succeeded, balances {values}")


async def test_cross_slot_keys_are_refused(cache):
    error = await rpc_error(cache.Txn(transfer("alice", "bob", 1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "CROSS_SLOT"
    assert "hash tag" in error.details() and "slot" in error.details()
    assert not (await cache.Exists(pb.ExistsRequest(keys=["alice", "bob"]))).count


async def test_compare_exists_value_and_version(cache):
    stored = await cache.Set(pb.SetRequest(key="{d}:doc", value=b"draft"))

    def check(*compares: pb.Compare) -> pb.TxnRequest:
        return pb.TxnRequest(compare=list(compares), success=[get("{d}:doc")])

    cases = [
        (pb.Compare(key="{d}:doc", operator=EQ, exists=True), True),
        (pb.Compare(key="{d}:doc", operator=NE, exists=True), False),
        (pb.Compare(key="{d}:missing", operator=EQ, exists=False), True),
        (pb.Compare(key="{d}:doc", operator=EQ, value=b"draft"), True),
        (pb.Compare(key="{d}:doc", operator=NE, value=b"draft"), False),
        (pb.Compare(key="{d}:missing", operator=EQ, value=b""), False),
        (pb.Compare(key="{d}:missing", operator=NE, value=b"x"), True),
        (pb.Compare(key="{d}:doc", operator=EQ, version=stored.version), True),
        (pb.Compare(key="{d}:doc", operator=LT, version=stored.version + 1), True),
        (pb.Compare(key="{d}:doc", operator=GT, version=stored.version), False),
        (pb.Compare(key="{d}:missing", operator=EQ, version=0), True),
    ]
    for compare, expected in cases:
        reply = await cache.Txn(check(compare))
        assert reply.succeeded is expected, compare
        assert len(reply.results) == (1 if expected else 0)
    both = await cache.Txn(check(cases[0][0], cases[1][0]))
    assert not both.succeeded, "every comparison must hold"


async def test_compare_number_with_every_operator(cache):
    await cache.Set(pb.SetRequest(key="{n}:x", value=b"10"))
    await cache.Set(pb.SetRequest(key="{n}:f", value=b"2.5"))
    table = [
        (EQ, 10, True),
        (NE, 10, False),
        (GT, 9.5, True),
        (GT, 10, False),
        (LT, 10.5, True),
        (LT, 10, False),
        (GE, 10, True),
        (GE, 11, False),
        (LE, 10, True),
        (LE, 9, False),
    ]
    for operator, number, expected in table:
        request = pb.TxnRequest(compare=[pb.Compare(key="{n}:x", operator=operator, number=number)])
        assert (await cache.Txn(request)).succeeded is expected, (operator, number)
    floats = pb.TxnRequest(compare=[pb.Compare(key="{n}:f", operator=GT, number=2.25)])
    assert (await cache.Txn(floats)).succeeded
    missing = pb.TxnRequest(compare=[pb.Compare(key="{n}:none", operator=EQ, number=0)])
    assert (await cache.Txn(missing)).succeeded, "a missing key reads as 0"


async def test_compare_ttl(cache):
    await cache.Set(pb.SetRequest(key="{t}:k", value=b"v", ttl=Duration(seconds=60)))

    async def holds(key: str, operator: int, ttl_ms: int) -> bool:
        request = pb.TxnRequest(compare=[pb.Compare(key=key, operator=operator, ttl_ms=ttl_ms)])
        return (await cache.Txn(request)).succeeded

    assert await holds("{t}:k", GT, 50_000)
    assert not await holds("{t}:k", GT, 60_001)
    assert await holds("{t}:k", LE, 60_000)
    assert await holds("{t}:missing", EQ, -2)


async def test_operations_run_in_order_and_bump_versions(cache):
    first = await cache.Set(pb.SetRequest(key="{o}:a", value=b"1"))
    reply = await cache.Txn(
        pb.TxnRequest(
            success=[
                pb.TxnOp(set=pb.TxnSet(key="{o}:a", value=b"5", ttl=Duration(seconds=30))),
                incr("{o}:a", 2),
                get("{o}:a"),
                pb.TxnOp(delete=pb.TxnDelete(key="{o}:a")),
                pb.TxnOp(delete=pb.TxnDelete(key="{o}:a")),
                get("{o}:a"),
                incr("{o}:b", 1),
            ]
        )
    )
    assert reply.succeeded
    set_, increment, read, deleted, deleted_again, read_after, created = reply.results
    assert first.version < set_.version < increment.version == read.version
    assert increment.int_value == 7 and read.found and read.value == b"7"
    assert deleted.found and not deleted_again.found
    assert not read_after.found and read_after.version == 0
    assert created.int_value == 1 and created.version > 0
    assert not (await cache.Get(pb.GetRequest(key="{o}:a"))).found


async def test_increment_keeps_ttl_and_is_exact_beyond_2_to_the_53(cache):
    big = 2**60
    await cache.Set(pb.SetRequest(key="{b}:n", value=str(big).encode(), ttl=Duration(seconds=50)))
    reply = await cache.Txn(pb.TxnRequest(success=[incr("{b}:n", 1), incr("{b}:n", -3)]))
    assert [r.int_value for r in reply.results] == [big + 1, big - 2]
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="{b}:n"))
    assert 48_000 <= ttl.ttl.ToMilliseconds() <= 50_000
    # The same fix holds for the plain Increment RPC.
    assert (await cache.Increment(pb.IncrementRequest(key="{b}:n", by_int=2))).int_value == big


async def test_a_failing_operation_writes_nothing(cache, cachet, namespace):
    await cache.Set(pb.SetRequest(key="{f}:text", value=b"hello"))
    await cache.Set(pb.SetRequest(key="{f}:max", value=b"9223372036854775807"))
    await cachet.backend.redis.hset(CacheKeys.of(namespace, "{f}:hash").data, "f", "1")
    cases = [
        (incr("{f}:text", 1), "NOT_A_NUMBER"),
        (incr("{f}:max", 1), "OUT_OF_RANGE"),
        (get("{f}:hash"), "WRONG_TYPE"),
        (pb.TxnOp(set=pb.TxnSet(key="{f}:hash", value=b"v")), "WRONG_TYPE"),
    ]
    for op, reason in cases:
        error = await rpc_error(
            cache.Txn(pb.TxnRequest(success=[incr("{f}:counter", 1), op, incr("{f}:counter", 1)]))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == reason
        assert "success[1]" in error.details() and "nothing was written" in error.details()
        assert not (await cache.Exists(pb.ExistsRequest(keys=["{f}:counter"]))).count
    error = await rpc_error(
        cache.Txn(pb.TxnRequest(compare=[pb.Compare(key="{f}:text", operator=GT, number=1)]))
    )
    assert error_reason(error) == "NOT_A_NUMBER"
    assert "compare[0]" in error.details()
    # Deleting works on any type.
    deleted = await cache.Txn(
        pb.TxnRequest(success=[pb.TxnOp(delete=pb.TxnDelete(key="{f}:hash"))])
    )
    assert deleted.results[0].found


async def test_txn_voids_leases_and_drops_stale_copies(cache):
    lease = await cache.GetOrLease(pb.GetOrLeaseRequest(key="{l}:k"))
    await cache.Txn(pb.TxnRequest(success=[pb.TxnOp(set=pb.TxnSet(key="{l}:k", value=b"v"))]))
    error = await rpc_error(
        cache.Fill(pb.FillRequest(key="{l}:k", lease_token=lease.lease_token, value=b"old"))
    )
    assert error_reason(error) == "LEASE_LOST"


async def test_empty_txn_succeeds(cache):
    reply = await cache.Txn(pb.TxnRequest())
    assert reply.succeeded and not reply.results


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.TxnRequest(compare=[pb.Compare(key="k", operator=EQ)]), "compare[0].target"),
        (pb.TxnRequest(compare=[pb.Compare(key="k", exists=True)]), "compare[0].operator"),
        (
            pb.TxnRequest(compare=[pb.Compare(key="k", operator=99, exists=True)]),
            "compare[0].operator",
        ),
        (
            pb.TxnRequest(compare=[pb.Compare(key="k", operator=GT, exists=True)]),
            "compare[0].operator",
        ),
        (
            pb.TxnRequest(compare=[pb.Compare(key="k", operator=LE, value=b"a")]),
            "compare[0].operator",
        ),
        (
            pb.TxnRequest(compare=[pb.Compare(key="k", operator=GT, number=float("nan"))]),
            "compare[0].number",
        ),
        (pb.TxnRequest(compare=[pb.Compare(key="", operator=EQ, exists=True)]), "compare[0].key"),
        (pb.TxnRequest(success=[pb.TxnOp()]), "success[0].op"),
        (pb.TxnRequest(failure=[get("k"), pb.TxnOp(get=pb.TxnGet())]), "failure[1].get.key"),
        (
            pb.TxnRequest(success=[pb.TxnOp(set=pb.TxnSet(key="k", ttl=Duration(seconds=-1)))]),
            "success[0].set.ttl",
        ),
        (
            pb.TxnRequest(success=[pb.TxnOp(set=pb.TxnSet(key="k", value=b"x" * (2**20 + 1)))]),
            "success[0].set.value",
        ),
        (
            pb.TxnRequest(
                success=[pb.TxnOp(increment=pb.TxnIncrement(key="k", ttl=Duration(seconds=10**9)))]
            ),
            "success[0].increment.ttl",
        ),
        (pb.TxnRequest(success=[pb.TxnOp(delete=pb.TxnDelete())]), "success[0].delete.key"),
        (pb.TxnRequest(success=[get("k")] * 1001), "success"),
        (
            pb.TxnRequest(compare=[pb.Compare(key="k", operator=EQ, exists=True)] * 1001),
            "compare",
        ),
    ],
)
async def test_bad_txn_requests(cache, request_, field):
    error = await rpc_error(cache.Txn(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]
