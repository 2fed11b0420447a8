"""The tenant boundary: credentials, namespace and role checks, and the admin surface,
against a live server with auth required on a real Redis (standalone: the auth matrix;
tests/test_auth_tls.py covers TLS and mTLS, tests/test_auth_cluster.py Redis Cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2, lock_pb2_grpc
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from cachet_client.proto.envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as envoy_common
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from cachet_server import audit
from cachet_server.app import Application, running
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .auth_material import JwtKeys, api_key, sha256
from .conftest import error_reason, rpc_error, settings_from_yaml
from .redis_procs import RedisProcess

KEYS = {
    name: api_key()
    for name in ("shop_rw", "shop_ro", "shop_admin", "tenantb_rw", "operator", "mesh", "prefix_rw")
}

RATELIMIT = {
    "domains": [
        {
            "domain": "mesh",
            "descriptors": [
                {"key": "remote_address", "rate_limit": {"requests_per_unit": 3, "unit": "minute"}}
            ],
        }
    ]
}


def _api_keys() -> list[dict[str, Any]]:
    grants = {
        "shop_rw": (["shop"], ["read", "write"]),
        "shop_ro": (["shop"], ["read"]),
        "shop_admin": (["shop"], ["admin"]),
        "tenantb_rw": (["tenantb"], ["read", "write", "admin"]),
        "operator": (["shop"], ["operator"]),
        "mesh": (["edge"], ["ratelimit"]),
        "prefix_rw": (["team-*", "solo"], ["read", "write"]),
    }
    return [
        {
            "id": name.replace("_", "-"),
            "sha256": sha256(KEYS[name]),
            "namespaces": ns,
            "roles": roles,
        }
        for name, (ns, roles) in grants.items()
    ]


@pytest.fixture(scope="module")
def jwt_keys() -> JwtKeys:
    return JwtKeys.generate()


@pytest.fixture(scope="module")
async def auth_server(
    redis_standalone: RedisProcess, jwt_keys: JwtKeys, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Application]:
    directory = tmp_path_factory.mktemp("auth")
    config = {
        "auth": {"mode": "required", "api_keys": _api_keys(), "jwt": jwt_keys.write(directory)},
        "ratelimit": RATELIMIT,
    }
    settings = settings_from_yaml(redis_standalone.url, config, directory / "cachet.yaml")
    async with running(settings) as app:
        yield app


def _channel(app: Application, *metadata: tuple[str, str]) -> aio.Channel:
    """A channel whose every call carries `metadata` (e.g. the credential)."""

    class Stamp(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation, details, request):
            combined = [*(details.metadata or ()), *metadata]
            return await continuation(details._replace(metadata=combined), request)

    return aio.insecure_channel(f"127.0.0.1:{app.port}", interceptors=[Stamp()])


def bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


def ns(name: str) -> tuple[str, str]:
    return ("cachet-namespace", name)


@pytest.fixture
def redis_direct(redis_standalone: RedisProcess):
    client = redis.Redis.from_url(redis_standalone.url)
    yield client
    client.close()


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Calls per Redis command, less the health probe's PING and our own INFO."""
    stats = client.info("commandstats")
    return {
        name: entry["calls"]
        for name, entry in stats.items()
        if name not in ("cmdstat_ping", "cmdstat_info")
    }


# ---------------------------------------------------------------- rejected credentials


async def _get(app: Application, *metadata: tuple[str, str]) -> Any:
    async with _channel(app, *metadata) as channel:
        return await cache_pb2_grpc.CacheServiceStub(channel).Get(
            cache_pb2.GetRequest(key="k"), timeout=5
        )


async def _rejected(app: Application, *metadata: tuple[str, str]) -> str:
    error = await rpc_error(_get(app, *metadata))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error.details()
    return error_reason(error)


async def test_a_call_without_a_credential_is_unauthenticated(auth_server):
    assert await _rejected(auth_server, ns("shop")) == "CREDENTIAL_MISSING"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Basic dXNlcjpwYXNz", "CREDENTIAL_MALFORMED"),
        ("Bearer", "CREDENTIAL_MALFORMED"),
        ("Bearer    ", "CREDENTIAL_MALFORMED"),
        ("Bearer cachet_not-a-key", "CREDENTIAL_UNKNOWN"),
        ("Bearer eyJhbGciOi.not-json.at-all", "CREDENTIAL_MALFORMED"),
    ],
)
async def test_malformed_and_unknown_credentials(auth_server, header, reason):
    assert await _rejected(auth_server, ("authorization", header), ns("shop")) == reason


