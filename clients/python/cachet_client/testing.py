"""Test mode: a real cachet server for your own tests, never an in-process fake.

`CachetServer` starts a `cachet-server` process (the `cachet-server` package must be
installed next to the client) on a free loopback port. Without a `redis_url` the server
starts and stops an embedded redis-server of its own (`redis-server` must be on PATH),
so each CachetServer is a fresh, empty, real cachet. Auth is off unless you pass the
environment for it.

    from cachet_client.testing import CachetServer

    with CachetServer() as server:
        with server.connect_sync(namespace="test") as client:
            client.cache.set("k", b"v")

With pytest, `pytest_plugins = ["cachet_client.testing"]` in a conftest.py gives the
fixtures `cachet_server` (one per session) and `cachet_namespace` (a fresh namespace per
test, so tests never see each other's keys).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import grpc

from ._client import AsyncClient, SyncClient, connect, connect_sync

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# HealthCheckResponse{status: SERVING} on the wire (field 1, varint 1): read as bytes so
# the client needs no grpcio-health-checking package.
_SERVING = b"\x08\x01"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_command() -> list[str]:
    if (script := shutil.which("cachet-server")) is not None:
        return [script]
    if importlib.util.find_spec("cachet_server") is not None:
        return [sys.executable, "-m", "cachet_server"]
    raise RuntimeError(
        "cachet_client.testing needs the cachet-server package (pip install cachet-server)"
    )


class CachetServer:
    """A cachet-server process on 127.0.0.1 for tests; `address` is its target."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Only the settings given here reach the server (it refuses CACHET_* names it does
        # not know, and a test's server should not pick up the developer's own settings).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CACHET_")}
        self._env = {
            **inherited,
            "CACHET_LISTEN": self.address,
            "CACHET_AUTH__MODE": "off",
            "CACHET_HEALTH_INTERVAL": "PT0.1S",
            "CACHET_METRICS__LISTEN": "",  # no Prometheus port to collide on
            **(env or {}),
        }
        if redis_url:
            self._env["CACHET_REDIS_URL"] = redis_url
        else:
            self._env.pop("CACHET_REDIS_URL", None)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def _serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            check = channel.unary_unary(_HEALTH_CHECK, None, None)  # bytes in, bytes out
            try:
                answer: bytes = check(b"", timeout=1)
            except grpc.RpcError:
                return False
        return answer == _SERVING

    def start(self) -> CachetServer:
        """Start the process and wait until it serves (health SERVING)."""
        self._process = subprocess.Popen(
            _server_command(),
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self._startup_timeout
        while not self._serving():
            if self._process.poll() is not None:
                output = self._process.stdout.read().decode() if self._process.stdout else ""
                raise RuntimeError(f"cachet-server exited {self._process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"cachet-server did not serve within {self._startup_timeout}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); its embedded Redis goes too."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def connect(self, **settings: Any) -> AsyncClient:
        """An asyncio client of this server (`cachet_client.connect` settings)."""
        return connect(self.address, **settings)

    def connect_sync(self, **settings: Any) -> SyncClient:
        """A blocking client of this server (`cachet_client.connect_sync` settings)."""
        return connect_sync(self.address, **settings)

    def __enter__(self) -> CachetServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pass
else:

    @pytest.fixture(scope="session")
    def cachet_server() -> Iterator[CachetServer]:
        """A real cachet server (embedded Redis) for the whole test session."""
        with CachetServer() as server:
            yield server

    @pytest.fixture
    def cachet_namespace() -> str:
        """A namespace of this test's own."""
        return f"test-{uuid.uuid4().hex[:12]}"
