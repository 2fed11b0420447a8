"""Property-based fuzzing of every RPC with requests built from the proto descriptors.

Strategies are derived from each request message's descriptor: extreme and
unicode strings, large bytes, huge repeated fields, integer extremes, NaN and
infinities, unknown enum values, malformed Durations and Timestamps. Whatever
arrives, the server must answer with a deliberate status (never INTERNAL or
UNKNOWN), stay up, and keep its memory bounded.

Runs against its own redis-server and `cachet-server` process, so a fuzzed
FlushNamespace or SetConfig cannot disturb other tests. CACHET_FUZZ_EXAMPLES
sets examples per RPC (`make test-fuzz-long` raises it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import psutil
import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2
from cachet_client.proto.cachet.cache.v1 import cache_pb2
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2
from cachet_client.proto.cachet.lock.v1 import lock_pb2
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .redis_procs import RedisProcess
from .server_procs import CachetProcess

EXAMPLES = int(os.environ.get("CACHET_FUZZ_EXAMPLES", "200"))
MAX_DEPTH = 4
# Answers that would mean the server failed, not the request.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# RSS growth allowed over the whole fuzz run of one server process.
MEMORY_BUDGET_BYTES = 300 * 1024 * 1024

FILES = [cache_pb2, lock_pb2, ratelimit_pb2, eventbus_pb2, admin_pb2, rls_pb2]
METHODS = [
    method
    for module in FILES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]

_INT_BOUNDS = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Strings that probe key layout, globs, hash tags, encodings and sizes.
_NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "*",
        "?",
        "[",
        "\\",
        "{",
        "}",
        "{}",
        "{a}",
        "a{b}c",
        "cachet:default:k:x",
        "\n",
        "\x00",
        "é",
        "🙂",
        "-",
        "+",
        "$",
        ">",
        "0-0",
        "18446744073709551615-18446744073709551615",
        "default",
        "a" * 1025,
        "b" * 70_000,
    ]
)
_TEXT = st.one_of(_NASTY_STRINGS, st.text(max_size=40), st.text(alphabet="ab{}*:", max_size=12))
_BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 10, b"x" * (1024 * 1024 + 1), b"9223372036854775807"]),
)
_DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]),
)


def _int_strategy(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, 0, 1, -1, 1000, 1001, 2**31, 2**53 + 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 100))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_BOUNDS:
        return _int_strategy(*_INT_BOUNDS[kind])
    if kind in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        if kind == d.FieldDescriptor.TYPE_FLOAT:
            return st.floats(width=32, allow_nan=True, allow_infinity=True)
        return _DOUBLES
    if kind == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == d.FieldDescriptor.TYPE_STRING:
        return _TEXT
    if kind == d.FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if kind == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _field(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key_field), _single(value_field, depth + 1), max_size=4)
    single = _single(field, depth)
    if field.is_repeated:
        # Oversized batches (over the default limit of 1000) of one small, repeated element:
        # the server must refuse them cleanly, and the test must not build gigabytes.
        oversized = _small(field).flatmap(
            lambda item: st.integers(1001, 1100).map(lambda n: [item] * n)
        )
        return st.one_of(st.lists(single, max_size=5), oversized)
    return single


def _small(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        return st.just(message_factory.GetMessageClass(field.message_type)())
    if field.type == d.FieldDescriptor.TYPE_STRING:
        return st.text(alphabet="abc", min_size=1, max_size=4)
    if field.type == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=4)
    return _scalar(field)


def _single(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1)
    return _scalar(field)


def message_strategy(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of this type with any subset of fields set (one member per oneof)."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    fields = {f.name: _field(f, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if field.containing_oneof is not None and message.WhichOneof(
                field.containing_oneof.name
            ):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(message, name)
                for k, v in value.items():
                    if field.message_type.fields_by_name["value"].message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[CachetProcess]:
    redis = RedisProcess().start()
    server = CachetProcess(
        redis.url,
        CACHET_REDIS_TIMEOUT="PT1S",
        CACHET_LOG_LEVEL="ERROR",
    ).start()
    try:
        yield server
    finally:
        server.stop()
        redis.stop()


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server: CachetProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        fuzz_server.address,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    ) as channel:
        yield channel


@pytest.fixture(scope="module")
def memory_baseline(fuzz_server: CachetProcess) -> int:
    assert fuzz_server.process is not None
    return int(psutil.Process(fuzz_server.process.pid).memory_info().rss)


def _invoke(channel: grpc.Channel, method: d.MethodDescriptor, request: Any) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    serialize = type(request).SerializeToString
    metadata = [("cachet-namespace", "fuzz")]
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, serialize, response_cls.FromString)
            call = stream(iter([request]), timeout=0.3, metadata=metadata)
            for _ in zip(range(3), call, strict=False):
                pass
            call.cancel()
        elif method.server_streaming:
            stream = channel.unary_stream(path, serialize, response_cls.FromString)
            call = stream(request, timeout=0.3, metadata=metadata)
            for _ in zip(range(3), call, strict=False):
                pass
            call.cancel()
        else:
            unary = channel.unary_unary(path, serialize, response_cls.FromString)
            unary(request, timeout=3.0, metadata=metadata)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_no_request_breaks_the_server(fuzz_server, fuzz_channel, memory_baseline, method):
    faults: list[tuple[grpc.StatusCode, Any]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=message_strategy(method.input_type))
    def fuzz(request: Any) -> None:
        code = _invoke(fuzz_channel, method, request)
        if code in SERVER_FAULTS:
            faults.append((code, request))
        assert code not in SERVER_FAULTS, f"{method.full_name} answered {code} to {request!r:.500}"

    fuzz()
    health = health_pb2_grpc.HealthStub(fuzz_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz_server.process is not None and fuzz_server.process.poll() is None
    rss = psutil.Process(fuzz_server.process.pid).memory_info().rss
    assert rss - memory_baseline < MEMORY_BUDGET_BYTES, f"RSS grew by {rss - memory_baseline}"


# Bodies that are not protobuf of any message: a field of wire type 7 (invalid), a
# length that runs past the end, a string field that is not UTF-8, a truncated varint.
_MALFORMED = [b"\x0f", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x08\xff\xff\xff"]


def _invoke_raw(channel: grpc.Channel, method: d.MethodDescriptor, body: bytes) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = [("cachet-namespace", "fuzz")]
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([body]), timeout=1.0, metadata=metadata)
            for _ in zip(range(3), call, strict=False):
                pass
            call.cancel()
        elif method.server_streaming:
            call = channel.unary_stream(path)(body, timeout=1.0, metadata=metadata)
            for _ in zip(range(3), call, strict=False):
                pass
            call.cancel()
        else:
            channel.unary_unary(path)(body, timeout=3.0, metadata=metadata)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_malformed_bodies_are_invalid_argument(fuzz_server, fuzz_channel, method):
    """Raw bodies that do not parse: INVALID_ARGUMENT on every RPC, streaming ones too
    (grpc itself would answer UNKNOWN with the parser's exception text)."""
    codes = {body: _invoke_raw(fuzz_channel, method, body) for body in _MALFORMED}
    assert not set(codes.values()) & SERVER_FAULTS, codes
    # Broken framing fails every message; bad UTF-8 only where field 1 is a string.
    broken = {body: code for body, code in codes.items() if body != b"\x0a\x02\xc3\x28"}
    assert set(broken.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes

    @settings(max_examples=max(20, EXAMPLES // 10), deadline=None, database=None)
    @given(body=st.binary(max_size=64))
    def random_bytes(body: bytes) -> None:
        code = _invoke_raw(fuzz_channel, method, body)
        assert code not in SERVER_FAULTS, f"{method.full_name} answered {code} to {body!r}"

    random_bytes()
