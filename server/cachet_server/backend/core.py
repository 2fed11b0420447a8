"""The Backend: one topology, its scripts, and the few primitives every store uses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import FailedPrecondition, Unavailable
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

    async def warn_if_fencing_can_be_evicted(self) -> None:
        """Log a warning for each primary whose maxmemory-policy may evict keys without
        a TTL (`allkeys-*`): lock and semaphore fencing counters have none, and an
        evicted counter starts again at 1 (see docs/locks.md, "Flushes, eviction and
        data loss"). A Redis that refuses CONFIG GET is not checked."""
        for node in await self.primaries():
            try:
                answer = await node.config_get("maxmemory-policy")
            except RedisError as exc:
                log.info("cannot read maxmemory-policy (%s); eviction not checked", exc)
                continue
            policy = str(answer.get("maxmemory-policy", ""))
            if policy.startswith("allkeys-"):
                log.warning(
                    "Redis maxmemory-policy is %s: under memory pressure it can evict lock "
                    "and semaphore fencing counters, and fencing tokens then start again at "
                    "1; use noeviction (or a volatile-* policy) and persistence for a Redis "
                    "that serves locks",
                    policy,
                )

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        """Run a script whose keys share one slot: EVALSHA, and EVAL when Redis lost it
        (a restart or failover empties the script cache; EVAL caches it again)."""
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            log.info("script %s missing on Redis; sending its source", script.name)
            return await self.redis.eval(script.source, len(keys), *keys, *args)

    async def run_write(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        """Run a script that writes. With replica acknowledgement on
        (CACHET_REDIS_MIN_REPLICAS_ACKED = n > 0) the answer comes only once n replicas
        have the write: WAIT n follows the script on the same connection, in the same
        round trip. Fewer replicas within CACHET_REDIS_REPLICA_ACK_TIMEOUT answer
        UNAVAILABLE / NOT_ENOUGH_REPLICAS: the write did happen on the primary but may
        be lost in a failover, so the caller must not count on it. With it off, the
        same as `run`."""
        tuning = self.topology.tuning
        if tuning.min_replicas_acked <= 0:
            return await self.run(script, keys, args)
        timeout_ms = max(1, round(tuning.replica_ack_timeout * 1000))
        if self.kind is TopologyKind.CLUSTER:
            reply, acked = await self._run_and_wait_on_cluster(script, keys, args, timeout_ms)
        else:
            reply, acked = await self._run_and_wait(script, keys, args, timeout_ms)
        if acked < tuning.min_replicas_acked:
            raise Unavailable(
                f"the write reached {acked} of the {tuning.min_replicas_acked} replicas "
                f"required within {timeout_ms} ms; it may not survive a failover",
                reason="NOT_ENOUGH_REPLICAS",
            )
        return reply

    async def _run_and_wait(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], timeout_ms: int
    ) -> tuple[Any, int]:
        # A pipeline holds one connection, which WAIT needs: it waits for the
        # replication offset of this connection's own last write. redis-py retries the
        # whole pipeline on connection errors (READONLY from a demoted Sentinel master
        # included), which is safe: a failed attempt's script did not run.
        for send_source in (False, True):
            async with self.redis.pipeline(transaction=False) as pipe:
                _queue_script(pipe, script, keys, args, send_source)
                pipe.execute_command("WAIT", self.topology.tuning.min_replicas_acked, timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and not send_source:
                continue
            return _raised(reply), int(_raised(acked))
        raise AssertionError("unreachable")

    async def _run_and_wait_on_cluster(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], timeout_ms: int
    ) -> tuple[Any, int]:
        # RedisCluster's own pipeline may split or re-route the two commands; WAIT must
        # follow the script on the very connection that ran it, so the pair goes to the
        # slot's primary as one node pipeline, and redirections are followed here the
        # way redis-py follows them for single commands.
        cluster = self.redis
        tuning = self.topology.tuning
        backoff = ExponentialWithJitterBackoff(base=tuning.backoff_base, cap=tuning.backoff_cap)
        failures = 0
        send_source = asking = False
        node: ClusterNode | None = None
        for _ in range(cluster.RedisClusterRequestTTL):
            await cluster.initialize()
            if node is None:
                node = cluster.get_node_from_key(keys[0])
            commands: list[tuple[Any, ...]] = [("ASKING",)] if asking else []
            commands.append(_script_command(script, keys, args, send_source))
            commands.append(("WAIT", tuning.min_replicas_acked, timeout_ms))
            piped = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
            try:
                await node.execute_pipeline(piped)
                reply, acked = piped[-2].result, piped[-1].result
                if isinstance(reply, RedisConnectionError | RedisTimeoutError):
                    raise reply
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if failures > tuning.retries:
                    raise
                # The node may be gone: rebuild the slot table from the live nodes.
                cluster._initialize = True
                await asyncio.sleep(backoff.compute(failures))
                node, asking = None, False
                continue
            asking = False
            if isinstance(reply, MovedError):
                await cluster.nodes_manager.move_slot(reply)
                node = None
            elif isinstance(reply, AskError):
                node = cluster.get_node(host=reply.host, port=reply.port)
                asking = node is not None
            elif isinstance(reply, TryAgainError):
                await asyncio.sleep(0.05)
            elif isinstance(reply, NoScriptError) and not send_source:
                send_source = True
            else:
                return _raised(reply), int(_raised(acked))
        raise Unavailable(
            "Redis Cluster kept redirecting the write; retry", reason="BACKEND_TRY_AGAIN"
        )

    def group_by_slot(self, redis_keys: Sequence[str]) -> dict[int, list[int]]:
        return self.topology.group_by_slot(redis_keys)

    @staticmethod
    def require_one_slot(redis_keys: Sequence[str], what: str, example: str) -> None:
        """Refuse `what` unless its keys share one Cluster slot. Checked on every topology,
        so an operation that works on a standalone Redis keeps working on Cluster."""
        slots = {key_slot(name.encode()) for name in redis_keys}
        if len(slots) > 1:
            raise FailedPrecondition(
                f"{what} must share one Redis Cluster slot, and these hash to {len(slots)}: "
                f"give them a common hash tag, e.g. {example} (only the part in braces is "
                "hashed)",
                reason="CROSS_SLOT",
            )

    async def close(self) -> None:
        await self.topology.close()


def _script_command(
    script: Script, keys: Sequence[str], args: Sequence[Arg], send_source: bool
) -> tuple[Any, ...]:
    if send_source:
        return ("EVAL", script.source, len(keys), *keys, *args)
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def _queue_script(
    pipe: Any, script: Script, keys: Sequence[str], args: Sequence[Arg], send_source: bool
) -> None:
    pipe.execute_command(*_script_command(script, keys, args, send_source))


def _raised(result: Any) -> Any:
    """A pipeline result, raised if it is an error."""
    if isinstance(result, Exception):
        raise result
    return result
