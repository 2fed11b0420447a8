"""`cachet-server --workers N`: N serving processes on one port, under a supervisor.

grpc.aio serves on one event loop, so one process uses one core. With N workers the
supervisor starts N `cachet-server` processes that all bind the same address with
SO_REUSEPORT; the kernel spreads new connections over them. The supervisor serves
nothing itself: it restarts a worker that dies (after a short, growing pause, so a
worker that cannot start does not spin) and, on SIGTERM or SIGINT, passes SIGTERM on to
every worker, waits for them to drain, and exits 0 when they all did.

Stats: AdminService/GetServiceStats must answer for the whole server, whichever worker
the call lands on. Each worker writes a snapshot of its counters every
`PUBLISH_INTERVAL` (and once more after draining) to a file of its own in a directory
the supervisor creates and removes; a worker answering GetServiceStats adds its live
counters to its siblings' last snapshots. Files rather than Redis: the counters are
process-local facts, no Redis round trip or key without namespace is needed, and a
dead worker's last snapshot stays counted. A sibling's figures are at most
`PUBLISH_INTERVAL` old.

Metrics: each worker serves its own Prometheus endpoint, on the configured port plus
its slot (9464, 9465, … by default); a scrape sums them. Only the gRPC port is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from .backend.embedded import EmbeddedRedis
from .config import Settings
from .stats import ServiceStats

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 0.5
# Pause before restarting a worker that died; doubled while workers keep dying soon
# after their start, up to the maximum.
RESTART_PAUSE = 0.5
RESTART_PAUSE_MAX = 10.0
# A worker that lived this long counts as healthy: its restart pause starts over.
HEALTHY_AFTER = 10.0


class StatsShare:
    """One worker's view of the stats directory: where it publishes, what siblings
    published."""

    def __init__(self, directory: Path, slot: int) -> None:
        self.directory = directory
        self.own = directory / f"worker-{slot}-{os.getpid()}.json"

    def publish(self, stats: ServiceStats) -> None:
        partial = self.own.with_suffix(".tmp")
        partial.write_text(json.dumps(stats.snapshot()))
        partial.replace(self.own)  # atomic: a reader never sees half a file

    def siblings(self) -> list[dict[str, Any]]:
        snapshots = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self.own:
                continue
            with contextlib.suppress(OSError, ValueError):
                snapshots.append(json.loads(path.read_text()))
        return snapshots

    async def publish_periodically(self, stats: ServiceStats) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                self.publish(stats)
            except OSError as exc:  # a full disk must not stop serving
                log.warning("cannot publish worker stats to %s: %s", self.own, exc)


class Supervisor:
    """Starts `count` workers and keeps them running until told to stop."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.stopping = asyncio.Event()
        self.workers: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        stats_dir = Path(tempfile.mkdtemp(prefix="cachet-workers-"))
        try:
            async with contextlib.AsyncExitStack() as stack:
                env = dict(os.environ)
                env["CACHET_WORKERS"] = str(self.count)
                if self.settings.redis_url is None:
                    # One embedded Redis for all workers, owned by the supervisor.
                    env["CACHET_REDIS_URL"] = await stack.enter_async_context(EmbeddedRedis())
                log.info(
                    "supervising %d workers on %s (SO_REUSEPORT)", self.count, self.settings.listen
                )
                keepers = [
                    asyncio.create_task(self._keep(slot, env, stats_dir))
                    for slot in range(self.count)
                ]
                await self.stopping.wait()
                log.info("signal received: draining %d workers", self.count)
                for process in self.workers.values():
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                codes = await self._drained(keepers)
        finally:
            shutil.rmtree(stats_dir, ignore_errors=True)
        failed = [code for code in codes if code != 0]
        if failed:
            log.error("workers exited with %s", failed)
            return 1
        return 0

    async def _drained(self, keepers: list[asyncio.Task[int]]) -> list[int]:
        """The exit codes, once every worker has drained; killed past the grace period
        and a margin."""
        limit = self.settings.shutdown_grace.total_seconds() + 10
        _, pending = await asyncio.wait(keepers, timeout=limit)
        for process in self.workers.values():
            if process.returncode is None:
                log.error("worker %d did not drain within %.0f s: killed", process.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)
        return [task.result() for task in keepers]

    def _worker_env(self, slot: int, env: dict[str, str]) -> dict[str, str]:
        """The environment of worker `slot`: its own Prometheus port, the configured port
        plus the slot (9464, 9465, …), since only the gRPC port is shared."""
        listen = self.settings.metrics.listen
        if not listen:
            return env
        host, _, port = listen.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            return env
        return {**env, "CACHET_METRICS__LISTEN": f"{host}:{int(port) + slot}"}

    async def _keep(self, slot: int, env: dict[str, str], stats_dir: Path) -> int:
        """Run worker `slot`, restarting it whenever it dies before the stop; answers its
        final exit code."""
        pause = RESTART_PAUSE
        env = self._worker_env(slot, env)
        while True:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cachet_server",
                "--worker-slot",
                str(slot),
                "--stats-dir",
                str(stats_dir),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
            self.workers[slot] = process
            started = asyncio.get_running_loop().time()
            code = await process.wait()
            if self.stopping.is_set():
                return code
            lived = asyncio.get_running_loop().time() - started
            pause = RESTART_PAUSE if lived >= HEALTHY_AFTER else min(pause * 2, RESTART_PAUSE_MAX)
            log.warning(
                "worker %d (pid %d) exited with %d after %.1f s; restarting in %.1f s",
                slot,
                process.pid,
                code,
                lived,
                pause,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return 0
