"""`cachet-server`: serve until SIGTERM or SIGINT, then drain and exit 0.

`--workers N` (or CACHET_WORKERS; `auto`: one per CPU) runs N serving processes on the
same port under a supervisor (see workers.py); the default is one process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import uvloop
from pydantic import ValidationError
from redis.utils import HIREDIS_AVAILABLE

from . import collector
from .app import running
from .config import Settings, check_environment
from .logs import setup_logging
from .metrics import setup_metrics
from .telemetry import setup_tracing, shutdown_within
from .workers import StatsShare, Supervisor

# The most a collector that is down may add to shutdown (flushing spans and metrics).
TELEMETRY_FLUSH_SECONDS = 1.0

log = logging.getLogger("cachet_server")


async def serve(settings: Settings, share: StatsShare | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphaned = None
    if share is not None:
        orphaned = asyncio.create_task(_stop_when_orphaned(stop), name="cachet-parent-watch")
    async with running(settings, share):
        collector.settle()
        await stop.wait()
        log.info("stopping: draining")
    if orphaned is not None:
        orphaned.cancel()


def _configuration_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
    return str(exc)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (killed, out of memory) drains and exits instead of
    serving on unsupervised."""
    parent = os.getppid()
    # No event tells a process its parent died; re-parenting changes getppid().
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: draining", parent)
    stop.set()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cachet-server",
        description="Serve cachet; configuration comes from CACHET_* variables and the "
        "YAML file named by CACHET_CONFIG_FILE (see README.md).",
    )
    parser.add_argument(
        "--workers",
        help="serving processes sharing the port: a number or `auto` (one per CPU); "
        "overrides CACHET_WORKERS (default 1)",
    )
    # Set by the supervisor for the workers it starts; not for people.
    parser.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stats-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    try:
        check_environment(os.environ)
        overrides = {} if args.workers is None else {"workers": args.workers}
        settings = Settings.load(**overrides)
    except (ValidationError, ValueError, OSError) as exc:
        sys.exit(f"cachet-server: bad configuration: {_configuration_problem(exc)}")
    setup_logging(settings.log_level.value, settings.log_format)
    if settings.worker_count > 1 and args.worker_slot is None:
        if settings.listen.rsplit(":", 1)[-1] == "0":
            sys.exit("cachet-server: --workers needs a fixed port in CACHET_LISTEN, not 0")
        sys.exit(uvloop.run(Supervisor(settings, settings.worker_count).run()))
    if HIREDIS_AVAILABLE:
        log.info("redis replies parsed by hiredis")
    else:
        log.warning("hiredis is not installed: redis-py parses replies in pure Python (slower)")
    share = None
    if args.worker_slot is not None and args.stats_dir is not None:
        share = StatsShare(args.stats_dir, args.worker_slot)
    try:
        tracer_provider = setup_tracing()
        metrics_runtime = setup_metrics(
            settings.metrics.listen,
            settings.metrics.max_namespaces,
            redis_commands=settings.metrics.redis_commands,
        )
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"cachet-server: {exc}")
    try:
        uvloop.run(serve(settings, share))
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"cachet-server: {exc}")
    finally:
        shutdowns = []
        if tracer_provider is not None:
            shutdowns.append(tracer_provider.shutdown)
        if metrics_runtime is not None:
            shutdowns.append(lambda: metrics_runtime.shutdown(TELEMETRY_FLUSH_SECONDS))
        shutdown_within(TELEMETRY_FLUSH_SECONDS, *shutdowns)


if __name__ == "__main__":
    main()
