"""Answers past gRPC's default 4 MiB receive limit reach the Python client: the server
sends up to its limits.max_message_bytes (8 MiB by default) and the client's channels
take whatever it sends, on both channels (retrying and plain), insecure and over TLS,
asyncio and sync, while `options` can still cap them.

Each test writes six values of 1 MiB (the server's largest value, one call each) and
reads them back in one GetMany: a 6 MiB answer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import cachet_client
import pytest
from cachet_client._cache import GET_MANY
from cachet_client._core import NAMESPACE_METADATA, Call
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb

from .conftest import r
from .server_procs import CachetProcess
from .test_python_client_auth import WRITER_TOKEN, SecuredServer, secured_server

pytestmark = pytest.mark.topologies(
    "standalone",
    reason="the receive limit is between client and server; Redis's topology plays no part",
)

MIB = 1024 * 1024
GRPC_DEFAULT_RECEIVE_LIMIT = 4 * MIB


@pytest.fixture(scope="module")
def tls_server(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    with secured_server(
        topology.url, tmp_path_factory.mktemp("tls"), "receive-app", mutual=False
    ) as secured:
        yield secured


def connect(flavor: str, address: str, **settings: Any) -> Any:
    if flavor == "async":
        return cachet_client.connect(address, **settings)
    return cachet_client.connect_sync(address, **settings)


@pytest.fixture
async def client(flavor: str, server: CachetProcess, namespace: str) -> AsyncIterator[Any]:
    opened = connect(flavor, server.address, namespace=namespace)
    try:
        yield opened
    finally:
        await r(opened.close())


async def six_mebibytes(client: Any) -> dict[str, bytes]:
    """Six distinct 1 MiB values, each written with its own Set."""
    values = {f"big:{n}": os.urandom(MIB) for n in range(6)}
    for key, value in values.items():
        await r(client.cache.set(key, value, ttl=60))
    return values


async def test_get_many_answer_of_six_mebibytes_arrives_intact(client):
    values = await six_mebibytes(client)
    found = await r(client.cache.get_many(list(values)))
    assert {key: value.data for key, value in found.items()} == values


async def test_both_channels_take_an_answer_past_four_mebibytes(client, namespace):
    values = await six_mebibytes(client)
    request = pb.GetManyRequest(keys=list(values))
    metadata = [(NAMESPACE_METADATA, namespace)]
    for retrying in (True, False):
        stub = client._runner.channels.unary(Call(GET_MANY, request, retrying))
        reply = await r(stub(request, metadata=metadata, timeout=30))
        assert reply.ByteSize() > GRPC_DEFAULT_RECEIVE_LIMIT
        assert {entry.key: entry.value for entry in reply.entries} == values, retrying


async def test_get_many_answer_of_six_mebibytes_over_tls(flavor, tls_server):
    client = connect(
        flavor,
        tls_server.address,
        namespace=tls_server.namespace,
        tls=tls_server.tls(mutual=False),
        credential=WRITER_TOKEN,
    )
    try:
        values = await six_mebibytes(client)
        found = await r(client.cache.get_many(list(values)))
        assert {key: value.data for key, value in found.items()} == values
    finally:
        await r(client.close())


async def test_options_can_cap_the_receive_size_again(flavor, server, namespace):
    capped = connect(
        flavor,
        server.address,
        namespace=namespace,
        options=[("grpc.max_receive_message_length", GRPC_DEFAULT_RECEIVE_LIMIT)],
    )
    try:
        values = await six_mebibytes(capped)
        with pytest.raises(cachet_client.ResourceExhausted) as refused:
            await r(capped.cache.get_many(list(values)))
        assert "larger than max" in str(refused.value)
        small = await r(capped.cache.get_many(["big:0"]))
        assert small["big:0"].data == values["big:0"]
    finally:
        await r(capped.close())
