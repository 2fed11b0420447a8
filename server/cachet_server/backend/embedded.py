"""A real redis-server that cachet starts and stops itself, for `make run` only.

Used when CACHET_REDIS_URL is unset: it keeps nothing on disk and listens on
loopback only. It is a local convenience, announced loudly in the log, never a
silent fallback for a production deployment that forgot its URL.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
from types import TracebackType

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """`async with EmbeddedRedis() as url:` runs a throwaway redis-server."""

    def __init__(self, executable: str = "redis-server") -> None:
        self.executable = executable
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> str:
        binary = shutil.which(self.executable)
        if binary is None:
            raise RuntimeError(
                "CACHET_REDIS_URL is unset and redis-server is not installed; "
                "run `make setup` or set CACHET_REDIS_URL"
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="cachet-redis-")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir.name,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await self._wait_ready()
        log.warning(
            "CACHET_REDIS_URL is unset: serving on an embedded redis-server at %s "
            "(local use only; data is lost on exit)",
            self.url,
        )
        return self.url

    async def _wait_ready(self) -> None:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("embedded redis-server did not start")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
