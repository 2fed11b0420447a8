"""Builds and runs the grpc.aio server: services behind the corridor (the one generic
handler that runs the auth, quota, telemetry and errors stages), health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2, lock_pb2_grpc
from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from . import audit
from .access import call_table
from .backend.core import Backend
from .backend.embedded import EmbeddedRedis
from .backend.topology import ConnectionTuning
from .config import AuthMode, Settings
from .credentials import Authenticator
from .interceptors._stage import Corridor
from .interceptors.auth import AuthStage
from .interceptors.errors import ErrorsStage
from .interceptors.quota import QuotaStage
from .interceptors.telemetry import TelemetryStage
from .metrics import instruments
from .services.admin import AdminService
from .services.base import Dependencies, Servicer
from .services.cache import CacheService
from .services.envoy_rls import EnvoyRateLimitService
from .services.eventbus import EventBusService
from .services.lock import LockService
from .services.ratelimit import RateLimitService
from .stats import ServiceStats
from .tls import CertificateFiles
from .validation import Validator
from .workers import StatsShare

log = logging.getLogger(__name__)

# Each service: its servicer class, its descriptor, and the generated registration.
_SERVICES: list[tuple[type[Servicer], ServiceDescriptor, Callable[[Any, aio.Server], None]]] = [
    (
        CacheService,
        cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
        cache_pb2_grpc.add_CacheServiceServicer_to_server,
    ),
    (
        LockService,
        lock_pb2.DESCRIPTOR.services_by_name["LockService"],
        lock_pb2_grpc.add_LockServiceServicer_to_server,
    ),
    (
        RateLimitService,
        ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"],
        ratelimit_pb2_grpc.add_RateLimitServiceServicer_to_server,
    ),
    (
        EnvoyRateLimitService,
        rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"],
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
    ),
    (
        EventBusService,
        eventbus_pb2.DESCRIPTOR.services_by_name["EventBusService"],
        eventbus_pb2_grpc.add_EventBusServiceServicer_to_server,
    ),
    (
        AdminService,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
    ),
]
SERVICE_NAMES = [descriptor.full_name for _, descriptor, _ in _SERVICES]
# The health service name for liveness: SERVING while this process and its event loop
# answer, whatever Redis does (the health servicer runs on the loop, so a loop that is
# stuck does not answer it). "" and the service names follow Redis: readiness.
LIVENESS = "liveness"


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


class HealthMonitor:
    """Probes Redis and keeps grpc.health.v1 in step: NOT_SERVING while Redis is
    unreachable, SERVING again as soon as it answers, with no restart."""

    def __init__(self, backend: Backend, servicer: health_aio.HealthServicer, interval: float):
        self.backend = backend
        self.servicer = servicer
        self.interval = interval
        self.serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def probe_once(self) -> bool:
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                await self.backend.ping()
            ok = True
        except Exception as exc:
            if self.serving is not False:
                log.warning("Redis unreachable, health NOT_SERVING: %s", exc)
            ok = False
        if ok != self.serving:
            instruments.redis_reachable.set(int(ok))
            if ok and self.serving is False:
                log.info("Redis reachable again, health SERVING")
                instruments.redis_reconnects.add(1)
            self.serving = ok
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ["", *SERVICE_NAMES]:
                await self.servicer.set(name, status)
        return ok

    async def _run(self) -> None:
        while not self._stopping:
            await self.probe_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cachet-health")

    async def stop(self) -> None:
        if self._task is not None:
            # The probe catches every Exception, and a cancel that lands inside the
            # awaited client code was seen to come back as one; so the loop also
            # checks a flag of its own instead of trusting the cancel alone.
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Application:
    """A started server and what it owns; `stop()` drains it."""

    settings: Settings
    server: aio.Server
    backend: Backend
    health: Any  # grpc_health's aio HealthServicer
    monitor: HealthMonitor
    port: int
    servicers: list[Servicer]
    health_server: aio.Server | None = None
    health_port: int | None = None
    share: StatsShare | None = None
    publisher: asyncio.Task[None] | None = None
    stats: ServiceStats | None = None
    denials: audit.Denials | None = None

    async def stop(self) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight calls finish within the
        grace period, then release Redis."""
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(_seconds(self.settings.shutdown_grace))
        if self.health_server is not None:
            await self.health_server.stop(0)
        for servicer in self.servicers:
            await servicer.aclose()
        await self.backend.close()
        if self.denials is not None:
            self.denials.close()
        if self.publisher is not None:
            self.publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.publisher
        if self.share is not None and self.stats is not None:
            # The drained calls counted too, for the siblings still answering.
            self.share.publish(self.stats)


