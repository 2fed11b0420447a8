"""envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, called as Envoy calls it."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator

import grpc
import pytest
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as cachet_pb
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc as cachet_grpc
from cachet_client.proto.envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from cachet_client.proto.envoy.type.v3 import ratelimit_unit_pb2
from cachet_server.app import Application
from cachet_server.backend.ratelimit import state_key
from cachet_server.config import Settings
from cachet_server.errors import InvalidArgument
from cachet_server.services.envoy_rls import EnvoyRateLimitService
from cachet_server.services.ratelimit import (
    TARGET_CACHE_MAX_KEY,
    DescriptorTargets,
    descriptor_key,
)
from cachet_server.services.ratelimit_policies import PolicyTable
from cachet_server.validation import Validator
from google.protobuf.wrappers_pb2 import UInt64Value
from grpc import aio

from .conftest import bad_fields, channel_to, rpc_error, running_with_config

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit

CONFIG = """
ratelimit:
  response_headers: {enabled: true}
  domains:
    - domain: mesh
      descriptors:
        - key: remote_address
          rate_limit: {requests_per_unit: 3, unit: minute}
        - key: path
          value: /shadow
          shadow_mode: true
          rate_limit: {requests_per_unit: 1, unit: hour, name: shadowed-path}
        - key: client
          descriptors:
            - key: tier
              value: free
              rate_limit: {requests_per_unit: 2, unit: hour, algorithm: token_bucket}
"""


def entries(*pairs: tuple[str, str]) -> list[common.RateLimitDescriptor.Entry]:
    return [common.RateLimitDescriptor.Entry(key=k, value=v) for k, v in pairs]


def desc(*pairs: tuple[str, str], **fields) -> common.RateLimitDescriptor:
    return common.RateLimitDescriptor(entries=entries(*pairs), **fields)


def request(*descriptors, domain: str = "mesh", hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)


@pytest.fixture(scope="module")
async def envoy_server(cachet: Application, tmp_path_factory) -> AsyncIterator[Application]:
    """A server with CONFIG, on the same Redis (and topology) as the session's server."""
    path = tmp_path_factory.mktemp("envoy") / "cachet.yaml"
    async with running_with_config(cachet, CONFIG, path) as app:
        yield app


@pytest.fixture
async def envoy_channel(envoy_server: Application, namespace: str) -> AsyncIterator[aio.Channel]:
    async with channel_to(envoy_server.port, namespace) as chan:
        yield chan


@pytest.fixture
def rls(envoy_channel: aio.Channel) -> rls_pb2_grpc.RateLimitServiceStub:
    return rls_pb2_grpc.RateLimitServiceStub(envoy_channel)


