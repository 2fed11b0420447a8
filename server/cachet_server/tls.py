"""TLS on the gRPC port, with certificates that can be rotated on disk.

gRPC asks `CertificateFiles.fetch` before every new handshake; it answers a new
configuration only when the files changed (as cert-manager swaps them) and the new key
matches the new certificate, so live connections are never dropped and a half-written
rotation is never served.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .config import TlsSettings

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


class CertificateFiles:
    def __init__(self, settings: TlsSettings) -> None:
        assert settings.cert_file is not None and settings.key_file is not None
        self.cert_file: Path = settings.cert_file
        self.key_file: Path = settings.key_file
        self.client_ca_file = settings.client_ca_file
        self._stamp = self._stamp_now()
        self._initial = self._load()

    def _paths(self) -> list[Path]:
        paths = [self.cert_file, self.key_file]
        if self.client_ca_file is not None:
            paths.append(self.client_ca_file)
        return paths

    def _stamp_now(self) -> _Stamp:
        stamps = []
        for path in self._paths():
            info = os.stat(path)  # follows symlinks: a swapped ..data link is a new inode
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain = self.cert_file.read_bytes()
        key = self.key_file.read_bytes()
        certificate = x509.load_pem_x509_certificate(chain)
        private_key = serialization.load_pem_private_key(key, password=None)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if certificate.public_key().public_bytes(encoding, public) != (
            private_key.public_key().public_bytes(encoding, public)
        ):
            raise ValueError(f"{self.key_file} is not the key of {self.cert_file}")
        roots = self.client_ca_file.read_bytes() if self.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed and are consistent, else None."""
        try:
            stamp = self._stamp_now()
            if stamp == self._stamp:
                return None
            configuration = self._load()
        except (OSError, ValueError) as exc:
            # Mid-rotation or broken: keep serving the last good certificate.
            log.warning("TLS files changed but cannot be used yet: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return configuration

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "unchanged"
            require_client_authentication=self.client_ca_file is not None,
        )
