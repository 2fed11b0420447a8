"""Credentials -> identities: API keys (SHA-256 only, compared in constant time), JWTs
(HS256, RS256, ES256; exp, nbf, iss, aud checked) and client certificates (mTLS).

`Authenticator.identify` answers the caller's Identity or raises Unauthenticated with a
reason that says which check failed; it never echoes the credential.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
import yaml
from cryptography import x509
from pydantic import TypeAdapter

from .access import EVERYTHING, Grants
from .callcontext import Identity
from .config import ApiKey, AuthMode, AuthSettings, Grant, JwtSettings, MtlsIdentity
from .errors import Unauthenticated

ANONYMOUS = Identity("anonymous", "anonymous", EVERYTHING)
_BEARER = "bearer "
# Verified JWTs are remembered (until they expire) so a hot caller pays the signature
# check once, not per call; bounded so a flood of distinct tokens cannot grow it.
_JWT_CACHE_SIZE = 4096
_CERT_CACHE_SIZE = 256


def _unauthenticated(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def load_api_keys(settings: AuthSettings) -> list[ApiKey]:
    """The inline API keys plus those of `api_keys_file`."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        loaded = yaml.safe_load(settings.api_keys_file.read_text()) or []
        if isinstance(loaded, dict):
            loaded = loaded.get("api_keys", [])
        keys += TypeAdapter(list[ApiKey]).validate_python(loaded)
    ids = [key.id for key in keys]
    digests = [key.sha256 for key in keys]
    if len(set(ids)) != len(ids) or len(set(digests)) != len(digests):
        raise ValueError("auth: an API key id or digest is configured twice")
    return keys


@dataclass(frozen=True, slots=True)
class _VerifiedJwt:
    identity: Identity
    expires_at: float


def _secret(raw: bytes) -> bytes:
    """An HS256 secret as its file holds it, but for one trailing line break (what an
    editor or `echo` adds). Every other byte counts: a binary secret may begin or end
    with a byte that looks like whitespace, and stripping it would refuse every token
    signed with the whole secret."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


class JwtVerifier:
    """Checks a JWT's signature with the configured key for its algorithm (never the
    algorithm the token asks for), then exp, nbf, iss and aud."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self.leeway = settings.leeway.total_seconds()
        self._by_kid: dict[str, tuple[str, Any]] = {}
        self._unnamed: list[tuple[str, Any]] = []
        for key in settings.keys:
            if key.secret_file is not None:
                material: Any = _secret(key.secret_file.read_bytes())
            else:
                assert key.public_key_file is not None
                material = key.public_key_file.read_bytes()
                material = jwt.get_algorithm_by_name(key.algorithm.value).prepare_key(material)
            self._add(key.kid, key.algorithm.value, material)
        if settings.jwks_file is not None:
            jwks = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
            for jwk in jwks.keys:
                if jwk.algorithm_name not in ("RS256", "ES256", "HS256"):
                    raise ValueError(f"auth.jwt.jwks_file: algorithm {jwk.algorithm_name} refused")
                self._add(jwk.key_id, jwk.algorithm_name, jwk.key)
        self._cache: OrderedDict[str, _VerifiedJwt] = OrderedDict()

    def _add(self, kid: str | None, algorithm: str, material: Any) -> None:
        if kid is None:
            self._unnamed.append((algorithm, material))
        elif kid in self._by_kid:
            raise ValueError(f"auth.jwt: key id {kid!r} is configured twice")
        else:
            self._by_kid[kid] = (algorithm, material)

    def _candidates(self, header: Mapping[str, Any]) -> list[tuple[str, Any]]:
        kid = header.get("kid")
        algorithm = header.get("alg")
        if isinstance(kid, str) and kid in self._by_kid:
            candidates = [self._by_kid[kid]]
        else:
            candidates = self._unnamed
        return [(alg, key) for alg, key in candidates if alg == algorithm]

    def verify(self, token: str, now: float) -> Identity:
        cached = self._cache.get(token)
        if cached is not None:
            if now <= cached.expires_at + self.leeway:
                self._cache.move_to_end(token)
                return cached.identity
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _unauthenticated(
                "CREDENTIAL_MALFORMED", "the bearer credential is not a well-formed JWT"
            ) from None
        candidates = self._candidates(header)
        if not candidates:
            raise _unauthenticated(
                "CREDENTIAL_BAD_SIGNATURE",
                "no configured key matches the JWT's kid and alg",
            )
        claims = self._decode(token, candidates)
        identity = self._identity(claims)
        expires_at = float(claims["exp"])
        self._cache[token] = _VerifiedJwt(identity, expires_at)
        if len(self._cache) > _JWT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    def _decode(self, token: str, candidates: Sequence[tuple[str, Any]]) -> dict[str, Any]:
        settings = self.settings
        for algorithm, key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=self.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise _unauthenticated("CREDENTIAL_EXPIRED", "the JWT has expired") from None
            except jwt.ImmatureSignatureError:
                raise _unauthenticated(
                    "CREDENTIAL_NOT_YET_VALID", "the JWT is not valid yet (nbf/iat)"
                ) from None
            except jwt.InvalidAudienceError:
                raise _unauthenticated(
                    "CREDENTIAL_WRONG_AUDIENCE", "the JWT is not meant for this audience"
                ) from None
            except jwt.InvalidIssuerError:
                raise _unauthenticated(
                    "CREDENTIAL_WRONG_ISSUER", "the JWT comes from an issuer not trusted here"
                ) from None
            except jwt.MissingRequiredClaimError as exc:
                raise _unauthenticated(
                    "CREDENTIAL_MALFORMED", f"the JWT lacks the {exc.claim!r} claim"
                ) from None
            except jwt.InvalidTokenError:
                raise _unauthenticated(
                    "CREDENTIAL_MALFORMED", "the bearer credential is not a valid JWT"
                ) from None
        raise _unauthenticated("CREDENTIAL_BAD_SIGNATURE", "the JWT's signature does not verify")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        settings = self.settings
        namespaces = claims.get(settings.namespaces_claim)
        roles = claims.get(settings.roles_claim)
        subject = claims.get(settings.id_claim)
        try:
            grant = Grant.model_validate(
                {"namespaces": _strings(namespaces), "roles": _strings(roles)}
            )
        except ValueError:
            raise _unauthenticated(
                "CREDENTIAL_MALFORMED",
                f"the JWT's {settings.namespaces_claim!r} and {settings.roles_claim!r} claims "
                "must be non-empty lists of namespaces and roles",
            ) from None
        name = subject if isinstance(subject, str) and subject else "unnamed"
        return Identity("jwt", name[:128], Grants.of(grant.namespaces, grant.roles))


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError("not a list of strings")


