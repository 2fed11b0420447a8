"""The Backend: one topology, its scripts, and the few primitives every store uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import FailedPrecondition, InvalidArgument, Unavailable
from ..metrics import redis_command_durations
from ..telemetry import node_address, record_script_span, tracing_on
from .multiplex import RETRY_ALONE, CoalescingStats, Multiplexer
from .scripts import Script, all_scripts
from .topology import ConnectionTuning, Topology, TopologyKind, connect

log = logging.getLogger(__name__)

Arg = str | bytes | int | float
# Redirections (MOVED, ASK, TRYAGAIN, a missing script) one acknowledged write follows.
_MAX_REDIRECTIONS = 16


@dataclass(frozen=True)
class ReplicaAck:
    """Wait for `min_replicas` replicas to acknowledge a write, at most `timeout_ms`."""

    min_replicas: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Command:
    """One command of a pipeline: a script over keys of one slot (`script` set), or a
    plain Redis command whose arguments are `args` (name first)."""

    args: Sequence[Arg]
    script: Script | None = None
    keys: Sequence[str] = ()

    @classmethod
    def of_script(cls, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Command:
        return cls(args, script, keys)

    @property
    def writes(self) -> bool:
        return self.script is not None and self.script.name not in _READ_ONLY_SCRIPTS


# Scripts that never write; any other pipelined script counts as a write for replica
# acknowledgement.
_READ_ONLY_SCRIPTS = frozenset({"cache_get"})


class Backend:
    """Redis access for every service. All commands go through here, so this is the
    one place where topology is known and where scripts are coalesced (multiplex.py)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.coalesce = topology.tuning.coalesce
        self.coalescing = CoalescingStats()
        # One multiplexer per node: outside Cluster the one primary (for the Sentinel
        # master announced `_multiplexer_generation` switches ago), on Cluster by node
        # name with the node object it was made for.
        self._multiplexer: Multiplexer | None = None
        self._multiplexer_generation = 0
        self._multiplexers: dict[str, tuple[Any, Multiplexer]] = {}
        self._retiring: set[asyncio.Future[None]] = set()

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
        """Raise unless every primary answers. On connections of their own: a command
        pool that is busy to its last connection does not make Redis unreachable."""
        await self.topology.discover()
        for node in self.topology.probe_clients():
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
        """Run a script whose keys share one slot. With CACHET_REDIS_COALESCE on, it goes
        out on its node's multiplexer (multiplex.py): on a kept connection, in one
        write with the other commands queued while the event loop is busy, without
        waiting for the answers before it. What the multiplexer cannot answer (a lost
        connection, NOSCRIPT, a redirection) goes again on the ordinary path."""
        multiplexer = self._multiplexer_of(keys)
        if multiplexer is not None:
            traced = _traced()
            started = time.time_ns() if traced else 0
            reply = await multiplexer.call(_script_command(script, keys, args, False))
            if reply is not RETRY_ALONE:
                if traced:
                    record_script_span(
                        script.name,
                        2 + len(keys) + len(args),
                        node_address(self.redis, keys[0] if keys else None),
                        started,
                        reply if isinstance(reply, Exception) else None,
                    )
                if isinstance(reply, Exception):
                    raise reply
                return reply
            # The ordinary path's instrumentation makes the span of the command's retry.
            self.coalescing.retried_alone += 1
        return await self._run_alone(script, keys, args)

    def _multiplexer_of(self, keys: Sequence[str]) -> Multiplexer | None:
        """The multiplexer of the node that owns the keys' slot, or None for the ordinary
        path: coalescing off; a Sentinel master being failed over (its fence is in the
        pool the ordinary path uses); on Cluster, slots not known yet, or a script
        without keys (the client picks its node)."""
        if not self.coalesce:
            return None
        kind = self.topology.kind
        if kind is TopologyKind.STANDALONE and self._multiplexer is not None:
            return self._multiplexer
        if kind is TopologyKind.CLUSTER:
            return self._cluster_multiplexer(keys)
        pool = self.redis.connection_pool
        if kind is TopologyKind.SENTINEL:
            if pool.fenced is not None and time.monotonic() < pool.fenced_until:
                return None
            if self._multiplexer is not None and self._multiplexer_generation != pool.switches:
                # The master moved: the kept connections go to the old one.
                self._retire(self._multiplexer)
                self._multiplexer = None
            self._multiplexer_generation = pool.switches
        if self._multiplexer is None:
            self._multiplexer = self._new_multiplexer("primary", pool.get_connection, pool.release)
        return self._multiplexer

    def _cluster_multiplexer(self, keys: Sequence[str]) -> Multiplexer | None:
        cluster = self.redis
        if not keys or cluster._initialize:
            return None
        try:
            node = cluster.nodes_manager.get_node_from_slot(key_slot(keys[0].encode()))
        except RedisError:
            return None
        known = self._multiplexers.get(node.name)
        if known is not None and known[0] is node:
            return known[1]
        if known is not None:
            # The slot table was rebuilt: that node object, and its pool, are gone.
            self._retire(known[1])

        async def acquire() -> Any:
            return node.acquire_connection()

        async def release(connection: Any) -> None:
            node.release(connection)

        multiplexer = self._new_multiplexer(node.name, acquire, release)
        self._multiplexers[node.name] = (node, multiplexer)
        return multiplexer

    def _new_multiplexer(self, name: str, acquire: Any, release: Any) -> Multiplexer:
        return Multiplexer(
            name,
            acquire,
            release,
            socket_timeout=self.topology.tuning.socket_timeout,
            stats=self.coalescing,
            # redis-py's db.client.operation.duration for the commands it carries (metrics
            # are set up before the first call makes a multiplexer).
            observe=redis_command_durations.record if redis_command_durations.on else None,
        )

    def _retire(self, multiplexer: Multiplexer) -> None:
        task = asyncio.ensure_future(multiplexer.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _run_alone(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, and EVAL when Redis lost the script (a restart or failover empties
        the script cache; EVAL caches it again)."""
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            log.info("script %s missing on Redis; sending its source", script.name)
            return await self.redis.eval(script.source, len(keys), *keys, *args)

    async def run_write(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        """Run a script that writes, acknowledged as configured: with
        CACHET_REDIS_MIN_REPLICAS_ACKED = n > 0 the answer comes only once n replicas
        have the write (`run_acknowledged`). Fewer replicas within
        CACHET_REDIS_REPLICA_ACK_TIMEOUT answer UNAVAILABLE / NOT_ENOUGH_REPLICAS: the
        write did happen on the primary but may be lost in a failover, so the caller
        must not count on it. With it off, the same as `run`."""
        tuning = self.topology.tuning
        if tuning.min_replicas_acked <= 0:
            return await self.run(script, keys, args)
        ack = ReplicaAck(
            tuning.min_replicas_acked, max(1, round(tuning.replica_ack_timeout * 1000))
        )
        reply, acked = await self.run_acknowledged(script, keys, args, ack)
        if acked < ack.min_replicas:
            raise Unavailable(
                f"the write reached {acked} of the {ack.min_replicas} replicas "
                f"required within {ack.timeout_ms} ms; it may not survive a failover",
                reason="NOT_ENOUGH_REPLICAS",
            )
        return reply

    async def run_acknowledged(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Arg],
        ack: ReplicaAck,
        *,
        wrote: Callable[[Any], bool] | None = None,
    ) -> tuple[Any, int]:
        """The one replica-acknowledgement primitive: run a script on the primary of its
        keys' slot, then `WAIT min_replicas timeout` on the same connection (WAIT
        counts the replication of that connection's own writes). Answers (reply,
        replicas that acknowledged); the caller decides what too few means.

        Without `wrote`, the script and WAIT go in one round trip. With it, WAIT is
        sent only when `wrote(reply)` (a refused lock grant wrote nothing worth
        waiting for), and `acked` is 0 otherwise.

        The same retries as every other command: connection errors and timeouts are
        retried with backoff (Sentinel's READONLY from a demoted master included, as a
        connection error); on Cluster, MOVED and ASK are followed, TRYAGAIN waits, and
        a lost node rebuilds the slot table. A missing script is sent as source."""
        if ack.min_replicas <= 0:
            return await self.run(script, keys, args), 0
        tuning = self.topology.tuning
        backoff = ExponentialWithJitterBackoff(base=tuning.backoff_base, cap=tuning.backoff_cap)
        wait = ("WAIT", ack.min_replicas, ack.timeout_ms)
        # WAIT answers within its timeout; the socket timeout covers the round trip.
        read_timeout = ack.timeout_ms / 1000 + tuning.socket_timeout
        failures = 0
        send_source = False
        redirect: AskError | None = None
        moved_to: tuple[str, int] | None = None
        for _ in range(_MAX_REDIRECTIONS):
            command = _script_command(script, keys, args, send_source)
            try:
                async with self._primary_connection(keys[0], redirect, moved_to) as connection:
                    if wrote is None:
                        replies = await _exchange(connection, [command, wait], read_timeout)
                        reply, acked = replies
                    else:
                        (reply,) = await _exchange(connection, [command], read_timeout)
                        acked = 0
                        if not isinstance(reply, Exception) and wrote(reply):
                            (acked,) = await _exchange(connection, [wait], read_timeout)
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if failures > tuning.retries:
                    raise
                await self._after_connection_error()
                await asyncio.sleep(backoff.compute(failures))
                redirect = moved_to = None
                continue
            redirect = moved_to = None
            if isinstance(reply, NoScriptError) and not send_source:
                send_source = True
            elif isinstance(reply, MovedError):
                if self.kind is TopologyKind.CLUSTER:
                    await self.redis.nodes_manager.move_slot(reply)
                moved_to = (reply.host, reply.port)
            elif isinstance(reply, AskError):
                redirect = reply
            elif isinstance(reply, TryAgainError):
                await asyncio.sleep(0.05)
            else:
                return _raised(reply), int(_raised(acked))
        raise Unavailable(
            "Redis Cluster kept redirecting the write; retry", reason="BACKEND_TRY_AGAIN"
        )

    @contextlib.asynccontextmanager
    async def _primary_connection(
        self, key: str, ask: AskError | None, moved_to: tuple[str, int] | None
    ) -> AsyncIterator[Any]:
        """A connection of the command client's pools to the primary of `key`'s slot
        (the node an ASK or MOVED named, on Cluster), given back afterwards; dropped
        instead when it failed, so no half-read answer is left on it."""
        if self.kind is TopologyKind.CLUSTER:
            cluster = self.redis
            await cluster.initialize()
            node = None
            if ask is not None:
                node = cluster.get_node(host=ask.host, port=ask.port)
            elif moved_to is not None:
                node = cluster.get_node(host=moved_to[0], port=moved_to[1])
            if node is None:
                node = cluster.get_node_from_key(key)
            connection = node.acquire_connection()
            try:
                if ask is not None:
                    await _exchange(connection, [("ASKING",)], None)
                yield connection
            except BaseException:
                await connection.disconnect()
                raise
            finally:
                node.release(connection)
            return
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            yield connection
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _after_connection_error(self) -> None:
        """On Cluster the node may be gone: rebuild the slot table from the live nodes
        before the next try (standalone and Sentinel reconnect by themselves)."""
        if self.kind is TopologyKind.CLUSTER:
            self.redis._initialize = True

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` as one pipeline (on Cluster, redis-py sends one per node and
        follows redirections), not atomically: each reply, or the exception of a command
        that failed, in order. A lost script is sent again with its source. A connection
        failure raises for the whole pipeline.

        With replica acknowledgement on, writes cannot share the pipeline (WAIT must
        follow each write on its own connection), so each runs through `run_write`,
        concurrently with the pipelined reads."""
        if self.topology.tuning.min_replicas_acked > 0 and any(c.writes for c in commands):
            return await self._pipeline_with_acks(commands)
        replies = await self._pipe(commands, send_source=False)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            again = await self._pipe([commands[i] for i in lost], send_source=True)
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipe(self, commands: Sequence[Command], *, send_source: bool) -> list[Any]:
        """One pipeline: on the multiplexer outside Cluster (where every command goes to
        the one primary), each command that gets no answer there going again on the
        ordinary path; through redis-py's pipeline on Cluster, which splits it by node."""
        packed = [
            command.args
            if command.script is None
            else _script_command(command.script, command.keys, command.args, send_source)
            for command in commands
        ]
        multiplexer = None
        # A traced pipeline takes redis-py's, whose instrumentation makes its span.
        if (
            self.kind is not TopologyKind.CLUSTER
            and not _traced()
            and not any(
                # A reply redis-py would convert must take its path to be converted.
                command.script is None and command.args[0] in self.redis.response_callbacks
                for command in commands
            )
        ):
            multiplexer = self._multiplexer_of(())
        if multiplexer is None:
            return await self._redis_py_pipe(packed)
        replies = await multiplexer.call_many(packed)
        again = [i for i, reply in enumerate(replies) if reply is RETRY_ALONE]
        if again:
            self.coalescing.retried_alone += len(again)
            redone = await self._redis_py_pipe([packed[i] for i in again])
            for i, reply in zip(again, redone, strict=True):
                replies[i] = reply
        return replies

    async def _redis_py_pipe(self, packed: Sequence[Sequence[Any]]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for args in packed:
                pipe.execute_command(*args)
            return list(await pipe.execute(raise_on_error=False))

    async def _pipeline_with_acks(self, commands: Sequence[Command]) -> list[Any]:
        reads = [i for i, command in enumerate(commands) if not command.writes]
        writes = [i for i, command in enumerate(commands) if command.writes]

        async def write(command: Command) -> Any:
            assert command.script is not None
            try:
                return await self.run_write(command.script, command.keys, command.args)
            except Exception as exc:  # one failed write must not fail the others
                return exc

        read_replies, *write_replies = await asyncio.gather(
            self.pipeline([commands[i] for i in reads]) if reads else _nothing(),
            *(write(commands[i]) for i in writes),
        )
        replies: list[Any] = [None] * len(commands)
        for i, reply in zip(reads, read_replies, strict=True):
            replies[i] = reply
        for i, reply in zip(writes, write_replies, strict=True):
            replies[i] = reply
        return replies

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
        multiplexers = [m for m in [self._multiplexer] if m is not None]
        multiplexers += [m for _, m in self._multiplexers.values()]
        for multiplexer in multiplexers:
            await multiplexer.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.topology.close()


def _traced() -> bool:
    """Whether the current call records a span (tracing on and the sampler kept it)."""
    return tracing_on() and trace.get_current_span().is_recording()


def _script_command(
    script: Script, keys: Sequence[str], args: Sequence[Arg], send_source: bool
) -> tuple[Any, ...]:
    if send_source:
        return ("EVAL", script.source, len(keys), *keys, *args)
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


async def _exchange(
    connection: Any, commands: Sequence[tuple[Any, ...]], wait_timeout: float | None
) -> list[Any]:
    """Send commands in one write and read every answer; an error answer is returned,
    not raised, so that the answers after it are still read off the connection. A
    WAIT's answer may take longer than the socket timeout: it is read with
    `wait_timeout` (WAIT always answers an integer, so no answer is a timeout)."""
    await connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for command in commands:
        is_wait = command[0] == "WAIT"
        try:
            reply = await connection.read_response(timeout=wait_timeout if is_wait else None)
        except ResponseError as exc:
            reply = exc
        if is_wait and reply is None:
            await connection.disconnect()
            raise RedisTimeoutError("no answer to WAIT in time")
        replies.append(reply)
    return replies


_INT64 = range(-(2**63), 2**63)


def integer_result(stored: bytes | str, operation: str) -> int:
    """An integer increment's result, as Redis stored it. One that is not a 64-bit
    integer (INCRBY never stores one) is a float `operation`'s result remembered under the
    same request_id, e.g. 1.5 or a 300-digit 1e300: the caller reused the id for another
    request."""
    try:
        value = int(stored)
    except ValueError:
        value = None
    if value is None or value not in _INT64:
        raise InvalidArgument.field(
            "request_id", f"was already used by a float {operation}; a new request needs a new id"
        )
    return value


async def _nothing() -> list[Any]:
    return []


def _raised(result: Any) -> Any:
    """A pipeline result, raised if it is an error."""
    if isinstance(result, Exception):
        raise result
    return result
