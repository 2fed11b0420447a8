"""A ListPop cancelled at the instant Redis hands it a value loses nothing: the value
waits in the call's holding list and goes back to the list it came from."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.backend.collections import CollectionTtl
from cachet_server.backend.keys import CacheKeys, Kind, scan_patterns

from .redis_waits import blocked_clients

CANCELLATIONS = 150


async def _holding_lists(cachet, namespace: str) -> list[bytes]:
    """The holding lists of the namespace's pops still in Redis."""
    holding = []
    for pattern in scan_patterns(namespace, Kind.HOLDING, "*"):
        for node in await cachet.backend.primaries():
            holding += [k async for k in node.scan_iter(match=pattern + "*")]
    return holding


async def _until_put_back(cachet, namespace: str) -> None:
    """Until the clean-ups of cancelled pops (shielded, they run on after the cancel)
    have emptied every holding list, putting their values back."""
    deadline = time.monotonic() + 10
    while await _holding_lists(cachet, namespace):
        assert time.monotonic() < deadline, "a holding list was left behind"
        await asyncio.sleep(0.01)


async def test_cancelled_waiting_pops_lose_no_value(cachet, namespace):
    """Each round: a pop waits (BLMOVE); a value is pushed, and the pop is cancelled
    right after Redis answered the push, so Redis has (often) already handed the value
    to the waiting pop. Every value pushed must be either answered or still listed."""
    store = cachet.servicers[0].collections
    redis = cachet.backend.redis
    answered: list[bytes] = []
    cancelled = 0
    baseline = len(await blocked_clients(cachet))
    started = time.monotonic()
    names = []
    for n in range(CANCELLATIONS):
        end = "LEFT" if n % 2 else "RIGHT"
        # A list per round: a value put back must not answer the next round's pop.
        key = f"{{jobs}}:queue-{n}"
        name = CacheKeys.of(namespace, key).data
        names.append(name)
        pop = asyncio.ensure_future(
            store.list_pop(
                namespace, key, end=end, count=1 + n % 3, wait_s=5.0, max_answer_bytes=1 << 20
            )
        )
        for _ in range(400):
            if pop.done() or len(await blocked_clients(cachet)) > baseline:
                break
            await asyncio.sleep(0.002)
        # The push and the cancellation race: the cancel lands before, while or
        # after Redis hands the value to the pop and the pop takes it.
        push = asyncio.ensure_future(
            store.list_push(
                namespace,
                key,
                [f"v{n}".encode()],
                end="RIGHT",
                if_present=False,
                keep_newest=0,
                ttl=CollectionTtl(60_000),
            )
        )
        for _ in range(n % 7):
            await asyncio.sleep(0)
        if n % 5 == 0:
            await asyncio.sleep(random.uniform(0, 0.002))
        pop.cancel()
        await push
        try:
            answered += await pop
        except asyncio.CancelledError:
            cancelled += 1
    took = time.monotonic() - started
    await _until_put_back(cachet, namespace)
    left = [value for name in names for value in await redis.lrange(name, 0, -1)]
    pushed = {f"v{n}".encode() for n in range(CANCELLATIONS)}
    lost = pushed - set(answered) - set(left)
    print(
        f"\n{CANCELLATIONS} pops cancelled as a value arrived, in {took:.1f} s: "
        f"{cancelled} ended cancelled, {len(answered)} values answered, "
        f"{len(left)} put back or never taken, {len(lost)} lost"
    )
    assert cancelled > 0, "no pop was cancelled: the test did not test anything"
    assert not lost, f"{len(lost)} values lost: {sorted(lost)[:5]}"
    assert len(answered) + len(left) == CANCELLATIONS, "a value was duplicated"
    for name in names:
        if await redis.exists(name):
            assert await redis.pttl(name) > 0, "a list without a TTL"
    assert not await _holding_lists(cachet, namespace), "a holding list was left behind"


async def test_a_put_back_value_keeps_its_place_at_the_end_it_came_from(cache, cachet, namespace):
    """Cancelled in its holding list, a value returns to the same end, ahead of the
    others, so a later pop from that end still gets the values in order."""
    store = cachet.servicers[0].collections
    key = "ordered"
    name = CacheKeys.of(namespace, key).data
    redis = cachet.backend.redis
    pop = asyncio.ensure_future(
        store.list_pop(namespace, key, end="LEFT", count=1, wait_s=5.0, max_answer_bytes=1 << 20)
    )
    baseline = 0
    for _ in range(400):
        if len(await blocked_clients(cachet)) > baseline:
            break
        await asyncio.sleep(0.002)
    await redis.rpush(name, b"first")
    pop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        got = await pop
        assert got == [b"first"]
        return  # the pop won the race this time: nothing to put back
    await redis.rpush(name, b"second")
    await _until_put_back(cachet, namespace)
    popped = await cache.ListPop(pb.ListPopRequest(key=key, end=pb.LIST_END_LEFT, count=2))
    assert list(popped.values) == [b"first", b"second"]
