"""Admin access to a Redis deployment: its nodes one by one, key scans that walk every
primary, and namespace-wide deletion. AdminService's only way to Redis.

Nodes. Standalone: the one server. Sentinel: the current primary and the replicas
its INFO replication lists. Cluster: every node CLUSTER NODES lists, primaries and
replicas. Each node gets a plain client of its own (same credentials, timeouts and
TLS as the command client), so a per-node command (INFO, SLOWLOG, CONFIG, SCAN,
CLIENT LIST) reaches exactly that node. Key-addressed commands still go through the
command client, which routes them (and follows MOVED) on Cluster.

Raw Redis keys are bytes; they are carried as text decoded with `surrogateescape`,
so a key that is not valid UTF-8 (never written by cachet, but possible) still maps
back to the exact bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.crc import key_slot
from redis.exceptions import RedisError

from ..errors import Aborted
from .core import Backend
from .keys import Kind, kept_by_flush, namespace_pattern, user_key
from .scripts import script
from .topology import TopologyKind

_INSPECT = script("admin_inspect")
_SIZE_COMMANDS = {
    "string": "STRLEN",
    "list": "LLEN",
    "set": "SCARD",
    "zset": "ZCARD",
    "hash": "HLEN",
    "stream": "XLEN",
}
# Keys a SCAN answered beyond a page's room ride along in the page token; a page
# token never carries more than this many (SCAN overshoots its COUNT by a bucket
# chain at most, so a real token holds a handful).
MAX_PENDING_KEYS = 1000


def text(raw: bytes | str) -> str:
    """A Redis reply (key, name, status) as text; undecodable bytes survive a round trip."""
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")


def raw(key: str) -> bytes:
    """The exact bytes of a key that `text` decoded."""
    return key.encode("utf-8", "surrogateescape")


def topology_changed() -> Aborted:
    return Aborted(
        "the Redis topology changed during the scan (failover or resharding): "
        "start over without a page token",
        reason="TOPOLOGY_CHANGED",
    )


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True)
class RedisNode:
    """One Redis server and a client that talks to exactly it."""

    address: str
    role: Role
    client: Any  # redis.asyncio.Redis
    node_id: str = ""  # Cluster only
    slots: tuple[tuple[int, int], ...] = ()  # Cluster only: slots of the node's shard


@dataclass(frozen=True)
class Deployment:
    """The nodes as of one look: primaries first, then replicas, each by address."""

    nodes: list[RedisNode]
    # Changes when the primaries or the slots they serve change, so a SCAN cursor
    # taken on one deployment is never resumed on another.
    fingerprint: str

    @property
    def primaries(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.role is Role.PRIMARY]

    def node(self, address: str) -> RedisNode | None:
        return next((n for n in self.nodes if n.address == address), None)


@dataclass(frozen=True)
class NodeReply:
    """What one node answered, or why it did not."""

    node: RedisNode
    value: Any = None
    error: BaseException | None = None


async def on_each(
    nodes: Sequence[RedisNode], call: Callable[[RedisNode], Awaitable[Any]]
) -> list[NodeReply]:
    """Run `call` on every node at once; a node that fails is reported, not raised."""

    async def one(node: RedisNode) -> NodeReply:
        try:
            return NodeReply(node, await call(node))
        except (RedisError, OSError) as exc:
            return NodeReply(node, error=exc)

    return list(await asyncio.gather(*(one(n) for n in nodes)))


def _sort(nodes: list[RedisNode]) -> list[RedisNode]:
    return sorted(nodes, key=lambda n: (n.role is not Role.PRIMARY, n.address))


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class RedisNodes:
    """Finds the deployment's nodes and keeps one plain client per node address."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._clients: dict[str, Any] = {}

    async def deployment(self, *, replicas: bool = True) -> Deployment:
        if self.backend.kind is TopologyKind.CLUSTER:
            return await self._cluster(replicas)
        if self.backend.kind is TopologyKind.SENTINEL:
            return await self._sentinel(replicas)
        kwargs = self.backend.redis.connection_pool.connection_kwargs
        address = f"{kwargs['host']}:{kwargs['port']}"
        return Deployment([RedisNode(address, Role.PRIMARY, self.backend.redis)], address)

    def sentinel_details(self) -> tuple[str, list[str]]:
        """The monitored primary's name and the Sentinel addresses cachet knows."""
        pool = self.backend.redis.connection_pool
        addresses = []
        for sentinel in pool.sentinel_manager.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            addresses.append(f"{kwargs['host']}:{kwargs['port']}")
        return str(pool.service_name), addresses

    async def _sentinel(self, replicas: bool) -> Deployment:
        pool = self.backend.redis.connection_pool
        host, port = await pool.get_master_address()
        address = f"{host}:{port}"
        ssl = issubclass(pool.connection_class, SSLConnection)
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
        connection_class = SSLConnection if ssl else Connection
        primary = RedisNode(address, Role.PRIMARY, self._client(address, connection_class, kwargs))
        nodes = [primary]
        if replicas:
            try:
                replication = await primary.client.info("replication")
            except (RedisError, OSError):
                replication = {}
            for name, entry in replication.items():
                if name.startswith("slave") and isinstance(entry, dict) and "ip" in entry:
                    replica = f"{entry['ip']}:{entry['port']}"
                    client = self._client(replica, connection_class, kwargs)
                    nodes.append(RedisNode(replica, Role.REPLICA, client))
        return Deployment(_sort(nodes), address)

    async def _cluster(self, replicas: bool) -> Deployment:
        cluster = self.backend.redis
        table: dict[str, dict[str, Any]] = await cluster.cluster_nodes()
        template = cluster.get_default_node()
        slots_by_id: dict[str, tuple[tuple[int, int], ...]] = {}
        for entry in table.values():
            if "master" in entry["flags"]:
                slots_by_id[entry["node_id"]] = tuple(
                    (int(r[0]), int(r[-1])) for r in entry["slots"]
                )
        nodes = []
        shape = []
        for address, entry in table.items():
            flags = entry["flags"].split(",")
            if "noaddr" in flags or "handshake" in flags or address.endswith(":0"):
                continue
            if "master" in flags:
                role, slots = Role.PRIMARY, slots_by_id[entry["node_id"]]
                shape.append([address, slots, entry["migrations"]])
            elif replicas and "slave" in flags:
                role, slots = Role.REPLICA, slots_by_id.get(entry["master_id"], ())
            else:
                continue
            client = self._client(address, template.connection_class, template.connection_kwargs)
            nodes.append(RedisNode(address, role, client, entry["node_id"], slots))
        return Deployment(_sort(nodes), _digest(sorted(shape)))

    def _client(self, address: str, connection_class: type, kwargs: dict[str, Any]) -> Any:
        client = self._clients.get(address)
        if client is None:
            host, _, port = address.rpartition(":")
            pool = ConnectionPool(
                connection_class=connection_class, **{**kwargs, "host": host, "port": int(port)}
            )
            client = self._clients[address] = Redis.from_pool(pool)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


