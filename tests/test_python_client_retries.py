"""Retries of the Python client, against a live cachet-server process.

- Redis paused: the server answers UNAVAILABLE until it is resumed, and the client's
  service-config retry carries an idempotent call across the outage.
- A namespace over its quota: the server answers RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with
  a RetryInfo, and the client waits it out for an idempotent call.
- RESOURCE_EXHAUSTED with a RetryInfo, and exact UNAVAILABLE counts: a fault-injecting
  gRPC proxy sits in front of the real server. It answers the first calls of a method
  with a status of the test's choosing (the shape the server's errors.py sends: ErrorInfo,
  RetryInfo) and forwards every other call, bytes untouched, to the server. It records
  when each attempt arrived, so the test sees how many attempts were made and how far
  apart.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import cachet_client
import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from .redis_procs import standalone
from .server_procs import CachetProcess

pytestmark = pytest.mark.topologies(
    "standalone",
    reason="client retry behaviour is topology-neutral; fault tests per topology are the server's",
)

RETRY_DELAY = timedelta(milliseconds=300)
FORWARDED_METADATA = ("cachet-namespace", "authorization")


def fault(code: grpc.StatusCode, reason: str, retry_delay: timedelta | None = None) -> grpc.Status:
    """A status as cachet's errors.py builds it: ErrorInfo, and RetryInfo when given."""
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cachet.dev"))
    details.append(info)
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_delay)
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=f"injected {reason}", details=details
    )
    return rpc_status.to_status(status)


