"""The corridor's shared machinery without a server: stages entered in order and left
in reverse with the call's outcome, a refusal leaving only what was entered, one wrapped
handler per method; and the per-call data structures the stages use (quota counts,
namespace grants, cache keys) answering exactly what the plain versions did."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_server.access import Grants
from cachet_server.backend.keys import CacheKeys, Kind, redis_key
from cachet_server.errors import PermissionDenied
from cachet_server.interceptors._stage import Corridor, arrived_metadata
from cachet_server.interceptors.quota import QuotaCounts, Resource
from grpc import aio


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    def time_remaining(self) -> float | None:
        return None

    def done(self) -> bool:
        return False

    async def abort(self, code: Any, details: str, trailing: Any = None) -> None:
        self.aborted = (code, details)
        raise aio.AbortError()


class _Recording:
    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def stage_for(self, method: str, *, response_streaming: bool) -> _Recording:
        return self

    def enter(self, request: Any, context: Any) -> str:
        self.log.append(f"enter {self.name}")
        if self.refuse:
            raise PermissionDenied("refused", reason="TEST")
        return self.name

    def leave(self, entered: str, error: BaseException | None) -> None:
        self.log.append(f"leave {entered} {type(error).__name__ if error else 'ok'}")


class _Invoker:
    def unary(self, method: str, behavior: Any) -> Any:
        return behavior

    writing = unary

    def streaming(self, method: str, behavior: Any) -> Any:
        return behavior


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handler(log: list[str]) -> Any:
    async def get(request: pb.GetRequest, context: Any) -> pb.GetResponse:
        log.append(f"handler {request.key}")
        return pb.GetResponse(found=True)

    return grpc.unary_unary_rpc_method_handler(
        get,
        request_deserializer=pb.GetRequest.FromString,
        response_serializer=pb.GetResponse.SerializeToString,
    )


class _Service(grpc.GenericRpcHandler):
    """One method, "/m"; counts how often the corridor asks for it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.asked = 0

    def service(self, handler_call_details: Any) -> Any:
        self.asked += 1
        return _handler(self.log) if handler_call_details.method == "/m" else None


def _serve(corridor: Corridor, log: list[str], body: bytes) -> tuple[Any, _Context]:
    async def call() -> tuple[Any, _Context]:
        service = _Service(log)
        corridor.add_generic_rpc_handlers((service,))
        first = corridor.service(_Details("/m"))
        again = corridor.service(_Details("/m"))
        assert first is again and service.asked == 1, "wrapped once per method"
        assert corridor.service(_Details("/unknown")) is None
        context = _Context()
        try:
            answer = await first.unary_unary(first.request_deserializer(body), context)
        except aio.AbortError:
            answer = None
        return answer, context

    return asyncio.run(call())


def test_stages_run_in_order_around_the_handler():
    log: list[str] = []
    corridor = Corridor([_Recording("outer", log), _Recording("inner", log)], _Invoker())
    answer, context = _serve(corridor, log, pb.GetRequest(key="k").SerializeToString())
    assert answer.found and context.aborted is None
    assert log == ["enter outer", "enter inner", "handler k", "leave inner ok", "leave outer ok"]


def test_a_refusal_aborts_and_leaves_only_the_stages_entered():
    log: list[str] = []
    stages = [_Recording("outer", log), _Recording("inner", log, refuse=True)]
    answer, context = _serve(Corridor(stages, _Invoker()), log, b"")
    assert answer is None
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.PERMISSION_DENIED
    assert log == ["enter outer", "enter inner", "leave outer PermissionDenied"]


def test_a_malformed_body_is_refused_before_any_stage():
    log: list[str] = []
    answer, context = _serve(Corridor([_Recording("outer", log)], _Invoker()), log, b"\xff\xff")
    assert answer is None and log == []
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_quota_counts_hold_only_what_is_in_flight():
    counts = QuotaCounts()
    both = (Resource.CALLS, Resource.BLOCKING)
    limits = {Resource.CALLS: 2, Resource.BLOCKING: 1}
    assert counts.take_within("a", both, limits) is None
    assert counts.take_within("a", (Resource.CALLS,), limits) is None
    assert counts.take_within("b", (Resource.CALLS,), limits) is None
    # Over a limit: nothing is taken, and the resource over it is named.
    assert counts.take_within("a", (Resource.CALLS,), limits) is Resource.CALLS
    assert counts.take_within("b", both, {**limits, Resource.BLOCKING: 0}) is Resource.BLOCKING
    assert counts.in_flight("b", Resource.BLOCKING) == 0
    assert counts.in_flight("a", Resource.CALLS) == 2
    assert counts.in_flight("a", Resource.BLOCKING) == 1
    assert counts.in_flight("c", Resource.CALLS) == 0
    assert len(counts) == 3
    counts.give_back("a", both)
    counts.give_back("b", (Resource.CALLS,))
    assert counts.in_flight("a", Resource.BLOCKING) == 0 and len(counts) == 1
    counts.give_back("a", (Resource.CALLS,))
    assert len(counts) == 0


