"""`cachet-server`: serve until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from pydantic import ValidationError

from .app import running
from .config import Settings
from .telemetry import setup_tracing


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings):
        await stop.wait()
        logging.getLogger("cachet_server").info("signal received: draining")


def main() -> None:
    try:
        settings = Settings.load()
    except (ValidationError, ValueError, OSError) as exc:
        sys.exit(f"cachet-server: bad configuration: {exc}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    provider = setup_tracing(settings.otel_service_name, settings.otel_endpoint)
    try:
        uvloop.run(serve(settings))
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"cachet-server: {exc}")
    finally:
        if provider is not None:
            provider.shutdown()


if __name__ == "__main__":
    main()