class FaultProxy(grpc.GenericRpcHandler):
    """Forwards unary calls to `upstream`, after answering queued faults per method."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: dict[str, list[grpc.Status]] = defaultdict(list)
        # Calls forwarded, whose answer is then lost: the client sees UNAVAILABLE.
        self.lost_answers: dict[str, int] = defaultdict(int)
        self.delays: dict[str, float] = defaultdict(float)
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.server = aio.server()
        self.server.add_generic_rpc_handlers([self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = aio.insecure_channel(upstream)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inject(self, method: str, *statuses: grpc.Status) -> None:
        self.faults[method].extend(statuses)

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method
        name = path.rsplit("/", 1)[-1]

        async def forward(request: bytes, context: aio.ServicerContext) -> bytes:
            self.attempts[name].append(time.monotonic())
            if self.delays[name]:
                await asyncio.sleep(self.delays[name])
            if self.faults[name]:
                await context.abort_with_status(self.faults[name].pop(0))
            metadata = [
                (k, v) for k, v in context.invocation_metadata() or () if k in FORWARDED_METADATA
            ]
            try:
                answer: bytes = await self.channel.unary_unary(path)(request, metadata=metadata)
            except aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
            if self.lost_answers[name]:
                self.lost_answers[name] -= 1
                await context.abort_with_status(
                    fault(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
                )
            return answer

        return grpc.unary_unary_rpc_method_handler(forward)


@pytest.fixture
async def proxy(server: CachetProcess) -> AsyncIterator[FaultProxy]:
    front = FaultProxy(server.address)
    await front.server.start()
    try:
        yield front
    finally:
        await front.server.stop(None)
        await front.channel.close()


async def call(flavor: str, address: str, namespace: str, operation: Any, **settings: Any) -> Any:
    """Run `operation(client)` on a fresh client of the flavor (the sync one in a thread,
    so the proxy, which runs on this event loop, keeps serving)."""
    if flavor == "async":
        async with cachet_client.connect(address, namespace=namespace, **settings) as client:
            answer = operation(client)
            return await answer if inspect.isawaitable(answer) else answer

    def blocking() -> Any:
        with cachet_client.connect_sync(address, namespace=namespace, **settings) as client:
            return operation(client)

    return await asyncio.to_thread(blocking)


async def test_retry_info_is_waited_out_for_idempotent_calls(flavor, proxy, server, namespace):
    exhausted = fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", RETRY_DELAY)
    async with cachet_client.connect(server.address, namespace=namespace) as direct:
        await direct.cache.set("k", b"v")
    proxy.inject("Get", exhausted, exhausted)
    value = await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k"))
    assert value.data == b"v"
    attempts = proxy.attempts["Get"]
    assert len(attempts) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Each retry came at least the server's retry delay after the attempt it answered.
    assert min(gaps) >= RETRY_DELAY.total_seconds(), gaps
    print(f"\n[retry] {flavor}: RetryInfo {RETRY_DELAY}, gaps {[round(g, 3) for g in gaps]} s")


async def test_retry_info_is_not_retried_for_non_idempotent_calls(flavor, proxy, server, namespace):
    # A conditional write stands for every call that is never retried.
    proxy.inject("Set", fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", RETRY_DELAY))
    with pytest.raises(cachet_client.RateLimited) as limited:
        await call(
            flavor,
            proxy.address,
            namespace,
            lambda c: c.cache.set("n", b"1", condition="if_absent"),
        )
    assert limited.value.retry_after == RETRY_DELAY and limited.value.reason == "OVERLOADED"
    assert len(proxy.attempts["Set"]) == 1
    async with cachet_client.connect(server.address, namespace=namespace) as direct:
        assert await direct.cache.get("n") is None  # never applied


async def test_retries_stop_at_max_attempts(flavor, proxy, namespace):
    exhausted = fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", timedelta(milliseconds=50))
    proxy.inject("Get", exhausted, exhausted, exhausted)
    policy = cachet_client.RetryPolicy(max_attempts=2)
    with pytest.raises(cachet_client.RateLimited):
        await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k"), retry=policy)
    assert len(proxy.attempts["Get"]) == 2


async def test_retry_info_beyond_the_deadline_is_not_waited_for(flavor, proxy, namespace):
    proxy.inject("Get", fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", timedelta(5)))
    with pytest.raises(cachet_client.RateLimited) as limited:
        await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k"), timeout=2)
    assert limited.value.retry_after == timedelta(days=5)
    assert len(proxy.attempts["Get"]) == 1


async def test_resource_exhausted_without_retry_info_is_not_retried(flavor, proxy, namespace):
    proxy.inject("Get", fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "RESPONSE_TOO_LARGE"))
    with pytest.raises(cachet_client.ResponseTooLarge) as too_large:
        await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k"))
    assert too_large.value.retry_after is None
    assert not isinstance(too_large.value, cachet_client.RateLimited)
    assert len(proxy.attempts["Get"]) == 1


async def test_unavailable_is_retried_by_grpc_for_idempotent_calls_only(
    flavor, proxy, server, namespace
):
    unavailable = fault(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    proxy.inject("Get", unavailable, unavailable)
    assert await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k")) is None
    assert len(proxy.attempts["Get"]) == 3
    proxy.inject("Set", unavailable)
    with pytest.raises(cachet_client.Unavailable) as down:
        await call(flavor, proxy.address, namespace, lambda c: c.cache.set("n", b"1", if_version=1))
    assert down.value.reason == "BACKEND_UNAVAILABLE"
    assert len(proxy.attempts["Set"]) == 1
    # Retries off: one attempt only.
    proxy.inject("Get", unavailable)
    with pytest.raises(cachet_client.Unavailable):
        await call(
            flavor,
            proxy.address,
            namespace,
            lambda c: c.cache.get("k"),
            retry=cachet_client.NO_RETRY,
        )
    assert len(proxy.attempts["Get"]) == 4


async def test_default_deadline_bounds_a_slow_call(flavor, proxy, namespace):
    proxy.delays["Get"] = 1.0
    with pytest.raises(cachet_client.DeadlineExceeded) as late:
        await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k"), timeout=0.2)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(proxy.attempts["Get"]) == 1  # DEADLINE_EXCEEDED is never retried
    assert await call(flavor, proxy.address, namespace, lambda c: c.cache.get("k")) is None


async def test_lost_answers_of_non_idempotent_calls(flavor, proxy, server, namespace):
    """Increment applied, its answer lost. Without a request_id in the protos the client
    must not retry (it would count twice); with one, it retries under the same id and the
    server applies it once."""
    from cachet_client.proto.cachet.cache.v1 import cache_pb2

    deduplicated = "request_id" in cache_pb2.IncrementRequest.DESCRIPTOR.fields_by_name
    proxy.lost_answers["Increment"] = 1
    if deduplicated:
        assert await call(flavor, proxy.address, namespace, lambda c: c.cache.increment("n")) == 1
        assert len(proxy.attempts["Increment"]) == 2
    else:
        with pytest.raises(cachet_client.Unavailable):
            await call(flavor, proxy.address, namespace, lambda c: c.cache.increment("n"))
        assert len(proxy.attempts["Increment"]) == 1
    async with cachet_client.connect(server.address, namespace=namespace) as direct:
        assert (await direct.cache.get("n")).data == b"1"  # applied exactly once


def _unavailable_gets(admin: Any) -> int:
    stats = admin.service_stats()
    return sum(
        m.errors_by_code.get("UNAVAILABLE", 0) for m in stats.methods if m.method.endswith("/Get")
    )


def test_unavailable_while_redis_is_paused_is_retried_through(namespace):
    """Redis stops answering (SIGSTOP): the server answers UNAVAILABLE after its Redis
    timeout; the client's gRPC retry policy carries a Get across until Redis resumes."""
    with standalone() as redis:
        proc = CachetProcess(redis.url, CACHET_AUTH__MODE="off", CACHET_REDIS_TIMEOUT="PT0.25S")
        proc.start()
        try:
            policy = cachet_client.RetryPolicy(
                max_attempts=5,
                initial_backoff=timedelta(milliseconds=200),
                max_backoff=timedelta(seconds=1),
            )
            with (
                cachet_client.connect_sync(
                    proc.address, namespace=namespace, timeout=30, retry=policy
                ) as client,
                cachet_client.connect_sync(proc.address, namespace=namespace) as observer,
            ):
                client.cache.set("k", b"kept")
                outcome: dict[str, Any] = {}

                def get() -> None:
                    started = time.monotonic()
                    try:
                        outcome["value"] = client.cache.get("k")
                    except cachet_client.CachetError as error:
                        outcome["error"] = error
                    outcome["seconds"] = time.monotonic() - started

                redis.pause()
                try:
                    caller = threading.Thread(target=get)
                    caller.start()
                    deadline = time.monotonic() + 20
                    while _unavailable_gets(observer.admin) == 0:
                        assert time.monotonic() < deadline, "the server never answered UNAVAILABLE"
                        time.sleep(0.02)
                finally:
                    redis.resume()
                caller.join(30)
                assert "error" not in outcome, outcome.get("error")
                assert outcome["value"].data == b"kept"
                failed = _unavailable_gets(observer.admin)
                assert failed >= 1
                print(
                    f"\n[retry] Redis paused: Get answered after {outcome['seconds']:.2f} s "
                    f"and {failed} UNAVAILABLE attempt(s) retried by gRPC"
                )
        finally:
            proc.stop()


