"""Which Redis deployment we talk to, built from one URL; services never see it.

URL forms (user, password and TLS work in each):

    redis://[user:password@]host:port[/db]              standalone
    rediss://...                                        standalone over TLS
    redis+sentinel://[user:password@]h1:26379,h2:26379/<master name>[/db]
    rediss+sentinel://...                               sentinels, master and replicas over TLS
    redis+cluster://[user:password@]h1:7000,h2:7001     cluster seed nodes
    rediss+cluster://...                                cluster over TLS

The user and password of the URL are those of the data nodes (ACL user or
`requirepass`). Query parameters: `sentinel_password` and `sentinel_username`
(Sentinel's own `requirepass`/ACL), `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
`ssl_cert_reqs` (`required` | `optional` | `none`).

Retries and backoff (redis-py's own machinery; every call stays bounded by its gRPC
deadline, so a retry never outlives the caller's patience):

- Standalone and Sentinel: a `Retry` with `ExponentialWithJitterBackoff` (25 ms
  doubling to at most 500 ms, `retries` = 3 tries after the first) on connection
  errors and socket timeouts. A reply that did arrive, an error reply included, is
  never retried — except READONLY from a master that Sentinel has just demoted:
  redis-py's Sentinel connection turns it into a connection error, so the retry
  asks the sentinels again and lands on the new master. Cachet's writes are
  scripts that either ran or did not, and READONLY and refused connections
  guarantee "did not"; a connection dropped after the request was sent is the one
  ambiguous case, where an increment can apply twice (at-least-once, as with any
  Redis client that retries).
- Sentinel discovery: redis-py asks each sentinel in turn for the master and
  reconnects there; a master that cannot be found is UNAVAILABLE. cachet also
  follows the sentinels' failover announcements and fences the old master while a
  replica is promoted (`FencedSentinelPool`), so no write lands on a master that
  the failover is about to discard.
- Cluster: MOVED and ASK are followed inside redis-py (up to 16 redirections, the
  slot table patched on MOVED and rebuilt every 5th); TRYAGAIN during a slot
  migration is retried with a 50 ms pause; connection errors, timeouts and
  CLUSTERDOWN rebuild the slot table from the live nodes and retry, `retries`
  times. Per-node connections do not retry on their own (redis-py's design), so
  a dead node costs one attempt per retry, not retries squared.

Connections (`CommandGates`): every command waits for one of `max_connections` slots of
the command pool instead of failing "Too many connections" in a burst (the wait is
bounded by the call's deadline). Blocking commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH,
BLMPOP, BZPOPMIN/MAX, BZMPOP, and XREAD/XREADGROUP with BLOCK) never use that pool: they
go to a client of their own with `blocking_max_connections` connections, so a thousand
waiters queue among themselves while every other command still finds a connection.
Health probes use a third, tiny pool (`probe_clients`), so health says whether Redis
answers, not whether a pool is busy.

A failure that outlasts the retries reaches the caller as UNAVAILABLE with a
reason (errors.py), never INTERNAL, and health turns NOT_SERVING until Redis
answers again.

Replica acknowledgement (`CACHET_REDIS_MIN_REPLICAS_ACKED` > 0, or a lock call's
`replication`): see `Backend.run_acknowledged`, the one primitive every durable
write uses: a write is acknowledged only after WAIT saw that many replicas take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import instruments
from . import connection

log = logging.getLogger(__name__)


class TopologyKind(enum.StrEnum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed CACHET_REDIS_URL."""

    kind: TopologyKind
    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    master_name: str | None = None
    options: dict[str, str] = field(default_factory=dict)


