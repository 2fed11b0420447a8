"""TLS, mutual TLS and credentials of the Python client, against a cachet-server process
with TLS on and auth required (a throwaway CA from trustme; API keys by SHA-256)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachet_client
import grpc
import jwt
import pytest
import trustme
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import r
from .redis_procs import free_port
from .server_procs import CachetProcess

pytestmark = pytest.mark.topologies(
    "standalone",
    reason="TLS and credentials are between client and server; Redis's topology plays no part",
)

SERVER_NAME = "cachet.internal"
WRITER_TOKEN = "writer-token-7f3a"
READER_TOKEN = "reader-token-19c2"
ADMIN_TOKEN = "admin-token-e51d"
JWT_SECRET = "a-shared-secret-for-hs256-tests-only-0123456789"
JWT_ISSUER = "https://issuer.test"
JWT_AUDIENCE = "cachet"


def mint_jwt(namespace: str, lifetime: float) -> str:
    """An HS256 JWT granting read and write on `namespace` for `lifetime` seconds."""
    now = int(time.time())
    claims = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": "billing",
        "iat": now,
        "exp": now + lifetime,
        "cachet_namespaces": [namespace],
        "cachet_roles": ["read", "write"],
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


class _TlsProcess(CachetProcess):
    """A CachetProcess whose readiness is read on its plaintext health-only port."""

    def __init__(self, redis_url: str, **env: str) -> None:
        self.health_port = free_port()
        super().__init__(redis_url, CACHET_HEALTH_LISTEN=f"127.0.0.1:{self.health_port}", **env)

    def serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"cachet-server exited {self.process.returncode}:\n{self.output()}")
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class SecuredServer:
    """A running TLS + auth server, the files a client needs, and its namespace."""

    address: str
    namespace: str
    ca: Path
    client_cert: Path
    client_key: Path
    directory: Path

    def tls(self, *, mutual: bool = True) -> cachet_client.TLS:
        if mutual:
            return cachet_client.TLS(
                ca=self.ca, cert=self.client_cert, key=self.client_key, server_name=SERVER_NAME
            )
        return cachet_client.TLS(ca=self.ca.read_bytes(), server_name=SERVER_NAME)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextlib.contextmanager
def secured_server(
    redis_url: str, directory: Path, namespace: str, *, mutual: bool
) -> Iterator[SecuredServer]:
    """Start a cachet-server with TLS (mutual when asked) and API keys: a writer and a
    reader of `namespace`, an admin of every namespace."""
    ca = trustme.CA()
    server_cert = ca.issue_cert(SERVER_NAME)
    client_cert = ca.issue_cert("client.cachet.internal")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "server", "server-key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_pem.write_to_path(str(paths["server-key"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["server"]))
    client_path, client_key_path = directory / "client.pem", directory / "client-key.pem"
    client_cert.cert_chain_pems[0].write_to_path(str(client_path))
    client_cert.private_key_pem.write_to_path(str(client_key_path))
    keys = [
        {
            "id": "writer",
            "sha256": _sha256(WRITER_TOKEN),
            "namespaces": [namespace],
            "roles": ["read", "write", "ratelimit"],
        },
        {
            "id": "reader",
            "sha256": _sha256(READER_TOKEN),
            "namespaces": [namespace],
            "roles": ["read"],
        },
        {
            "id": "admin",
            "sha256": _sha256(ADMIN_TOKEN),
            "namespaces": ["*"],
            "roles": ["read", "write", "admin"],
        },
    ]
    secret = directory / "jwt-secret"
    secret.write_text(JWT_SECRET)
    jwt_settings = {
        "issuer": JWT_ISSUER,
        "audience": JWT_AUDIENCE,
        "leeway": "PT0S",
        "keys": [{"algorithm": "HS256", "secret_file": str(secret)}],
    }
    config = directory / "cachet.yaml"
    config.write_text(
        yaml.safe_dump({"auth": {"mode": "required", "api_keys": keys, "jwt": jwt_settings}})
    )
    env = {
        "CACHET_AUTH__MODE": "required",
        "CACHET_CONFIG_FILE": str(config),
        "CACHET_TLS__CERT_FILE": str(paths["server"]),
        "CACHET_TLS__KEY_FILE": str(paths["server-key"]),
    }
    if mutual:
        env["CACHET_TLS__CLIENT_CA_FILE"] = str(paths["ca"])
    proc = _TlsProcess(redis_url, **env)
    try:
        proc.start()
        yield SecuredServer(
            proc.address, namespace, paths["ca"], client_path, client_key_path, directory
        )
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def mtls_server(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    with secured_server(
        topology.url, tmp_path_factory.mktemp("mtls"), "secure-app", mutual=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def tls_server(topology: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    with secured_server(
        topology.url, tmp_path_factory.mktemp("tls"), "tls-app", mutual=False
    ) as server:
        yield server


def open_client(flavor: str, server: SecuredServer, **settings: Any) -> Any:
    settings.setdefault("namespace", server.namespace)
    connect = cachet_client.connect if flavor == "async" else cachet_client.connect_sync
    return connect(server.address, **settings)


async def test_mutual_tls_with_a_static_token(flavor, mtls_server):
    client = open_client(flavor, mtls_server, tls=mtls_server.tls(), credential=WRITER_TOKEN)
    try:
        await r(client.cache.set("k", b"over mtls"))
        assert (await r(client.cache.get("k"))).data == b"over mtls"
    finally:
        await r(client.close())


async def test_mutual_tls_refuses_a_client_without_a_certificate(flavor, mtls_server):
    client = open_client(
        flavor,
        mtls_server,
        tls=mtls_server.tls(mutual=False),
        credential=WRITER_TOKEN,
        retry=cachet_client.NO_RETRY,
        timeout=5,
    )
    try:
        with pytest.raises(cachet_client.Unavailable):
            await r(client.cache.get("k"))
    finally:
        await r(client.close())


async def test_tls_checks_the_server_name(flavor, tls_server):
    wrong_name = cachet_client.TLS(ca=tls_server.ca, server_name="someone.else")
    client = open_client(
        flavor,
        tls_server,
        tls=wrong_name,
        credential=WRITER_TOKEN,
        retry=cachet_client.NO_RETRY,
    )
    try:
        with pytest.raises(cachet_client.Unavailable):
            await r(client.cache.get("k"))
    finally:
        await r(client.close())
    with pytest.raises(ValueError, match="cert and key"):
        cachet_client.TLS(ca=tls_server.ca, cert=b"x")


async def test_credentials_are_checked_and_mapped(flavor, tls_server):
    tls = tls_server.tls(mutual=False)
    anonymous = open_client(flavor, tls_server, tls=tls)
    wrong = open_client(flavor, tls_server, tls=tls, credential="not-a-key")
    reader = open_client(flavor, tls_server, tls=tls, credential=READER_TOKEN)
    elsewhere = open_client(
        flavor, tls_server, tls=tls, credential=WRITER_TOKEN, namespace="other-app"
    )
    try:
        with pytest.raises(cachet_client.CredentialMissing) as missing:
            await r(anonymous.cache.get("k"))
        assert isinstance(missing.value, cachet_client.Unauthenticated)
        with pytest.raises(cachet_client.CredentialUnknown):
            await r(wrong.cache.get("k"))
        assert await r(reader.cache.get("nothing")) is None
        with pytest.raises(cachet_client.RoleNotGranted) as role:
            await r(reader.cache.set("k", b"v"))
        assert isinstance(role.value, cachet_client.PermissionDenied)
        assert READER_TOKEN not in str(role.value)  # the server never echoes a credential
        with pytest.raises(cachet_client.NamespaceNotGranted):
            await r(elsewhere.cache.get("k"))
        with pytest.raises(cachet_client.RoleNotGranted):
            await r(reader.admin.server_info())
    finally:
        for client in (anonymous, wrong, reader, elsewhere):
            await r(client.close())


async def test_token_refresher_is_called_for_every_call_and_stream(tls_server):
    tls = tls_server.tls(mutual=False)
    calls = {"async": 0, "sync": 0}

    async def fresh_async() -> str:
        calls["async"] += 1
        return WRITER_TOKEN

    def fresh_sync() -> str:
        calls["sync"] += 1
        return WRITER_TOKEN

    async with cachet_client.connect(
        tls_server.address, namespace=tls_server.namespace, tls=tls, credential=fresh_async
    ) as client:
        await client.cache.set("a", b"1")
        await client.cache.get("a")
        subscription = await client.events.subscribed("news")  # a server stream
        await client.events.publish("news", b"hi")
        assert (await asyncio.wait_for(anext(subscription), 5)).payload == b"hi"
        await subscription.aclose()
        async with client.locks.hold("job", ttl=5) as held:  # a bidirectional stream
            assert held.fencing_token > 0
        assert calls["async"] == 5

    # A plain function works on the async client too.
    async with cachet_client.connect(
        tls_server.address, namespace=tls_server.namespace, tls=tls, credential=fresh_sync
    ) as client:
        assert (await client.cache.get("a")).data == b"1"
    assert calls["sync"] == 1

    def blocking() -> None:
        with cachet_client.connect_sync(
            tls_server.address, namespace=tls_server.namespace, tls=tls, credential=fresh_sync
        ) as sync_client:
            sync_client.cache.set("b", b"2")
            stream = sync_client.events.consume("nothing-here", "g", "c", block=0.1)
            with pytest.raises(cachet_client.GroupNotFound):
                next(stream)
            with sync_client.locks.hold("job", ttl=5):
                pass

    await asyncio.to_thread(blocking)
    assert calls["sync"] == 4


async def test_a_changing_token_is_picked_up(tls_server):
    """A refresher that rotates: the call made after the rotation carries the new token."""
    tokens = iter([READER_TOKEN, WRITER_TOKEN])
    current = {"token": next(tokens)}
    lock = threading.Lock()

    def credential() -> str:
        with lock:
            return current["token"]

    with cachet_client.connect_sync(
        tls_server.address,
        namespace=tls_server.namespace,
        tls=tls_server.tls(mutual=False),
        credential=credential,
    ) as client:
        with pytest.raises(cachet_client.PermissionDenied):
            client.cache.set("rotated", b"x")
        current["token"] = next(tokens)
        client.cache.set("rotated", b"x")
        assert client.cache.get("rotated").data == b"x"


async def test_a_refresher_minting_short_lived_jwts(flavor, tls_server):
    """A JWT that has expired is refused (CredentialExpired); a refresher that mints a
    fresh one before each call keeps working past any one token's lifetime."""
    tls = tls_server.tls(mutual=False)
    expired = open_client(
        flavor, tls_server, tls=tls, credential=mint_jwt(tls_server.namespace, -5)
    )
    minted: list[str] = []

    def fresh() -> str:
        minted.append(mint_jwt(tls_server.namespace, 2))
        return minted[-1]

    async def fresh_async() -> str:
        return fresh()

    refreshing = open_client(
        flavor, tls_server, tls=tls, credential=fresh_async if flavor == "async" else fresh
    )
    try:
        with pytest.raises(cachet_client.CredentialExpired):
            await r(expired.cache.get("k"))
        await r(refreshing.cache.set("jwt", b"signed"))
        assert (await r(refreshing.cache.get("jwt"))).data == b"signed"
        assert len(minted) == 2
    finally:
        await r(expired.close())
        await r(refreshing.close())
