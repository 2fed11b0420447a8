"""Credentials for auth tests, made fresh in each run: API keys, JWT signing keys (HS256,
RS256, ES256 and a JWKS), and a private CA with server and client certificates."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://issuer.test"
AUDIENCE = "cachet"


def api_key() -> str:
    return f"cachet_{secrets.token_urlsafe(24)}"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class JwtKeys:
    """One signing key per algorithm, plus one in a JWKS file, and an impostor."""

    hs_secret: bytes
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    jwks_rsa: rsa.RSAPrivateKey
    impostor_rsa: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> JwtKeys:
        return cls(
            # Binary, and beginning and ending with bytes that look like whitespace:
            # the server must use every byte (a stripped secret refuses every token).
            hs_secret=b" " + secrets.token_bytes(32) + b"\t",
            rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec=ec.generate_private_key(ec.SECP256R1()),
            jwks_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            impostor_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def write(self, directory: Path) -> dict[str, Any]:
        """Key files in `directory`; answers the `auth.jwt` config block."""
        (directory / "hs.secret").write_bytes(self.hs_secret)
        (directory / "rs.pem").write_bytes(_pem_public(self.rsa))
        (directory / "es.pem").write_bytes(_pem_public(self.ec))
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.jwks_rsa.public_key()))
        jwk.update({"kid": "jwks-1", "alg": "RS256", "use": "sig"})
        (directory / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        return {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "leeway": "PT5S",
            "keys": [
                {"kid": "hs-1", "algorithm": "HS256", "secret_file": str(directory / "hs.secret")},
                {"kid": "rs-1", "algorithm": "RS256", "public_key_file": str(directory / "rs.pem")},
                {"kid": "es-1", "algorithm": "ES256", "public_key_file": str(directory / "es.pem")},
            ],
            "jwks_file": str(directory / "jwks.json"),
        }

    def token(
        self,
        kind: str,
        *,
        namespaces: list[str],
        roles: list[str],
        subject: str = "svc-billing",
        **claims: Any,
    ) -> str:
        """A JWT signed by `kind` (hs, rs, es, jwks or impostor) with sane claims, any of
        which `claims` overrides (None drops it)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "cachet_namespaces": namespaces,
            "cachet_roles": roles,
        }
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        algorithm, key, kid = {
            "hs": ("HS256", self.hs_secret, "hs-1"),
            "rs": ("RS256", self.rsa, "rs-1"),
            "es": ("ES256", self.ec, "es-1"),
            "jwks": ("RS256", self.jwks_rsa, "jwks-1"),
            "impostor": ("RS256", self.impostor_rsa, "rs-1"),
        }[kind]
        return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


@dataclass
class Pki:
    """A CA, a server certificate for localhost, and client certificates: one mapped by
    subject, one by SAN, one unmapped, and one from another CA."""

    ca: trustme.CA
    other_ca: trustme.CA
    server: trustme.LeafCert
    by_subject: trustme.LeafCert
    by_san: trustme.LeafCert
    unmapped: trustme.LeafCert
    stranger: trustme.LeafCert

    @classmethod
    def generate(cls) -> Pki:
        ca = trustme.CA()
        other = trustme.CA()
        return cls(
            ca=ca,
            other_ca=other,
            server=ca.issue_cert("localhost", "127.0.0.1"),
            by_subject=ca.issue_cert(
                "billing.clients.test", common_name="billing", organization_name="acme"
            ),
            by_san=ca.issue_cert("orders.clients.test", common_name="orders"),
            unmapped=ca.issue_cert("nobody.clients.test", common_name="nobody"),
            stranger=other.issue_cert("billing.clients.test", common_name="billing"),
        )

    def write_server(self, directory: Path) -> dict[str, str]:
        """Server certificate, key and client CA files; answers the `tls` settings."""
        self.server.cert_chain_pems[0].write_to_path(directory / "tls.crt")
        for extra in self.server.cert_chain_pems[1:]:
            with (directory / "tls.crt").open("ab") as chain:
                chain.write(extra.bytes())
        self.server.private_key_pem.write_to_path(directory / "tls.key")
        self.ca.cert_pem.write_to_path(directory / "ca.crt")
        return {
            "cert_file": str(directory / "tls.crt"),
            "key_file": str(directory / "tls.key"),
            "client_ca_file": str(directory / "ca.crt"),
        }

    @staticmethod
    def subject_of(leaf: trustme.LeafCert) -> str:
        from cryptography import x509

        return x509.load_pem_x509_certificate(
            leaf.cert_chain_pems[0].bytes()
        ).subject.rfc4514_string()
