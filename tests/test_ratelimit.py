"""RateLimitService against a real Redis: algorithms, peek, reset, CheckMany, policies, errors."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator

import grpc
import pytest
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2 as pb
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc
from cachet_server.app import Application
from cachet_server.config import FailMode, RateLimitAlgorithmName, Settings
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from pydantic import ValidationError

from .conftest import bad_fields, channel_to, error_reason, rpc_error, running_with_config

ALGORITHMS = [
    pb.ALGORITHM_FIXED_WINDOW,
    pb.ALGORITHM_SLIDING_WINDOW_LOG,
    pb.ALGORITHM_SLIDING_WINDOW_COUNTER,
    pb.ALGORITHM_TOKEN_BUCKET,
    pb.ALGORITHM_GCRA,
]

POLICIES = """
ratelimit:
  policies:
    - name: login
      rate_limit: {requests_per_unit: 3, unit: minute, algorithm: sliding_window_log}
    - name: audit
      rate_limit: {requests_per_unit: 1, unit: hour}
      shadow_mode: true
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          rate_limit: {requests_per_unit: 2, unit: minute}
        - key: remote_address
          value: 10.0.0.1
          rate_limit: {requests_per_unit: 5, unit: minute, name: vip}
        - key: path
          value: /api/*
          rate_limit: {requests_per_unit: 4, unit: hour, algorithm: token_bucket, burst: 3}
          descriptors:
            - key: user
              shadow_mode: true
              rate_limit: {requests_per_unit: 1, unit: hour, algorithm: gcra}
        - key: tenant
          descriptors:
            - key: plan
              value: free
              rate_limit: {requests_per_unit: 2, period: PT1H, algorithm: sliding_window_counter}
"""


def inline(key: str, algorithm: int, limit: int, period_ms: int, burst: int = 0):
    return pb.RateLimitTarget(
        inline_limit=pb.InlineLimit(
            key=key,
            limit=pb.Limit(
                algorithm=algorithm,
                limit=limit,
                period=Duration(seconds=period_ms // 1000, nanos=period_ms % 1000 * 1_000_000),
                burst=burst,
            ),
        )
    )


def descriptor(domain: str, *entries: tuple[str, str]) -> pb.RateLimitTarget:
    return pb.RateLimitTarget(
        descriptor_match=pb.DescriptorMatch(
            domain=domain, entries=[pb.DescriptorEntry(key=k, value=v) for k, v in entries]
        )
    )


def policy(name: str, key: str) -> pb.RateLimitTarget:
    return pb.RateLimitTarget(policy=pb.PolicyRef(name=name, key=key))


async def check(stub, target, hits: int | None = None) -> pb.CheckResult:
    request = pb.CheckRequest(target=target)
    if hits is not None:
        request.hits = hits
    return (await stub.Check(request)).result


@pytest.fixture
def limits(channel: aio.Channel) -> ratelimit_pb2_grpc.RateLimitServiceStub:
    return ratelimit_pb2_grpc.RateLimitServiceStub(channel)


@pytest.fixture(scope="module")
async def policy_server(cachet: Application, tmp_path_factory) -> AsyncIterator[Application]:
    """A server with POLICIES, on the same Redis (and topology) as the session's server."""
    path = tmp_path_factory.mktemp("ratelimit") / "cachet.yaml"
    async with running_with_config(cachet, POLICIES, path) as app:
        yield app


@pytest.fixture
async def policy_limits(policy_server: Application, namespace: str):
    async with channel_to(policy_server.port, namespace) as chan:
        yield ratelimit_pb2_grpc.RateLimitServiceStub(chan)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_admits_up_to_the_limit_then_denies_without_consuming(limits, algorithm):
    target = inline("user:1", algorithm, limit=3, period_ms=60_000)
    results = [await check(limits, target) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, True]
    assert [r.remaining for r in results] == [2, 1, 0]
    assert all(r.limit == 3 and r.hits == 1 for r in results)
    assert all(r.HasField("server_time") and not r.HasField("retry_after") for r in results)
    assert results[0].server_time.ToMicroseconds() <= results[2].server_time.ToMicroseconds()
    denied = await check(limits, target)
    assert not denied.allowed and denied.remaining == 0
    assert 0 < denied.retry_after.ToMilliseconds() <= 120_000
    assert denied.reset_after.ToMilliseconds() > 0
    again = await check(limits, target)
    assert not again.allowed
    assert again.retry_after.ToMicroseconds() <= denied.retry_after.ToMicroseconds(), (
        "a denial consumed nothing, so the wait only shrinks"
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_peek_never_consumes(limits, algorithm):
    target = inline("peeked", algorithm, limit=2, period_ms=60_000)
    for _ in range(5):
        peek = await check(limits, target, hits=0)
        assert peek.allowed and peek.remaining == 2 and peek.hits == 0
    await check(limits, target, hits=2)
    for _ in range(3):
        peek = await check(limits, target, hits=0)
        assert not peek.allowed and peek.remaining == 0
        assert peek.retry_after.ToMilliseconds() > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_cost_above_capacity_is_never_admitted_and_has_no_retry(limits, algorithm):
    target = inline("big", algorithm, limit=5, period_ms=1000)
    result = await check(limits, target, hits=6)
    assert not result.allowed and result.remaining == 5
    assert not result.HasField("retry_after")
    assert (await check(limits, target, hits=5)).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_reset_clears_state(limits, algorithm):
    target = inline("reset-me", algorithm, limit=1, period_ms=60_000)
    assert (await check(limits, target)).allowed
    assert not (await check(limits, target)).allowed
    reply = await limits.Reset(pb.ResetRequest(targets=[target, target]))
    assert reply.cleared == 1 and reply.server_time.seconds > 0
    assert (await check(limits, target)).allowed
    empty = await limits.Reset(pb.ResetRequest(targets=[inline("nothing", algorithm, 1, 1000)]))
    assert empty.cleared == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_idle_state_expires_with_a_ttl(limits, algorithm, cachet, namespace):
    # A long period: a fixed window's key lives only to its window's end, and a short
    # window could end between the check and the scan below.
    target = inline("ttl", algorithm, limit=10, period_ms=60_000)
    await check(limits, target, hits=3)
    keys = [
        key
        for node in cachet.backend.topology.primaries()
        async for key in node.scan_iter(match=f"cachet:{namespace}:rl*")
    ]
    assert len(keys) == 1
    ttl = await cachet.backend.redis.pttl(keys[0])
    assert 0 < ttl <= 120_000, "state lives at most until it is back to a full allowance"


async def test_algorithms_and_periods_keep_separate_state(limits):
    await check(limits, inline("k", pb.ALGORITHM_FIXED_WINDOW, 1, 60_000))
    assert (await check(limits, inline("k", pb.ALGORITHM_GCRA, 1, 60_000))).allowed
    assert (await check(limits, inline("k", pb.ALGORITHM_FIXED_WINDOW, 1, 30_000))).allowed
    raised = await check(limits, inline("k", pb.ALGORITHM_FIXED_WINDOW, 2, 60_000))
    assert raised.allowed and raised.remaining == 0, "a changed limit keeps the count"


async def test_unspecified_algorithm_is_token_bucket_and_burst_is_the_capacity(limits):
    target = inline("tb", pb.ALGORITHM_UNSPECIFIED, limit=1, period_ms=60_000, burst=4)
    result = await check(limits, target, hits=4)
    assert result.allowed and result.limit == 4 and result.remaining == 0
    assert result.applied_limit.algorithm == pb.ALGORITHM_TOKEN_BUCKET
    denied = await check(limits, target)
    assert not denied.allowed and 59_000 < denied.retry_after.ToMilliseconds() <= 60_000


async def test_namespaces_do_not_share_limits(cachet, limits, namespace):
    target = inline("shared-name", pb.ALGORITHM_FIXED_WINDOW, 1, 60_000)
    assert (await check(limits, target)).allowed
    async with channel_to(cachet.port, namespace + "-other") as other:
        stub = ratelimit_pb2_grpc.RateLimitServiceStub(other)
        assert (await check(stub, target)).allowed


async def test_check_many_independent_consumes_what_it_admits(limits):
    a = inline("a", pb.ALGORITHM_FIXED_WINDOW, 1, 60_000)
    b = inline("b", pb.ALGORITHM_FIXED_WINDOW, 5, 60_000)
    await check(limits, a)
    reply = await limits.CheckMany(
        pb.CheckManyRequest(items=[pb.CheckItem(target=a), pb.CheckItem(target=b, hits=2)])
    )
    assert [r.allowed for r in reply.results] == [False, True]
    assert not reply.allowed and reply.server_time.seconds > 0
    assert (await check(limits, b, hits=0)).remaining == 3


async def test_check_many_all_or_nothing_consumes_nothing_unless_all_pass(limits):
    a = inline("{tenant:7}:a", pb.ALGORITHM_SLIDING_WINDOW_LOG, 2, 60_000)
    b = inline("{tenant:7}:b", pb.ALGORITHM_TOKEN_BUCKET, 1, 60_000)
    items = [pb.CheckItem(target=a), pb.CheckItem(target=b)]
    mode = pb.CHECK_MANY_MODE_ALL_OR_NOTHING
    first = await limits.CheckMany(pb.CheckManyRequest(items=items, mode=mode))
    assert first.allowed and [r.remaining for r in first.results] == [1, 0]
    second = await limits.CheckMany(pb.CheckManyRequest(items=items, mode=mode))
    assert not second.allowed
    assert [r.allowed for r in second.results] == [True, False]
    assert second.results[0].remaining == 1, "the admissible item reports the untouched state"
    assert (await check(limits, a, hits=0)).remaining == 1, "and nothing was consumed"


async def test_all_or_nothing_sees_its_own_items_on_one_key(limits):
    a = inline("{t}:same", pb.ALGORITHM_FIXED_WINDOW, 3, 60_000)
    items = [pb.CheckItem(target=a, hits=2), pb.CheckItem(target=a, hits=2)]
    reply = await limits.CheckMany(
        pb.CheckManyRequest(items=items, mode=pb.CHECK_MANY_MODE_ALL_OR_NOTHING)
    )
    assert not reply.allowed, "2 + 2 hits exceed 3 even within one call"
    assert (await check(limits, a, hits=0)).remaining == 3


async def test_all_or_nothing_across_slots_is_refused_on_every_topology(limits):
    items = [
        pb.CheckItem(target=inline("x", pb.ALGORITHM_GCRA, 1, 1000)),
        pb.CheckItem(target=inline("y", pb.ALGORITHM_GCRA, 1, 1000)),
    ]
    request = pb.CheckManyRequest(items=items, mode=pb.CHECK_MANY_MODE_ALL_OR_NOTHING)
    error = await rpc_error(limits.CheckMany(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "CROSS_SLOT"
    assert "hash tag" in error.details()
    assert (await check(limits, items[0].target, hits=0)).remaining == 1


async def test_named_policy_and_shadow_mode(policy_limits):
    login = policy("login", "alice")
    results = [await check(policy_limits, login) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert results[0].matched_policy == "login"
    assert results[0].applied_limit.algorithm == pb.ALGORITHM_SLIDING_WINDOW_LOG
    assert (await check(policy_limits, policy("login", "bob"))).allowed
    audit = policy("audit", "alice")
    first, second = await check(policy_limits, audit), await check(policy_limits, audit)
    assert first.allowed and first.shadow_mode and not first.shadow_would_deny
    assert second.allowed and second.shadow_mode and second.shadow_would_deny
    assert not second.HasField("retry_after")


async def test_descriptor_matching_like_envoy(policy_limits):
    def first(domain, *entries):
        return check(policy_limits, descriptor(domain, *entries))

    any_ip = await first("edge", ("remote_address", "10.9.9.9"))
    assert any_ip.matched_policy == "edge.remote_address" and any_ip.limit == 2
    vip = await first("edge", ("remote_address", "10.0.0.1"))
    assert vip.matched_policy == "vip" and vip.limit == 5
    api = await first("edge", ("path", "/api/orders"))
    assert api.matched_policy == "edge.path_/api/*" and api.limit == 3, "burst is the capacity"
    nested = await first("edge", ("path", "/api/x"), ("user", "u1"))
    assert nested.matched_policy == "edge.path_/api/*.user" and nested.shadow_mode
    plan = await first("edge", ("tenant", "t1"), ("plan", "free"))
    assert plan.matched_policy == "edge.tenant.plan_free"
    # Each distinct value of a wildcard rule has its own state.
    assert (await first("edge", ("remote_address", "10.9.9.9"))).remaining == 0
    assert (await first("edge", ("remote_address", "10.9.9.8"))).remaining == 1


@pytest.mark.parametrize(
    "entries",
    [
        [("path", "/other")],  # no rule for the value, and no wildcard for `path`
        [("tenant", "t1")],  # `tenant` has no limit of its own
        [("tenant", "t1"), ("plan", "paid")],
        [("remote_address", "1.2.3.4"), ("user", "u")],  # deeper than the rule
        [("unknown", "x")],
    ],
)
async def test_unmatched_descriptor_is_not_found(policy_limits, entries):
    error = await rpc_error(check(policy_limits, descriptor("edge", *entries)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "POLICY_NOT_FOUND"


async def test_unknown_policy_and_domain_are_not_found(policy_limits):
    for target in [policy("nope", "k"), descriptor("nowhere", ("a", "b"))]:
        error = await rpc_error(check(policy_limits, target))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(error) == "POLICY_NOT_FOUND"


async def test_list_policies_pages_by_name(policy_limits):
    names = []
    token = ""
    while True:
        page = await policy_limits.ListPolicies(
            pb.ListPoliciesRequest(page_size=2, page_token=token)
        )
        names += [p.name for p in page.policies]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names) and len(names) == 7
    edge = await policy_limits.ListPolicies(pb.ListPoliciesRequest(domain="edge"))
    by_name = {p.name: p for p in edge.policies}
    assert "login" not in by_name
    nested = by_name["edge.path_/api/*.user"]
    assert [(e.key, e.value) for e in nested.entries] == [("path", "/api/*"), ("user", "")]
    assert nested.shadow_mode and nested.limit.algorithm == pb.ALGORITHM_GCRA
    assert nested.limit.period.ToSeconds() == 3600
    error = await rpc_error(policy_limits.ListPolicies(pb.ListPoliciesRequest(page_token="%%")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def _bad_limit(**fields) -> pb.RateLimitTarget:
    limit = pb.Limit(algorithm=pb.ALGORITHM_FIXED_WINDOW, limit=1, period=Duration(seconds=1))
    for name, value in fields.items():
        if name == "period" and value is None:
            limit.ClearField("period")
        elif name == "period":
            limit.period.CopyFrom(value)
        else:
            setattr(limit, name, value)
    return pb.RateLimitTarget(inline_limit=pb.InlineLimit(key="k", limit=limit))


@pytest.mark.parametrize(
    ("target", "field"),
    [
        (_bad_limit(limit=0), "target.inline_limit.limit.limit"),
        (_bad_limit(limit=2**63), "target.inline_limit.limit.limit"),
        (_bad_limit(period=None), "target.inline_limit.limit.period"),
        (_bad_limit(period=Duration()), "target.inline_limit.limit.period"),
        (_bad_limit(period=Duration(seconds=-1)), "target.inline_limit.limit.period"),
        (_bad_limit(period=Duration(nanos=1_500_000)), "target.inline_limit.limit.period"),
        (_bad_limit(period=Duration(seconds=367 * 86400)), "target.inline_limit.limit.period"),
        (_bad_limit(algorithm=42), "target.inline_limit.limit.algorithm"),
        (_bad_limit(burst=2_000_000_000), "target.inline_limit.limit.burst"),
        (
            pb.RateLimitTarget(inline_limit=pb.InlineLimit(key="", limit=pb.Limit(limit=1))),
            "target.inline_limit.key",
        ),
        (pb.RateLimitTarget(inline_limit=pb.InlineLimit(key="k")), "target.inline_limit.limit"),
        (pb.RateLimitTarget(), "target"),
        (policy("", "k"), "target.policy.name"),
        (policy("login", ""), "target.policy.key"),
        (descriptor("", ("a", "b")), "target.descriptor_match.domain"),
        (descriptor("edge"), "target.descriptor_match.entries"),
        (descriptor("edge", ("", "b")), "target.descriptor_match.entries[0].key"),
        (descriptor("edge", ("a", "")), "target.descriptor_match.entries[0].value"),
        (descriptor("edge", *[("a", "b")] * 17), "target.descriptor_match.entries"),
    ],
)
async def test_bad_check_is_invalid_argument(limits, target, field):
    error = await rpc_error(limits.Check(pb.CheckRequest(target=target)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == [field]


async def test_bad_hits_mode_and_batch_sizes(limits, cachet):
    target = inline("k", pb.ALGORITHM_FIXED_WINDOW, 1, 1000)
    error = await rpc_error(limits.Check(pb.CheckRequest(target=target, hits=1_000_000_001)))
    assert bad_fields(error) == ["hits"]
    error = await rpc_error(limits.CheckMany(pb.CheckManyRequest()))
    assert bad_fields(error) == ["items"]
    too_many = [pb.CheckItem(target=target)] * (cachet.settings.limits.max_batch + 1)
    error = await rpc_error(limits.CheckMany(pb.CheckManyRequest(items=too_many)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(error) == ["items"]
    error = await rpc_error(
        limits.CheckMany(pb.CheckManyRequest(items=[pb.CheckItem(target=target)], mode=9))
    )
    assert bad_fields(error) == ["mode"]
    error = await rpc_error(limits.Reset(pb.ResetRequest()))
    assert bad_fields(error) == ["targets"]
    error = await rpc_error(
        limits.ListPolicies(pb.ListPoliciesRequest(page_size=5000)),
    )
    assert bad_fields(error) == ["page_size"]


async def test_a_bad_item_fails_check_many_before_anything_is_consumed(limits):
    good = inline("good", pb.ALGORITHM_FIXED_WINDOW, 1, 60_000)
    bad = inline("", pb.ALGORITHM_FIXED_WINDOW, 1, 60_000)
    error = await rpc_error(
        limits.CheckMany(
            pb.CheckManyRequest(items=[pb.CheckItem(target=good), pb.CheckItem(target=bad)])
        )
    )
    assert bad_fields(error) == ["items[1].target.inline_limit.key"]
    assert (await check(limits, good, hits=0)).remaining == 1


def test_policies_load_from_the_yaml_file_and_the_environment_wins(tmp_path, monkeypatch):
    config = tmp_path / "cachet.yaml"
    config.write_text(textwrap.dedent(POLICIES))
    monkeypatch.setenv("CACHET_CONFIG_FILE", str(config))
    monkeypatch.setenv("CACHET_RATELIMIT__FAIL_MODE", "fail_open")
    settings = Settings.load()
    rules = settings.ratelimit
    assert rules.fail_mode is FailMode.FAIL_OPEN
    assert [p.name for p in rules.policies] == ["login", "audit"]
    assert rules.policies[0].rate_limit.algorithm is RateLimitAlgorithmName.SLIDING_WINDOW_LOG
    assert rules.policies[0].rate_limit.period_ms == 60_000
    assert rules.domains[0].descriptors[2].descriptors[0].shadow_mode


@pytest.mark.parametrize(
    ("ratelimit", "complaint"),
    [
        ({"policies": [{"name": "a", "rate_limit": {"requests_per_unit": 1}}]}, "exactly one"),
        (
            {"policies": [{"name": "a", "rate_limit": {"requests_per_unit": 1, "unit": "s"}}]},
            "unit",
        ),
        (
            {"policies": [{"name": "a", "rate_limit": {"requests_per_unit": 0, "unit": "second"}}]},
            "requests_per_unit",
        ),
        (
            {
                "policies": [
                    {"name": "a", "rate_limit": {"requests_per_unit": 1, "period": "PT0.0005S"}}
                ]
            },
            "period",
        ),
        (
            {
                "policies": [
                    {
                        "name": "a",
                        "rate_limit": {"requests_per_unit": 1, "unit": "hour", "algorithm": "x"},
                    }
                ]
            },
            "algorithm",
        ),
        (
            {
                "policies": [{"name": "a", "rate_limit": {"requests_per_unit": 1, "unit": "day"}}]
                * 2
            },
            "used twice",
        ),
        (
            {"policies": [{"name": "{a}", "rate_limit": {"requests_per_unit": 1, "unit": "day"}}]},
            "braces",
        ),
        (
            {
                "policies": [
                    {
                        "name": "a",
                        "rate_limit": {"requests_per_unit": 1, "unit": "day"},
                        "shadow": True,
                    }
                ]
            },
            "shadow",
        ),
        (
            {"domains": [{"domain": "d", "descriptors": [{"key": "k"}, {"key": "k"}]}]},
            "configured twice",
        ),
        ({"domains": [{"domain": "d"}, {"domain": "d"}]}, "configured twice"),
        ({"fail_mode": "sometimes"}, "fail_mode"),
    ],
)
def test_bad_rate_limit_configuration_is_refused_at_start_up(ratelimit, complaint):
    with pytest.raises(ValidationError, match=complaint):
        Settings(ratelimit=ratelimit)
