"""`cachet-server`: serve until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import uvloop
from pydantic import ValidationError

from .app import running
from .config import Settings, check_environment
from .logs import setup_logging
from .metrics import setup_metrics
from .telemetry import setup_tracing, shutdown_within

# The most a collector that is down may add to shutdown (flushing spans and metrics).
TELEMETRY_FLUSH_SECONDS = 1.0


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings):
        await stop.wait()
        logging.getLogger("cachet_server").info("signal received: draining")


def _configuration_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
    return str(exc)


def main() -> None:
    try:
        check_environment(os.environ)
        settings = Settings.load()
    except (ValidationError, ValueError, OSError) as exc:
        sys.exit(f"cachet-server: bad configuration: {_configuration_problem(exc)}")
    setup_logging(settings.log_level.value, settings.log_format)
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
        uvloop.run(serve(settings))
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