_SCHEMES = {
    "redis": (TopologyKind.STANDALONE, False),
    "rediss": (TopologyKind.STANDALONE, True),
    "redis+sentinel": (TopologyKind.SENTINEL, False),
    "rediss+sentinel": (TopologyKind.SENTINEL, True),
    "redis+cluster": (TopologyKind.CLUSTER, False),
    "rediss+cluster": (TopologyKind.CLUSTER, True),
}
_DEFAULT_PORTS = {
    TopologyKind.STANDALONE: 6379,
    TopologyKind.SENTINEL: 26379,
    TopologyKind.CLUSTER: 6379,
}


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a CACHET_REDIS_URL; raises ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"CACHET_REDIS_URL scheme must be one of {', '.join(_SCHEMES)}")
    kind, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist, userinfo = netloc, ""
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = [_parse_host(h, _DEFAULT_PORTS[kind]) for h in hostlist.split(",") if h]
    if not hosts:
        raise ValueError("CACHET_REDIS_URL names no host")
    if kind is TopologyKind.STANDALONE and len(hosts) > 1:
        raise ValueError("a redis:// URL names one host; use redis+cluster:// or +sentinel://")
    segments = [s for s in path.split("/") if s]
    master_name = None
    if kind is TopologyKind.SENTINEL:
        if not segments:
            raise ValueError("a redis+sentinel:// URL needs the master name as its path")
        master_name = unquote(segments.pop(0))
    db = 0
    if segments:
        if kind is TopologyKind.CLUSTER or not segments[0].isdigit() or len(segments) > 1:
            raise ValueError(f"unexpected path in CACHET_REDIS_URL: /{'/'.join(segments)}")
        db = int(segments[0])
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    return RedisTarget(kind, hosts, username, password, db, tls, master_name, options)


def _parse_host(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"bad host in CACHET_REDIS_URL: {text!r}")
    if port and not port.isdigit():
        raise ValueError(f"bad port in CACHET_REDIS_URL: {text!r}")
    return host, int(port) if port else default_port


@dataclass(frozen=True)
class ConnectionTuning:
    """How cachet talks to Redis, whatever the topology."""

    socket_timeout: float = 2.0
    connect_timeout: float = 1.0
    max_connections: int = 256
    # Tries after the first, on connection errors and timeouts (see the module doc).
    retries: int = 3
    backoff_base: float = 0.025
    backoff_cap: float = 0.5
    # Replicas that must have a write before it is acknowledged (0: async replication).
    min_replicas_acked: int = 0
    # How long WAIT may wait for them, in seconds.
    replica_ack_timeout: float = 0.5
    # Connections (per node) of the pool apart that serves blocking commands only.
    blocking_max_connections: int = 128
    # Scripts bound for one node share its kept connections (backend/multiplex.py).
    coalesce: bool = True


# Commands that may wait in Redis until data arrives, and the ones that do only with BLOCK.
_BLOCKING_COMMANDS = frozenset(
    {"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP"}
)
_BLOCKING_WITH_OPTION = frozenset({"XREAD", "XREADGROUP"})
# Connections of each health-probe pool.
_PROBE_CONNECTIONS = 2


