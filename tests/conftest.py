"""Fixtures: real redis-server processes and a real cachet server, on free loopback ports.

Every test that uses `cachet` (or `channel`, `cache`, `redis_url`, `redis_client`) runs
once per Redis topology: standalone, Sentinel and Cluster, with ids like
`test_x[cluster]`. A test that cannot apply to a topology says so:

    @pytest.mark.topologies("standalone", reason="needs SELECT of another db")

`CACHET_TEST_TOPOLOGIES=standalone,cluster` narrows a local run to some topologies.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import pytest
import redis
import yaml
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from cachet_server.app import Application, running
from cachet_server.config import Settings
from grpc import aio

from .redis_procs import (
    ClusterGroup,
    Deployment,
    RedisProcess,
    SentinelGroup,
    free_port,
    standalone,
)
from .server_procs import CachetProcess

TOPOLOGIES = ("standalone", "sentinel", "cluster")


def _selected_topologies() -> list[str]:
    wanted = os.environ.get("CACHET_TEST_TOPOLOGIES", "")
    chosen = [t.strip() for t in wanted.split(",") if t.strip()] or list(TOPOLOGIES)
    unknown = set(chosen) - set(TOPOLOGIES)
    if unknown:
        raise pytest.UsageError(f"CACHET_TEST_TOPOLOGIES names unknown {sorted(unknown)}")
    return chosen


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "topologies(*kinds, reason): run only on these Redis topologies "
        "(standalone, sentinel, cluster); `reason` says why the others cannot apply",
    )
    config.addinivalue_line(
        "markers", "reliability: a fault test whose figure goes into docs/reliability.md"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = _topology_of(item)
        marker = item.get_closest_marker("topologies")
        if kind is None or marker is None:
            continue
        if kind not in marker.args:
            reason = marker.kwargs.get("reason")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.topologies needs reason=")
            item.add_marker(pytest.mark.skip(reason=f"not on {kind}: {reason}"))


def _topology_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("topology") if callspec else None


_seconds_by_topology: dict[str, float] = defaultdict(float)
_tests_by_topology: dict[str, int] = defaultdict(int)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    started = time.monotonic()
    try:
        return (yield)
    finally:
        kind = _topology_of(item) or "topology-neutral"
        _seconds_by_topology[kind] += time.monotonic() - started
        _tests_by_topology[kind] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _seconds_by_topology:
        return
    parts = [
        f"{kind} {_tests_by_topology[kind]} tests {seconds:.1f}s"
        for kind, seconds in sorted(_seconds_by_topology.items())
    ]
    terminalreporter.write_line("time per topology (incl. fixture set-up): " + "; ".join(parts))


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[RedisProcess]:
    with standalone() as proc:
        yield proc


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelGroup]:
    """1 master, 1 replica, 3 sentinels; data nodes need a user and password."""
    group = SentinelGroup()
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterGroup]:
    """3 masters with a replica each; every node needs a password."""
    group = ClusterGroup()
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture(scope="session", params=_selected_topologies())
def topology(request: pytest.FixtureRequest) -> Deployment:
    """The Redis deployment under test; each is started once, when first needed."""
    deployment: Deployment = request.getfixturevalue(f"redis_{request.param}")
    return deployment


@pytest.fixture
def redis_url(topology: Deployment) -> str:
    """CACHET_REDIS_URL of the topology under test, for tests that run their own server."""
    return topology.url


@pytest.fixture
def redis_client(topology: Deployment) -> Iterator[redis.Redis | redis.RedisCluster]:
    """A sync redis-py client for the topology under test (Redis, Sentinel master or
    RedisCluster), for tests that poke Redis directly."""
    client = topology.client()
    try:
        yield client
    finally:
        client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings of a test server: auth off unless the test configures it."""
    overrides.setdefault("auth", {"mode": "off"})
    return Settings(
        redis_url=redis_url,
        listen=f"127.0.0.1:{free_port()}",
        health_interval="PT0.1S",
        shutdown_grace="PT5S",
        **overrides,
    )


def settings_from_yaml(
    redis_url: str, config: dict[str, Any], path: Any, **overrides: Any
) -> Settings:
    """Settings of a test server whose structured parts (auth, policies) come from a YAML
    file, as `CACHET_CONFIG_FILE` would give them."""
    path.write_text(yaml.safe_dump(config))
    return Settings.load(
        config_file=path,
        redis_url=redis_url,
        listen=f"127.0.0.1:{free_port()}",
        health_interval="PT0.1S",
        shutdown_grace="PT5S",
        **overrides,
    )


def running_with_config(
    cachet: Application, config_yaml: str, path: Any
) -> AbstractAsyncContextManager[Application]:
    """A server of its own (auth off) configured by the YAML text `config_yaml`, written
    to `path`, on the same Redis (and topology) as the session's server `cachet`."""
    config = yaml.safe_load(config_yaml)
    return running(
        settings_from_yaml(cachet.settings.redis_url, config, path, auth={"mode": "off"})
    )


@pytest.fixture(scope="session")
async def cachet(topology: Deployment) -> AsyncIterator[Application]:
    """One cachet server per topology for the session."""
    async with running(make_settings(topology.url, allow_persist=True)) as app:
        yield app


def _with_namespace(details: Any, namespace: str) -> Any:
    metadata = list(details.metadata or [])
    if not any(k == "cachet-namespace" for k, _ in metadata):
        metadata.append(("cachet-namespace", namespace))
    return details._replace(metadata=metadata)


# grpc.aio files each interceptor under one call kind only, so one class per kind.
class _NamespaceUnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_with_namespace(client_call_details, self.namespace), request)


class _NamespaceUnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_with_namespace(client_call_details, self.namespace), request)


class _NamespaceStreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        details = _with_namespace(client_call_details, self.namespace)
        return await continuation(details, request_iterator)


def channel_to(port: int, namespace: str | None = None) -> aio.Channel:
    kinds = (_NamespaceUnaryUnary, _NamespaceUnaryStream, _NamespaceStreamStream)
    interceptors = [kind(namespace) for kind in kinds] if namespace else []
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


@pytest.fixture
def locks(channel: aio.Channel) -> lock_pb2_grpc.LockServiceStub:
    return lock_pb2_grpc.LockServiceStub(channel)


# Named apart from the fixture, so this module's `redis` stays the redis-py package.
@pytest.fixture(name="redis")
def server_redis(cachet: Application) -> Any:
    """The server's own Redis client (any topology), to look at the keys directly."""
    return cachet.backend.redis


@pytest.fixture(scope="module")
def server(topology: Deployment) -> Iterator[CachetProcess]:
    """A cachet server process on the topology under test, auth off, for a module of
    client tests that reach it over the network as an application does. A module that
    needs other settings defines a `server` of its own."""
    proc = CachetProcess(topology.url, CACHET_AUTH__MODE="off")
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    """Which Python client a test drives: cachet_client.connect or connect_sync."""
    return str(request.param)


async def r(answer: Any) -> Any:
    """The result of a client call, awaited when the client is the async one."""
    return await answer if inspect.isawaitable(answer) else answer


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


__all__ = [
    "bad_fields",
    "channel_to",
    "error_reason",
    "grpc",
    "make_settings",
    "r",
    "rpc_error",
]