async def test_two_authorization_headers_are_malformed(auth_server):
    reason = await _rejected(
        auth_server, bearer(KEYS["shop_rw"]), bearer(KEYS["tenantb_rw"]), ns("shop")
    )
    assert reason == "CREDENTIAL_MALFORMED"


@pytest.mark.parametrize("kind", ["hs", "rs", "es", "jwks"])
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "CREDENTIAL_EXPIRED"),
        ({"nbf": int(time.time()) + 3600}, "CREDENTIAL_NOT_YET_VALID"),
        ({"aud": "someone-else"}, "CREDENTIAL_WRONG_AUDIENCE"),
        ({"iss": "https://evil.test"}, "CREDENTIAL_WRONG_ISSUER"),
        ({"exp": None}, "CREDENTIAL_MALFORMED"),
        ({"cachet_roles": None}, "CREDENTIAL_MALFORMED"),
        ({"cachet_roles": ["root"]}, "CREDENTIAL_MALFORMED"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "no-roles",
        "bad-role",
    ],
)
async def test_every_jwt_kind_rejects_bad_claims(auth_server, jwt_keys, kind, claims, reason):
    token = jwt_keys.token(kind, namespaces=["shop"], roles=["read"], **claims)
    assert await _rejected(auth_server, bearer(token), ns("shop")) == reason


@pytest.mark.parametrize("kind", ["hs", "rs", "es", "jwks"])
async def test_every_jwt_kind_accepts_a_good_token_and_grants_its_claims(
    auth_server, jwt_keys, kind
):
    token = jwt_keys.token(kind, namespaces=["shop"], roles=["read"])
    assert not (await _get(auth_server, bearer(token), ns("shop"))).found
    async with _channel(auth_server, bearer(token), ns("shop")) as channel:
        error = await rpc_error(
            cache_pb2_grpc.CacheServiceStub(channel).Set(cache_pb2.SetRequest(key="k", value=b"v"))
        )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "ROLE_NOT_GRANTED"


async def test_a_wrongly_signed_jwt_is_rejected(auth_server, jwt_keys):
    forged = jwt_keys.token("impostor", namespaces=["*"], roles=["operator"])
    assert await _rejected(auth_server, bearer(forged), ns("shop")) == "CREDENTIAL_BAD_SIGNATURE"


