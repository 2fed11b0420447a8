"""Fixtures: real redis-server processes and a real cachet server, on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import Application, running
from cachet_server.config import Settings
from grpc import aio

from .redis_procs import RedisProcess, free_port, standalone


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[RedisProcess]:
    with standalone() as proc:
        yield proc


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        listen=f"127.0.0.1:{free_port()}",
        health_interval="PT0.1S",
        shutdown_grace="PT5S",
        **overrides,
    )


@pytest.fixture(scope="session")
async def cachet(redis_standalone: RedisProcess) -> AsyncIterator[Application]:
    """One cachet server for the session, on the session's standalone Redis."""
    async with running(make_settings(redis_standalone.url, allow_persist=True)) as app:
        yield app


class _AddNamespace(aio.UnaryUnaryClientInterceptor, aio.UnaryStreamClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        if not any(k == "cachet-namespace" for k, _ in metadata):
            metadata.append(("cachet-namespace", self.namespace))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


def channel_to(port: int, namespace: str | None = None) -> aio.Channel:
    interceptors = [_AddNamespace(namespace)] if namespace else []
    return aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors)


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def channel(cachet: Application, namespace: str) -> AsyncIterator[aio.Channel]:
    async with channel_to(cachet.port, namespace) as chan:
        yield chan


@pytest.fixture
def cache(channel: aio.Channel) -> cache_pb2_grpc.CacheServiceStub:
    return cache_pb2_grpc.CacheServiceStub(channel)


async def rpc_error(call: Any) -> aio.AioRpcError:
    """Await a call that must fail; answer its error."""
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


def _status_details(error: aio.AioRpcError) -> list[Any]:
    from google.rpc import status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert status.code == error.code().value[0], "details disagree with the status code"
            return list(status.details)
    raise AssertionError(f"{error.code()} carries no google.rpc.Status details")


def error_reason(error: aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call."""
    from google.rpc import error_details_pb2

    for detail in _status_details(error):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    raise AssertionError("error carries no ErrorInfo")


def bad_fields(error: aio.AioRpcError) -> list[str]:
    """The fields a google.rpc.BadRequest detail names."""
    from google.rpc import error_details_pb2

    for detail in _status_details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    raise AssertionError("error carries no BadRequest")


__all__ = ["bad_fields", "channel_to", "error_reason", "grpc", "make_settings", "rpc_error"]
