"""AdminService: typed calls answering the generated (typed) response messages."""

from __future__ import annotations

from collections.abc import Mapping

from ._core import F, Service, Steps, procedure, rpc
from .proto.cachet.admin.v1 import admin_pb2 as pb

_SERVICE = "cachet.admin.v1.AdminService"
SERVER_INFO = rpc(_SERVICE, "GetServerInfo", pb.GetServerInfoResponse, idempotent=True)
SERVICE_STATS = rpc(_SERVICE, "GetServiceStats", pb.GetServiceStatsResponse, idempotent=True)
SLOW_LOG = rpc(_SERVICE, "GetSlowLog", pb.GetSlowLogResponse, idempotent=True)
RESET_SLOW_LOG = rpc(_SERVICE, "ResetSlowLog", pb.ResetSlowLogResponse, idempotent=True)
MEMORY_STATS = rpc(_SERVICE, "GetMemoryStats", pb.GetMemoryStatsResponse, idempotent=True)
KEY_MEMORY = rpc(_SERVICE, "GetKeyMemoryUsage", pb.GetKeyMemoryUsageResponse, idempotent=True)
SCAN_KEYS = rpc(_SERVICE, "ScanKeys", pb.ScanKeysResponse, idempotent=True)
INSPECT_KEY = rpc(_SERVICE, "InspectKey", pb.InspectKeyResponse, idempotent=True)
BIG_KEYS = rpc(_SERVICE, "GetBigKeys", pb.GetBigKeysResponse, idempotent=True)
LIST_CLIENTS = rpc(_SERVICE, "ListClients", pb.ListClientsResponse, idempotent=True)
GET_CONFIG = rpc(_SERVICE, "GetConfig", pb.GetConfigResponse, idempotent=True)
SET_CONFIG = rpc(_SERVICE, "SetConfig", pb.SetConfigResponse, idempotent=True)
FLUSH = rpc(_SERVICE, "FlushNamespace", pb.FlushNamespaceResponse, idempotent=False)

_KINDS = {
    "": pb.KEY_KIND_UNSPECIFIED,
    "cache": pb.KEY_KIND_CACHE,
    "stream": pb.KEY_KIND_STREAM,
    "lock": pb.KEY_KIND_LOCK,
    "rate_limit": pb.KEY_KIND_RATE_LIMIT,
}
_TYPES = {
    "": pb.KEY_TYPE_UNSPECIFIED,
    "string": pb.KEY_TYPE_STRING,
    "list": pb.KEY_TYPE_LIST,
    "set": pb.KEY_TYPE_SET,
    "zset": pb.KEY_TYPE_ZSET,
    "hash": pb.KEY_TYPE_HASH,
    "stream": pb.KEY_TYPE_STREAM,
}


