"""A real `cachet-server` process, for tests of the process itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from .redis_procs import free_port, free_port_run, wait_until

ROOT = Path(__file__).resolve().parent.parent
GRPCURL = ROOT / ".tools" / "bin" / "grpcurl"


class CachetProcess:
    def __init__(self, redis_url: str | None, **env: str) -> None:
        self.port = free_port()
        # Each worker of a `--workers N` server serves metrics on this port plus its slot.
        workers = env.get("CACHET_WORKERS", "1")
        slots = int(workers) if workers.isdigit() else os.cpu_count() or 1  # auto, or bad
        self.slots = slots
        self.metrics_port = free_port_run(slots)
        # The server refuses CACHET_* names it does not know: the test run's own
        # (CACHET_TEST_TOPOLOGIES, ...) stay out of its environment.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CACHET_")}
        self.env = {
            **inherited,
            "CACHET_LISTEN": f"127.0.0.1:{self.port}",
            "CACHET_METRICS__LISTEN": f"127.0.0.1:{self.metrics_port}",
            "CACHET_HEALTH_INTERVAL": "PT0.1S",
            "CACHET_AUTH__MODE": "off",
            **env,
        }
        if redis_url:
            self.env["CACHET_REDIS_URL"] = redis_url
        else:
            self.env.pop("CACHET_REDIS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CachetProcess:
        # A file, not a pipe: a server logging more than a pipe holds (a test provoking
        # errors) would otherwise block on its own log while no one reads it.
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cachet_server"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.serving, timeout=20, what="cachet-server to serve")
        return self

    def output(self) -> str:
        """Everything the server wrote so far, stdout and stderr."""
        assert self._output is not None, "not started"
        # pread: the server writes through the same file offset, which a seek and read
        # would move under it (its next line landing over the start of the log).
        fd = self._output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"cachet-server exited {self.process.returncode}:\n{self.output()}")
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def active_calls(self, method: str) -> int:
        """Calls of `method` ("cachet.cache.v1.CacheService/Set") being served now, summed
        over the workers' metrics endpoints: calls that reached a handler and have not
        ended."""
        active = 0
        for port in range(self.metrics_port, self.metrics_port + self.slots):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                text = page.read().decode()
            active += sum(
                int(sample.value)
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "cachet_rpc_server_active_calls"
                and sample.labels.get("rpc_method") == method
            )
        return active

    async def until_in_flight(self, method: str, count: int) -> None:
        """Wait until the server is serving `count` calls of `method` at once (the event
        loop runs meanwhile, so calls the test started go out)."""
        deadline = time.monotonic() + 20
        while (active := await asyncio.to_thread(self.active_calls, method)) < count:
            assert time.monotonic() < deadline, f"{active} of {count} {method} calls in flight"
            await asyncio.sleep(0.05)

    async def until_draining(self) -> None:
        """Wait until every worker has taken SIGTERM and begun to drain (each logs it;
        health is no sign: it also goes NOT_SERVING while Redis does not answer)."""
        deadline = time.monotonic() + 20
        while (draining := self.output().count("stopping: draining")) < self.slots:
            assert time.monotonic() < deadline, f"{draining} of {self.slots} workers draining"
            await asyncio.sleep(0.05)

    def grpcurl(
        self, *positional: str, data: object = None, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `grpcurl -plaintext [-H ns] [-d json] <address> <positional...>`."""
        flags = ["-plaintext"]
        if namespace:
            flags += ["-H", f"cachet-namespace: {namespace}"]
        if data is not None:
            flags += ["-d", json.dumps(data)]
        return subprocess.run(
            [str(GRPCURL), *flags, self.address, *positional],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None
