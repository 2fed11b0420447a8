"""Each kind of credential on Redis Cluster and Sentinel (the full matrix runs on
standalone in test_auth.py and test_auth_tls.py): the caller's own namespace works, and
another tenant's is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_server.app import Application, running
from grpc import aio

from .auth_material import JwtKeys, Pki, api_key, sha256
from .conftest import error_reason, rpc_error, settings_from_yaml
from .redis_procs import Deployment

pytestmark = pytest.mark.topologies(
    "cluster", "sentinel", reason="the auth matrix runs on standalone in test_auth*.py"
)

KEY = api_key()


@pytest.fixture(scope="module")
def material() -> tuple[JwtKeys, Pki]:
    return JwtKeys.generate(), Pki.generate()


@pytest.fixture
async def server(
    topology: Deployment, material: tuple[JwtKeys, Pki], tmp_path
) -> AsyncIterator[Application]:
    jwt_keys, pki = material
    tls = pki.write_server(tmp_path)
    config = {
        "auth": {
            "mode": "required",
            "api_keys": [
                {
                    "id": "k",
                    "sha256": sha256(KEY),
                    "namespaces": ["team-a"],
                    "roles": ["read", "write"],
                }
            ],
            "jwt": jwt_keys.write(tmp_path),
            "mtls_identities": [
                {
                    "id": "billing",
                    "subject": Pki.subject_of(pki.by_subject),
                    "namespaces": ["team-a"],
                    "roles": ["read", "write"],
                }
            ],
        },
        "tls": tls,
    }
    async with running(settings_from_yaml(topology.url, config, tmp_path / "c.yaml")) as app:
        yield app


def _channel(app: Application, pki: Pki, *metadata: tuple[str, str]) -> aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem.bytes(),
        private_key=pki.by_subject.private_key_pem.bytes(),
        certificate_chain=b"".join(p.bytes() for p in pki.by_subject.cert_chain_pems),
    )

    class Stamp(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation, details, request):
            combined = [*(details.metadata or ()), *metadata]
            return await continuation(details._replace(metadata=combined), request)

    return aio.secure_channel(f"localhost:{app.port}", credentials, interceptors=[Stamp()])


@pytest.mark.parametrize("kind", ["api_key", "jwt", "mtls"])
async def test_each_credential_kind_scopes_its_namespace(server, material, kind):
    jwt_keys, pki = material
    credential = {
        "api_key": [("authorization", f"Bearer {KEY}")],
        "jwt": [
            (
                "authorization",
                "Bearer " + jwt_keys.token("es", namespaces=["team-a"], roles=["read", "write"]),
            )
        ],
        "mtls": [],
    }[kind]
    async with _channel(server, pki, *credential, ("cachet-namespace", "team-a")) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        await cache.Set(cache_pb2.SetRequest(key="{user:1}:name", value=kind.encode()))
        assert (await cache.Get(cache_pb2.GetRequest(key="{user:1}:name"))).value == kind.encode()
    async with _channel(server, pki, *credential, ("cachet-namespace", "team-b")) as channel:
        error = await rpc_error(
            cache_pb2_grpc.CacheServiceStub(channel).Get(cache_pb2.GetRequest(key="{user:1}:name"))
        )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "NAMESPACE_NOT_GRANTED"