@dataclass(frozen=True)
class SlowLogEntry:
    """One slow-log entry without its argument values: the command name and the keys it
    named (`keys` is None when Redis does not say where that command's keys are)."""

    node: str
    id: int
    time: int  # Unix seconds
    duration_us: int
    command: str
    keys: list[str] | None
    client_address: bytes
    client_name: bytes


# Commands whose key count is their third argument (EVALSHA sha numkeys key...).
_NUMKEYS_COMMANDS = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
# Commands whose keys follow a STREAMS keyword, then as many ids.
_STREAMS_COMMANDS = {"XREAD", "XREADGROUP"}
_COMMAND_CACHE_SIZE = 512


class CommandKeys:
    """Which arguments of a command are keys, from Redis's own COMMAND INFO (cached per
    command name), so the slow log can show keys and drop every other argument."""

    def __init__(self) -> None:
        self._ranges: dict[str, tuple[int, int, int] | None] = {}

    async def keys(self, node: RedisNode, args: Sequence[bytes]) -> list[bytes] | None:
        if not args:
            return []
        command = args[0].decode("ascii", "replace").upper()
        try:
            if command in _NUMKEYS_COMMANDS:
                count = int(args[2])
                return list(args[3 : 3 + count])
            if command in _STREAMS_COMMANDS:
                upper = [arg.upper() for arg in args]
                start = upper.index(b"STREAMS") + 1
                named = args[start:]
                return list(named[: len(named) // 2])
        except (ValueError, IndexError):
            return None
        key_range = await self._range(node, command)
        if key_range is None:
            return None
        first, last, step = key_range
        if first == 0:
            return []
        stop = len(args) + last + 1 if last < 0 else last + 1
        return list(args[first:stop:step])

    async def _range(self, node: RedisNode, command: str) -> tuple[int, int, int] | None:
        if command in self._ranges:
            return self._ranges[command]
        info = await node.client.execute_command("COMMAND", "INFO", command)
        entry = next(iter(info.values()), None) if isinstance(info, dict) else None
        key_range: tuple[int, int, int] | None = None
        if isinstance(entry, dict) and "movablekeys" not in entry.get("flags", []):
            key_range = (
                int(entry["first_key_pos"]),
                int(entry["last_key_pos"]),
                int(entry["step_count"]),
            )
        if len(self._ranges) < _COMMAND_CACHE_SIZE:
            self._ranges[command] = key_range
        return key_range


@dataclass(frozen=True)
class KeyDescription:
    """What InspectKey reports about one existing key."""

    redis_key: str
    type: str
    ttl_ms: int  # -1: no expiry
    size: int
    memory_bytes: int
    encoding: str
    idle_seconds: int | None
    lfu_frequency: int | None
    version: int
    fencing_token: int


@dataclass(frozen=True)
class KeyFacts:
    """Type, size and memory of one scanned key (memory 0 when not asked for)."""

    key: str
    type: str
    elements: int
    memory_bytes: int


@dataclass(frozen=True)
class ScanPosition:
    """Where a scan over every primary stands: the next SCAN sends `cursor` for
    pattern number `stage` on node `node` ("" once every node is done); `pending`
    holds keys an earlier SCAN answered beyond a page's room, delivered first."""

    topology: str
    node: str
    stage: int = 0
    cursor: int = 0
    pending: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.topology,
            "n": self.node,
            "s": self.stage,
            "c": self.cursor,
            "p": list(self.pending),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanPosition:
        """Raises ValueError unless `data` has exactly the shape to_json gives."""
        topology, node, stage, cursor, pending = (
            data.get("t"),
            data.get("n"),
            data.get("s"),
            data.get("c"),
            data.get("p"),
        )
        if not (
            isinstance(topology, str)
            and isinstance(node, str)
            and type(stage) is int
            and stage >= 0
            and type(cursor) is int
            and cursor >= 0
            and isinstance(pending, list)
            and len(pending) <= MAX_PENDING_KEYS
            and all(isinstance(k, str) for k in pending)
        ):
            raise ValueError("not a scan position")
        return cls(topology, node, stage, cursor, tuple(pending))


class AdminStore:
    """The Redis side of every AdminService call."""

    def __init__(
        self,
        backend: Backend,
        *,
        scan_count_max: int = 5000,
        flush_batch: int = 500,
    ) -> None:
        self.backend = backend
        self.nodes = RedisNodes(backend)
        self.scan_count_max = scan_count_max
        self.flush_batch = flush_batch
        self.command_keys = CommandKeys()

    async def aclose(self) -> None:
        await self.nodes.aclose()

    # -- whole deployment -------------------------------------------------------------

    async def server_info(self) -> tuple[list[NodeReply], tuple[int, int] | None]:
        """INFO of every node, and Redis TIME (seconds, microseconds) of a primary."""
        deployment = await self.nodes.deployment()
        replies = await on_each(deployment.nodes, lambda n: n.client.info())
        now = None
        for reply in replies:
            if reply.node.role is Role.PRIMARY and reply.error is None:
                try:
                    seconds, micros = await reply.node.client.time()
                except (RedisError, OSError):
                    continue
                now = (int(seconds), int(micros))
                break
        return replies, now

    async def slow_log(self, nodes: Sequence[RedisNode]) -> list[NodeReply]:
        """Every entry of each node's slow log (SLOWLOG GET -1), as SlowLogEntry lists.
        Argument values are dropped here, before anything else sees them."""

        async def read(node: RedisNode) -> list[SlowLogEntry]:
            reply = await node.client.execute_command("SLOWLOG", "GET", -1)
            entries = []
            for item in reply:
                args = list(item[3])
                keys = await self.command_keys.keys(node, args)
                entries.append(
                    SlowLogEntry(
                        node=node.address,
                        id=int(item[0]),
                        time=int(item[1]),
                        duration_us=int(item[2]),
                        command=args[0].decode("ascii", "replace").upper() if args else "",
                        keys=None
                        if keys is None
                        else [key.decode("utf-8", "backslashreplace") for key in keys],
                        client_address=item[4] if len(item) > 4 else b"",
                        client_name=item[5] if len(item) > 5 else b"",
                    )
                )
            return entries

        return await on_each(nodes, read)

    async def reset_slow_log(self, nodes: Sequence[RedisNode]) -> list[NodeReply]:
        return await on_each(nodes, lambda n: n.client.execute_command("SLOWLOG", "RESET"))

    async def memory_stats(self, nodes: Sequence[RedisNode]) -> list[NodeReply]:
        """(MEMORY STATS as a dict, MEMORY DOCTOR as text) per node."""

        async def read(node: RedisNode) -> tuple[dict[str, Any], str]:
            stats = await node.client.memory_stats()
            doctor = await node.client.execute_command("MEMORY", "DOCTOR")
            return stats, text(doctor)

        return await on_each(nodes, read)

    async def client_list(self, node: RedisNode) -> list[dict[str, str]]:
        clients: list[dict[str, str]] = await node.client.client_list()
        return clients

    async def config_get(self, nodes: Sequence[RedisNode], names: Sequence[str]) -> list[NodeReply]:
        """{name: value} per node, for the names the node knows."""

        async def read(node: RedisNode) -> dict[str, str]:
            values: dict[str, str] = {}
            for name in names:
                for key, value in (await node.client.config_get(name)).items():
                    values[text(key)] = text(value)
            return values

        return await on_each(nodes, read)

    async def used_memory(self, nodes: Sequence[RedisNode]) -> list[NodeReply]:
        """Each node's `used_memory` in bytes (INFO memory)."""

        async def read(node: RedisNode) -> int:
            info = await node.client.info("memory")
            return int(info.get("used_memory", 0))

        return await on_each(nodes, read)

    async def config_set(self, node: RedisNode, parameters: dict[str, str]) -> None:
        """CONFIG SET every parameter on one node in one command (all or none there)."""
        flat = [part for pair in parameters.items() for part in pair]
        await node.client.execute_command("CONFIG", "SET", *flat)

    # -- one key ----------------------------------------------------------------------

    async def key_memory(self, redis_key: str, samples: int | None) -> int | None:
        usage = await self.backend.redis.memory_usage(raw(redis_key), samples=samples)
        return None if usage is None else int(usage)

    async def inspect(self, redis_key: str, meta_key: str | None) -> KeyDescription | None:
        keys = [redis_key] if meta_key is None else [redis_key, meta_key]
        reply = await self.backend.run(_INSPECT, keys)
        if not reply[0]:
            return None
        _, kind, pttl, size, memory, encoding, idle, freq, version, fencing = reply
        return KeyDescription(
            redis_key=redis_key,
            type=text(kind),
            ttl_ms=int(pttl),
            size=int(size),
            memory_bytes=int(memory),
            encoding=text(encoding),
            idle_seconds=None if int(idle) < 0 else int(idle),
            lfu_frequency=None if int(freq) < 0 else int(freq),
            version=int(version),
            fencing_token=int(fencing),
        )

    async def key_location(self, redis_key: str) -> tuple[str, int]:
        """The address of the primary holding a key, and its Cluster slot (-1 outside)."""
        if self.backend.kind is TopologyKind.CLUSTER:
            node = self.backend.redis.get_node_from_key(raw(redis_key))
            return str(node.name), key_slot(raw(redis_key))
        deployment = await self.nodes.deployment(replicas=False)
        return deployment.primaries[0].address, -1

    # -- scans ------------------------------------------------------------------------

    async def scan(
        self,
        patterns: Sequence[str],
        redis_type: str | None,
        position: ScanPosition | None,
        limit: int,
        *,
        time_budget: float,
    ) -> tuple[list[str], ScanPosition | None]:
        """Up to `limit` keys matching any of `patterns`, walking every primary (sorted
        by address) and, on each, every pattern in turn. Answers the keys and where to
        continue (None when every node was scanned). Stops early, with fewer keys,
        once `time_budget` seconds have passed, so a sparse keyspace cannot hold a
        call for long; every call advances by at least one SCAN."""
        if position is not None and (position.pending or not position.node):
            return list(position.pending[:limit]), _rest(position, limit)
        deployment = await self.nodes.deployment(replicas=False)
        addresses = [n.address for n in deployment.primaries]
        if position is None:
            position = ScanPosition(deployment.fingerprint, addresses[0])
        if position.topology != deployment.fingerprint or position.node not in addresses:
            raise topology_changed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_budget
        index, stage, cursor = addresses.index(position.node), position.stage, position.cursor
        found: list[str] = []
        pending: list[str] = []
        # SCAN's COUNT is how many entries Redis visits, not how many match: grow it
        # while matches are sparse, shrink it to the room left when a batch overflows.
        count = min(max(limit, 10), self.scan_count_max)
        while index < len(addresses) and len(found) < limit:
            room = limit - len(found)
            node = deployment.primaries[index]
            next_cursor, batch = await node.client.scan(
                cursor, match=patterns[stage], count=count, _type=redis_type
            )
            if len(batch) > room and count > room:
                count = room  # visit fewer entries from the same cursor
                continue
            found += [text(k) for k in batch[:room]]
            pending = [text(k) for k in batch[room:]]
            cursor = int(next_cursor)
            if len(batch) * 4 < count:
                count = min(count * 4, self.scan_count_max)
            if cursor == 0:
                stage += 1
                if stage == len(patterns):
                    stage, index = 0, index + 1
            if pending or loop.time() >= deadline:
                break
        node_address = addresses[index] if index < len(addresses) else ""
        after = ScanPosition(deployment.fingerprint, node_address, stage, cursor, tuple(pending))
        return found, None if not after.node and not after.pending else after

    async def examine(self, keys: Sequence[str], *, with_memory: bool) -> list[KeyFacts]:
        """Type, element count (bytes for strings) and, if asked, memory of each key;
        keys gone since they were scanned are left out."""
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(raw(key))
                if with_memory:
                    pipe.memory_usage(raw(key))
            first = await pipe.execute(raise_on_error=False)
        step = 2 if with_memory else 1
        typed = []
        for i, key in enumerate(keys):
            kind = first[i * step]
            memory = first[i * step + 1] if with_memory else 0
            if isinstance(kind, Exception) or text(kind) not in _SIZE_COMMANDS:
                continue
            typed.append((key, text(kind), 0 if isinstance(memory, Exception) else memory or 0))
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for key, kind, _ in typed:
                pipe.execute_command(_SIZE_COMMANDS[kind], raw(key))
            sizes = await pipe.execute(raise_on_error=False)
        return [
            KeyFacts(key, kind, int(size), int(memory))
            for (key, kind, memory), size in zip(typed, sizes, strict=True)
            if not isinstance(size, Exception)
        ]

    async def flush(self, namespace: str, *, dry_run: bool) -> int:
        """UNLINK every key of the namespace on every primary (or count them), except
        its fencing counters (`kept_by_flush`). SCAN MATCH
        `cachet:<ns>:*` cannot match another namespace: names hold no glob characters
        and the `:` after the name ends it."""
        deployment = await self.nodes.deployment(replicas=False)
        pattern = namespace_pattern(namespace)
        total = 0
        for node in deployment.primaries:
            batch: list[bytes] = []
            async for key in node.client.scan_iter(match=pattern, count=self.flush_batch):
                if kept_by_flush(namespace, key.decode(errors="replace")):
                    continue
                batch.append(key)
                if len(batch) >= self.flush_batch:
                    total += len(batch) if dry_run else await self._unlink(batch)
                    batch = []
            if batch:
                total += len(batch) if dry_run else await self._unlink(batch)
        return total

    async def _unlink(self, keys: Sequence[bytes]) -> int:
        """UNLINK keys, one command per Cluster slot, through the routing client."""
        groups: dict[int, list[bytes]] = {}
        cluster = self.backend.kind is TopologyKind.CLUSTER
        for key in keys:
            groups.setdefault(key_slot(key) if cluster else 0, []).append(key)
        async with self.backend.redis.pipeline(transaction=False) as pipe:
            for group in groups.values():
                # execute_command: a Cluster pipeline's unlink() is a coroutine that
                # splits keys itself instead of queueing the command.
                pipe.execute_command("UNLINK", *group)
            return sum(int(n) for n in await pipe.execute())


def _rest(position: ScanPosition, taken: int) -> ScanPosition | None:
    rest = replace(position, pending=position.pending[taken:])
    return rest if rest.node or rest.pending else None


def user_keys(namespace: str, kinds: Sequence[Kind], redis_keys: Sequence[str]) -> list[str]:
    """The user keys that scanned Redis keys of these kinds stand for."""
    out = []
    for name in redis_keys:
        for kind in kinds:
            key = user_key(namespace, kind, name)
            if key is not None:
                out.append(key)
                break
    return out
