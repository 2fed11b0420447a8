"""TLS and mutual TLS on the gRPC port: client certificates as identities, certificate
rotation on disk without a restart, and the plaintext health-only port."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_server.app import Application, running
from cryptography import x509
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .auth_material import Pki, api_key, sha256
from .conftest import error_reason, rpc_error, settings_from_yaml
from .redis_procs import RedisProcess, free_port

KEY = api_key()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.generate()


def _swap_in(directory: Path, leaf: trustme.LeafCert, ca: trustme.CA, generation: int) -> None:
    """Write a certificate the way cert-manager (the kubelet's atomic writer) does: files in
    a new timestamped folder, then one rename of the `..data` symlink."""
    folder = directory / f"..gen{generation}"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    (folder / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    (folder / "ca.crt").write_bytes(ca.cert_pem.bytes())
    link = directory / "..data_tmp"
    link.symlink_to(folder.name)
    os.replace(link, directory / "..data")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


@pytest.fixture(scope="module")
async def tls_server(
    redis_standalone: RedisProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Application, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    secret = directory / "secret"
    secret.mkdir()
    _swap_in(secret, pki.server, pki.ca, 1)
    config = {
        "auth": {
            "mode": "required",
            "api_keys": [
                {"id": "ops", "sha256": sha256(KEY), "namespaces": ["ops"], "roles": ["read"]}
            ],
            "mtls_identities": [
                {
                    "id": "billing",
                    "subject": Pki.subject_of(pki.by_subject),
                    "namespaces": ["billing"],
                    "roles": ["read", "write"],
                },
                {
                    "id": "orders",
                    "san": "orders.clients.test",
                    "namespaces": ["orders"],
                    "roles": ["read"],
                },
            ],
        },
        "tls": {
            "cert_file": str(secret / "tls.crt"),
            "key_file": str(secret / "tls.key"),
            "client_ca_file": str(secret / "ca.crt"),
        },
    }
    settings = settings_from_yaml(
        redis_standalone.url,
        config,
        directory / "cachet.yaml",
        health_listen=f"127.0.0.1:{free_port()}",
    )
    async with running(settings) as app:
        yield app, secret


def _secure_channel(
    app: Application, ca: trustme.CA, client: trustme.LeafCert | None, *metadata: tuple[str, str]
) -> aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=b"".join(p.bytes() for p in client.cert_chain_pems) if client else None,
    )

    class Stamp(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation, details, request):
            combined = [*(details.metadata or ()), *metadata]
            return await continuation(details._replace(metadata=combined), request)

    return aio.secure_channel(
        f"localhost:{app.port}",
        credentials,
        interceptors=[Stamp()] if metadata else None,
        # One connection per channel: a rotated certificate must be seen by a new one.
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


async def _get(channel: aio.Channel, key: str = "k") -> Any:
    return await cache_pb2_grpc.CacheServiceStub(channel).Get(
        cache_pb2.GetRequest(key=key), timeout=5
    )


async def test_a_mapped_client_certificate_is_an_identity(tls_server, pki):
    app, _ = tls_server
    async with _secure_channel(app, pki.ca, pki.by_subject, ("cachet-namespace", "billing")) as c:
        await cache_pb2_grpc.CacheServiceStub(c).Set(cache_pb2.SetRequest(key="k", value=b"v"))
        assert (await _get(c)).value == b"v"
    async with _secure_channel(app, pki.ca, pki.by_san, ("cachet-namespace", "orders")) as c:
        assert not (await _get(c)).found
        error = await rpc_error(
            cache_pb2_grpc.CacheServiceStub(c).Set(cache_pb2.SetRequest(key="k", value=b"v"))
        )
        assert error_reason(error) == "ROLE_NOT_GRANTED"
    async with _secure_channel(app, pki.ca, pki.by_subject, ("cachet-namespace", "orders")) as c:
        assert error_reason(await rpc_error(_get(c))) == "NAMESPACE_NOT_GRANTED"


async def test_a_valid_but_unmapped_certificate_is_unauthenticated(tls_server, pki):
    app, _ = tls_server
    async with _secure_channel(app, pki.ca, pki.unmapped, ("cachet-namespace", "billing")) as c:
        error = await rpc_error(_get(c))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "CREDENTIAL_UNKNOWN"


async def test_a_bearer_credential_wins_over_the_certificate(tls_server, pki):
    app, _ = tls_server
    metadata = (("authorization", f"Bearer {KEY}"), ("cachet-namespace", "ops"))
    async with _secure_channel(app, pki.ca, pki.by_subject, *metadata) as c:
        assert not (await _get(c)).found
    metadata = (("authorization", f"Bearer {KEY}"), ("cachet-namespace", "billing"))
    async with _secure_channel(app, pki.ca, pki.by_subject, *metadata) as c:
        assert error_reason(await rpc_error(_get(c))) == "NAMESPACE_NOT_GRANTED"


@pytest.mark.parametrize("who", ["no certificate", "another CA", "plaintext"])
async def test_clients_without_a_good_certificate_cannot_complete_a_call(tls_server, pki, who):
    app, _ = tls_server
    if who == "plaintext":
        channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    else:
        client = None if who == "no certificate" else pki.stranger
        channel = _secure_channel(app, pki.ca, client, ("cachet-namespace", "billing"))
    async with channel:
        error = await rpc_error(_get(channel))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def _served_certificate(port: int, pki: Pki) -> x509.Certificate:
    context = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
    pki.by_subject.configure_cert(context)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_a_certificate_rotated_on_disk_serves_new_connections_and_keeps_old_ones(
    tls_server, pki
):
    app, secret = tls_server
    before = await asyncio.to_thread(_served_certificate, app.port, pki)
    live = _secure_channel(app, pki.ca, pki.by_subject, ("cachet-namespace", "billing"))
    async with live:
        await _get(live)
        rotated = pki.ca.issue_cert("localhost", "127.0.0.1")
        _swap_in(secret, rotated, pki.ca, 2)
        after = await asyncio.to_thread(_served_certificate, app.port, pki)
        expected = x509.load_pem_x509_certificate(rotated.cert_chain_pems[0].bytes())
        assert after.serial_number == expected.serial_number != before.serial_number
        # The connection made before the rotation still works, without a restart.
        assert not (await _get(live, "other")).found
    async with _secure_channel(app, pki.ca, pki.by_subject, ("cachet-namespace", "billing")) as c:
        await _get(c)


async def test_a_half_written_rotation_keeps_the_last_good_certificate(tls_server, pki):
    app, secret = tls_server
    before = await asyncio.to_thread(_served_certificate, app.port, pki)
    # A new certificate next to the old key: not a pair, so it must not be served.
    mismatched = pki.ca.issue_cert("localhost", "127.0.0.1")
    target = (secret / "tls.crt").resolve()
    target.write_bytes(mismatched.cert_chain_pems[0].bytes())
    after = await asyncio.to_thread(_served_certificate, app.port, pki)
    assert after.serial_number == before.serial_number


async def test_the_health_only_port_answers_in_plaintext_and_serves_nothing_else(tls_server):
    app, _ = tls_server
    assert app.health_port is not None
    async with aio.insecure_channel(f"127.0.0.1:{app.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        error = await rpc_error(_get(channel))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
