"""The Backend: one topology, its scripts, and the few primitives every store uses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from .scripts import Script, all_scripts
from .topology import ConnectionTuning, Topology, TopologyKind, connect

log = logging.getLogger(__name__)

Arg = str | bytes | int | float


class Backend:
    """Redis access for every service. All commands go through here, so this is the
    one place where topology is known and where commands could later be coalesced."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    @classmethod
    def from_url(cls, url: str, tuning: ConnectionTuning) -> Backend:
        return cls(connect(url, tuning))

    @property
    def kind(self) -> TopologyKind:
        return self.topology.kind

    @property
    def redis(self) -> Any:
        """The command client (standalone, Sentinel-managed master, or Cluster)."""
        return self.topology.client

    async def primaries(self) -> list[Any]:
        """A command client per primary node (one outside Cluster), for SCAN and admin."""
        await self.topology.discover()
        return self.topology.primaries()

    async def ping(self) -> None:
        """Raise unless every primary answers."""
        for node in await self.primaries():
            await node.ping()

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script on every primary, so calls can go by SHA."""
        for node in await self.primaries():
            for item in all_scripts():
                await node.script_load(item.source)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        """Run a script whose keys share one slot: EVALSHA, and EVAL when Redis lost it
        (a restart or failover empties the script cache; EVAL caches it again)."""
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            log.info("script %s missing on Redis; sending its source", script.name)
            return await self.redis.eval(script.source, len(keys), *keys, *args)

    def group_by_slot(self, redis_keys: Sequence[str]) -> dict[int, list[int]]:
        return self.topology.group_by_slot(redis_keys)

    def same_slot(self, redis_keys: Sequence[str]) -> bool:
        return len(self.group_by_slot(redis_keys)) <= 1

    async def close(self) -> None:
        await self.topology.close()
