"""Waiting on what Redis shows, not on the clock: a test that needs a blocking command
in place (a pop, a stream read) before it acts waits until Redis lists it blocked."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def blocked_clients(cachet: Any) -> list[dict[str, Any]]:
    """Connections that Redis holds blocked in a command, on every primary."""
    blocked = []
    for node in cachet.backend.topology.primaries():
        blocked += [c for c in await node.client_list() if "b" in c.get("flags", "")]
    return blocked


async def until_blocked(cachet: Any, count: int = 1) -> None:
    """Wait until `count` commands are blocked in Redis (the waiters are in place)."""
    deadline = time.monotonic() + 10
    while len(await blocked_clients(cachet)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} waiters blocked in Redis"
        await asyncio.sleep(0.02)