def test_quota_exceeded_with_retry_info_from_the_server(topology, namespace):
    """A real server's quota (one blocking call per namespace at a time) refuses a second
    blocking call with RESOURCE_EXHAUSTED / QUOTA_EXCEEDED and a RetryInfo. A blocking
    ListPop (never retried) raises QuotaExceeded with the server's retry_after at once; a
    blocking Read (idempotent) is retried after the delay, and is answered once the call
    holding the quota (a Consume stream) has ended."""
    proc = CachetProcess(
        topology.url,
        CACHET_QUOTAS__MAX_BLOCKING_CALLS="1",
        CACHET_QUOTAS__RETRY_AFTER="PT1S",
    )
    proc.start()
    attempts = 0

    def counting_credential() -> str:  # called once per attempt (auth is off here)
        nonlocal attempts
        attempts += 1
        return "unused"

    try:
        with (
            cachet_client.connect_sync(proc.address, namespace=namespace) as first,
            cachet_client.connect_sync(
                proc.address, namespace=namespace, credential=counting_credential
            ) as second,
        ):
            first.events.create_group("s", "g", start_id="0")
            first.events.append("s", b"x")
            holding = first.events.consume("s", "g", "c", block=5)
            next(holding)  # a Consume stream is open: it holds the namespace's one slot
            with pytest.raises(cachet_client.QuotaExceeded) as refused:
                second.cache.list_pop("q", wait=0.05)
            assert refused.value.retry_after == timedelta(seconds=1)
            assert isinstance(refused.value, cachet_client.RateLimited)

            outcome: dict[str, Any] = {}
            before = attempts

            def read() -> None:
                try:
                    outcome["events"] = second.events.read("s", after_id="0", block=0.1)[0]
                except Exception as error:  # reported by the assertion below
                    outcome["error"] = error

            reader = threading.Thread(target=read)
            reader.start()
            deadline = time.monotonic() + 10
            while attempts - before < 2:  # a second attempt: the first one was refused
                assert reader.is_alive(), f"answered without a retry: {outcome}"
                assert time.monotonic() < deadline, "the Read was never retried"
                time.sleep(0.01)
            holding.close()  # the Consume ends: its slot is free for the retry
            reader.join(10)
            assert "error" not in outcome, outcome
            assert [e.payload for e in outcome["events"]] == [b"x"]
            print(
                f"\n[retry] QUOTA_EXCEEDED waited out: Read answered at attempt {attempts - before}"
            )
    finally:
        proc.stop()
