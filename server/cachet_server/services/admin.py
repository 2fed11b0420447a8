"""AdminService: the operator's console (see protos/cachet/admin/v1/admin.proto and
docs/operations.md). Auth is not built yet; once it is, every call here needs the
admin role."""

from __future__ import annotations

import asyncio
import heapq
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from cachet_client.proto.cachet.admin.v1 import admin_pb2 as pb
from cachet_client.proto.cachet.admin.v1 import admin_pb2_grpc
from google.protobuf import duration_pb2
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import __version__
from ..access import ADMIN, OPERATOR, CallSpec, Grants, Scope, calls
from ..access import Role as AccessRole
from ..backend.admin import (
    MAX_PENDING_KEYS,
    AdminStore,
    Deployment,
    KeyFacts,
    NodeReply,
    RedisNode,
    Role,
    ScanPosition,
    topology_changed,
    user_keys,
)
from ..backend.keys import Kind, namespace_of, redis_key, scan_patterns
from ..backend.topology import TopologyKind
from ..callcontext import current_call, current_namespace
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from ..pagination import PageTokens, malformed_token
from .base import Context, Dependencies, Servicer

_MAX_PAGE = 1000
_MAX_SAMPLES = 100_000
_MAX_CONFIG_PARAMETERS = 32

_TOPOLOGIES = {
    TopologyKind.STANDALONE: pb.TOPOLOGY_KIND_STANDALONE,
    TopologyKind.SENTINEL: pb.TOPOLOGY_KIND_SENTINEL,
    TopologyKind.CLUSTER: pb.TOPOLOGY_KIND_CLUSTER,
}
_ROLES = {Role.PRIMARY: pb.NODE_ROLE_PRIMARY, Role.REPLICA: pb.NODE_ROLE_REPLICA}
_KEY_TYPES: dict[pb.KeyType.ValueType, str] = {
    pb.KEY_TYPE_STRING: "string",
    pb.KEY_TYPE_LIST: "list",
    pb.KEY_TYPE_SET: "set",
    pb.KEY_TYPE_ZSET: "zset",
    pb.KEY_TYPE_HASH: "hash",
    pb.KEY_TYPE_STREAM: "stream",
}
_TYPE_ENUMS = {name: value for value, name in _KEY_TYPES.items()}
# Which Redis key kinds each KeyKind covers; single-key calls take the first that exists.
_KINDS: dict[int, tuple[Kind, ...]] = {
    pb.KEY_KIND_UNSPECIFIED: (Kind.DATA,),
    pb.KEY_KIND_CACHE: (Kind.DATA,),
    pb.KEY_KIND_STREAM: (Kind.STREAM,),
    pb.KEY_KIND_LOCK: (Kind.LOCK, Kind.SEMAPHORE),
    pb.KEY_KIND_RATE_LIMIT: (Kind.RATE,),
}
_ORDERS = {
    pb.BIG_KEYS_ORDER_UNSPECIFIED: pb.BIG_KEYS_ORDER_MEMORY,
    pb.BIG_KEYS_ORDER_MEMORY: pb.BIG_KEYS_ORDER_MEMORY,
    pb.BIG_KEYS_ORDER_ELEMENTS: pb.BIG_KEYS_ORDER_ELEMENTS,
}
_EVICTION_POLICIES = {
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
}
_MEMORY_SIZE = re.compile(r"\A([0-9]{1,20})(b|k|kb|m|mb|g|gb)?\Z", re.IGNORECASE)
# Redis's own units: k/m/g are powers of 1000, kb/mb/gb powers of 1024.
_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
# Past 1 PiB a maxmemory is a typo, not a plan (Redis would store up to 2^64-1).
_MAX_MAXMEMORY = 1024**5
_INTEGER = re.compile(r"\A-?[0-9]{1,20}\Z")
_REDIS_ARGUMENT = re.compile(r"argument '([^']+)'")
_REPLICA_FIELD = re.compile(r"\Aslave[0-9]+\Z")
_DB_FIELD = re.compile(r"\Adb([0-9]+)\Z")


def _memory_bytes(value: str) -> int:
    """A Redis memory size (`512mb`, `1gb`, `1073741824`) in bytes; -1 if malformed."""
    match = _MEMORY_SIZE.match(value)
    if match is None:
        return -1
    return int(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "").lower()]


def _holds(grants: Grants, namespace: str | None) -> bool:
    return namespace is not None and grants.allows_namespace(namespace)


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(timedelta(seconds=max(0.0, seconds)))
    return message