class CertificateMapper:
    """Maps a verified client certificate to the identity configured for its subject or
    for one of its subject alternative names."""

    def __init__(self, identities: Iterable[MtlsIdentity]) -> None:
        self.by_subject: dict[str, Identity] = {}
        self.by_san: dict[str, Identity] = {}
        for entry in identities:
            identity = Identity(
                "mtls", entry.id, Grants.of(entry.namespaces, entry.roles), entry.quotas
            )
            if entry.subject is not None:
                self.by_subject[_normalise_subject(entry.subject)] = identity
            if entry.san is not None:
                self.by_san[entry.san] = identity
        self._cache: OrderedDict[bytes, Identity | None] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self.by_subject or self.by_san)

    def identify(self, pem: bytes) -> Identity | None:
        if pem in self._cache:
            self._cache.move_to_end(pem)
            return self._cache[pem]
        identity = self._lookup(x509.load_pem_x509_certificate(pem))
        self._cache[pem] = identity
        if len(self._cache) > _CERT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    def _lookup(self, certificate: x509.Certificate) -> Identity | None:
        subject = _normalise_subject(certificate.subject.rfc4514_string())
        if subject in self.by_subject:
            return self.by_subject[subject]
        try:
            names = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return None
        for general_name in names:
            value = general_name.value
            if isinstance(value, str) and value in self.by_san:
                return self.by_san[value]
        return None


def _normalise_subject(subject: str) -> str:
    # RFC 4514 strings list the most specific part first; compare them part by part, in
    # the order the certificate has them, ignoring spaces after the separators.
    return ",".join(part.strip() for part in subject.split(","))


class Authenticator:
    """Turns a call's `authorization` metadata (or its client certificate) into an
    Identity, per the auth settings."""

    def __init__(self, settings: AuthSettings) -> None:
        self.mode = settings.mode
        keys = load_api_keys(settings)
        self._api_keys = [
            (
                bytes.fromhex(key.sha256),
                Identity("api_key", key.id, Grants.of(key.namespaces, key.roles), key.quotas),
            )
            for key in keys
        ]
        self._jwt = JwtVerifier(settings.jwt) if settings.jwt is not None else None
        self._certificates = CertificateMapper(settings.mtls_identities)
        if self.mode is AuthMode.REQUIRED and not (
            self._api_keys or self._jwt or self._certificates
        ):
            raise ValueError(
                "auth.mode is required but no credential is configured (auth.api_keys, "
                "auth.api_keys_file, auth.jwt or auth.mtls_identities); set "
                "CACHET_AUTH__MODE=off for local development"
            )

    @property
    def enabled(self) -> bool:
        return self.mode is AuthMode.REQUIRED

    @property
    def maps_certificates(self) -> bool:
        return self.enabled and bool(self._certificates)

    def identify(
        self, authorization: Sequence[str], client_pem: bytes | None, now: float
    ) -> Identity:
        """The caller of a call with these `authorization` values and this verified client
        certificate (PEM), at Unix time `now`."""
        if not self.enabled:
            return ANONYMOUS
        if len(authorization) > 1:
            raise _unauthenticated(
                "CREDENTIAL_MALFORMED", "the call carries more than one authorization header"
            )
        if authorization:
            return self._bearer(authorization[0], now)
        if client_pem is not None and self._certificates:
            identity = self._certificates.identify(client_pem)
            if identity is not None:
                return identity
            raise _unauthenticated(
                "CREDENTIAL_UNKNOWN", "the client certificate is not mapped to any identity"
            )
        raise _unauthenticated(
            "CREDENTIAL_MISSING",
            "this call needs a credential: metadata 'authorization: Bearer <credential>'",
        )

    def _bearer(self, header: str, now: float) -> Identity:
        if not header[: len(_BEARER)].lower() == _BEARER:
            raise _unauthenticated(
                "CREDENTIAL_MALFORMED", "authorization must be 'Bearer <credential>'"
            )
        credential = header[len(_BEARER) :].strip()
        if not credential or not credential.isascii() or not credential.isprintable():
            raise _unauthenticated(
                "CREDENTIAL_MALFORMED", "the bearer credential is empty or not printable ASCII"
            )
        if credential.count(".") == 2 and self._jwt is not None:
            return self._jwt.verify(credential, now)
        return self._api_key(credential)

    def _api_key(self, credential: str) -> Identity:
        digest = hashlib.sha256(credential.encode()).digest()
        found: Identity | None = None
        # Every configured digest is compared, in constant time, whatever matches first.
        for candidate, identity in self._api_keys:
            if hmac.compare_digest(candidate, digest):
                found = identity
        if found is None:
            raise _unauthenticated("CREDENTIAL_UNKNOWN", "the bearer credential is not known here")
        return found
