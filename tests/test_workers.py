"""`cachet-server --workers N`: processes sharing one port under a supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import psutil
import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2, admin_pb2_grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.config import Settings
from grpc import aio
from pydantic import ValidationError

from .redis_procs import RedisProcess, wait_until
from .server_procs import CachetProcess

pytestmark = pytest.mark.topologies("standalone", reason="process supervision, not Redis")

CHANNELS = 24
SET = "cachet.cache.v1.CacheService/Set"
# Without it grpc shares one connection among the channels to one address.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def workers_of(server: CachetProcess) -> list[psutil.Process]:
    assert server.process is not None
    return psutil.Process(server.process.pid).children()


def serving_workers(server: CachetProcess, count: int) -> list[psutil.Process]:
    """The workers, once `count` of them accept connections on the shared port."""

    def listening() -> bool:
        workers = workers_of(server)
        return len(workers) == count and all(
            any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
                for c in worker.net_connections("tcp"))
            for worker in workers
        )  # fmt: skip

    try:
        wait_until(listening, timeout=30, what=f"{count} workers listening")
    except TimeoutError as timeout:
        # Why they are not (a worker that cannot bind, one that crashed) is in the log.
        raise TimeoutError(f"{timeout}; the server wrote:\n{server.output()[-4000:]}") from None
    return workers_of(server)


def metrics_page(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        body: bytes = page.read()
        return body


async def get_stats_calls(server: CachetProcess, method: str) -> int:
    async with aio.insecure_channel(server.address) as channel:
        stats = await admin_pb2_grpc.AdminServiceStub(channel).GetServiceStats(
            admin_pb2.GetServiceStatsRequest(), timeout=5
        )
    return sum(m.calls for m in stats.methods if m.method.endswith(method))


@pytest.fixture
def redis_proc():
    proc = RedisProcess().start()
    yield proc
    proc.resume()
    proc.stop()


async def test_two_workers_serve_one_port_and_stats_count_both(redis_proc):
    server = CachetProcess(redis_proc.url, CACHET_WORKERS="2").start()
    try:
        workers = serving_workers(server, 2)
        # A connection each: the kernel spreads connections over the listening workers.
        channels = [
            aio.insecure_channel(server.address, options=OWN_CONNECTION) for _ in range(CHANNELS)
        ]
        try:
            stubs = [cache_pb2_grpc.CacheServiceStub(c) for c in channels]
            await asyncio.gather(
                *(s.Set(pb.SetRequest(key=f"k{i}", value=b"v")) for i, s in enumerate(stubs))
            )
            served_by = {
                worker.pid
                for worker in workers
                for c in worker.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
            }
            assert served_by == {w.pid for w in workers}, "both workers hold connections"
            got = await asyncio.gather(*(s.Get(pb.GetRequest(key="k0")) for s in stubs))
            assert all(g.value == b"v" for g in got), "every worker sees the same Redis"
        finally:
            for c in channels:
                await c.close()
        # Each worker publishes its counters at most 0.5 s late (a snapshot may hold the
        # Sets and not yet the Gets); any worker answers.
        deadline = time.monotonic() + 10
        while (
            seen := (await get_stats_calls(server, "/Set"), await get_stats_calls(server, "/Get"))
        ) != (CHANNELS, CHANNELS):
            assert time.monotonic() < deadline, f"stats count {seen} of {CHANNELS} Sets and Gets"
            await asyncio.sleep(0.2)
        assert seen == (CHANNELS, CHANNELS)
        # Each worker has a Prometheus endpoint of its own: the port plus its slot.
        for port in (server.metrics_port, server.metrics_port + 1):
            assert b"# TYPE" in metrics_page(port)
    finally:
        server.stop()


async def test_a_killed_worker_is_restarted(redis_proc):
    server = CachetProcess(redis_proc.url, CACHET_WORKERS="2").start()
    try:
        first = serving_workers(server, 2)
        first[0].kill()
        first[0].wait(timeout=10)
        wait_until(
            lambda: {w.pid for w in workers_of(server)} - {first[1].pid} - {first[0].pid},
            timeout=30,
            what="a new worker",
        )
        again = serving_workers(server, 2)
        assert first[1].pid in {w.pid for w in again}, "the other worker went on serving"
        assert first[0].pid not in {w.pid for w in again}
        async with aio.insecure_channel(server.address) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Set(pb.SetRequest(key="after", value=b"restart"))
    finally:
        server.stop()


async def test_sigterm_drains_every_worker_and_exits_zero(redis_proc):
    server = CachetProcess(
        redis_proc.url, CACHET_WORKERS="2", CACHET_SHUTDOWN_GRACE="PT10S"
    ).start()
    try:
        workers = serving_workers(server, 2)
        channels = [
            aio.insecure_channel(server.address, options=OWN_CONNECTION) for _ in range(CHANNELS)
        ]
        try:
            stubs = [cache_pb2_grpc.CacheServiceStub(c) for c in channels]
            await asyncio.gather(*(s.Get(pb.GetRequest(key="warm")) for s in stubs))
            redis_proc.pause()  # the calls below stay in flight until it resumes
            calls = [
                asyncio.ensure_future(s.Set(pb.SetRequest(key=f"d{i}", value=b"v"), timeout=20))
                for i, s in enumerate(stubs)
            ]
            await server.until_in_flight(SET, CHANNELS)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            await server.until_draining()
            await asyncio.sleep(0.5)
            assert server.process.poll() is None, "exited before its calls finished"
            assert server.active_calls(SET) == CHANNELS, "a drain let go of calls in flight"
            redis_proc.resume()
            results = await asyncio.gather(*calls)
            assert all(r.version > 0 for r in results)
        finally:
            for c in channels:
                await c.close()
        assert server.process.wait(timeout=20) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert redis_proc.client().exists(f"cachet:default:k#:{{d{CHANNELS - 1}}}") == 1
    finally:
        redis_proc.resume()
        server.stop()


def test_workers_need_a_fixed_port_and_a_valid_count(redis_proc):
    for args, env, message in (
        (["--workers", "2"], {"CACHET_LISTEN": "127.0.0.1:0"}, "needs a fixed port"),
        ([], {"CACHET_WORKERS": "many"}, "workers must be a number"),
        (["--workers", "0"], {}, "workers must be a number"),
    ):
        server = CachetProcess(redis_proc.url, **env)
        refused = subprocess.run(
            [sys.executable, "-m", "cachet_server", *args],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert message in refused.stderr
        assert "Traceback" not in refused.stderr


def test_worker_count_is_a_number_or_auto():
    assert Settings(workers="3").worker_count == 3
    assert Settings(workers="auto").worker_count == len(os.sched_getaffinity(0))
    assert Settings().worker_count == 1
    for bad in ("0", "-1", "two", "1025"):
        with pytest.raises(ValidationError):
            Settings(workers=bad)


def test_a_stats_snapshot_adds_up_in_another_process():
    from cachet_server.stats import ServiceStats

    served = ServiceStats(observed=False)
    served.record_lookups("shop", hits=2, misses=1)
    get_calls = served.method_counter("/cachet.cache.v1.CacheService/Get")
    get_calls.start("shop")
    get_calls.end(grpc.StatusCode.UNAVAILABLE, 0.25)
    served.namespaces["shop"].quota_refusals["calls"] += 3
    combined = ServiceStats(observed=False)
    combined.add(served.snapshot())
    combined.add(served.snapshot())
    shop = combined.namespaces["shop"]
    assert (shop.hits, shop.misses, shop.calls, dict(shop.quota_refusals)) == (
        4,
        2,
        2,
        {"calls": 6},
    )
    get = combined.methods["/cachet.cache.v1.CacheService/Get"]
    assert (get.calls, get.errors, dict(get.errors_by_code)) == (2, 2, {"UNAVAILABLE": 2})
    assert get.total_seconds == pytest.approx(0.5)