def headers(response: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


async def test_over_limit_exactly_when_the_policy_says(rls):
    ip = desc(("remote_address", "10.0.0.7"))
    answers = [await rls.ShouldRateLimit(request(ip)) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert [a.statuses[0].code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    status = answers[0].statuses[0]
    assert status.current_limit.requests_per_unit == 3
    assert status.current_limit.unit == Unit.MINUTE
    assert status.current_limit.name == "mesh.remote_address"
    assert 0 < status.duration_until_reset.ToMilliseconds() <= 60_000
    other = await rls.ShouldRateLimit(request(desc(("remote_address", "10.0.0.8"))))
    assert other.overall_code == OK, "each address has its own count"


async def test_overall_code_and_statuses_follow_the_descriptors_in_order(rls):
    tier = desc(("client", "c1"), ("tier", "free"))
    unmatched = desc(("client", "c1"))
    answers = [await rls.ShouldRateLimit(request(unmatched, tier)) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OVER_LIMIT]
    for answer in answers:
        assert answer.statuses[0].code == OK
        assert not answer.statuses[0].HasField("current_limit")
    assert [a.statuses[1].code for a in answers] == [OK, OK, OVER_LIMIT]
    assert answers[0].statuses[1].current_limit.unit == Unit.HOUR


async def test_shadow_mode_rules_never_deny_but_are_reported(rls):
    shadow = desc(("path", "/shadow"))
    answers = [await rls.ShouldRateLimit(request(shadow)) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OK]
    assert [a.statuses[0].code for a in answers] == [OK, OK, OK]
    assert answers[2].statuses[0].limit_remaining == 0
    assert not answers[0].HasField("dynamic_metadata")
    reported = answers[2].dynamic_metadata.fields["shadow_mode_would_deny"].list_value.values
    assert [v.string_value for v in reported] == ["shadowed-path"]


async def test_hits_addend_request_and_descriptor_level(rls):
    ip = ("remote_address", "10.1.0.1")
    answer = await rls.ShouldRateLimit(request(desc(ip), hits=2))
    assert answer.statuses[0].limit_remaining == 1
    peek = await rls.ShouldRateLimit(request(desc(ip, hits_addend=UInt64Value(value=0)), hits=5))
    assert peek.overall_code == OK and peek.statuses[0].limit_remaining == 1, "0 peeks"
    big = await rls.ShouldRateLimit(request(desc(ip, hits_addend=UInt64Value(value=2))))
    assert big.overall_code == OVER_LIMIT and big.statuses[0].limit_remaining == 1
    assert (await rls.ShouldRateLimit(request(desc(ip)))).statuses[0].limit_remaining == 0


async def test_unknown_domain_and_unmatched_descriptors_are_not_limited(rls):
    for answer in [
        await rls.ShouldRateLimit(request(desc(("remote_address", "x")), domain="elsewhere")),
        await rls.ShouldRateLimit(request(desc(("path", "/other")), desc(("nothing", "x")))),
        await rls.ShouldRateLimit(request(desc(("remote_address", "x"), ("deeper", "y")))),
    ]:
        assert answer.overall_code == OK
        assert all(s.code == OK and not s.HasField("current_limit") for s in answer.statuses)
        assert not answer.response_headers_to_add, "no headers without a limit"


async def test_ratelimit_headers_describe_the_nearest_limit(rls):
    tier = desc(("client", "c9"), ("tier", "free"))
    ip = desc(("remote_address", "10.2.0.1"))
    first = await rls.ShouldRateLimit(request(ip, tier))
    assert headers(first) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": str(headers(first)["RateLimit-Reset"]),
    }
    assert 1 <= int(headers(first)["RateLimit-Reset"]) <= 1800
    await rls.ShouldRateLimit(request(tier))
    over = await rls.ShouldRateLimit(request(ip, tier))
    assert over.overall_code == OVER_LIMIT
    assert headers(over)["RateLimit-Limit"] == "2" and headers(over)["RateLimit-Remaining"] == "0"


async def test_descriptor_limit_override_applies_a_fixed_window(rls):
    override = common.RateLimitDescriptor.RateLimitOverride(
        requests_per_unit=1, unit=ratelimit_unit_pb2.HOUR
    )
    d = desc(("route", "r1"), limit=override)
    answers = [await rls.ShouldRateLimit(request(d)) for _ in range(2)]
    assert [a.overall_code for a in answers] == [OK, OVER_LIMIT]
    assert answers[0].statuses[0].current_limit.unit == Unit.HOUR
    unknown_domain = await rls.ShouldRateLimit(request(d, domain="elsewhere"))
    assert unknown_domain.overall_code == OK, "as envoyproxy/ratelimit: unknown domain, no limit"


async def test_envoy_and_check_share_policies_and_state(rls, envoy_channel):
    await rls.ShouldRateLimit(request(desc(("remote_address", "10.3.0.1")), hits=2))
    check = cachet_grpc.RateLimitServiceStub(envoy_channel)
    target = cachet_pb.RateLimitTarget(
        descriptor_match=cachet_pb.DescriptorMatch(
            domain="mesh",
            entries=[cachet_pb.DescriptorEntry(key="remote_address", value="10.3.0.1")],
        )
    )
    result = (await check.Check(cachet_pb.CheckRequest(target=target, hits=0))).result
    assert result.matched_policy == "mesh.remote_address" and result.remaining == 1


async def test_raw_wire_bytes_as_envoy_sends_them(envoy_channel):
    """Field numbers from Envoy's rls.proto, written by hand: domain=1, descriptors=2 (entries=1:
    key=1, value=2), hits_addend=3; the answer decodes as Envoy's RateLimitResponse."""
    entry = b"\x0a\x0eremote_address\x12\x0810.4.0.1"
    descriptor = b"\x0a" + bytes([len(entry)]) + entry
    raw = b"\x0a\x04mesh" + b"\x12" + bytes([len(descriptor)]) + descriptor + b"\x18\x03"
    call = envoy_channel.unary_unary(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        request_serializer=None,
        response_deserializer=None,
    )
    reply = rls_pb2.RateLimitResponse.FromString(await call(raw))
    assert reply.overall_code == OK
    assert (
        reply.statuses[0].limit_remaining == 0
        and reply.statuses[0].current_limit.requests_per_unit == 3
    )
    again = rls_pb2.RateLimitResponse.FromString(await call(raw))
    assert again.overall_code == OVER_LIMIT


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (request(desc(("a", "b")), domain=""), "domain"),
        (request(), "descriptors"),
        (request(desc()), "descriptors[0].entries"),
        (request(desc(("", "b"))), "descriptors[0].entries[0].key"),
        (request(desc(("a", ""))), "descriptors[0].entries[0].value"),
        (request(desc(*[("a", "b")] * 17)), "descriptors[0].entries"),
        (
            request(desc(("a", "b")), desc(("a", "b"), hits_addend=UInt64Value(value=2**40))),
            "descriptors[1].hits_addend",
        ),
        (
            request(desc(("a", "b"), limit=common.RateLimitDescriptor.RateLimitOverride(unit=1))),
            "descriptors[0].limit.requests_per_unit",
        ),
        (
            request(
                desc(
                    ("a", "b"),
                    limit=common.RateLimitDescriptor.RateLimitOverride(requests_per_unit=1),
                )
            ),
            "descriptors[0].limit.unit",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument(rls, bad, field):
    error = await rpc_error(rls.ShouldRateLimit(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


async def test_too_many_descriptors(rls, envoy_server):
    many = request(*[desc(("a", "b"))] * (envoy_server.settings.limits.max_batch + 1))
    error = await rpc_error(rls.ShouldRateLimit(many))
    assert bad_fields(error) == ["descriptors"]


async def test_without_namespace_metadata_envoy_uses_the_default_namespace(envoy_server):
    async with aio.insecure_channel(f"127.0.0.1:{envoy_server.port}") as plain:
        stub = rls_pb2_grpc.RateLimitServiceStub(plain)
        reset = cachet_grpc.RateLimitServiceStub(plain)
        target = cachet_pb.RateLimitTarget(
            descriptor_match=cachet_pb.DescriptorMatch(
                domain="mesh",
                entries=[cachet_pb.DescriptorEntry(key="remote_address", value="10.5.0.1")],
            )
        )
        try:
            await stub.ShouldRateLimit(request(desc(("remote_address", "10.5.0.1"))))
            check = await reset.Check(cachet_pb.CheckRequest(target=target, hits=0))
            assert check.result.remaining == 2
        finally:
            await reset.Reset(cachet_pb.ResetRequest(targets=[target]))


def _targets(tmp_path, size: int) -> DescriptorTargets:
    config = tmp_path / "cachet.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    settings = Settings.load(config_file=config)
    return DescriptorTargets(Validator(settings.limits), PolicyTable(settings.ratelimit), size)


def test_remembered_descriptors_keep_their_state_key_and_never_share_one(tmp_path):
    """The descriptor cache is only a shortcut: whether a descriptor is looked up for the first
    time, again, or again after being evicted, it resolves to the rule and the key spelled
    from scratch (state_key of descriptor_key, as before the cache); and descriptors that
    differ anywhere (namespace, domain, an entry's key or value, the split between them)
    never share a key."""
    targets = _targets(tmp_path, size=3)
    descriptors = [
        ("ns", "mesh", (("remote_address", "10.0.0.1"),)),
        ("ns", "mesh", (("remote_address", "10.0.0.2"),)),
        ("other", "mesh", (("remote_address", "10.0.0.1"),)),
        ("ns", "mesh", (("client", "a"), ("tier", "free"))),
        ("ns", "mesh", (("client", "b"), ("tier", "free"))),
        # Separators inside values cannot make two descriptors spell one key.
        ("ns", "mesh", (("client", 'a"],["tier'), ("tier", "free"))),
        ("ns", "mesh", (("client", "a:b"), ("tier", "free"))),
    ]
    keys = {}
    for _ in range(3):  # first look-ups, remembered ones, and ones evicted meanwhile
        for namespace, domain, entries in descriptors:
            found = targets.resolve(namespace, domain, entries, "entries")
            assert found is not None
            policy, key = found
            assert policy is targets.policies.match(domain, entries)
            assert key == state_key(namespace, policy.spec, policy.name, descriptor_key(entries))
            assert found == targets.resolve_uncached(namespace, domain, entries, "entries")
            assert keys.setdefault((namespace, domain, entries), key) == key
            assert len(targets._known) <= 3, "the cache stays bounded"
    assert len(set(keys.values())) == len(descriptors)
    unmatched = ("ns", "mesh", (("nobody", "x"),))
    assert targets.resolve(*unmatched, "entries") is None
    assert targets.resolve(*unmatched, "entries") is None


def test_long_descriptors_are_resolved_every_time_not_remembered(tmp_path):
    """Memory stays bounded by entries of short keys: a caller sending unique long
    descriptors (up to 16 entries of max_key_bytes each) fills no cache."""
    targets = _targets(tmp_path, size=8)
    long_value = "v" * TARGET_CACHE_MAX_KEY
    for n in range(3):
        entries = (("remote_address", f"{n}{long_value}"),)
        found = targets.resolve("ns", "mesh", entries, "entries")
        assert found == targets.resolve_uncached("ns", "mesh", entries, "entries")
    assert not targets._known
    targets.resolve("ns", "mesh", (("remote_address", "10.0.0.1"),), "entries")
    assert len(targets._known) == 1


def test_invalid_descriptors_are_refused_every_time_not_remembered(tmp_path):
    targets = _targets(tmp_path, size=8)
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            targets.resolve("ns", "mesh", (("remote_address", ""),), "entries")
    assert not targets._known


async def test_a_descriptor_evicted_from_the_cache_keeps_counting_on_its_state(rls, envoy_server):
    """With room for one descriptor, every other request evicts the previous one: the counts
    carry on as if nothing were remembered."""
    (servicer,) = [s for s in envoy_server.servicers if isinstance(s, EnvoyRateLimitService)]
    size = servicer.descriptors.size
    servicer.descriptors.size = 1
    try:
        remaining = []
        for _ in range(3):
            for address in ("10.6.0.1", "10.6.0.2"):
                answer = await rls.ShouldRateLimit(request(desc(("remote_address", address))))
                remaining.append(answer.statuses[0].limit_remaining)
    finally:
        servicer.descriptors.size = size
    assert remaining == [2, 2, 1, 1, 0, 0]
