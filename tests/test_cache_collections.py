"""CacheService collections (hashes, lists, sets, sorted sets) against a real Redis.

Written against the `cachet` / `cache` fixtures only (plus the server's own Redis
client for inspection), so they run unchanged on every topology."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, channel_to, error_reason, make_settings, rpc_error
from .redis_waits import blocked_clients, until_blocked

LEFT, RIGHT = pb.LIST_END_LEFT, pb.LIST_END_RIGHT
DESC = pb.ORDER_DESCENDING


def ttl(seconds: float | None = None, refresh: bool = False) -> pb.CollectionTtl:
    options = pb.CollectionTtl(refresh_ttl=refresh)
    if seconds is not None:
        options.ttl.FromMilliseconds(int(seconds * 1000))
    return options


def members(*pairs: tuple[str, float]) -> list[pb.ScoredMember]:
    return [pb.ScoredMember(member=m.encode(), score=s) for m, s in pairs]


def by_score(low=None, high=None, low_open=False, high_open=False) -> pb.ScoreRange:
    score_range = pb.ScoreRange()
    if low is not None:
        score_range.min.CopyFrom(pb.ScoreBound(value=low, exclusive=low_open))
    if high is not None:
        score_range.max.CopyFrom(pb.ScoreBound(value=high, exclusive=high_open))
    return score_range


async def ttl_ms(cache, key: str) -> int:
    answer = await cache.GetTtl(pb.GetTtlRequest(key=key))
    assert answer.found and answer.has_ttl, f"{key} must exist and have a TTL"
    return answer.ttl.ToMilliseconds()


# ---- TTL on every write ---------------------------------------------------------

WRITES_THAT_CREATE = {
    "hash": lambda c, k, t: c.HashSet(
        pb.HashSetRequest(key=k, fields=[pb.HashField(field="f", value=b"v")], ttl=t)
    ),
    "hash_absent": lambda c, k, t: c.HashSet(
        pb.HashSetRequest(
            key=k, fields=[pb.HashField(field="f", value=b"v")], if_absent=True, ttl=t
        )
    ),
    "hash_increment": lambda c, k, t: c.HashIncrement(
        pb.HashIncrementRequest(key=k, field="n", by_int=1, ttl=t)
    ),
    "list": lambda c, k, t: c.ListPush(pb.ListPushRequest(key=k, values=[b"v"], end=LEFT, ttl=t)),
    "set": lambda c, k, t: c.SetAdd(pb.SetAddRequest(key=k, members=[b"m"], ttl=t)),
    "sorted_set": lambda c, k, t: c.SortedSetAdd(
        pb.SortedSetAddRequest(key=k, members=members(("m", 1)), ttl=t)
    ),
    "sorted_set_increment": lambda c, k, t: c.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key=k, member=b"m", delta=1, ttl=t)
    ),
}


@pytest.mark.parametrize("kind", WRITES_THAT_CREATE)
async def test_every_write_gives_a_new_collection_a_ttl(cache, cachet, kind):
    write = WRITES_THAT_CREATE[kind]
    default_ms = cachet.settings.limits.default_ttl.total_seconds() * 1000
    await write(cache, "default", None)
    assert default_ms - 2000 <= await ttl_ms(cache, "default") <= default_ms
    await write(cache, "explicit", ttl(60))
    assert 58_000 <= await ttl_ms(cache, "explicit") <= 60_000
    # A second write keeps the TTL, unless it asks for a refresh.
    await cache.Expire(pb.ExpireRequest(key="explicit", ttl=Duration(seconds=30)))
    await write(cache, "explicit", ttl(600))
    assert await ttl_ms(cache, "explicit") <= 30_000
    await write(cache, "explicit", ttl(600, refresh=True))
    assert await ttl_ms(cache, "explicit") > 590_000
    await write(cache, "explicit", ttl(refresh=True))
    assert default_ms - 2000 <= await ttl_ms(cache, "explicit") <= default_ms


async def test_moves_and_stores_give_the_destination_a_ttl(cache):
    await cache.ListPush(pb.ListPushRequest(key="{q}:src", values=[b"a", b"b"], end=RIGHT))
    moved = await cache.ListMove(move("{q}:src", "{q}:dst", LEFT, LEFT, ttl=ttl(60)))
    assert moved.moved and moved.value == b"a"
    assert 58_000 <= await ttl_ms(cache, "{q}:dst") <= 60_000
    await cache.SetAdd(pb.SetAddRequest(key="{s}:a", members=[b"x", b"y"]))
    await cache.SetMove(
        pb.SetMoveRequest(source="{s}:a", destination="{s}:b", member=b"x", ttl=ttl(70))
    )
    assert 68_000 <= await ttl_ms(cache, "{s}:b") <= 70_000
    await cache.SetCombine(
        pb.SetCombineRequest(
            operation=pb.SET_OPERATION_UNION,
            keys=["{s}:a", "{s}:b"],
            destination="{s}:all",
            destination_ttl=Duration(seconds=80),
        )
    )
    assert 78_000 <= await ttl_ms(cache, "{s}:all") <= 80_000


async def test_conditional_writes_that_write_nothing_create_nothing(cache):
    pushed = await cache.ListPush(
        pb.ListPushRequest(key="absent", values=[b"v"], end=LEFT, if_present=True)
    )
    assert pushed.length == 0
    await cache.SortedSetAdd(
        pb.SortedSetAddRequest(
            key="absent",
            members=members(("m", 1)),
            condition=pb.SORTED_SET_ADD_CONDITION_IF_PRESENT,
        )
    )
    assert not (await cache.Exists(pb.ExistsRequest(keys=["absent"]))).exists[0]


async def test_strings_api_works_on_collections(cache):
    await cache.HashSet(pb.HashSetRequest(key="h", fields=[pb.HashField(field="f", value=b"1")]))
    assert (await cache.Exists(pb.ExistsRequest(keys=["h"]))).exists == [True]
    assert (await cache.Expire(pb.ExpireRequest(key="h", ttl=Duration(seconds=5)))).found
    assert await ttl_ms(cache, "h") <= 5000
    assert (await cache.Delete(pb.DeleteRequest(keys=["h"]))).deleted == 1
    assert (await cache.HashLength(pb.HashLengthRequest(key="h"))).length == 0


# ---- hashes -----------------------------------------------------------------------


async def test_hash_round_trip(cache):
    fields = [
        pb.HashField(field="name", value=b"John Doe"),
        pb.HashField(field="email", value=b"john@example.com"),
        pb.HashField(field="role", value=b"admin"),
    ]
    assert (await cache.HashSet(pb.HashSetRequest(key="user:123", fields=fields))).added == 3
    again = [pb.HashField(field="role", value=b"owner"), pb.HashField(field="x", value=b"")]
    assert (await cache.HashSet(pb.HashSetRequest(key="user:123", fields=again))).added == 1
    got = await cache.HashGet(
        pb.HashGetRequest(key="user:123", fields=["role", "avatar", "name", "x"])
    )
    assert [(f.field, f.found, f.value) for f in got.fields] == [
        ("role", True, b"owner"),
        ("avatar", False, b""),
        ("name", True, b"John Doe"),
        ("x", True, b""),
    ]
    everything = await cache.HashGetAll(pb.HashGetAllRequest(key="user:123"))
    assert {f.field: f.value for f in everything.fields} == {
        "name": b"John Doe",
        "email": b"john@example.com",
        "role": b"owner",
        "x": b"",
    }
    assert sorted((await cache.HashKeys(pb.HashKeysRequest(key="user:123"))).fields) == [
        "email",
        "name",
        "role",
        "x",
    ]
    values = (await cache.HashValues(pb.HashValuesRequest(key="user:123"))).values
    assert sorted(values) == sorted([b"John Doe", b"john@example.com", b"owner", b""])
    assert (await cache.HashLength(pb.HashLengthRequest(key="user:123"))).length == 4
    deleted = await cache.HashDelete(pb.HashDeleteRequest(key="user:123", fields=["x", "nope"]))
    assert deleted.deleted == 1
    assert (await cache.HashLength(pb.HashLengthRequest(key="user:123"))).length == 3


async def test_hash_missing_key_reads_empty(cache):
    assert not (await cache.HashGetAll(pb.HashGetAllRequest(key="none"))).fields
    assert not (await cache.HashGet(pb.HashGetRequest(key="none", fields=["f"]))).fields[0].found
    assert (await cache.HashLength(pb.HashLengthRequest(key="none"))).length == 0
    assert not (await cache.HashKeys(pb.HashKeysRequest(key="none"))).fields
    scan = await cache.HashScan(pb.HashScanRequest(key="none"))
    assert not scan.fields and scan.next_page_token == ""


async def test_hash_set_if_absent_is_per_field(cache):
    await cache.HashSet(
        pb.HashSetRequest(key="h", fields=[pb.HashField(field="created_at", value=b"2024-01-15")])
    )
    added = await cache.HashSet(
        pb.HashSetRequest(
            key="h",
            fields=[
                pb.HashField(field="created_at", value=b"2030-01-01"),
                pb.HashField(field="updated_at", value=b"2030-01-01"),
            ],
            if_absent=True,
        )
    )
    assert added.added == 1
    got = await cache.HashGet(pb.HashGetRequest(key="h", fields=["created_at", "updated_at"]))
    assert [f.value for f in got.fields] == [b"2024-01-15", b"2030-01-01"]


async def test_hash_increment(cache):
    inc = pb.HashIncrementRequest(key="user:1", field="login_count")
    assert (await cache.HashIncrement(inc)).int_value == 1
    inc.by_int = 41
    assert (await cache.HashIncrement(inc)).int_value == 42
    inc.by_int = -50
    assert (await cache.HashIncrement(inc)).int_value == -8
    wallet = pb.HashIncrementRequest(key="user:1", field="wallet", by_float=99.99)
    assert (await cache.HashIncrement(wallet)).float_value == pytest.approx(99.99)
    wallet.by_float = 0.01
    assert (await cache.HashIncrement(wallet)).float_value == pytest.approx(100.0)
    big = pb.HashIncrementRequest(key="user:1", field="big", by_int=2**62 + 1)
    assert (await cache.HashIncrement(big)).int_value == 2**62 + 1, "exact above 2^53"


async def test_hash_increment_errors(cache):
    await cache.HashSet(pb.HashSetRequest(key="h", fields=[pb.HashField(field="s", value=b"x")]))
    for request in (
        pb.HashIncrementRequest(key="h", field="s", by_int=1),
        pb.HashIncrementRequest(key="h", field="s", by_float=1.5),
    ):
        error = await rpc_error(cache.HashIncrement(request))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "NOT_A_NUMBER"
        assert "'s'" in error.details()
    await cache.HashIncrement(pb.HashIncrementRequest(key="h", field="n", by_int=2**63 - 1))
    error = await rpc_error(
        cache.HashIncrement(pb.HashIncrementRequest(key="h", field="n", by_int=1))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "OUT_OF_RANGE"
    got = await cache.HashGet(pb.HashGetRequest(key="h", fields=["s", "n"]))
    assert [f.value for f in got.fields] == [b"x", str(2**63 - 1).encode()]


async def test_hash_scan_pages_through_every_field(cache):
    # More fields than Redis keeps in a listpack (which HSCAN answers in one page).
    for start in range(0, 600, 100):
        await cache.HashSet(
            pb.HashSetRequest(
                key="big",
                fields=[
                    pb.HashField(field=f"f:{i}", value=str(i).encode())
                    for i in range(start, start + 100)
                ],
            )
        )
    seen: dict[str, bytes] = {}
    token, pages = "", 0
    while True:
        page = await cache.HashScan(pb.HashScanRequest(key="big", page_token=token, page_size=50))
        seen.update({f.field: f.value for f in page.fields})
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 600 and seen["f:7"] == b"7"
    assert pages > 1
    matched: set[str] = set()
    token = ""
    while True:
        page = await cache.HashScan(
            pb.HashScanRequest(key="big", match="f:1?", page_token=token, page_size=1000)
        )
        matched |= {f.field for f in page.fields}
        token = page.next_page_token
        if not token:
            break
    assert matched == {f"f:{i}" for i in range(10, 20)}


# ---- lists -----------------------------------------------------------------------


async def test_list_push_pop_range(cache):
    push = await cache.ListPush(
        pb.ListPushRequest(key="q", values=[b"task_1", b"task_2", b"task_3"], end=RIGHT)
    )
    assert push.length == 3
    await cache.ListPush(pb.ListPushRequest(key="q", values=[b"task_0"], end=LEFT))
    whole = await cache.ListRange(pb.ListRangeRequest(key="q"))
    assert whole.values == [b"task_0", b"task_1", b"task_2", b"task_3"]
    last_two = await cache.ListRange(
        pb.ListRangeRequest(key="q", range=pb.IndexRange(start=-2, end=-1))
    )
    assert last_two.values == [b"task_2", b"task_3"]
    assert (await cache.ListPop(pb.ListPopRequest(key="q", end=LEFT))).values == [b"task_0"]
    popped = await cache.ListPop(pb.ListPopRequest(key="q", end=RIGHT, count=2))
    assert popped.values == [b"task_3", b"task_2"]
    assert (await cache.ListLength(pb.ListLengthRequest(key="q"))).length == 1
    assert (await cache.ListPop(pb.ListPopRequest(key="q", end=LEFT, count=5))).values == [
        b"task_1"
    ]
    assert not (await cache.ListPop(pb.ListPopRequest(key="q", end=LEFT))).values
    assert not (await cache.Exists(pb.ExistsRequest(keys=["q"]))).exists[0]


async def test_capped_list_keeps_newest(cache):
    for i in range(15):
        pushed = await cache.ListPush(
            pb.ListPushRequest(
                key="recent", values=[f"product_{i}".encode()], end=LEFT, keep_newest=10
            )
        )
    assert pushed.length == 10
    recent = await cache.ListRange(pb.ListRangeRequest(key="recent"))
    assert recent.values == [f"product_{i}".encode() for i in range(14, 4, -1)]
    # Pushing at the tail keeps the tail.
    await cache.ListPush(
        pb.ListPushRequest(key="log", values=[str(i).encode() for i in range(8)], end=RIGHT)
    )
    kept = await cache.ListPush(
        pb.ListPushRequest(key="log", values=[b"8", b"9"], end=RIGHT, keep_newest=3)
    )
    assert kept.length == 3
    assert (await cache.ListRange(pb.ListRangeRequest(key="log"))).values == [b"7", b"8", b"9"]


async def test_list_trim_and_remove(cache):
    values = [b"a", b"b", b"a", b"c", b"a", b"d"]
    await cache.ListPush(pb.ListPushRequest(key="l", values=values, end=RIGHT))
    remove_first = pb.ListRemoveRequest(key="l", value=b"a", count=1)
    assert (await cache.ListRemove(remove_first)).removed == 1
    remove_last = pb.ListRemoveRequest(key="l", value=b"a", count=-1)
    assert (await cache.ListRemove(remove_last)).removed == 1
    assert (await cache.ListRange(pb.ListRangeRequest(key="l"))).values == [
        b"b",
        b"a",
        b"c",
        b"d",
    ]
    remove_all = pb.ListRemoveRequest(key="l", value=b"a")
    assert (await cache.ListRemove(remove_all)).removed == 1
    trimmed = await cache.ListTrim(pb.ListTrimRequest(key="l", range=pb.IndexRange(start=0, end=1)))
    assert trimmed.length == 2
    assert (await cache.ListRange(pb.ListRangeRequest(key="l"))).values == [b"b", b"c"]
    gone = await cache.ListTrim(pb.ListTrimRequest(key="l", range=pb.IndexRange(start=5, end=9)))
    assert gone.length == 0


def move(source: str, destination: str, from_end=LEFT, to_end=RIGHT, **kw) -> pb.ListMoveRequest:
    return pb.ListMoveRequest(
        source=source, destination=destination, to=to_end, **{"from": from_end}, **kw
    )


async def test_list_move_between_lists_of_one_slot(cache):
    await cache.ListPush(pb.ListPushRequest(key="{q}:pending", values=[b"1", b"2"], end=RIGHT))
    first = await cache.ListMove(move("{q}:pending", "{q}:processing"))
    assert first.moved and first.value == b"1"
    second = await cache.ListMove(move("{q}:pending", "{q}:processing", RIGHT, LEFT))
    assert second.value == b"2"
    assert not (await cache.ListMove(move("{q}:pending", "{q}:processing"))).moved
    processing = await cache.ListRange(pb.ListRangeRequest(key="{q}:processing"))
    assert processing.values == [b"2", b"1"]
    # A list can rotate onto itself.
    rotated = await cache.ListMove(move("{q}:processing", "{q}:processing", LEFT, RIGHT))
    assert rotated.value == b"2"
    processing = await cache.ListRange(pb.ListRangeRequest(key="{q}:processing"))
    assert processing.values == [b"1", b"2"]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.ListMove(move("pending", "processing")),
        lambda c: c.SetMove(pb.SetMoveRequest(source="a", destination="b", member=b"m")),
        lambda c: c.SetCombine(
            pb.SetCombineRequest(operation=pb.SET_OPERATION_INTERSECT, keys=["a", "b"])
        ),
        lambda c: c.SetCombine(
            pb.SetCombineRequest(
                operation=pb.SET_OPERATION_UNION, keys=["{t}:a", "{t}:b"], destination="out"
            )
        ),
    ],
)
async def test_two_key_operations_need_one_slot_on_every_topology(cache, call):
    error = await rpc_error(call(cache))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "CROSS_SLOT"
    assert "hash tag" in error.details()


# ---- blocking pops ----------------------------------------------------------------


def report_wake(what: str, latencies_ms: list[float], cachet) -> None:
    latencies_ms.sort()
    print(
        f"\n{what} on {cachet.backend.kind}: wake latency (push sent -> waiter answered), "
        f"{len(latencies_ms)} rounds: median {latencies_ms[len(latencies_ms) // 2]:.1f} ms, "
        f"max {latencies_ms[-1]:.1f} ms"
    )


async def test_blocking_pop_wakes_as_soon_as_a_value_is_pushed(cache, cachet):
    latencies_ms = []
    for _ in range(10):
        waiter = asyncio.ensure_future(
            cache.ListPop(
                pb.ListPopRequest(key="jobs", end=LEFT, count=3, wait=Duration(seconds=10)),
                timeout=15,
            )
        )
        await until_blocked(cachet)
        assert not waiter.done()
        pushed_at = time.monotonic()
        await cache.ListPush(pb.ListPushRequest(key="jobs", values=[b"job-1", b"job-2"], end=RIGHT))
        answer = await waiter
        latencies_ms.append((time.monotonic() - pushed_at) * 1000)
        assert answer.values == [b"job-1", b"job-2"]
        assert (await cache.ListLength(pb.ListLengthRequest(key="jobs"))).length == 0
    report_wake("ListPop", latencies_ms, cachet)


async def test_blocking_move_wakes_as_soon_as_a_value_is_pushed(cache, cachet):
    latencies_ms = []
    for i in range(10):
        waiter = asyncio.ensure_future(
            cache.ListMove(
                move("{w}:pending", "{w}:processing", wait=Duration(seconds=10), ttl=ttl(60)),
                timeout=15,
            )
        )
        await until_blocked(cachet)
        assert not waiter.done()
        pushed_at = time.monotonic()
        job = f"job-{i}".encode()
        await cache.ListPush(pb.ListPushRequest(key="{w}:pending", values=[job], end=RIGHT))
        answer = await waiter
        latencies_ms.append((time.monotonic() - pushed_at) * 1000)
        assert answer.moved and answer.value == job
    report_wake("ListMove", latencies_ms, cachet)
    processing = await cache.ListRange(pb.ListRangeRequest(key="{w}:processing"))
    assert processing.values == [f"job-{i}".encode() for i in range(10)]
    assert 58_000 <= await ttl_ms(cache, "{w}:processing") <= 60_000
    assert (await cache.ListLength(pb.ListLengthRequest(key="{w}:pending"))).length == 0


async def test_one_pushed_value_goes_to_exactly_one_of_many_waiters(cache, cachet):
    async def pop():
        request = pb.ListPopRequest(key="work", end=LEFT, wait=Duration(seconds=2))
        return (await cache.ListPop(request, timeout=5)).values

    async def take():
        request = move("{m}:in", "{m}:out", wait=Duration(seconds=2))
        answer = await cache.ListMove(request, timeout=5)
        return [answer.value] if answer.moved else []

    pops = [asyncio.create_task(pop()) for _ in range(5)]
    takes = [asyncio.create_task(take()) for _ in range(5)]
    await until_blocked(cachet, 10)
    await cache.ListPush(pb.ListPushRequest(key="work", values=[b"a", b"b"], end=RIGHT))
    await cache.ListPush(pb.ListPushRequest(key="{m}:in", values=[b"x", b"y"], end=RIGHT))
    popped = sorted(v for values in await asyncio.gather(*pops) for v in values)
    taken = sorted(v for values in await asyncio.gather(*takes) for v in values)
    assert popped == [b"a", b"b"]
    assert taken == [b"x", b"y"]
    out = await cache.ListRange(pb.ListRangeRequest(key="{m}:out"))
    assert sorted(out.values) == [b"x", b"y"]


@pytest.mark.parametrize("kind", ["pop", "move"])
async def test_blocking_call_returns_empty_before_its_deadline_and_leaves_nothing_behind(
    cache, cachet, kind
):
    if kind == "pop":
        call = cache.ListPop(
            pb.ListPopRequest(key="{d}:q", end=LEFT, wait=Duration(seconds=30)), timeout=1.0
        )
    else:
        call = cache.ListMove(move("{d}:q", "{d}:out", wait=Duration(seconds=30)), timeout=1.0)
    started = time.monotonic()
    answer = await call  # not DEADLINE_EXCEEDED: an empty answer
    elapsed = time.monotonic() - started
    print(f"\n{kind} with a 1 s deadline answered empty after {elapsed * 1000:.0f} ms")
    assert not (answer.values if kind == "pop" else answer.moved)
    assert not await blocked_clients(cachet), "a blocked Redis command outlived the call"
    await cache.ListPush(pb.ListPushRequest(key="{d}:q", values=[b"late"], end=RIGHT))
    await asyncio.sleep(0.2)
    assert (await cache.ListRange(pb.ListRangeRequest(key="{d}:q"))).values == [b"late"]
    assert not (await cache.Exists(pb.ExistsRequest(keys=["{d}:out"]))).exists[0]


@pytest.mark.parametrize("kind", ["pop", "move"])
async def test_a_cancelled_wait_leaves_nothing_behind(cache, cachet, kind):
    if kind == "pop":
        call = cache.ListPop(pb.ListPopRequest(key="{c}:q", end=LEFT, wait=Duration(seconds=10)))
    else:
        call = cache.ListMove(move("{c}:q", "{c}:out", wait=Duration(seconds=10)))
    waiting = asyncio.ensure_future(call)
    await until_blocked(cachet)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    deadline = time.monotonic() + 3
    while await blocked_clients(cachet):
        assert time.monotonic() < deadline, "the cancelled wait is still blocked in Redis"
        await asyncio.sleep(0.05)
    await cache.ListPush(pb.ListPushRequest(key="{c}:q", values=[b"after"], end=RIGHT))
    await asyncio.sleep(0.2)
    assert (await cache.ListRange(pb.ListRangeRequest(key="{c}:q"))).values == [b"after"]


async def test_wait_without_deadline_and_a_wait_longer_than_the_socket_timeout(cache, cachet):
    # The server's Redis socket timeout (2 s by default) is shorter than this wait:
    # the wait goes on across several blocking commands and still sees the push.
    slice_s = cachet.settings.redis_timeout.total_seconds() / 2
    waiter = asyncio.ensure_future(
        cache.ListPop(
            pb.ListPopRequest(key="slow", end=RIGHT, wait=Duration(seconds=math.ceil(slice_s * 4)))
        )
    )
    await asyncio.sleep(slice_s * 1.5)
    assert not waiter.done()
    await cache.ListPush(pb.ListPushRequest(key="slow", values=[b"v"], end=LEFT))
    assert (await asyncio.wait_for(waiter, 10)).values == [b"v"]
    started = time.monotonic()
    empty = await cache.ListPop(
        pb.ListPopRequest(key="slow", end=RIGHT, wait=Duration(nanos=300_000_000))
    )
    assert not empty.values and time.monotonic() - started >= 0.25


async def test_deadline_shorter_than_the_margin_pops_without_waiting(cache):
    await cache.ListPush(pb.ListPushRequest(key="q", values=[b"ready"], end=RIGHT))
    request = pb.ListPopRequest(key="q", end=LEFT, wait=Duration(seconds=5))
    # Had it waited, these calls would end DEADLINE_EXCEEDED.
    assert (await cache.ListPop(request, timeout=0.18)).values == [b"ready"]
    assert not (await cache.ListPop(request, timeout=0.18)).values


# ---- sets ------------------------------------------------------------------------


async def test_set_round_trip(cache):
    tags = [b"redis", b"caching", b"performance"]
    assert (await cache.SetAdd(pb.SetAddRequest(key="tags", members=tags))).added == 3
    assert (await cache.SetAdd(pb.SetAddRequest(key="tags", members=[b"redis", b"x"]))).added == 1
    check = await cache.SetIsMember(pb.SetIsMemberRequest(key="tags", members=[b"redis", b"no"]))
    assert list(check.is_member) == [True, False]
    assert (await cache.SetCardinality(pb.SetCardinalityRequest(key="tags"))).cardinality == 4
    remove = pb.SetRemoveRequest(key="tags", members=[b"x", b"deprecated"])
    assert (await cache.SetRemove(remove)).removed == 1
    assert sorted((await cache.SetMembers(pb.SetMembersRequest(key="tags"))).members) == sorted(
        tags
    )
    distinct = await cache.SetRandomMembers(pb.SetRandomMembersRequest(key="tags", count=5))
    assert sorted(distinct.members) == sorted(tags)
    repeats = await cache.SetRandomMembers(pb.SetRandomMembersRequest(key="tags", count=-7))
    assert len(repeats.members) == 7 and set(repeats.members) <= set(tags)
    one = await cache.SetRandomMembers(pb.SetRandomMembersRequest(key="tags"))
    assert len(one.members) == 1
    popped = (await cache.SetPop(pb.SetPopRequest(key="tags", count=2))).members
    assert len(popped) == 2 and set(popped) <= set(tags)
    rest = (await cache.SetPop(pb.SetPopRequest(key="tags", count=10))).members
    assert sorted([*popped, *rest]) == sorted(tags)
    assert not (await cache.SetPop(pb.SetPopRequest(key="tags"))).members
    assert (await cache.SetCardinality(pb.SetCardinalityRequest(key="tags"))).cardinality == 0


async def test_set_move(cache):
    await cache.SetAdd(pb.SetAddRequest(key="{post}:123", members=[b"redis", b"db"]))
    request = pb.SetMoveRequest(source="{post}:123", destination="{post}:456", member=b"redis")
    assert (await cache.SetMove(request)).moved
    assert not (await cache.SetMove(request)).moved
    assert (await cache.SetMembers(pb.SetMembersRequest(key="{post}:456"))).members == [b"redis"]


async def test_set_combine(cache):
    await cache.SetAdd(pb.SetAddRequest(key="{u}:followers:123", members=[b"a", b"b", b"c"]))
    await cache.SetAdd(pb.SetAddRequest(key="{u}:followers:456", members=[b"b", b"c", b"d"]))
    keys = ["{u}:followers:123", "{u}:followers:456"]

    async def combine(operation, **kw):
        return await cache.SetCombine(pb.SetCombineRequest(operation=operation, keys=keys, **kw))

    inter = await combine(pb.SET_OPERATION_INTERSECT)
    assert sorted(inter.members) == [b"b", b"c"] and inter.cardinality == 2
    union = await combine(pb.SET_OPERATION_UNION)
    assert sorted(union.members) == [b"a", b"b", b"c", b"d"] and union.cardinality == 4
    diff = await combine(pb.SET_OPERATION_DIFF)
    assert diff.members == [b"a"]
    stored = await combine(pb.SET_OPERATION_INTERSECT, destination="{u}:mutual")
    assert stored.cardinality == 2 and not stored.members
    mutual = await cache.SetMembers(pb.SetMembersRequest(key="{u}:mutual"))
    assert sorted(mutual.members) == [b"b", b"c"]
    # The destination is replaced, and an empty result leaves no key.
    await cache.SetAdd(pb.SetAddRequest(key="{u}:none", members=[b"z"]))
    empty = await cache.SetCombine(
        pb.SetCombineRequest(
            operation=pb.SET_OPERATION_INTERSECT,
            keys=["{u}:followers:123", "{u}:none"],
            destination="{u}:mutual",
        )
    )
    assert empty.cardinality == 0
    assert not (await cache.Exists(pb.ExistsRequest(keys=["{u}:mutual"]))).exists[0]


# ---- sorted sets ------------------------------------------------------------------


async def test_sorted_set_add_conditions(cache):
    add = pb.SortedSetAddRequest(key="z", members=members(("a", 1), ("b", 2)))
    answer = await cache.SortedSetAdd(add)
    assert (answer.added, answer.changed) == (2, 2)

    async def add_with(condition, *pairs):
        answer = await cache.SortedSetAdd(
            pb.SortedSetAddRequest(key="z", members=members(*pairs), condition=condition)
        )
        return answer.added, answer.changed

    assert await add_with(pb.SORTED_SET_ADD_CONDITION_IF_ABSENT, ("a", 9), ("c", 3)) == (1, 1)
    assert await add_with(pb.SORTED_SET_ADD_CONDITION_IF_PRESENT, ("a", 5), ("d", 4)) == (0, 1)
    assert await add_with(pb.SORTED_SET_ADD_CONDITION_IF_GREATER, ("a", 4), ("b", 7)) == (0, 1)
    assert await add_with(pb.SORTED_SET_ADD_CONDITION_IF_LESS, ("a", 4), ("e", 0)) == (1, 2)
    assert await add_with(pb.SORTED_SET_ADD_CONDITION_UNSPECIFIED, ("c", 3)) == (0, 0)
    scores = await cache.SortedSetScore(
        pb.SortedSetScoreRequest(key="z", members=[b"a", b"b", b"c", b"d", b"e"])
    )
    assert [(s.member, s.found, s.score) for s in scores.scores] == [
        (b"a", True, 4.0),
        (b"b", True, 7.0),
        (b"c", True, 3.0),
        (b"d", False, 0.0),
        (b"e", True, 0.0),
    ]


async def test_sorted_set_ranges_and_counts(cache):
    await cache.SortedSetAdd(
        pb.SortedSetAddRequest(
            key="z", members=members(("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5))
        )
    )

    async def by_rank(start, end, order=pb.ORDER_UNSPECIFIED):
        answer = await cache.SortedSetRange(
            pb.SortedSetRangeRequest(
                key="z", by_rank=pb.IndexRange(start=start, end=end), order=order
            )
        )
        return [(m.member.decode(), m.score) for m in answer.members]

    async def scored(score_range, order=pb.ORDER_ASCENDING, offset=0, limit=0):
        answer = await cache.SortedSetRange(
            pb.SortedSetRangeRequest(
                key="z", by_score=score_range, order=order, offset=offset, limit=limit
            )
        )
        return [m.member.decode() for m in answer.members]

    assert await by_rank(0, 1) == [("a", 1.0), ("b", 2.0)]
    assert await by_rank(0, 1, DESC) == [("e", 5.0), ("d", 4.0)]
    assert await by_rank(-2, -1) == [("d", 4.0), ("e", 5.0)]
    assert await scored(by_score(2, 4)) == ["b", "c", "d"]
    assert await scored(by_score(2, 4, low_open=True, high_open=True)) == ["c"]
    assert await scored(by_score(2, 4), DESC) == ["d", "c", "b"]
    assert await scored(by_score()) == ["a", "b", "c", "d", "e"]
    assert await scored(by_score(-math.inf, math.inf), DESC, offset=1, limit=2) == ["d", "c"]
    assert await scored(by_score(high=3), limit=1) == ["a"]
    assert await scored(by_score(10, 1)) == []

    async def count(score_range):
        return (
            await cache.SortedSetCount(pb.SortedSetCountRequest(key="z", range=score_range))
        ).count

    assert await count(by_score(2, 4)) == 3
    assert await count(by_score(2, 4, high_open=True)) == 2
    assert await count(by_score()) == 5
    assert (
        await cache.SortedSetCardinality(pb.SortedSetCardinalityRequest(key="z"))
    ).cardinality == 5


async def test_sorted_set_remove_and_remove_range(cache):
    await cache.SortedSetAdd(
        pb.SortedSetAddRequest(
            key="z", members=members(("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5))
        )
    )
    removed = await cache.SortedSetRemove(pb.SortedSetRemoveRequest(key="z", members=[b"a", b"x"]))
    assert removed.removed == 1
    by_score_removed = await cache.SortedSetRemoveRange(
        pb.SortedSetRemoveRangeRequest(key="z", by_score=by_score(high=3, high_open=True))
    )
    assert by_score_removed.removed == 1  # b
    by_rank_removed = await cache.SortedSetRemoveRange(
        pb.SortedSetRemoveRangeRequest(key="z", by_rank=pb.IndexRange(start=0, end=0))
    )
    assert by_rank_removed.removed == 1  # c
    left = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key="z", by_rank=pb.IndexRange(start=0, end=-1))
    )
    assert [m.member for m in left.members] == [b"d", b"e"]


async def test_leaderboard_from_the_seed(cache):
    board = "leaderboard:game:1"
    await cache.SortedSetAdd(
        pb.SortedSetAddRequest(
            key=board, members=members(("user:123", 1000), ("user:456", 950), ("user:789", 900))
        )
    )
    # 22 more players, so there is a tail to trim.
    await cache.SortedSetAdd(
        pb.SortedSetAddRequest(key=board, members=members(*((f"p:{i}", 10 * i) for i in range(22))))
    )
    new_score = await cache.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key=board, member=b"user:123", delta=50)
    )
    assert new_score.score == 1050
    created = await cache.SortedSetIncrement(
        pb.SortedSetIncrementRequest(key=board, member=b"user:new", delta=975.5)
    )
    assert created.score == 975.5

    top = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key=board, by_rank=pb.IndexRange(start=0, end=9), order=DESC)
    )
    assert [(m.member, m.score) for m in top.members[:4]] == [
        (b"user:123", 1050.0),
        (b"user:new", 975.5),
        (b"user:456", 950.0),
        (b"user:789", 900.0),
    ]
    assert len(top.members) == 10
    assert [m.score for m in top.members] == sorted((m.score for m in top.members), reverse=True)

    rank = await cache.SortedSetRank(
        pb.SortedSetRankRequest(key=board, member=b"user:456", order=DESC)
    )
    assert (rank.found, rank.rank, rank.score) == (True, 2, 950.0)
    ascending = await cache.SortedSetRank(pb.SortedSetRankRequest(key=board, member=b"user:456"))
    assert ascending.rank == 26 - 1 - 2
    missing = await cache.SortedSetRank(pb.SortedSetRankRequest(key=board, member=b"nobody"))
    assert not missing.found

    band = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key=board, by_score=by_score(900, 1000))
    )
    assert [m.member for m in band.members] == [b"user:789", b"user:456", b"user:new"]
    assert (
        await cache.SortedSetCount(pb.SortedSetCountRequest(key=board, range=by_score(900, 1000)))
    ).count == 3

    # Keep the top 10: remove ranks 0 .. -11 (the bottom of the ascending order).
    trimmed = await cache.SortedSetRemoveRange(
        pb.SortedSetRemoveRangeRequest(key=board, by_rank=pb.IndexRange(start=0, end=-11))
    )
    assert trimmed.removed == 26 - 10
    assert (
        await cache.SortedSetCardinality(pb.SortedSetCardinalityRequest(key=board))
    ).cardinality == 10
    after = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key=board, by_rank=pb.IndexRange(start=0, end=-1), order=DESC)
    )
    assert [m.member for m in after.members] == [m.member for m in top.members]


async def test_delayed_job_queue_from_the_seed(cache):
    queue = "delayed:queue:tasks"
    now = 1_704_067_200
    schedule = [("task:late", now + 3600), ("task:1", now - 30), ("task:2", now - 20),
                ("task:3", now - 10), ("task:old", now - 86_400)]  # fmt: skip
    await cache.SortedSetAdd(pb.SortedSetAddRequest(key=queue, members=members(*schedule)))
    # Remove items older than a day's horizon.
    purged = await cache.SortedSetRemoveRange(
        pb.SortedSetRemoveRangeRequest(key=queue, by_score=by_score(high=now - 3600))
    )
    assert purged.removed == 1
    # The next due task, then the rest that are due, oldest first.
    nxt = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key=queue, by_score=by_score(high=now), limit=1)
    )
    assert [(m.member, m.score) for m in nxt.members] == [(b"task:1", now - 30)]
    due = await cache.SortedSetRange(
        pb.SortedSetRangeRequest(key=queue, by_score=by_score(high=now), limit=10)
    )
    assert [m.member for m in due.members] == [b"task:1", b"task:2", b"task:3"]
    done = await cache.SortedSetRemove(
        pb.SortedSetRemoveRequest(key=queue, members=[m.member for m in due.members])
    )
    assert done.removed == 3
    assert not (
        await cache.SortedSetRange(
            pb.SortedSetRangeRequest(key=queue, by_score=by_score(high=now), limit=10)
        )
    ).members
    left = await cache.SortedSetRange(pb.SortedSetRangeRequest(key=queue, by_score=by_score()))
    assert [m.member for m in left.members] == [b"task:late"]


# ---- wrong types and bad input ------------------------------------------------------

ON_ANY_KEY = [
    lambda c, k: c.HashSet(pb.HashSetRequest(key=k, fields=[pb.HashField(field="f", value=b"")])),
    lambda c, k: c.HashSet(
        pb.HashSetRequest(key=k, fields=[pb.HashField(field="f", value=b"")], if_absent=True)
    ),
    lambda c, k: c.HashGet(pb.HashGetRequest(key=k, fields=["f"])),
    lambda c, k: c.HashGetAll(pb.HashGetAllRequest(key=k)),
    lambda c, k: c.HashDelete(pb.HashDeleteRequest(key=k, fields=["f"])),
    lambda c, k: c.HashIncrement(pb.HashIncrementRequest(key=k, field="f")),
    lambda c, k: c.HashKeys(pb.HashKeysRequest(key=k)),
    lambda c, k: c.HashValues(pb.HashValuesRequest(key=k)),
    lambda c, k: c.HashLength(pb.HashLengthRequest(key=k)),
    lambda c, k: c.HashScan(pb.HashScanRequest(key=k)),
    lambda c, k: c.ListPush(pb.ListPushRequest(key=k, values=[b"v"], end=LEFT)),
    lambda c, k: c.ListPop(pb.ListPopRequest(key=k, end=LEFT)),
    lambda c, k: c.ListPop(pb.ListPopRequest(key=k, end=LEFT, wait=Duration(seconds=1))),
    lambda c, k: c.ListRange(pb.ListRangeRequest(key=k)),
    lambda c, k: c.ListTrim(pb.ListTrimRequest(key=k, range=pb.IndexRange(start=0, end=1))),
    lambda c, k: c.ListLength(pb.ListLengthRequest(key=k)),
    lambda c, k: c.ListRemove(pb.ListRemoveRequest(key=k, value=b"v")),
    lambda c, k: c.ListMove(move(k, k)),
    lambda c, k: c.SetAdd(pb.SetAddRequest(key=k, members=[b"m"])),
    lambda c, k: c.SetRemove(pb.SetRemoveRequest(key=k, members=[b"m"])),
    lambda c, k: c.SetMembers(pb.SetMembersRequest(key=k)),
    lambda c, k: c.SetIsMember(pb.SetIsMemberRequest(key=k, members=[b"m"])),
    lambda c, k: c.SetCardinality(pb.SetCardinalityRequest(key=k)),
    lambda c, k: c.SetRandomMembers(pb.SetRandomMembersRequest(key=k)),
    lambda c, k: c.SetPop(pb.SetPopRequest(key=k)),
    lambda c, k: c.SetMove(pb.SetMoveRequest(source=k, destination=k, member=b"m")),
    lambda c, k: c.SetCombine(pb.SetCombineRequest(operation=pb.SET_OPERATION_UNION, keys=[k])),
    lambda c, k: c.SortedSetAdd(pb.SortedSetAddRequest(key=k, members=members(("m", 1)))),
    lambda c, k: c.SortedSetIncrement(pb.SortedSetIncrementRequest(key=k, member=b"m", delta=1)),
    lambda c, k: c.SortedSetRank(pb.SortedSetRankRequest(key=k, member=b"m")),
    lambda c, k: c.SortedSetRange(
        pb.SortedSetRangeRequest(key=k, by_rank=pb.IndexRange(start=0, end=-1))
    ),
    lambda c, k: c.SortedSetRange(pb.SortedSetRangeRequest(key=k, by_score=by_score())),
    lambda c, k: c.SortedSetCount(pb.SortedSetCountRequest(key=k)),
    lambda c, k: c.SortedSetScore(pb.SortedSetScoreRequest(key=k, members=[b"m"])),
    lambda c, k: c.SortedSetRemove(pb.SortedSetRemoveRequest(key=k, members=[b"m"])),
    lambda c, k: c.SortedSetRemoveRange(
        pb.SortedSetRemoveRangeRequest(key=k, by_rank=pb.IndexRange(start=0, end=1))
    ),
    lambda c, k: c.SortedSetCardinality(pb.SortedSetCardinalityRequest(key=k)),
]


async def test_collection_ops_on_a_string_answer_wrong_type(cache):
    await cache.Set(pb.SetRequest(key="str", value=b"plain string"))
    for i, call in enumerate(ON_ANY_KEY):
        error = await rpc_error(call(cache, "str"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, f"call #{i}"
        assert error_reason(error) == "WRONG_TYPE", f"call #{i}"
        assert "kind of value" in error.details()
    got = await cache.Get(pb.GetRequest(key="str"))
    assert got.value == b"plain string", "a refused call must not have changed the key"


async def test_ops_of_one_collection_type_on_another_answer_wrong_type(cache):
    await cache.SortedSetAdd(pb.SortedSetAddRequest(key="z", members=members(("m", 1))))
    await cache.SetAdd(pb.SetAddRequest(key="s", members=[b"m"]))
    await cache.ListPush(pb.ListPushRequest(key="{l}:list", values=[b"v"], end=LEFT))
    await cache.HashSet(pb.HashSetRequest(key="{l}:hash", fields=[pb.HashField(field="f")]))
    checks = [
        cache.ListPush(pb.ListPushRequest(key="z", values=[b"v"], end=LEFT)),
        cache.SetAdd(pb.SetAddRequest(key="z", members=[b"m"])),
        cache.HashGetAll(pb.HashGetAllRequest(key="s")),
        cache.SortedSetAdd(pb.SortedSetAddRequest(key="s", members=members(("m", 1)))),
        cache.Get(pb.GetRequest(key="s")),
        # A move's destination of another type is refused even with an empty source.
        cache.ListMove(move("{l}:empty", "{l}:hash")),
        cache.ListMove(move("{l}:list", "{l}:hash")),
        cache.SetCombine(
            pb.SetCombineRequest(
                operation=pb.SET_OPERATION_UNION, keys=["{l}:x"], destination="{l}:list"
            )
        ),
        cache.SetMove(pb.SetMoveRequest(source="{l}:none", destination="{l}:hash", member=b"m")),
    ]
    for i, call in enumerate(checks):
        error = await rpc_error(call)
        assert error_reason(error) == "WRONG_TYPE", f"check #{i}"
    assert (await cache.ListRange(pb.ListRangeRequest(key="{l}:list"))).values == [b"v"]


def _long(n: int) -> str:
    return "k" * n


BAD_REQUESTS = [
    # empty and over-long names
    (lambda c: c.HashSet(pb.HashSetRequest(key="", fields=[pb.HashField(field="f")])), "key"),
    (lambda c: c.HashSet(pb.HashSetRequest(key="h", fields=[])), "fields"),
    (lambda c: c.HashSet(pb.HashSetRequest(key="h", fields=[pb.HashField()])), "fields[0].field"),
    (
        lambda c: c.HashSet(
            pb.HashSetRequest(key="h", fields=[pb.HashField(field="f", value=b"x" * 1_100_000)])
        ),
        "fields[0].value",
    ),
    (
        lambda c: c.HashSet(pb.HashSetRequest(key="h", fields=[pb.HashField(field="f")] * 1001)),
        "fields",
    ),
    (lambda c: c.HashGet(pb.HashGetRequest(key="h", fields=[])), "fields"),
    (lambda c: c.HashGet(pb.HashGetRequest(key="h", fields=["ok", ""])), "fields[1]"),
    (lambda c: c.HashGetAll(pb.HashGetAllRequest(key=_long(1025))), "key"),
    (lambda c: c.HashDelete(pb.HashDeleteRequest(key="h")), "fields"),
    (lambda c: c.HashIncrement(pb.HashIncrementRequest(key="h", field="")), "field"),
    (
        lambda c: c.HashIncrement(pb.HashIncrementRequest(key="h", field="f", by_float=math.nan)),
        "by_float",
    ),
    (
        lambda c: c.HashIncrement(pb.HashIncrementRequest(key="h", field="f", by_float=math.inf)),
        "by_float",
    ),
    (lambda c: c.HashKeys(pb.HashKeysRequest()), "key"),
    (lambda c: c.HashValues(pb.HashValuesRequest()), "key"),
    (lambda c: c.HashLength(pb.HashLengthRequest()), "key"),
    (lambda c: c.HashScan(pb.HashScanRequest(key="h", page_token="abc")), "page_token"),
    (lambda c: c.HashScan(pb.HashScanRequest(key="h", page_token="-1")), "page_token"),
    (lambda c: c.HashScan(pb.HashScanRequest(key="h", page_token=str(2**64))), "page_token"),
    (lambda c: c.HashScan(pb.HashScanRequest(key="h", page_size=-1)), "page_size"),
    (lambda c: c.HashScan(pb.HashScanRequest(key="h", page_size=1001)), "page_size"),
    # TTLs
    (
        lambda c: c.HashSet(
            pb.HashSetRequest(key="h", fields=[pb.HashField(field="f")], ttl=ttl(0.0001))
        ),
        "ttl.ttl",
    ),
    (
        lambda c: c.SetAdd(
            pb.SetAddRequest(
                key="s", members=[b"m"], ttl=pb.CollectionTtl(ttl=Duration(seconds=10**9))
            )
        ),
        "ttl.ttl",
    ),
    (
        lambda c: c.ListPush(
            pb.ListPushRequest(
                key="l", values=[b"v"], end=LEFT, ttl=pb.CollectionTtl(ttl=Duration(seconds=-1))
            )
        ),
        "ttl.ttl",
    ),
    # lists
    (lambda c: c.ListPush(pb.ListPushRequest(key="l", values=[b"v"])), "end"),
    (lambda c: c.ListPush(pb.ListPushRequest(key="l", values=[b"v"], end=7)), "end"),
    (lambda c: c.ListPush(pb.ListPushRequest(key="l", values=[], end=LEFT)), "values"),
    (
        lambda c: c.ListPush(pb.ListPushRequest(key="l", values=[b"v"], end=LEFT, keep_newest=-1)),
        "keep_newest",
    ),
    (lambda c: c.ListPop(pb.ListPopRequest(key="l")), "end"),
    (lambda c: c.ListPop(pb.ListPopRequest(key="", end=LEFT)), "key"),
    (lambda c: c.ListPop(pb.ListPopRequest(key="l", end=LEFT, count=-1)), "count"),
    (lambda c: c.ListPop(pb.ListPopRequest(key="l", end=LEFT, count=1001)), "count"),
    (
        lambda c: c.ListPop(pb.ListPopRequest(key="l", end=LEFT, wait=Duration(seconds=-1))),
        "wait",
    ),
    (
        lambda c: c.ListPop(pb.ListPopRequest(key="l", end=LEFT, wait=Duration(seconds=10**8))),
        "wait",
    ),
    (lambda c: c.ListTrim(pb.ListTrimRequest(key="l")), "range"),
    (lambda c: c.ListRange(pb.ListRangeRequest(key="")), "key"),
    (lambda c: c.ListLength(pb.ListLengthRequest()), "key"),
    (lambda c: c.ListRemove(pb.ListRemoveRequest(key="l", value=b"x" * 1_100_000)), "value"),
    (lambda c: c.ListMove(move("", "{a}:b")), "source"),
    (lambda c: c.ListMove(move("a", "")), "destination"),
    (lambda c: c.ListMove(move("a", "a", from_end=0)), "from"),
    (lambda c: c.ListMove(move("a", "a", to_end=0)), "to"),
    (lambda c: c.ListMove(move("a", "a", wait=Duration(nanos=-5))), "wait"),
    # sets
    (lambda c: c.SetAdd(pb.SetAddRequest(key="s")), "members"),
    (lambda c: c.SetAdd(pb.SetAddRequest(key="s", members=[b"m"] * 1001)), "members"),
    (lambda c: c.SetAdd(pb.SetAddRequest(key="s", members=[b"x" * 1_100_000])), "members[0]"),
    (lambda c: c.SetRemove(pb.SetRemoveRequest(key="s")), "members"),
    (lambda c: c.SetMembers(pb.SetMembersRequest()), "key"),
    (lambda c: c.SetIsMember(pb.SetIsMemberRequest(key="s")), "members"),
    (lambda c: c.SetCardinality(pb.SetCardinalityRequest()), "key"),
    (lambda c: c.SetRandomMembers(pb.SetRandomMembersRequest(key="s", count=1001)), "count"),
    (lambda c: c.SetRandomMembers(pb.SetRandomMembersRequest(key="s", count=-1001)), "count"),
    (lambda c: c.SetPop(pb.SetPopRequest(key="s", count=-2)), "count"),
    (
        lambda c: c.SetMove(pb.SetMoveRequest(source="a", destination="", member=b"m")),
        "destination",
    ),
    (lambda c: c.SetCombine(pb.SetCombineRequest(keys=["a"])), "operation"),
    (lambda c: c.SetCombine(pb.SetCombineRequest(operation=9, keys=["a"])), "operation"),
    (lambda c: c.SetCombine(pb.SetCombineRequest(operation=pb.SET_OPERATION_UNION)), "keys"),
    (
        lambda c: c.SetCombine(
            pb.SetCombineRequest(operation=pb.SET_OPERATION_UNION, keys=["a", ""])
        ),
        "keys[1]",
    ),
    (
        lambda c: c.SetCombine(
            pb.SetCombineRequest(
                operation=pb.SET_OPERATION_UNION, keys=["a"], destination_ttl=Duration(seconds=5)
            )
        ),
        "destination_ttl",
    ),
    (
        lambda c: c.SetCombine(
            pb.SetCombineRequest(
                operation=pb.SET_OPERATION_UNION,
                keys=["a"],
                destination="{a}",
                destination_ttl=Duration(seconds=0),
            )
        ),
        "destination_ttl",
    ),
    # sorted sets
    (lambda c: c.SortedSetAdd(pb.SortedSetAddRequest(key="z")), "members"),
    (
        lambda c: c.SortedSetAdd(pb.SortedSetAddRequest(key="z", members=members(("m", math.nan)))),
        "members[0].score",
    ),
    (
        lambda c: c.SortedSetAdd(
            pb.SortedSetAddRequest(key="z", members=members(("a", 1), ("m", math.inf)))
        ),
        "members[1].score",
    ),
    (
        lambda c: c.SortedSetAdd(
            pb.SortedSetAddRequest(key="z", members=members(("m", 1)), condition=12)
        ),
        "condition",
    ),
    (
        lambda c: c.SortedSetIncrement(
            pb.SortedSetIncrementRequest(key="z", member=b"m", delta=math.nan)
        ),
        "delta",
    ),
    (
        lambda c: c.SortedSetIncrement(
            pb.SortedSetIncrementRequest(key="z", member=b"m", delta=-math.inf)
        ),
        "delta",
    ),
    (lambda c: c.SortedSetRank(pb.SortedSetRankRequest(key="z", member=b"m", order=5)), "order"),
    (lambda c: c.SortedSetRange(pb.SortedSetRangeRequest(key="z")), "range"),
    (
        lambda c: c.SortedSetRange(pb.SortedSetRangeRequest(key="z", by_score=by_score(math.nan))),
        "by_score.min.value",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_score=by_score(high=math.nan))
        ),
        "by_score.max.value",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_score=by_score(), limit=-1)
        ),
        "limit",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_score=by_score(), limit=1001)
        ),
        "limit",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_score=by_score(), offset=-1)
        ),
        "offset",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_rank=pb.IndexRange(start=0, end=1), limit=5)
        ),
        "limit",
    ),
    (
        lambda c: c.SortedSetRange(
            pb.SortedSetRangeRequest(key="z", by_score=by_score(), order=pb.Order.ValueType(3))
        ),
        "order",
    ),
    (
        lambda c: c.SortedSetCount(pb.SortedSetCountRequest(key="z", range=by_score(1, math.nan))),
        "range.max.value",
    ),
    (lambda c: c.SortedSetScore(pb.SortedSetScoreRequest(key="z")), "members"),
    (lambda c: c.SortedSetRemove(pb.SortedSetRemoveRequest(key="z")), "members"),
    (lambda c: c.SortedSetRemoveRange(pb.SortedSetRemoveRangeRequest(key="z")), "range"),
    (
        lambda c: c.SortedSetRemoveRange(
            pb.SortedSetRemoveRangeRequest(key="z", by_score=by_score(math.nan))
        ),
        "by_score.min.value",
    ),
    (lambda c: c.SortedSetCardinality(pb.SortedSetCardinalityRequest()), "key"),
]


@pytest.mark.parametrize(("call", "field"), BAD_REQUESTS)
async def test_bad_input_is_invalid_argument_naming_the_field(cache, call, field):
    error = await rpc_error(call(cache))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert bad_fields(error) == [field]


async def test_infinite_score_bounds_are_fine(cache):
    await cache.SortedSetAdd(pb.SortedSetAddRequest(key="z", members=members(("m", -1e308))))
    everything = by_score(-math.inf, math.inf)
    assert (
        await cache.SortedSetCount(pb.SortedSetCountRequest(key="z", range=everything))
    ).count == 1
    nothing = by_score(math.inf, math.inf)
    assert (await cache.SortedSetCount(pb.SortedSetCountRequest(key="z", range=nothing))).count == 0


# ---- answers bounded by the message size ---------------------------------------------


async def test_large_answers_are_refused_and_pops_take_only_what_fits(redis_standalone):
    from cachet_server.app import running

    settings = make_settings(
        redis_standalone.url, limits={"max_message_bytes": 4096, "max_value_bytes": 1024}
    )
    async with running(settings) as app, channel_to(app.port, "tiny-messages") as chan:
        small = cache_pb2_grpc.CacheServiceStub(chan)
        await small.Delete(pb.DeleteRequest(keys=["h", "l", "s"]))
        for i in range(10):
            value = bytes([65 + i]) * 1000
            await small.HashSet(
                pb.HashSetRequest(key="h", fields=[pb.HashField(field=f"f{i}", value=value)])
            )
            await small.ListPush(pb.ListPushRequest(key="l", values=[value], end=RIGHT))
            await small.SetAdd(pb.SetAddRequest(key="s", members=[value]))
        error = await rpc_error(small.HashGetAll(pb.HashGetAllRequest(key="h")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "RESPONSE_TOO_LARGE"
        assert "HashScan" in error.details()
        error = await rpc_error(small.ListRange(pb.ListRangeRequest(key="l")))
        assert error_reason(error) == "RESPONSE_TOO_LARGE"
        # A pop never takes more than its answer can carry: nothing is lost.
        popped: list[bytes] = []
        while batch := (await small.ListPop(pb.ListPopRequest(key="l", end=LEFT, count=10))).values:
            assert 1 <= len(batch) <= 4
            popped += batch
        assert popped == [bytes([65 + i]) * 1000 for i in range(10)]
        taken: list[bytes] = []
        while batch := (await small.SetPop(pb.SetPopRequest(key="s", count=10))).members:
            assert 1 <= len(batch) <= 4
            taken += batch
        assert sorted(taken) == [bytes([65 + i]) * 1000 for i in range(10)]
        await small.Delete(pb.DeleteRequest(keys=["h"]))