@pytest.mark.parametrize(
    ("patterns", "allowed", "refused"),
    [
        (["shop-*"], ["shop-eu", "shop-"], ["shop", "shopx", "a"]),
        (["shop"], ["shop"], ["shop-eu", "sho"]),
        (["*"], ["a", "shop"], []),
        (["a", "b-*"], ["a", "b-1"], ["b", "ab", "c"]),
        ([], [], ["a"]),
    ],
)
def test_namespace_grants(patterns, allowed, refused):
    grants = Grants.of(patterns, ["read"])
    assert all(grants.allows_namespace(name) for name in allowed)
    assert not any(grants.allows_namespace(name) for name in refused)
    assert grants == Grants.of(patterns, ["read"])


@pytest.mark.parametrize("key", ["k", "{user:1}:profile", "a{}b", "{x", "x}y{z}"])
def test_cache_keys_are_the_layout_of_each_kind(key):
    keys = CacheKeys.of("ns", key)
    assert keys.data == redis_key("ns", Kind.DATA, key)
    assert keys.meta == redis_key("ns", Kind.META, key)
    assert keys.lease == redis_key("ns", Kind.LEASE, key)
    assert keys.stale == redis_key("ns", Kind.STALE, key)


class _MetadataProbe:
    """Keeps, per call, the metadata the corridor's lookup handed on and the call's own."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []

    def stage_for(self, method: str, *, response_streaming: bool) -> _MetadataProbe:
        return self

    def enter(self, request: Any, context: Any) -> None:
        self.seen.append((arrived_metadata(), context.invocation_metadata()))

    def leave(self, entered: None, error: BaseException | None) -> None:
        return None


def test_each_call_reads_the_metadata_its_own_handler_lookup_saw():
    """The auth stage reads the metadata tuple grpc.aio built for the handler lookup
    (instead of having the context build it again): that holds only if the lookup runs in
    the call's own task. 20 concurrent calls through a live grpc.aio server, each with
    its own value, each see their own."""
    probe = _MetadataProbe()

    async def scenario() -> None:
        corridor = Corridor([probe], _Invoker())
        corridor.add_generic_rpc_handlers((_Service([]),))
        server = aio.server(handlers=[corridor])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                get = channel.unary_unary(
                    "/m",
                    request_serializer=pb.GetRequest.SerializeToString,
                    response_deserializer=pb.GetResponse.FromString,
                )
                await asyncio.gather(
                    *(get(pb.GetRequest(key="k"), metadata=(("n", str(i)),)) for i in range(20))
                )
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert len(probe.seen) == 20
    values = set()
    for arrived, own in probe.seen:
        assert arrived is not None and tuple(arrived) == tuple(own)
        values.add(dict(own)["n"])
    assert values == {str(i) for i in range(20)}


def test_a_handler_run_without_a_lookup_reads_the_contexts_metadata():
    """A wrapped handler driven directly (no handler lookup in its task): the auth stage
    asks the context, and resolves the namespace from what it answers."""
    from cachet_server import audit
    from cachet_server.access import CallSpec, Role
    from cachet_server.config import AuthSettings, Limits
    from cachet_server.credentials import Authenticator
    from cachet_server.interceptors.auth import AuthStage

    method = "/cachet.cache.v1.CacheService/Get"
    auth = AuthStage(
        Authenticator(AuthSettings(mode="off")),
        {method: CallSpec(frozenset({Role.READ}))},
        Limits(),
        protect_reflection=False,
        denials=audit.Denials(),
    )
    stage = auth.stage_for(method, response_streaming=False)

    class _WithMetadata(_Context):
        def invocation_metadata(self) -> Any:
            return (("cachet-namespace", "shop"),)

    async def scenario() -> Any:
        assert arrived_metadata() is None, "a fresh task has no lookup's metadata"
        assert stage is not None
        return stage.enter(pb.GetRequest(key="k"), _WithMetadata())

    assert asyncio.run(scenario()).namespace == "shop"