def build_server(
    settings: Settings, backend: Backend, stats: ServiceStats, denials: audit.Denials
) -> tuple[aio.Server, Any, list[Servicer]]:
    """The server with every service, health and reflection; not yet bound or started."""
    limits = settings.limits
    authenticator = Authenticator(settings.auth)
    table = call_table((descriptor, cls.CALLS) for cls, descriptor, _ in _SERVICES)
    # The corridor, outermost first: auth, quota, telemetry, errors (see DESIGN.md); the
    # server's one generic handler runs them all.
    corridor = Corridor(
        [
            AuthStage(
                authenticator,
                table,
                limits,
                protect_reflection=settings.auth.protect_reflection,
                denials=denials,
            ),
            QuotaStage(settings.quotas, table, stats),
            TelemetryStage(stats, settings.log_access_sample),
        ],
        ErrorsStage(),
    )
    server = aio.server(
        handlers=[corridor],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # Workers of one `--workers N` server share the port; a lone process must
            # not, or a second server started by mistake would silently split traffic.
            ("grpc.so_reuseport", int(settings.worker_count > 1)),
            *settings.connections.grpc_options(),
        ],
    )
    deps = Dependencies(settings, backend, Validator(limits), stats)
    servicers: list[Servicer] = []
    # Every service is registered behind the corridor (see Corridor). Typed Any: the
    # generated functions and reflection are typed for a server.
    registry: Any = corridor
    for servicer_class, _, register in _SERVICES:
        # Methods whose issue has not landed are inherited and answer UNIMPLEMENTED.
        servicer = servicer_class(deps)
        register(servicer, registry)
        servicers.append(servicer)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    if settings.reflection:
        # reflection.enable_server_reflection, with the asyncio servicer it would pick
        # for an aio server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            ReflectionServicer([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME]),
            registry,
        )
    return server, health_servicer, servicers


async def start(settings: Settings, redis_url: str, share: StatsShare | None = None) -> Application:
    """Connect to Redis, build the server, bind, start serving. `share`: this process is
    a worker of a `--workers N` server and publishes its stats there."""
    backend = Backend.from_url(
        redis_url,
        ConnectionTuning(
            socket_timeout=_seconds(settings.redis_timeout),
            connect_timeout=min(1.0, _seconds(settings.redis_timeout)),
            max_connections=settings.redis_max_connections,
            blocking_max_connections=settings.redis_blocking_max_connections,
            min_replicas_acked=settings.redis_min_replicas_acked,
            replica_ack_timeout=_seconds(settings.redis_replica_ack_timeout),
            coalesce=settings.redis_coalesce,
        ),
    )
    stats = ServiceStats(settings.stats_max_namespaces, share)
    denials = audit.Denials()
    server, health_servicer, servicers = build_server(settings, backend, stats, denials)
    try:
        port = _bind(server, settings)
        health_server, health_port = _health_only_server(settings, health_servicer)
    except BaseException:
        await backend.close()
        raise
    # Liveness is set once, before serving; only a graceful shutdown changes it.
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    monitor = HealthMonitor(backend, health_servicer, _seconds(settings.health_interval))
    if await monitor.probe_once():
        with contextlib.suppress(Exception):
            await backend.load_scripts()
        with contextlib.suppress(Exception):
            await backend.warn_if_fencing_can_be_evicted()
    await server.start()
    if health_server is not None:
        await health_server.start()
    monitor.start()
    publisher = None
    if share is not None:
        publisher = asyncio.create_task(share.publish_periodically(stats), name="cachet-stats")
    log.info(
        "cachet serving on %s (%s, redis: %s)",
        settings.listen,
        "TLS" if settings.tls.enabled else "plaintext",
        backend.kind,
    )
    _warn_about_exposure(settings)
    return Application(
        settings,
        server,
        backend,
        health_servicer,
        monitor,
        port,
        servicers,
        health_server,
        health_port,
        share,
        publisher,
        stats,
        denials,
    )


def _bind(server: aio.Server, settings: Settings) -> int:
    if settings.tls.enabled:
        port = server.add_secure_port(
            settings.listen, CertificateFiles(settings.tls).server_credentials()
        )
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.listen}")
    return port


def _health_only_server(
    settings: Settings, health_servicer: Any
) -> tuple[aio.Server | None, int | None]:
    """The optional plaintext port that serves grpc.health.v1 and nothing else, for
    Kubernetes probes when the main port needs TLS or credentials."""
    if settings.health_listen is None:
        return None, None
    server = aio.server(options=[("grpc.so_reuseport", int(settings.worker_count > 1))])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(settings.health_listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.health_listen}")
    return server, port


def _warn_about_exposure(settings: Settings) -> None:
    if settings.auth.mode is AuthMode.OFF:
        banner = "*" * 78
        log.warning(
            "\n%s\n AUTH IS OFF: every caller can act as any namespace and call every admin "
            "RPC.\n For local development only. To turn it on, set CACHET_AUTH__MODE=required "
            "and\n configure auth.api_keys (or auth.jwt, auth.mtls_identities) in the YAML "
            "file\n named by CACHET_CONFIG_FILE; see docs/security.md.\n%s",
            banner,
            banner,
        )
    elif not settings.tls.enabled:
        log.warning(
            "auth is on but TLS is off: credentials cross the network in plaintext; set "
            "CACHET_TLS__CERT_FILE and CACHET_TLS__KEY_FILE (or terminate TLS in front)"
        )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, share: StatsShare | None = None
) -> AsyncIterator[Application]:
    """Serve until the block exits; starts an embedded redis-server when no URL is set."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.redis_url
        if url is None:
            url = await stack.enter_async_context(EmbeddedRedis())
        app = await start(settings, url, share)
        try:
            yield app
        finally:
            await app.stop()