def _command_name(args: Sequence[Any]) -> str:
    name = args[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


def _block_timeout(args: Sequence[Any]) -> float | None:
    """How long a blocking command may wait, in seconds (None: forever)."""
    name = _command_name(args)
    try:
        if name in _BLOCKING_WITH_OPTION:
            words = [a.upper() if isinstance(a, str | bytes) else a for a in args]
            at = next(i for i, word in enumerate(words) if word in ("BLOCK", b"BLOCK"))
            seconds = float(args[at + 1]) / 1000
        elif name in ("BLMPOP", "BZMPOP"):
            seconds = float(args[1])
        else:
            seconds = float(args[-1])
    except (StopIteration, IndexError, TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def is_blocking(args: Sequence[Any]) -> bool:
    """Whether a command (name first) may wait in Redis for data to arrive."""
    if not args:
        return False
    name = _command_name(args)
    if name in _BLOCKING_COMMANDS:
        return True
    return name in _BLOCKING_WITH_OPTION and any(_is_block_option(arg) for arg in args[1:])


def _is_block_option(arg: Any) -> bool:
    if isinstance(arg, bytes):
        return arg.upper() == b"BLOCK"
    return isinstance(arg, str) and arg.upper() == "BLOCK"


class CommandGates:
    """Where the command client's commands go: a blocking command to the blocking client
    under its own cap, every other one to the command pool under its size. Callers wait
    for a slot (bounded by their call's deadline) instead of failing in a burst."""

    def __init__(self, max_connections: int, blocking_max_connections: int) -> None:
        self.commands = asyncio.Semaphore(max_connections)
        self.blocking = asyncio.Semaphore(blocking_max_connections)
        self.blocking_client: Any = None

    async def run(self, send: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        if self.blocking_client is not None and is_blocking(args):
            # Waiting for a blocking connection is part of the command's own wait: when
            # none frees up within its timeout, it answers what a timed-out blocking
            # command answers (nothing), not an error.
            try:
                async with asyncio.timeout(_block_timeout(args)):
                    await self.blocking.acquire()
            except TimeoutError:
                return [] if _command_name(args) in _BLOCKING_WITH_OPTION else None
            try:
                return await self.blocking_client.execute_command(*args, **options)
            finally:
                self.blocking.release()
        async with self.commands:
            return await send(*args, **options)

    async def run_pipeline(
        self,
        commands: Sequence[tuple[Any, ...]],
        send: Callable[[], Awaitable[list[Any]]],
        send_blocking: Callable[[], Awaitable[list[Any]]],
    ) -> list[Any]:
        """A pipeline through the gates: one holding a blocking command goes to the
        blocking pool (`send_blocking`), as a whole, else to the command pool (`send`).
        A blocking pipeline that finds no blocking connection within its commands'
        wait runs nothing and answers None for each command, as a timed-out wait."""
        blocking = [args for args in commands if is_blocking(args)]
        if not blocking or self.blocking_client is None:
            async with self.commands:
                return await send()
        waits = [_block_timeout(args) for args in blocking]
        wait = None if None in waits else min(w for w in waits if w is not None)
        try:
            async with asyncio.timeout(wait):
                await self.blocking.acquire()
        except TimeoutError:
            return [None] * len(commands)
        try:
            return await send_blocking()
        finally:
            self.blocking.release()


class GatedPipeline(Pipeline):
    """A standalone or Sentinel pipeline whose execution passes the gates: a blocking
    pipeline runs on a connection of the blocking pool."""

    gates: CommandGates

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.connection is not None:
            # WATCHing: already on its connection (never a blocking one).
            return await super().execute(raise_on_error)
        commands = [args for args, _ in self.command_stack]
        own_pool = self.connection_pool

        async def on_blocking_pool() -> list[Any]:
            self.connection_pool = self.gates.blocking_client.connection_pool
            try:
                return await Pipeline.execute(self, raise_on_error)
            finally:
                self.connection_pool = own_pool

        results = await self.gates.run_pipeline(
            commands, lambda: Pipeline.execute(self, raise_on_error), on_blocking_pool
        )
        if self.command_stack:  # a blocking pipeline that never ran
            await self.reset()  # type: ignore[no-untyped-call]
        return results


class GatedClusterPipeline(ClusterPipeline):
    """A Cluster pipeline whose execution passes the gates: a blocking pipeline is
    replayed on the blocking client's own Cluster pipeline."""

    gates: CommandGates

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        queued = list(self._execution_strategy._command_queue)  # type: ignore[attr-defined]

        async def on_blocking_client() -> list[Any]:
            replay = ClusterPipeline(self.gates.blocking_client)  # type: ignore[abstract]
            for command in queued:
                replay.execute_command(*command.args, **command.kwargs)
            try:
                return await replay.execute(raise_on_error, allow_redirections)
            finally:
                await self.reset()  # type: ignore[no-untyped-call]

        async def here() -> list[Any]:
            return await ClusterPipeline.execute(self, raise_on_error, allow_redirections)

        results = await self.gates.run_pipeline(
            [command.args for command in queued], here, on_blocking_client
        )
        if len(self):
            await self.reset()  # type: ignore[no-untyped-call]
        return results


class GatedRedis(Redis):
    """A standalone or Sentinel-managed client whose commands pass `gates`."""

    gates: CommandGates | None = None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if self.gates is None:
            return super().pipeline(transaction, shard_hint)
        pipe = GatedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.gates = self.gates
        return pipe

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.gates is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await self.gates.run(super().execute_command, args, options)


class GatedRedisCluster(RedisCluster):
    """A Cluster client whose commands pass `gates`."""

    gates: CommandGates | None = None

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if self.gates is None:
            return super().pipeline(transaction, shard_hint)
        pipe = GatedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.gates = self.gates
        return pipe

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.gates is None:
            return await super().execute_command(*args, **options)
        return await self.gates.run(super().execute_command, args, options)


def _retry(tuning: ConnectionTuning) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=tuning.backoff_base, cap=tuning.backoff_cap),
        tuning.retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    options: dict[str, Any] = {"ssl": True}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if name in target.options:
            options[name] = target.options[name]
    return options


# While a failover runs, at most this long: Sentinel normally announces the new master
# about a second after it starts promoting a replica.
FAILOVER_FENCE_SECONDS = 5.0
_PROMOTING = "+failover-state-send-slaveof-noone"
_SWITCHED = "+switch-master"
_FAILOVER_EVENTS = (
    _PROMOTING,
    _SWITCHED,
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
)


class FencedSentinelPool(SentinelConnectionPool):
    """A Sentinel master pool that refuses the old master while it is failed over.

    Between a sentinel promoting a replica and announcing it, the sentinels still name
    the old master, which still takes writes that the failover then discards. While
    fenced, connecting to that address raises MasterNotFoundError (a connection
    error): redis-py retries with backoff and lands on the new master once it is
    announced, or the call answers UNAVAILABLE — instead of a write acknowledged and
    then lost."""

    fenced: tuple[str, int] | None = None
    fenced_until = 0.0
    # Masters announced so far: a change tells followers of the master (invalidation
    # feeds) that what they track is now a replica.
    switches = 0

    async def get_master_address(self) -> Any:
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        if self.fenced == tuple(address) and time.monotonic() < self.fenced_until:
            raise MasterNotFoundError(f"{self.service_name} is being failed over")
        return address

    async def leave_master(self) -> None:
        """Drop idle connections now and busy ones when released."""
        await self.update_active_connections_for_reconnect()  # type: ignore[no-untyped-call]
        await self.disconnect(inuse_connections=False)


async def _on_failover_event(pool: FencedSentinelPool, channel: bytes, data: bytes) -> None:
    event, words = channel.decode(), data.decode().split()
    if event == _SWITCHED:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        if words[0] == pool.service_name:
            log.warning("Sentinel moved %s to %s:%s", words[0], words[3], words[4])
            pool.switches += 1
            instruments.redis_failovers.add(1)
            pool.fenced = None
            await pool.leave_master()
        return
    # "<type> <name> <ip> <port> @ <master name> <master ip> <master port>" for a
    # replica or sentinel, "master <name> <ip> <port>" for the master itself.
    if "@" in words:
        master_name, host, port = words[words.index("@") + 1 :][:3]
    elif words[:1] == ["master"] and len(words) >= 4:
        master_name, host, port = words[1:4]
    else:
        return
    if master_name != pool.service_name:
        return
    if event == _PROMOTING:
        log.warning("Sentinel is failing %s over: leaving %s:%s", master_name, host, port)
        pool.fenced = (host, int(port))
        pool.fenced_until = time.monotonic() + FAILOVER_FENCE_SECONDS
        await pool.leave_master()
    else:
        pool.fenced = None


class Topology:
    """One Redis deployment: its command client, its slots and its primaries."""

    def __init__(
        self,
        kind: TopologyKind,
        client: Any,
        tuning: ConnectionTuning | None = None,
        sentinel: Sentinel | None = None,
        *,
        blocking: Any = None,
        probe: Any = None,
    ) -> None:
        self.kind = kind
        # redis.asyncio.Redis or RedisCluster; both speak the same command API.
        self.client: Any = client
        # The client apart that blocking commands go to (see CommandGates), and the
        # health-probe client (outside Cluster; there, one per primary).
        self.blocking: Any = blocking
        self.probe: Any = probe
        self.tuning = tuning or ConnectionTuning()
        gates = getattr(client, "gates", None)
        if isinstance(gates, CommandGates):
            gates.blocking_client = blocking
        # Sentinel only: the clients of the sentinels themselves, closed with us.
        self.sentinel = sentinel
        self._followers: list[asyncio.Task[None]] = []
        # Cluster only: a plain client per primary node, by node name, made on first use.
        self._node_clients: dict[str, Redis] = {}
        self._probe_clients: dict[str, Redis] = {}

    def slot_of(self, redis_key: str) -> int:
        """The hash slot of a key; 0 for every key outside Cluster."""
        return key_slot(redis_key.encode()) if self.kind is TopologyKind.CLUSTER else 0

    def group_by_slot(self, redis_keys: Sequence[str]) -> dict[int, list[int]]:
        """Indexes into `redis_keys`, grouped so each group can run in one script."""
        if self.kind is not TopologyKind.CLUSTER:
            return {0: list(range(len(redis_keys)))}
        groups: dict[int, list[int]] = {}
        for index, name in enumerate(redis_keys):
            groups.setdefault(self.slot_of(name), []).append(index)
        return groups

    async def discover(self) -> None:
        """Learn the deployment before serving. Cluster: its nodes (the client would do
        it on its first command, but many concurrent first commands on an undiscovered
        async RedisCluster fail with connection errors, seen with redis-py 8.1).
        Sentinel: start following the sentinels' failover announcements."""
        if self.kind is TopologyKind.CLUSTER:
            await self.client.initialize()
            await self._close_vanished_node_clients()
            if self.blocking is not None:
                await self.blocking.initialize()
        if self.sentinel is not None and not self._followers:
            self._followers = [
                asyncio.create_task(self._follow_switches(sentinel_client))
                for sentinel_client in self.sentinel.sentinels
            ]

    async def _follow_switches(self, sentinel_client: Redis) -> None:
        """Follow one sentinel's failover announcements for our master.

        redis-py looks for a new master only when the old one fails, and Sentinel
        demotes a still-reachable old master only at its next INFO poll (every 10 s):
        every write acknowledged there meanwhile is lost. So when a sentinel starts
        promoting a replica, the old master is fenced (`FencedSentinelPool`) and
        connections to it are dropped (busy ones when released); when it announces
        the new master, the fence lifts and the next command connects there."""
        pools: list[FencedSentinelPool] = [
            client.connection_pool
            for client in (self.client, self.blocking, self.probe)
            if client is not None
        ]
        while True:
            try:
                async with sentinel_client.pubsub() as pubsub:
                    await pubsub.subscribe(*_FAILOVER_EVENTS)
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        try:
                            for pool in pools:
                                await _on_failover_event(pool, message["channel"], message["data"])
                        except (ValueError, IndexError, UnicodeDecodeError):
                            log.warning("unexpected Sentinel event: %r", message)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # That sentinel is away; the others still speak. Try it again shortly.
                await asyncio.sleep(1.0)

    def signature(self) -> object:
        """A value that changes whenever the primaries we know of do: a Sentinel master
        switch, or another set of Cluster primaries. Constant for a standalone Redis."""
        if self.kind is TopologyKind.CLUSTER:
            return frozenset(node.name for node in self.client.get_primaries())
        if self.kind is TopologyKind.SENTINEL:
            return self.client.connection_pool.switches
        return None

    async def primaries_moved(self, since: object) -> bool:
        """Whether the primaries changed since `signature()` answered `since`. On Cluster
        each known primary is also asked its ROLE: a promoted replica is news to this
        client until a command of its own meets a MOVED."""
        if self.signature() != since:
            return True
        if self.kind is TopologyKind.CLUSTER:
            for client in self.primaries():
                role = await client.execute_command("ROLE")
                if role[0] not in (b"master", "master"):
                    return True
        return False

    async def refresh(self) -> None:
        """Re-learn the Cluster's nodes once a change was seen (nothing to do elsewhere:
        the Sentinel pool asks the sentinels on its next connection)."""
        if self.kind is TopologyKind.CLUSTER:
            await self.client.nodes_manager.initialize()

    def primaries(self) -> list[Any]:
        """A command client per primary node (one outside Cluster), for SCAN and admin.
        On Cluster: the primaries known so far, so `await discover()` first."""
        if self.kind is not TopologyKind.CLUSTER:
            return [self.client]
        return [self._node_client(node) for node in self.client.get_primaries()]

    async def _close_vanished_node_clients(self) -> None:
        """Close the per-node clients of nodes that are no longer primaries (a failover
        demoted them, or they left the cluster), so their connections do not stay open
        until shutdown. A later promotion makes a new client."""
        current = {node.name for node in self.client.get_primaries()}
        for clients in (self._node_clients, self._probe_clients):
            for name in [name for name in clients if name not in current]:
                client = clients.pop(name)
                log.info("closing the client of %s: no longer a primary", name)
                with contextlib.suppress(Exception):
                    await client.aclose(close_connection_pool=True)

    def probe_clients(self) -> list[Any]:
        """A client per primary on a tiny pool of its own, for health probes only; on
        Cluster, `await discover()` first."""
        if self.kind is not TopologyKind.CLUSTER:
            return [self.probe if self.probe is not None else self.client]
        return [
            self._node_client(node, self._probe_clients, _PROBE_CONNECTIONS)
            for node in self.client.get_primaries()
        ]

    def _node_client(
        self, node: ClusterNode, clients: dict[str, Redis] | None = None, size: int | None = None
    ) -> Redis:
        # The async RedisCluster has no per-node Redis client of its own (the sync one
        # has get_redis_connection); build one from the node's connection settings.
        clients = self._node_clients if clients is None else clients
        client = clients.get(node.name)
        if client is None:
            pool = ConnectionPool(
                connection_class=node.connection_class,
                max_connections=size or node.max_connections,
                **node.connection_kwargs,
            )
            client = clients[node.name] = Redis(connection_pool=pool)
        return client

    async def close(self) -> None:
        for follower in self._followers:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        for client in [*self._node_clients.values(), *self._probe_clients.values()]:
            await client.aclose(close_connection_pool=True)
        await self.client.aclose()
        for extra in (self.blocking, self.probe):
            if extra is not None:
                await extra.aclose()
        if self.sentinel is not None:
            # redis-py's Sentinel has no close of its own (redis/redis-py#3201): left
            # open, each sentinel's connections are collected later with "unclosed
            # Connection" ResourceWarnings.
            for sentinel_client in self.sentinel.sentinels:
                await sentinel_client.aclose()


def connect(url: str, tuning: ConnectionTuning) -> Topology:
    """Build the client for a CACHET_REDIS_URL (connections open lazily)."""
    connection.install()
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": tuning.socket_timeout,
        "socket_connect_timeout": tuning.connect_timeout,
        "retry": _retry(tuning),
        "health_check_interval": 0,
        **_tls_options(target),
    }
    gates = CommandGates(tuning.max_connections, tuning.blocking_max_connections)
    if target.kind is TopologyKind.CLUSTER:

        def cluster(cls: type[RedisCluster], size: int) -> Any:
            return cls(
                startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
                max_connections=size,
                require_full_coverage=False,
                # Patch the slot table on each MOVED instead of rebuilding it every 5th: a
                # rebuild closes every connection, busy ones included (see errors.py).
                reinitialize_steps=0,
                **common,
            )

        client = cluster(GatedRedisCluster, tuning.max_connections)
        client.gates = gates
        blocking = cluster(RedisCluster, tuning.blocking_max_connections)
        return Topology(target.kind, client, tuning, blocking=blocking)
    if target.kind is TopologyKind.SENTINEL:
        assert target.master_name is not None
        sentinel_auth = {
            "username": target.options.get("sentinel_username"),
            "password": target.options.get("sentinel_password"),
            "socket_timeout": tuning.socket_timeout,
            "socket_connect_timeout": tuning.connect_timeout,
            **_tls_options(target),
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.hosts, sentinel_kwargs=sentinel_auth, **common
        )
        master_name = target.master_name

        def master(cls: type[Redis], size: int) -> Any:
            return sentinel.master_for(
                master_name,
                redis_class=cls,
                db=target.db,
                max_connections=size,
                connection_pool_class=FencedSentinelPool,
            )

        client = master(GatedRedis, tuning.max_connections)
        client.gates = gates
        return Topology(
            target.kind,
            client,
            tuning,
            sentinel,
            blocking=master(Redis, tuning.blocking_max_connections),
            probe=master(Redis, _PROBE_CONNECTIONS),
        )
    host, port = target.hosts[0]

    def standalone(cls: type[Redis], size: int) -> Any:
        return cls(host=host, port=port, db=target.db, max_connections=size, **common)

    client = standalone(GatedRedis, tuning.max_connections)
    client.gates = gates
    return Topology(
        target.kind,
        client,
        tuning,
        blocking=standalone(Redis, tuning.blocking_max_connections),
        probe=standalone(Redis, _PROBE_CONNECTIONS),
    )