async def test_a_jwt_cannot_choose_its_own_algorithm(auth_server, jwt_keys):
    """alg confusion: an HS256 token "signed" with the RS256 public key, and alg none."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization

    public = jwt_keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {
        "iss": "https://issuer.test",
        "aud": "cachet",
        "exp": int(time.time()) + 60,
        "cachet_namespaces": ["*"],
        "cachet_roles": ["operator"],
    }
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "kid": "rs-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest())
    confused = f"{head}.{body}.{signature}"
    unsigned = pyjwt.encode(claims, None, algorithm="none", headers={"kid": "rs-1"})
    for token in (confused, unsigned):
        assert await _rejected(auth_server, bearer(token), ns("shop")) in (
            "CREDENTIAL_BAD_SIGNATURE",
            "CREDENTIAL_MALFORMED",
        )


async def test_a_rejected_credential_never_reaches_the_log(auth_server, caplog):
    secret = "cachet_this-is-a-secret-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        await _rejected(auth_server, bearer(secret), ns("shop"))
        await _rejected(auth_server, bearer(KEYS["shop_rw"] + "x"), ns("shop"))
        auth_server.denials.close()  # repeats of an earlier test's denial: their count now
    assert caplog.records, "the denial was audited"
    assert secret not in caplog.text and KEYS["shop_rw"] not in caplog.text


# ---------------------------------------------------------------- namespaces and roles


async def test_another_tenants_namespace_is_denied_before_any_redis_command(
    auth_server, redis_direct
):
    async with _channel(auth_server, bearer(KEYS["tenantb_rw"]), ns("tenantb")) as channel:
        await cache_pb2_grpc.CacheServiceStub(channel).Set(
            cache_pb2.SetRequest(key="secret", value=b"tenant-b-data")
        )
    before = command_counts(redis_direct)
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("tenantb")) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for call in (
            cache.Get(cache_pb2.GetRequest(key="secret")),
            cache.Set(cache_pb2.SetRequest(key="secret", value=b"clobbered")),
            admin.FlushNamespace(admin_pb2.FlushNamespaceRequest(confirm="tenantb")),
        ):
            error = await rpc_error(call)
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert command_counts(redis_direct) == before, "a denied call ran a Redis command"
    # The same check sees the commands of an allowed call, so it can fail.
    async with _channel(auth_server, bearer(KEYS["tenantb_rw"]), ns("tenantb")) as channel:
        reply = await cache_pb2_grpc.CacheServiceStub(channel).Get(
            cache_pb2.GetRequest(key="secret")
        )
    assert reply.value == b"tenant-b-data"
    assert command_counts(redis_direct) != before


async def test_namespace_grants_by_prefix_and_the_only_namespace_default(auth_server):
    async with _channel(auth_server, bearer(KEYS["prefix_rw"]), ns("team-blue")) as channel:
        await cache_pb2_grpc.CacheServiceStub(channel).Set(
            cache_pb2.SetRequest(key="k", value=b"1")
        )
    for namespace in ("team", "teams", "solo-x"):
        async with _channel(auth_server, bearer(KEYS["prefix_rw"]), ns(namespace)) as channel:
            error = await rpc_error(
                cache_pb2_grpc.CacheServiceStub(channel).Get(cache_pb2.GetRequest(key="k"))
            )
        assert error_reason(error) == "NAMESPACE_NOT_GRANTED", namespace
    # shop-ro holds exactly one namespace, so it may leave the header out.
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("shop")) as channel:
        await cache_pb2_grpc.CacheServiceStub(channel).Set(
            cache_pb2.SetRequest(key="only", value=b"shop's")
        )
    assert (await _get_key(auth_server, "only", bearer(KEYS["shop_ro"]))).value == b"shop's"
    # prefix-rw holds two grants: without a header it is in `default`, which it lacks.
    error = await rpc_error(_get_key(auth_server, "only", bearer(KEYS["prefix_rw"])))
    assert error_reason(error) == "NAMESPACE_NOT_GRANTED"


async def _get_key(app: Application, key: str, *metadata: tuple[str, str]) -> Any:
    async with _channel(app, *metadata) as channel:
        return await cache_pb2_grpc.CacheServiceStub(channel).Get(cache_pb2.GetRequest(key=key))


async def test_namespace_header_twice_is_invalid(auth_server):
    error = await rpc_error(
        _get_key(auth_server, "k", bearer(KEYS["shop_rw"]), ns("shop"), ns("shop"))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "INVALID_ARGUMENT"


@pytest.mark.parametrize("namespace", ["shop\n", "shop ", "shop\x00", "١٢", "s" * 65])
def test_a_namespace_outside_the_pattern_is_invalid(namespace):
    """grpc clients refuse to send some of these, but a raw HTTP/2 peer need not."""
    from cachet_server.access import EVERYTHING
    from cachet_server.callcontext import Identity
    from cachet_server.config import Limits
    from cachet_server.errors import InvalidArgument
    from cachet_server.interceptors.auth import resolve_namespace

    with pytest.raises(InvalidArgument):
        resolve_namespace([namespace], Identity("anonymous", "anonymous", EVERYTHING), Limits())


def _inline(key: str) -> ratelimit_pb2.RateLimitTarget:
    return ratelimit_pb2.RateLimitTarget(
        inline_limit=ratelimit_pb2.InlineLimit(
            key=key,
            limit=ratelimit_pb2.Limit(
                algorithm=ratelimit_pb2.ALGORITHM_FIXED_WINDOW, limit=5, period=Duration(seconds=60)
            ),
        )
    )


async def test_a_read_only_credential_cannot_write_reset_or_flush(auth_server):
    async with _channel(auth_server, bearer(KEYS["shop_ro"]), ns("shop")) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        limits = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        locks = lock_pb2_grpc.LockServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        denied = [
            cache.Set(cache_pb2.SetRequest(key="k", value=b"v")),
            cache.Delete(cache_pb2.DeleteRequest(keys=["k"])),
            cache.HashSet(
                cache_pb2.HashSetRequest(
                    key="h", fields=[cache_pb2.HashField(field="a", value=b"1")]
                )
            ),
            locks.Acquire(lock_pb2.AcquireRequest(name="job", ttl=Duration(seconds=5))),
            limits.Check(ratelimit_pb2.CheckRequest(target=_inline("login"))),
            limits.Reset(ratelimit_pb2.ResetRequest(targets=[_inline("login")])),
            admin.FlushNamespace(admin_pb2.FlushNamespaceRequest(confirm="shop")),
        ]
        for call in denied:
            error = await rpc_error(call)
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            assert error_reason(error) == "ROLE_NOT_GRANTED"
        # Reads and peeks are what `read` is for.
        await cache.Get(cache_pb2.GetRequest(key="k"))
        await locks.Inspect(lock_pb2.InspectRequest(name="job"))
        peek = await limits.Check(ratelimit_pb2.CheckRequest(target=_inline("login"), hits=0))
        assert peek.result.allowed


async def test_admin_needs_a_role_and_namespace_admins_cannot_touch_the_server(auth_server):
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("shop")) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for call in (
            admin.ScanKeys(admin_pb2.ScanKeysRequest(pattern="*")),
            admin.GetServiceStats(admin_pb2.GetServiceStatsRequest()),
            admin.GetServerInfo(admin_pb2.GetServerInfoRequest()),
        ):
            assert (await rpc_error(call)).code() is grpc.StatusCode.PERMISSION_DENIED
    async with _channel(auth_server, bearer(KEYS["shop_admin"]), ns("shop")) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.ScanKeys(admin_pb2.ScanKeysRequest(pattern="*"))
        for call in (
            admin.GetSlowLog(admin_pb2.GetSlowLogRequest()),
            admin.SetConfig(admin_pb2.SetConfigRequest(parameters={"slowlog-max-len": "10"})),
            admin.GetConfig(admin_pb2.GetConfigRequest()),
            admin.ListClients(admin_pb2.ListClientsRequest()),
            admin.GetServerInfo(admin_pb2.GetServerInfoRequest()),
        ):
            error = await rpc_error(call)
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            assert error_reason(error) == "ROLE_NOT_GRANTED"


def _envoy_request() -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(
        domain="mesh",
        descriptors=[
            envoy_common.RateLimitDescriptor(
                entries=[
                    envoy_common.RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.1")
                ]
            )
        ],
    )


async def test_the_ratelimit_role_can_call_should_rate_limit_and_nothing_else(auth_server):
    async with _channel(auth_server, bearer(KEYS["mesh"])) as channel:
        reply = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(_envoy_request())
        assert reply.overall_code == rls_pb2.RateLimitResponse.OK
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        limits = ratelimit_pb2_grpc.RateLimitServiceStub(channel)
        for call in (
            cache.Get(cache_pb2.GetRequest(key="k")),
            limits.Check(ratelimit_pb2.CheckRequest(target=_inline("x"))),
            limits.Reset(ratelimit_pb2.ResetRequest(targets=[_inline("x")])),
        ):
            assert (await rpc_error(call)).code() is grpc.StatusCode.PERMISSION_DENIED
    # ...and only a ratelimit credential can: burning a descriptor needs that role.
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("edge")) as channel:
        error = await rpc_error(
            rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(_envoy_request())
        )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_health_is_open_and_reflection_is_open_by_default(auth_server):
    async with aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request])):
            names = [s.name for s in answer.list_services_response.service]
            assert "cachet.cache.v1.CacheService" in names
            break


# ---------------------------------------------------------------- the attacks of issue 9


async def test_attack_slow_log_leaks_no_values_or_owner_tokens(auth_server):
    operator = (bearer(KEYS["operator"]),)
    async with _channel(auth_server, *operator) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.SetConfig(
            admin_pb2.SetConfigRequest(parameters={"slowlog-log-slower-than": "0"})
        )
        try:
            async with _channel(auth_server, bearer(KEYS["tenantb_rw"]), ns("tenantb")) as victim:
                await cache_pb2_grpc.CacheServiceStub(victim).Set(
                    cache_pb2.SetRequest(key="card", value=b"4111-1111-1111-1111")
                )
                grant = await lock_pb2_grpc.LockServiceStub(victim).Acquire(
                    lock_pb2.AcquireRequest(name="payout", ttl=Duration(seconds=30))
                )
            async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("shop")) as own:
                await cache_pb2_grpc.CacheServiceStub(own).Set(
                    cache_pb2.SetRequest(key="mine", value=b"shop-value-bytes")
                )
            log = await admin.GetSlowLog(admin_pb2.GetSlowLogRequest(page_size=1000))
            listed = await admin.ListClients(admin_pb2.ListClientsRequest(page_size=1000))
        finally:
            await admin.SetConfig(
                admin_pb2.SetConfigRequest(parameters={"slowlog-log-slower-than": "10000"})
            )
    for answer in (log, listed):
        raw = answer.SerializeToString()
        for secret in (b"4111-1111-1111-1111", b"shop-value-bytes", grant.owner_token.encode()):
            assert secret not in raw
    assert all(not entry.args for entry in log.entries)
    commands = {entry.command for entry in log.entries}
    assert "EVALSHA" in commands
    shown = [key for entry in log.entries for key in entry.keys]
    assert any(key.startswith("cachet:shop:") for key in shown), "own keys are shown"
    assert not any("tenantb" in key for key in shown), "other tenants' keys are not"
    assert sum(entry.hidden_keys for entry in log.entries) > 0


@pytest.mark.parametrize(
    ("parameters", "code", "reason"),
    [
        ({"maxmemory": "1"}, grpc.StatusCode.FAILED_PRECONDITION, "CONFIG_UNSAFE"),
        (
            {"maxmemory-policy": "allkeys-random"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "CONFIG_UNSAFE",
        ),
        (
            {"maxmemory-policy": "volatile-lru"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "CONFIG_UNSAFE",
        ),
        (
            {"maxmemory": "99999999999999999999999"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        ({"maxmemory": "2048tb"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ],
)
async def test_attack_set_config_that_would_hurt_other_tenants_is_refused(
    auth_server, redis_direct, parameters, code, reason
):
    before = redis_direct.config_get("maxmemory*")
    async with _channel(auth_server, bearer(KEYS["operator"])) as channel:
        error = await rpc_error(
            admin_pb2_grpc.AdminServiceStub(channel).SetConfig(
                admin_pb2.SetConfigRequest(parameters=parameters)
            )
        )
    assert error.code() is code and error_reason(error) == reason, error.details()
    assert redis_direct.config_get("maxmemory*") == before, "nothing changed"


async def test_a_safe_maxmemory_is_still_accepted(auth_server, redis_direct):
    used = redis_direct.info("memory")["used_memory"]
    previous = redis_direct.config_get("maxmemory")["maxmemory"]
    async with _channel(auth_server, bearer(KEYS["operator"])) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            await admin.SetConfig(
                admin_pb2.SetConfigRequest(parameters={"maxmemory": str(used * 4 + 10_000_000)})
            )
            assert int(redis_direct.config_get("maxmemory")["maxmemory"]) == used * 4 + 10_000_000
        finally:
            await admin.SetConfig(admin_pb2.SetConfigRequest(parameters={"maxmemory": previous}))


async def test_attack_resetting_someone_elses_limit_is_denied(auth_server):
    async with _channel(auth_server, bearer(KEYS["tenantb_rw"]), ns("tenantb")) as victim:
        limits = ratelimit_pb2_grpc.RateLimitServiceStub(victim)
        for _ in range(5):
            await limits.Check(ratelimit_pb2.CheckRequest(target=_inline("login:alice")))
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("tenantb")) as attacker:
        error = await rpc_error(
            ratelimit_pb2_grpc.RateLimitServiceStub(attacker).Reset(
                ratelimit_pb2.ResetRequest(targets=[_inline("login:alice")])
            )
        )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    async with _channel(auth_server, bearer(KEYS["tenantb_rw"]), ns("tenantb")) as victim:
        sixth = await ratelimit_pb2_grpc.RateLimitServiceStub(victim).Check(
            ratelimit_pb2.CheckRequest(target=_inline("login:alice"))
        )
    assert not sixth.result.allowed, "the limit still holds"


async def test_attack_service_stats_show_only_the_callers_namespaces(auth_server):
    for key, namespace in (("tenantb_rw", "tenantb"), ("shop_rw", "shop")):
        await _get_key(auth_server, "k", bearer(KEYS[key]), ns(namespace))
    async with _channel(auth_server, bearer(KEYS["shop_admin"])) as channel:
        stats = await admin_pb2_grpc.AdminServiceStub(channel).GetServiceStats(
            admin_pb2.GetServiceStatsRequest()
        )
    assert [n.namespace for n in stats.namespaces] == ["shop"]
    assert not stats.methods, "per-method counters mix every tenant's traffic"
    async with _channel(auth_server, bearer(KEYS["operator"])) as channel:
        everything = await admin_pb2_grpc.AdminServiceStub(channel).GetServiceStats(
            admin_pb2.GetServiceStatsRequest()
        )
    assert {"shop", "tenantb"} <= {n.namespace for n in everything.namespaces}
    assert everything.methods


# ---------------------------------------------------------------- audit


async def test_a_flush_is_audited_with_the_credential_and_the_namespace(auth_server, caplog):
    async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("shop")) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        for i in range(3):
            await cache.Set(cache_pb2.SetRequest(key=f"doomed-{i}", value=b"x"))
    with caplog.at_level(logging.INFO, logger="cachet.audit"):
        async with _channel(auth_server, bearer(KEYS["shop_admin"])) as channel:
            flushed = await admin_pb2_grpc.AdminServiceStub(channel).FlushNamespace(
                admin_pb2.FlushNamespaceRequest(confirm="shop")
            )
        # A namespace no other test asks for: a denial repeating one of the last second
        # is counted, not written (test_repeated_denials_...).
        async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns("flushed")) as channel:
            await rpc_error(
                admin_pb2_grpc.AdminServiceStub(channel).FlushNamespace(
                    admin_pb2.FlushNamespaceRequest(confirm="flushed")
                )
            )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cachet.audit"]
    flush = [line for line in lines if line["method"].endswith("/FlushNamespace")]
    assert flush[0] == {
        **flush[0],
        "credential": "shop-admin",
        "credential_kind": "api_key",
        "namespace": "shop",
        "keys": flushed.deleted_keys,
        "outcome": "OK",
    }
    assert flushed.deleted_keys >= 3
    assert flush[1]["credential"] == "shop-rw" and flush[1]["outcome"] == "PERMISSION_DENIED"
    assert flush[1]["namespace"] == "flushed" and flush[1]["reason"] == "NAMESPACE_NOT_GRANTED"
    assert all(line["time"] and line["peer"] for line in flush)


def _audit_lines(caplog: pytest.LogCaptureFixture, namespace: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cachet.audit"]
    return [line for line in lines if line.get("namespace") == namespace]


async def test_repeated_denials_are_counted_and_none_is_lost(auth_server, caplog):
    """A tenant hammering with a call it may not make gets one audit line at once and
    one count when the window closes, not a line per call; another credential's denial
    in the meantime still gets its own line at once."""
    probed = "audit-probe"  # asked for by this test only
    with caplog.at_level(logging.INFO, logger="cachet.audit"):
        async with _channel(auth_server, bearer(KEYS["shop_rw"]), ns(probed)) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            for _ in range(30):
                error = await rpc_error(cache.Get(cache_pb2.GetRequest(key="k")))
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        async with _channel(auth_server, bearer(KEYS["shop_ro"]), ns(probed)) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            await rpc_error(cache.Get(cache_pb2.GetRequest(key="k")))
        written = _audit_lines(caplog, probed)
        assert [(line["credential"], "repeated" in line) for line in written] == [
            ("shop-rw", False),
            ("shop-ro", False),
        ]
        for _ in range(100):  # the window closes after a second; allow a loaded machine 10
            if len(_audit_lines(caplog, probed)) == 3:
                break
            await asyncio.sleep(0.1)
    first, _, counted = _audit_lines(caplog, probed)
    assert counted == {
        **first,
        "time": counted["time"],
        "repeated": 29,
        "window_s": audit.REPEAT_WINDOW,
    }, "29 repeats of the first line, with everything that names it"


async def test_past_max_tracked_new_denials_are_counted_together():
    denials = audit.Denials(window=0.05, max_tracked=2)
    written: list[dict[str, Any]] = []
    handler = logging.Handler()
    handler.emit = lambda record: written.append(json.loads(record.getMessage()))  # type: ignore[method-assign]
    logger = logging.getLogger("cachet.audit")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        for namespace in ("a", "b", "c", "d", "a"):
            denials.record(
                method="/m",
                outcome=grpc.StatusCode.PERMISSION_DENIED,
                credential="k",
                credential_kind="api_key",
                namespace=namespace,
                peer="ipv6:[::1]:4000",
                reason="NAMESPACE_NOT_GRANTED",
            )
        assert [line["namespace"] for line in written] == ["a", "b"]
        denials.close()  # the server stops: every open count is written
    finally:
        logger.removeHandler(handler)
        logger.level = level
    assert written[2:] == [
        {**written[0], "time": written[2]["time"], "repeated": 1, "window_s": 0.05},
        {
            "audit": True,
            "time": written[3]["time"],
            "outcome": "DENIED",
            "reason": "TOO_MANY_DISTINCT_DENIALS",
            "repeated": 2,
            "window_s": 0.05,
        },
    ]


def test_every_rpc_has_an_access_rule():
    """The call table is complete: app.build_server refuses to start otherwise, and no
    method falls back to an implicit default."""
    from cachet_server.access import call_table
    from cachet_server.app import _SERVICES

    table = call_table((descriptor, cls.CALLS) for cls, descriptor, _ in _SERVICES)
    methods = {
        f"/{descriptor.full_name}/{method.name}"
        for _, descriptor, _ in _SERVICES
        for method in descriptor.methods
    }
    assert set(table) == methods


def test_required_auth_without_any_credential_refuses_to_start(tmp_path: Path):
    from cachet_server.config import AuthSettings
    from cachet_server.credentials import Authenticator

    with pytest.raises(ValueError, match="no credential is configured"):
        Authenticator(AuthSettings(mode="required"))


async def test_reflection_can_be_protected(redis_standalone, tmp_path):
    config = {
        "auth": {
            "mode": "required",
            "protect_reflection": True,
            "api_keys": [
                {
                    "id": "r",
                    "sha256": sha256(KEYS["shop_ro"]),
                    "namespaces": ["shop"],
                    "roles": ["read"],
                }
            ],
        }
    }
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with running(
        settings_from_yaml(redis_standalone.url, config, tmp_path / "c.yaml")
    ) as app:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(aio.AioRpcError) as refused:
                async for _ in stub.ServerReflectionInfo(iter([request])):
                    pass
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            stream = stub.ServerReflectionInfo(iter([request]), metadata=[bearer(KEYS["shop_ro"])])
            async for answer in stream:
                assert answer.list_services_response.service
                break
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest()
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_api_keys_can_come_from_a_file_the_config_names(tmp_path: Path):
    """auth.api_keys_file: a mounted Secret with more keys, in the api_keys shape."""
    from cachet_server.config import AuthSettings
    from cachet_server.credentials import Authenticator
    from cachet_server.errors import Unauthenticated

    key = api_key()
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(
        yaml.safe_dump(
            {
                "api_keys": [
                    {
                        "id": "from-file",
                        "sha256": sha256(key),
                        "namespaces": ["a"],
                        "roles": ["read"],
                    }
                ]
            }
        )
    )
    authenticator = Authenticator(AuthSettings(mode="required", api_keys_file=keys_file))
    identity = authenticator.identify([f"Bearer {key}"], None, time.time())
    assert (identity.kind, identity.id) == ("api_key", "from-file")
    assert identity.grants.allows_namespace("a") and not identity.grants.allows_namespace("b")
    with pytest.raises(Unauthenticated):
        authenticator.identify([f"Bearer {api_key()}"], None, time.time())
    keys_file.write_text(
        yaml.safe_dump([{"id": "bad", "sha256": "abc", "namespaces": ["a"], "roles": ["read"]}])
    )
    with pytest.raises(ValueError):
        Authenticator(AuthSettings(mode="required", api_keys_file=keys_file))


def test_an_hs256_secret_file_keeps_every_byte_but_one_trailing_line_break():
    from cachet_server.credentials import _secret

    assert _secret(b" \x00secret\t") == b" \x00secret\t"
    assert _secret(b"secret\n") == b"secret"
    assert _secret(b"secret\r\n") == b"secret"
    assert _secret(b"secret\n\n") == b"secret\n"