class Admin(Service[F]):
    """AdminService calls (they need the admin role when auth is on). Key calls are
    scoped to the client's namespace; `kind` is "", "cache", "stream", "lock" or
    "rate_limit", `type` a Redis type ("string", "hash", ...)."""

    @procedure
    def server_info(self) -> Steps[pb.GetServerInfoResponse]:
        """Versions, uptime, topology and every Redis node's role, memory and stats."""
        reply = yield from self._call(SERVER_INFO, pb.GetServerInfoRequest())
        return reply

    @procedure
    def service_stats(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> Steps[pb.GetServiceStatsResponse]:
        """This cachet process's hits, misses and hit ratio per namespace, calls per method."""
        request = pb.GetServiceStatsRequest(page_size=page_size, page_token=page_token)
        reply = yield from self._call(SERVICE_STATS, request)
        return reply

    @procedure
    def slow_log(
        self, *, page_size: int = 0, page_token: str = "", node: str = ""
    ) -> Steps[pb.GetSlowLogResponse]:
        """Redis slow-log entries of every node (or one)."""
        request = pb.GetSlowLogRequest(page_size=page_size, page_token=page_token, node=node)
        reply = yield from self._call(SLOW_LOG, request)
        return reply

    @procedure
    def reset_slow_log(self) -> Steps[int]:
        """Clear the slow log on every node; answers how many nodes."""
        reply = yield from self._call(RESET_SLOW_LOG, pb.ResetSlowLogRequest())
        return reply.nodes_reset

    @procedure
    def memory_stats(self) -> Steps[pb.GetMemoryStatsResponse]:
        """MEMORY STATS of every node."""
        reply = yield from self._call(MEMORY_STATS, pb.GetMemoryStatsRequest())
        return reply

    @procedure
    def key_memory_usage(
        self, key: str, *, kind: str = "cache", samples: int | None = None
    ) -> Steps[int | None]:
        """Bytes a key uses in Redis (None when missing)."""
        request = pb.GetKeyMemoryUsageRequest(key=key, kind=_KINDS[kind], samples=samples)
        reply = yield from self._call(KEY_MEMORY, request)
        return reply.bytes if reply.found else None

    @procedure
    def scan_keys(
        self,
        pattern: str = "*",
        *,
        type: str = "",
        kind: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> Steps[tuple[list[str], str]]:
        """One page of the namespace's keys matching a glob (every node), and the next
        page's token ("" when done)."""
        request = pb.ScanKeysRequest(
            pattern=pattern,
            type=_TYPES[type],
            kind=_KINDS[kind],
            page_size=page_size,
            page_token=page_token,
        )
        reply = yield from self._call(SCAN_KEYS, request)
        return list(reply.keys), reply.next_page_token

    @procedure
    def inspect_key(self, key: str, *, kind: str = "cache") -> Steps[pb.InspectKeyResponse]:
        """Type, TTL, size, memory, encoding, version and node of one key."""
        reply = yield from self._call(INSPECT_KEY, pb.InspectKeyRequest(key=key, kind=_KINDS[kind]))
        return reply

    @procedure
    def big_keys(
        self,
        *,
        by: str = "memory",
        page_size: int = 0,
        scan_budget: int = 0,
        type: str = "",
        kind: str = "",
        pattern: str = "",
        page_token: str = "",
    ) -> Steps[pb.GetBigKeysResponse]:
        """The namespace's biggest keys by "memory" or "elements", and a summary per type."""
        request = pb.GetBigKeysRequest(
            order=pb.BIG_KEYS_ORDER_ELEMENTS if by == "elements" else pb.BIG_KEYS_ORDER_MEMORY,
            page_size=page_size,
            scan_budget=scan_budget,
            type=_TYPES[type],
            kind=_KINDS[kind],
            pattern=pattern,
            page_token=page_token,
        )
        reply = yield from self._call(BIG_KEYS, request)
        return reply

    @procedure
    def list_clients(
        self, *, page_size: int = 0, page_token: str = "", node: str = ""
    ) -> Steps[pb.ListClientsResponse]:
        """Redis CLIENT LIST of every node (or one)."""
        request = pb.ListClientsRequest(page_size=page_size, page_token=page_token, node=node)
        reply = yield from self._call(LIST_CLIENTS, request)
        return reply

    @procedure
    def get_config(self, *names: str) -> Steps[pb.GetConfigResponse]:
        """Whitelisted Redis settings, per node, and the whitelist."""
        reply = yield from self._call(GET_CONFIG, pb.GetConfigRequest(names=names))
        return reply

    @procedure
    def set_config(self, parameters: Mapping[str, str]) -> Steps[list[str]]:
        """Set whitelisted Redis settings on every node (ConfigNotWhitelisted otherwise);
        answers the nodes changed."""
        reply = yield from self._call(SET_CONFIG, pb.SetConfigRequest(parameters=dict(parameters)))
        return list(reply.nodes)

    @procedure
    def flush_namespace(self, *, confirm: str, dry_run: bool = False) -> Steps[int]:
        """Delete every key of the client's namespace; `confirm` must be the namespace's
        name. With `dry_run`, only counts. Answers how many keys."""
        request = pb.FlushNamespaceRequest(confirm=confirm, dry_run=dry_run)
        reply = yield from self._call(FLUSH, request)
        return reply.deleted_keys