def _int(data: Mapping[str, Any], name: str) -> int:
    try:
        return int(data.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def _float(data: Mapping[str, Any], name: str) -> float:
    try:
        return float(data.get(name) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def _unreachable(replies: Sequence[NodeReply]) -> None:
    """Raise for the first node that did not answer: UNAVAILABLE for a connection
    problem (naming the node), the usual mapping for anything else."""
    for reply in replies:
        error = reply.error
        if error is None:
            continue
        if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
            raise Unavailable(
                f"Redis node {reply.node.address} did not answer ({_first_line(error)}); "
                "pass `node` to ask the others one at a time"
            )
        raise error


class AdminService(Servicer, admin_pb2_grpc.AdminServiceServicer):
    # Whole-server calls need the operator role; calls on a namespace's own keys, admin.
    CALLS: ClassVar[dict[str, CallSpec]] = {
        "FlushNamespace": ADMIN,
        "GetBigKeys": ADMIN,
        "GetConfig": OPERATOR,
        "GetKeyMemoryUsage": ADMIN,
        "GetMemoryStats": OPERATOR,
        "GetServerInfo": OPERATOR,
        "GetServiceStats": calls(
            {AccessRole.ADMIN, AccessRole.OPERATOR}, scope=Scope.SERVER, audit=True
        ),
        "GetSlowLog": OPERATOR,
        "InspectKey": ADMIN,
        "ListClients": OPERATOR,
        "ResetSlowLog": OPERATOR,
        "ScanKeys": ADMIN,
        "SetConfig": OPERATOR,
    }

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.settings = deps.settings.admin
        self.store = AdminStore(
            deps.backend,
            scan_count_max=self.settings.scan_count_max,
            flush_batch=self.settings.flush_batch,
        )
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        self.whitelist = sorted({name.lower() for name in self.settings.config_whitelist})

    async def aclose(self) -> None:
        await self.store.aclose()

    # -- request checks ---------------------------------------------------------------

    def _page_size(self, value: int, default: int, field: str = "page_size") -> int:
        if value < 0:
            raise InvalidArgument.field(field, "must not be negative")
        if value > _MAX_PAGE:
            raise InvalidArgument.field(field, f"must be at most {_MAX_PAGE}")
        return value or default

    def _kinds(self, value: int) -> tuple[Kind, ...]:
        if value not in _KINDS:
            raise InvalidArgument.field("kind", f"unknown KeyKind {value}")
        return _KINDS[value]

    def _redis_type(self, value: int) -> str | None:
        if value == pb.KEY_TYPE_UNSPECIFIED:
            return None
        key_type = pb.KeyType.ValueType(value)
        if key_type not in _KEY_TYPES:
            raise InvalidArgument.field("type", f"unknown KeyType {value}")
        return _KEY_TYPES[key_type]

    def _glob(self, pattern: str) -> str:
        if not pattern:
            return "*"
        if len(pattern.encode()) > self.check.limits.max_key_bytes:
            raise InvalidArgument.field(
                "pattern", f"is longer than {self.check.limits.max_key_bytes} bytes"
            )
        trailing = len(pattern) - len(pattern.rstrip("\\"))
        if trailing % 2:
            raise InvalidArgument.field("pattern", "ends with an unescaped backslash")
        return pattern

    def _scan_position(
        self, token: str, binding: str, namespace: str, kinds: Sequence[Kind], stages: int
    ) -> ScanPosition | None:
        data = PageTokens.decode(token, binding)
        if data is None:
            return None
        try:
            position = ScanPosition.from_json(data)
        except ValueError:
            raise malformed_token() from None
        # A forged token must not smuggle in keys of another namespace or kind.
        if position.stage >= stages or len(user_keys(namespace, kinds, position.pending)) != len(
            position.pending
        ):
            raise malformed_token()
        return position

    def _scan_token(self, binding: str, position: ScanPosition | None) -> str:
        return "" if position is None else PageTokens.encode(binding, position.to_json())

    @staticmethod
    def _pick(deployment: Deployment, address: str) -> list[RedisNode]:
        if not address:
            return deployment.nodes
        node = deployment.node(address)
        if node is None:
            known = ", ".join(n.address for n in deployment.nodes)
            raise InvalidArgument.field("node", f"no node {address!r} here; nodes: {known}")
        return [node]

    # -- whole deployment -------------------------------------------------------------

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        replies, now = await self.store.server_info()
        nodes = [self._node_info(reply) for reply in replies]
        if not any(n.reachable for n in nodes):
            raise Unavailable("no Redis node answered: " + "; ".join(n.error for n in nodes))
        kind = self.deps.backend.kind
        versions = [n.redis_version for n in nodes if n.reachable]
        primary_versions = [
            n.redis_version for n in nodes if n.reachable and n.role == pb.NODE_ROLE_PRIMARY
        ]
        if kind is TopologyKind.CLUSTER or not primary_versions:
            redis_version = min(versions, key=_version_key)
        else:
            redis_version = primary_versions[0]
        response = pb.GetServerInfoResponse(
            cachet_version=__version__,
            uptime=_duration(time.monotonic() - self.started_monotonic),
            server_id=self.server_id,
            redis_version=redis_version,
            topology=_TOPOLOGIES[kind],
            nodes=nodes,
        )
        if kind is TopologyKind.SENTINEL:
            name, sentinels = self.store.nodes.sentinel_details()
            response.sentinel_primary_name = name
            response.sentinel_addresses.extend(sentinels)
        if now is not None:
            response.server_time.FromMicroseconds(now[0] * 1_000_000 + now[1])
        return response

    @staticmethod
    def _node_info(reply: NodeReply) -> pb.NodeInfo:
        node = reply.node
        info = pb.NodeInfo(
            address=node.address,
            node_id=node.node_id,
            role=_ROLES[node.role],
            slots=[pb.SlotRange(start=start, end=end) for start, end in node.slots],
        )
        if reply.error is not None:
            info.error = _first_line(reply.error)
            return info
        data: dict[str, Any] = reply.value
        info.reachable = True
        info.role = pb.NODE_ROLE_REPLICA if data.get("role") == "slave" else pb.NODE_ROLE_PRIMARY
        info.redis_version = str(data.get("redis_version", ""))
        info.uptime.CopyFrom(_duration(_int(data, "uptime_in_seconds")))
        replication = info.replication
        if data.get("role") == "slave":
            replication.primary_address = f"{data.get('master_host')}:{data.get('master_port')}"
            replication.primary_link_up = data.get("master_link_status") == "up"
            last_io = _int(data, "master_last_io_seconds_ago")
            if last_io >= 0:
                replication.primary_last_io.CopyFrom(_duration(last_io))
            replication.replication_offset = _int(data, "slave_repl_offset")
        else:
            offset = _int(data, "master_repl_offset")
            replication.replication_offset = offset
            for name in sorted(data, key=lambda n: (len(n), n)):
                entry = data[name]
                if _REPLICA_FIELD.match(name) and isinstance(entry, dict):
                    replication.replicas.append(
                        pb.ReplicaLink(
                            address=f"{entry.get('ip')}:{entry.get('port')}",
                            state=str(entry.get("state", "")),
                            offset=_int(entry, "offset"),
                            lag_bytes=max(0, offset - _int(entry, "offset")),
                            lag=_duration(_int(entry, "lag")),
                        )
                    )
        info.memory.CopyFrom(
            pb.MemoryInfo(
                used_bytes=_int(data, "used_memory"),
                peak_bytes=_int(data, "used_memory_peak"),
                rss_bytes=_int(data, "used_memory_rss"),
                maxmemory_bytes=_int(data, "maxmemory"),
                maxmemory_policy=str(data.get("maxmemory_policy", "")),
                fragmentation_ratio=_float(data, "mem_fragmentation_ratio"),
            )
        )
        info.stats.CopyFrom(
            pb.StatsInfo(
                ops_per_sec=_int(data, "instantaneous_ops_per_sec"),
                total_commands=_int(data, "total_commands_processed"),
                keyspace_hits=_int(data, "keyspace_hits"),
                keyspace_misses=_int(data, "keyspace_misses"),
                expired_keys=_int(data, "expired_keys"),
                evicted_keys=_int(data, "evicted_keys"),
                total_connections=_int(data, "total_connections_received"),
                rejected_connections=_int(data, "rejected_connections"),
            )
        )
        info.connected_clients = _int(data, "connected_clients")
        for name in sorted(data, key=lambda n: (len(n), n)):
            entry = data[name]
            db = _DB_FIELD.match(name)
            if db and isinstance(entry, dict):
                info.keyspace.append(
                    pb.KeyspaceDb(
                        db=int(db.group(1)),
                        keys=_int(entry, "keys"),
                        expires=_int(entry, "expires"),
                        avg_ttl=_duration(_int(entry, "avg_ttl") / 1000),
                    )
                )
        return info

    async def GetServiceStats(
        self, request: pb.GetServiceStatsRequest, context: Context
    ) -> pb.GetServiceStatsResponse:
        size = self._page_size(request.page_size, 100)
        binding = PageTokens.binding("GetServiceStats", "", request)
        position = PageTokens.decode(request.page_token, binding)
        after = None
        if position is not None:
            after = position.get("after")
            if not isinstance(after, str):
                raise malformed_token()
        stats = self.deps.stats.across_workers()
        identity = current_call().identity
        # An operator sees the whole server; anyone else only the namespaces they hold,
        # and no per-method counters, which mix every tenant's traffic.
        everything = AccessRole.OPERATOR in identity.grants.roles
        names = sorted(
            n
            for n in stats.namespaces
            if (after is None or n > after) and (everything or identity.grants.allows_namespace(n))
        )
        response = pb.GetServiceStatsResponse(server_id=self.server_id)
        response.since.FromMicroseconds(int(self.started_at * 1_000_000))
        for name in names[:size]:
            entry = stats.namespaces[name]
            response.namespaces.append(
                pb.NamespaceStats(
                    namespace=name,
                    hits=entry.hits,
                    misses=entry.misses,
                    hit_ratio=entry.hit_ratio,
                    calls=entry.calls,
                )
            )
        if len(names) > size:
            response.next_page_token = PageTokens.encode(binding, {"after": names[size - 1]})
        if position is None and everything:
            for method in sorted(stats.methods):
                counted = stats.methods[method]
                response.methods.append(
                    pb.MethodStats(
                        method=method,
                        calls=counted.calls,
                        errors=counted.errors,
                        errors_by_code=dict(counted.errors_by_code),
                        total_duration=_duration(counted.total_seconds),
                    )
                )
        return response

    async def GetSlowLog(
        self, request: pb.GetSlowLogRequest, context: Context
    ) -> pb.GetSlowLogResponse:
        size = self._page_size(request.page_size, 100)
        binding = PageTokens.binding("GetSlowLog", "", request)
        position = PageTokens.decode(request.page_token, binding)
        after: tuple[int, str, int] | None = None
        if position is not None:
            seconds, node, entry_id = position.get("t"), position.get("n"), position.get("i")
            if not (type(seconds) is int and isinstance(node, str) and type(entry_id) is int):
                raise malformed_token()
            after = (-seconds, node, -entry_id)
        nodes = self._pick(await self.store.nodes.deployment(), request.node)
        replies = await self.store.slow_log(nodes)
        _unreachable(replies)
        # Newest first: by time, then node, then id (ids grow with time on a node).
        entries = sorted(
            (entry for reply in replies for entry in reply.value),
            key=lambda e: (-e.time, e.node, -e.id),
        )
        if after is not None:
            entries = [e for e in entries if (-e.time, e.node, -e.id) > after]
        page = entries[:size]
        response = pb.GetSlowLogResponse()
        grants = current_call().identity.grants
        for entry in page:
            keys = entry.keys or []
            shown = [key for key in keys if _holds(grants, namespace_of(key))]
            item = pb.SlowLogEntry(
                id=entry.id,
                duration=_duration(entry.duration_us / 1_000_000),
                command=entry.command,
                keys=shown,
                hidden_keys=len(keys) - len(shown),
                client_address=entry.client_address.decode("utf-8", "backslashreplace"),
                client_name=entry.client_name.decode("utf-8", "backslashreplace"),
                node=entry.node,
            )
            item.time.FromSeconds(entry.time)
            response.entries.append(item)
        if len(entries) > size:
            last = page[-1]
            response.next_page_token = PageTokens.encode(
                binding, {"t": last.time, "n": last.node, "i": last.id}
            )
        return response

    async def ResetSlowLog(
        self, request: pb.ResetSlowLogRequest, context: Context
    ) -> pb.ResetSlowLogResponse:
        deployment = await self.store.nodes.deployment()
        replies = await self.store.reset_slow_log(deployment.nodes)
        _unreachable(replies)
        return pb.ResetSlowLogResponse(nodes_reset=len(replies))

    async def GetMemoryStats(
        self, request: pb.GetMemoryStatsRequest, context: Context
    ) -> pb.GetMemoryStatsResponse:
        deployment = await self.store.nodes.deployment()
        response = pb.GetMemoryStatsResponse()
        for reply in await self.store.memory_stats(deployment.nodes):
            if reply.error is not None:
                response.nodes.append(
                    pb.NodeMemoryStats(node=reply.node.address, error=_first_line(reply.error))
                )
                continue
            stats, doctor = reply.value
            response.nodes.append(
                pb.NodeMemoryStats(
                    node=reply.node.address,
                    peak_allocated_bytes=_int(stats, "peak.allocated"),
                    total_allocated_bytes=_int(stats, "total.allocated"),
                    startup_allocated_bytes=_int(stats, "startup.allocated"),
                    replication_backlog_bytes=_int(stats, "replication.backlog"),
                    clients_normal_bytes=_int(stats, "clients.normal"),
                    clients_replicas_bytes=_int(stats, "clients.slaves"),
                    overhead_total_bytes=_int(stats, "overhead.total"),
                    dataset_bytes=_int(stats, "dataset.bytes"),
                    keys_count=_int(stats, "keys.count"),
                    bytes_per_key=_int(stats, "keys.bytes-per-key"),
                    dataset_percentage=_float(stats, "dataset.percentage"),
                    fragmentation=_float(stats, "fragmentation"),
                    fragmentation_bytes=_int(stats, "fragmentation.bytes"),
                    doctor=doctor,
                )
            )
        return response

    async def ListClients(
        self, request: pb.ListClientsRequest, context: Context
    ) -> pb.ListClientsResponse:
        size = self._page_size(request.page_size, 100)
        binding = PageTokens.binding("ListClients", "", request)
        position = PageTokens.decode(request.page_token, binding)
        nodes = sorted(
            self._pick(await self.store.nodes.deployment(), request.node),
            key=lambda n: n.address,
        )
        start, after_id = 0, -1
        if position is not None:
            address, last_id = position.get("n"), position.get("i")
            if not isinstance(address, str) or type(last_id) is not int:
                raise malformed_token()
            after_id = last_id
            addresses = [n.address for n in nodes]
            if address not in addresses:
                raise topology_changed()
            start = addresses.index(address)
        response = pb.ListClientsResponse()
        for index in range(start, len(nodes)):
            node = nodes[index]
            try:
                clients = await self.store.client_list(node)
            except (RedisError, OSError) as exc:
                _unreachable([NodeReply(node, error=exc)])
                raise
            listed = sorted(
                (c for c in clients if _int(c, "id") > after_id), key=lambda c: _int(c, "id")
            )
            room = size - len(response.clients)
            response.clients.extend(self._client_entry(node, c) for c in listed[:room])
            after_id = -1
            if len(listed) > room:
                last = _int(listed[room - 1], "id") if room else -1
                response.next_page_token = PageTokens.encode(
                    binding, {"n": node.address, "i": last}
                )
                break
            if len(response.clients) == size and index + 1 < len(nodes):
                response.next_page_token = PageTokens.encode(
                    binding, {"n": nodes[index + 1].address, "i": -1}
                )
                break
        return response

    @staticmethod
    def _client_entry(node: RedisNode, client: Mapping[str, Any]) -> pb.ClientEntry:
        return pb.ClientEntry(
            node=node.address,
            id=_int(client, "id"),
            address=str(client.get("addr", "")),
            local_address=str(client.get("laddr", "")),
            name=str(client.get("name", "")),
            user=str(client.get("user", "")),
            age=_duration(_int(client, "age")),
            idle=_duration(_int(client, "idle")),
            db=_int(client, "db"),
            flags=str(client.get("flags", "")),
            last_command=str(client.get("cmd", "")),
            subscriptions=_int(client, "sub"),
            pattern_subscriptions=_int(client, "psub"),
            total_memory_bytes=_int(client, "tot-mem"),
            output_memory_bytes=_int(client, "omem"),
            library_name=str(client.get("lib-name", "")),
            library_version=str(client.get("lib-ver", "")),
        )

    # -- configuration ----------------------------------------------------------------

    def _whitelisted(self, name: str, field: str) -> str:
        if not name:
            raise InvalidArgument.field(field, "must not be empty")
        if any(c in name for c in "*?["):
            raise InvalidArgument.field(field, "must be an exact parameter name, not a glob")
        lowered = name.lower()
        if lowered not in self.whitelist:
            raise PermissionDenied(
                f"Redis parameter {name!r} is not whitelisted for cachet "
                f"(whitelist: {', '.join(self.whitelist)}; see CACHET_ADMIN__CONFIG_WHITELIST)",
                reason="CONFIG_NOT_WHITELISTED",
                metadata={"parameter": name},
            )
        return lowered

    def _config_value(self, name: str, value: str) -> str:
        field = f"parameters[{name}]"
        bounds = self.settings.config_int_bounds.get(name)
        if bounds is not None:
            if not _INTEGER.match(value):
                raise InvalidArgument.field(field, "must be an integer")
            if not bounds[0] <= int(value) <= bounds[1]:
                raise InvalidArgument.field(
                    field, f"must be in [{bounds[0]}, {bounds[1]}] (cachet's configured bounds)"
                )
        elif name == "maxmemory-policy" and value not in _EVICTION_POLICIES:
            raise InvalidArgument.field(
                field, f"must be one of {', '.join(sorted(_EVICTION_POLICIES))}"
            )
        elif name == "maxmemory" and not 0 <= _memory_bytes(value) <= _MAX_MAXMEMORY:
            raise InvalidArgument.field(
                field, "must be a byte count up to 1 PiB, e.g. 0 (no limit), 1073741824, 512mb"
            )
        if not value or len(value) > 1024 or any(c in value for c in "\r\n\0"):
            raise InvalidArgument.field(field, "must be 1 to 1024 characters on one line")
        return value

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: Context
    ) -> pb.GetConfigResponse:
        names = [self._whitelisted(n, f"names[{i}]") for i, n in enumerate(request.names)]
        names = sorted(set(names)) if names else self.whitelist
        deployment = await self.store.nodes.deployment()
        replies = await self.store.config_get(deployment.nodes, names)
        _unreachable(replies)
        response = pb.GetConfigResponse(whitelist=self.whitelist)
        for name in names:
            response.parameters.append(
                pb.ConfigParameter(
                    name=name,
                    values=[
                        pb.NodeConfigValue(node=reply.node.address, value=reply.value[name])
                        for reply in replies
                        if name in reply.value
                    ],
                )
            )
        return response

    async def SetConfig(
        self, request: pb.SetConfigRequest, context: Context
    ) -> pb.SetConfigResponse:
        count = len(request.parameters)
        if not 1 <= count <= _MAX_CONFIG_PARAMETERS:
            raise InvalidArgument.field(
                "parameters", f"must hold 1 to {_MAX_CONFIG_PARAMETERS} entries, not {count}"
            )
        # Every name is checked before any value, and everything before any node changes.
        names = {
            name: self._whitelisted(name, f"parameters[{name}]") for name in request.parameters
        }
        if len(set(names.values())) != count:
            raise InvalidArgument.field("parameters", "names a parameter twice (names ignore case)")
        parameters = {
            lowered: self._config_value(lowered, request.parameters[name])
            for name, lowered in sorted(names.items())
        }
        deployment = await self.store.nodes.deployment()
        await self._refuse_unsafe(parameters, deployment.nodes)
        changed: list[tuple[RedisNode, dict[str, str]]] = []
        try:
            for node in deployment.nodes:
                (previous,) = await self.store.config_get([node], list(parameters))
                _unreachable([previous])
                await self.store.config_set(node, parameters)
                changed.append((node, previous.value))
        except ResponseError as exc:
            await self._restore(changed)
            match = _REDIS_ARGUMENT.search(str(exc))
            field = f"parameters[{match.group(1)}]" if match else "parameters"
            raise InvalidArgument.field(
                field, f"refused by Redis {node.address}: {_first_line(exc)}"
            ) from None
        except (RedisError, OSError, Unavailable) as exc:
            await self._restore(changed)
            raise Unavailable(
                f"Redis node {node.address} could not be configured ({_first_line(exc)}); "
                "the nodes changed before it were restored"
            ) from None
        return pb.SetConfigResponse(nodes=[node.address for node, _ in changed])

    async def _refuse_unsafe(
        self, parameters: Mapping[str, str], nodes: Sequence[RedisNode]
    ) -> None:
        """Refuse, before any node changes, values that would destroy other tenants' data or
        the lock guarantees (see docs/operations.md)."""
        policy = parameters.get("maxmemory-policy")
        if policy is not None and policy not in self.settings.safe_eviction_policies:
            raise FailedPrecondition(
                f"maxmemory-policy {policy} can evict lock holders and fencing counters "
                "(and other tenants' data); allowed: "
                f"{', '.join(self.settings.safe_eviction_policies)} "
                "(CACHET_ADMIN__SAFE_EVICTION_POLICIES)",
                reason="CONFIG_UNSAFE",
                metadata={"parameter": "maxmemory-policy"},
            )
        limit = parameters.get("maxmemory")
        if limit is None or _memory_bytes(limit) == 0:
            return
        replies = await self.store.used_memory(nodes)
        _unreachable(replies)
        needed = max(int(reply.value * (1 + self.settings.maxmemory_headroom)) for reply in replies)
        if _memory_bytes(limit) < needed:
            raise FailedPrecondition(
                f"maxmemory {limit} is below what a node already uses plus "
                f"{self.settings.maxmemory_headroom:.0%} headroom ({needed} bytes): every "
                "tenant's writes would fail (CACHET_ADMIN__MAXMEMORY_HEADROOM)",
                reason="CONFIG_UNSAFE",
                metadata={"parameter": "maxmemory", "minimum_bytes": str(needed)},
            )

    async def _restore(self, changed: Sequence[tuple[RedisNode, dict[str, str]]]) -> None:
        """Best effort: put back the values nodes had before a failed SetConfig."""
        for node, previous in changed:
            if previous:
                try:
                    await self.store.config_set(node, previous)
                except (RedisError, OSError):
                    continue

    # -- one key ----------------------------------------------------------------------

    async def GetKeyMemoryUsage(
        self, request: pb.GetKeyMemoryUsageRequest, context: Context
    ) -> pb.GetKeyMemoryUsageResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        kinds = self._kinds(request.kind)
        samples = request.samples if request.HasField("samples") else None
        if samples is not None and not 0 <= samples <= _MAX_SAMPLES:
            raise InvalidArgument.field("samples", f"must be in [0, {_MAX_SAMPLES}]")
        for kind in kinds:
            usage = await self.store.key_memory(redis_key(namespace, kind, key), samples)
            if usage is not None:
                return pb.GetKeyMemoryUsageResponse(found=True, bytes=usage)
        return pb.GetKeyMemoryUsageResponse(found=False)

    async def InspectKey(
        self, request: pb.InspectKeyRequest, context: Context
    ) -> pb.InspectKeyResponse:
        namespace = current_namespace()
        key = self.check.key(request.key)
        for kind in self._kinds(request.kind):
            meta = redis_key(namespace, Kind.META, key) if kind is Kind.DATA else None
            found = await self.store.inspect(redis_key(namespace, kind, key), meta)
            if found is None:
                continue
            node, slot = await self.store.key_location(found.redis_key)
            response = pb.InspectKeyResponse(
                found=True,
                type=_TYPE_ENUMS.get(found.type, pb.KEY_TYPE_UNSPECIFIED),
                size=found.size,
                memory_bytes=found.memory_bytes,
                encoding=found.encoding,
                version=found.version,
                fencing_token=found.fencing_token,
                node=node,
                slot=slot,
            )
            if found.ttl_ms >= 0:
                response.ttl.CopyFrom(_duration(found.ttl_ms / 1000))
            if found.idle_seconds is not None:
                response.idle.CopyFrom(_duration(found.idle_seconds))
            if found.lfu_frequency is not None:
                response.lfu_frequency = found.lfu_frequency
            return response
        return pb.InspectKeyResponse(found=False)

    # -- scans ------------------------------------------------------------------------

    async def ScanKeys(self, request: pb.ScanKeysRequest, context: Context) -> pb.ScanKeysResponse:
        namespace = current_namespace()
        glob = self._glob(request.pattern)
        redis_type = self._redis_type(request.type)
        kinds = self._kinds(request.kind)
        size = self._page_size(request.page_size, 100)
        patterns = [p for kind in kinds for p in scan_patterns(namespace, kind, glob)]
        binding = PageTokens.binding("ScanKeys", namespace, request)
        position = self._scan_position(request.page_token, binding, namespace, kinds, len(patterns))
        found, after = await self.store.scan(
            patterns,
            redis_type,
            position,
            size,
            time_budget=self.settings.scan_page_time.total_seconds(),
        )
        return pb.ScanKeysResponse(
            keys=user_keys(namespace, kinds, found),
            next_page_token=self._scan_token(binding, after),
        )

    async def GetBigKeys(
        self, request: pb.GetBigKeysRequest, context: Context
    ) -> pb.GetBigKeysResponse:
        namespace = current_namespace()
        if request.order not in _ORDERS:
            raise InvalidArgument.field("order", f"unknown BigKeysOrder {request.order}")
        by_memory = _ORDERS[request.order] == pb.BIG_KEYS_ORDER_MEMORY
        top = self._page_size(request.page_size, 10)
        budget = request.scan_budget or 100_000
        if not 1 <= budget <= self.settings.max_scan_budget:
            raise InvalidArgument.field(
                "scan_budget", f"must be in [1, {self.settings.max_scan_budget}]"
            )
        redis_type = self._redis_type(request.type)
        kinds = self._kinds(request.kind)
        glob = self._glob(request.pattern)
        patterns = [p for kind in kinds for p in scan_patterns(namespace, kind, glob)]
        binding = PageTokens.binding("GetBigKeys", namespace, request, "scan_budget")
        position = self._scan_position(request.page_token, binding, namespace, kinds, len(patterns))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.big_keys_time.total_seconds()
        report = _BigKeyReport(top, by_memory)
        scanned = 0
        while True:
            found, position = await self.store.scan(
                patterns,
                redis_type,
                position,
                min(_MAX_PAGE, budget - scanned, MAX_PENDING_KEYS),
                time_budget=max(0.0, deadline - loop.time()),
            )
            scanned += len(found)
            facts = await self.store.examine(found, with_memory=by_memory)
            report.add(namespace, kinds, facts)
            if position is None or scanned >= budget or loop.time() >= deadline:
                break
        return pb.GetBigKeysResponse(
            keys=report.keys(),
            types=report.types(),
            scanned_keys=scanned,
            next_page_token=self._scan_token(binding, position),
        )

    # -- namespace --------------------------------------------------------------------

    async def FlushNamespace(
        self, request: pb.FlushNamespaceRequest, context: Context
    ) -> pb.FlushNamespaceResponse:
        namespace = current_namespace()
        if not self.settings.flush_enabled:
            raise FailedPrecondition(
                "FlushNamespace is disabled on this server (CACHET_ADMIN__FLUSH_ENABLED=false)",
                reason="FLUSH_DISABLED",
            )
        if request.confirm != namespace:
            raise FailedPrecondition(
                f"confirm must equal the namespace name {namespace!r} to flush it; "
                "nothing was deleted",
                reason="CONFIRMATION_MISMATCH",
                metadata={"namespace": namespace},
            )
        deleted = await self.store.flush(namespace, dry_run=request.dry_run)
        current_call().keys = deleted
        return pb.FlushNamespaceResponse(deleted_keys=deleted)


class _BigKeyReport:
    """Top N keys (by memory overall, or by elements per type) and totals per type,
    kept in bounded heaps so a large scan budget does not hold every key."""

    def __init__(self, top: int, by_memory: bool) -> None:
        self.top = top
        self.by_memory = by_memory
        # group ('' or a type) -> heap of (rank, user key, type, elements, memory)
        self.heaps: dict[str, list[tuple[int, str, str, int, int]]] = {}
        self.totals: dict[str, list[int]] = {}  # type -> [keys, elements, memory]

    def add(self, namespace: str, kinds: Sequence[Kind], facts: Sequence[KeyFacts]) -> None:
        for fact in facts:
            names = user_keys(namespace, kinds, [fact.key])
            if not names:
                continue
            total = self.totals.setdefault(fact.type, [0, 0, 0])
            total[0] += 1
            total[1] += fact.elements
            total[2] += fact.memory_bytes
            group = "" if self.by_memory else fact.type
            rank = fact.memory_bytes if self.by_memory else fact.elements
            heap = self.heaps.setdefault(group, [])
            item = (rank, names[0], fact.type, fact.elements, fact.memory_bytes)
            if len(heap) < self.top:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def keys(self) -> list[pb.BigKey]:
        return [
            pb.BigKey(
                key=name,
                type=_TYPE_ENUMS.get(kind, pb.KEY_TYPE_UNSPECIFIED),
                memory_bytes=memory,
                elements=elements,
            )
            for group in sorted(self.heaps, key=lambda t: _TYPE_ENUMS.get(t, 0))
            for _, name, kind, elements, memory in sorted(self.heaps[group], reverse=True)
        ]

    def types(self) -> list[pb.TypeSummary]:
        return [
            pb.TypeSummary(
                type=_TYPE_ENUMS.get(kind, pb.KEY_TYPE_UNSPECIFIED),
                keys=total[0],
                elements=total[1],
                memory_bytes=total[2],
            )
            for kind, total in sorted(self.totals.items(), key=lambda t: _TYPE_ENUMS.get(t[0], 0))
        ]
