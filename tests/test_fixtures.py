"""The test fixtures themselves: the `channel` fixture scopes every kind of call."""

from __future__ import annotations

import asyncio

from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from google.protobuf.duration_pb2 import Duration


async def test_channel_fixture_sends_the_namespace_on_streaming_calls(channel, namespace):
    locks = lock_pb2_grpc.LockServiceStub(channel)
    requests: asyncio.Queue[pb.HoldRequest | None] = asyncio.Queue()
    await requests.put(
        pb.HoldRequest(acquire=pb.HoldAcquire(name="fixture-check", ttl=Duration(seconds=5)))
    )

    async def outgoing():
        while (request := await requests.get()) is not None:
            yield request

    hold = locks.Hold(outgoing())  # no explicit metadata: the fixture must add it
    assert (await hold.read()).HasField("acquired")
    explicit = [("cachet-namespace", namespace)]
    inspected = await locks.Inspect(pb.InspectRequest(name="fixture-check"), metadata=explicit)
    assert inspected.held, "the Hold stream ran in another namespace"
    await requests.put(pb.HoldRequest(release=pb.HoldRelease()))
    await requests.put(None)
    assert (await hold.read()).HasField("released")
