"""Real redis-server processes on free loopback ports, for the test fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last_error})")


class RedisProcess:
    """One redis-server (or redis-sentinel) with its own directory and port."""

    def __init__(self, *extra: str, port: int | None = None, sentinel: bool = False) -> None:
        self.port = port or free_port()
        self.extra = list(extra)
        self.sentinel = sentinel
        self.dir = Path(tempfile.mkdtemp(prefix="cachet-test-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisProcess:
        conf = self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")
        if not conf.exists():
            conf.write_text("")
        binary = "redis-sentinel" if self.sentinel else "redis-server"
        args = [
            shutil.which(binary) or binary,
            str(conf),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if not self.sentinel:
            args += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*args, *self.extra], stdin=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), what=f"redis on {self.port}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def standalone() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    try:
        yield proc
    finally:
        proc.stop()
