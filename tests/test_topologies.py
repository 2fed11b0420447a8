"""One CACHET_REDIS_URL per topology, end to end: authentication, TLS, routing by key
on Cluster, and the replica-acknowledgement mode."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2 as ebpb
from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2, lock_pb2_grpc
from cachet_server.app import running
from cachet_server.backend.keys import CacheKeys
from google.protobuf.duration_pb2 import Duration
from redis.crc import key_slot

from .conftest import channel_to, error_reason, make_settings, rpc_error
from .redis_procs import ClusterGroup, RedisProcess, SentinelGroup, TlsFiles


@pytest.mark.topologies("sentinel", "cluster", reason="a standalone Redis has no replica")
async def test_replica_acknowledged_writes_succeed_while_replicas_keep_up(redis_url, namespace):
    settings = make_settings(redis_url, redis_min_replicas_acked=1)
    async with running(settings) as app, channel_to(app.port, namespace) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        keys = [f"k{i}" for i in range(30)]  # spread over every Cluster primary
        for key in keys:
            await cache.Set(pb.SetRequest(key=key, value=key.encode()))
        await cache.SetMany(
            pb.SetManyRequest(entries=[pb.SetManyEntry(key=k, value=b"m") for k in keys])
        )
        await cache.Increment(pb.IncrementRequest(key="n", by_int=2))
        got = await cache.GetMany(pb.GetManyRequest(keys=keys))
        assert [e.value for e in got.entries] == [b"m"] * len(keys)
        assert (await cache.Delete(pb.DeleteRequest(keys=keys))).deleted == len(keys)


async def test_more_acknowledgements_than_replicas_is_unavailable_not_enough_replicas(
    redis_url, namespace
):
    settings = make_settings(
        redis_url, redis_min_replicas_acked=2, redis_replica_ack_timeout="PT0.05S"
    )
    async with running(settings) as app, channel_to(app.port, namespace) as channel:
        cache = cache_pb2_grpc.CacheServiceStub(channel)
        error = await rpc_error(cache.Set(pb.SetRequest(key="k", value=b"v")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "NOT_ENOUGH_REPLICAS"
        assert "may not survive a failover" in error.details()
        # Reads never wait for replicas.
        got = await cache.Get(pb.GetRequest(key="k"))
        assert got.found, "the write did happen on the primary; only its durability is unsure"
        # Event appends claim durability the same way, through the same primitive.
        events = eventbus_pb2_grpc.EventBusServiceStub(channel)
        error = await rpc_error(
            events.Append(ebpb.AppendRequest(stream="orders", event=ebpb.Event(payload=b"x")))
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "NOT_ENOUGH_REPLICAS"


@pytest.mark.topologies("sentinel", "cluster", reason="a standalone Redis has no replica")
async def test_replica_acknowledged_appends_succeed(redis_url, namespace):
    settings = make_settings(redis_url, redis_min_replicas_acked=1)
    async with running(settings) as app, channel_to(app.port, namespace) as channel:
        events = eventbus_pb2_grpc.EventBusServiceStub(channel)
        for n in range(5):
            await events.Append(
                ebpb.AppendRequest(stream=f"s{n}", event=ebpb.Event(payload=b"x"), request_id="a")
            )


@pytest.mark.topologies("cluster", reason="slots move only on Cluster")
async def test_replica_acknowledged_lock_writes_follow_a_moved_slot(topology):
    """A lock write with `replication` reaches the slot's new primary after the slot
    moved (MOVED is followed, as for every other write), instead of failing."""
    del topology  # only selects the Cluster run; this test moves a slot of its own cluster
    group = ClusterGroup().start()
    try:
        async with running(make_settings(group.url)) as app, channel_to(app.port, "m") as chan:
            locks = lock_pb2_grpc.LockServiceStub(chan)
            wanted = lock_pb2.ReplicationRequirement(min_replicas=1, timeout=Duration(seconds=2))
            ttl = Duration(seconds=5)
            name = "{moving}:job"
            grant = await locks.Acquire(
                lock_pb2.AcquireRequest(name=name, ttl=ttl, replication=wanted)
            )
            slot = key_slot(b"moving")
            owner = next(m for m in group.masters() if _owns(m, slot))
            target = next(m for m in group.masters() if m is not owner)
            target_id = target.client().cluster("MYID")
            # Move the lock's slot with its keys, the way a resharding does.
            source, dest = owner.client(), target.client()
            dest.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.cluster("MYID"))
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                source.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                    "AUTH", group.password, "KEYS", *keys,
                )  # fmt: skip
            for master in group.masters():
                master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            released = await locks.Release(
                lock_pb2.ReleaseRequest(
                    name=name, owner_token=grant.owner_token, replication=wanted
                )
            )
            assert released.replicas_acked >= 1
            again = await locks.Acquire(
                lock_pb2.AcquireRequest(name=name, ttl=ttl, replication=wanted)
            )
            assert again.fencing_token == grant.fencing_token + 1 and again.replicas_acked >= 1
    finally:
        group.stop()


def _owns(master: RedisProcess, slot: int) -> bool:
    ranges = master.client().execute_command("CLUSTER", "SLOTS")
    return any(
        start <= slot <= end and int(node[1]) == master.port for start, end, node, *_ in ranges
    )


@pytest.mark.topologies(
    "sentinel", "cluster", reason="the session's standalone Redis stays open; see the ACL test"
)
async def test_the_test_topologies_really_require_their_credentials(topology):
    """Every parametrized test runs with authentication on (ACL user on Sentinel's data
    nodes, sentinel password, cluster password): a client without them is refused."""
    node = topology.nodes[0]
    anonymous = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()


async def test_standalone_acl_user_and_password(namespace):
    proc = RedisProcess(
        username="app",
        password="s3cret:with@odd/chars",
        config=["user app on >s3cret:with@odd/chars ~* &* +@all", "user default off"],
    ).start()
    try:
        assert "s3cret%3Awith%40odd%2Fchars" in proc.url
        async with running(make_settings(proc.url)) as app, channel_to(app.port, namespace) as ch:
            cache = cache_pb2_grpc.CacheServiceStub(ch)
            await cache.Set(pb.SetRequest(key="k", value=b"v"))
            assert (await cache.Get(pb.GetRequest(key="k"))).value == b"v"
        wrong = proc.url.replace("s3cret", "wrong")
        async with running(make_settings(wrong)) as app, channel_to(app.port, namespace) as ch:
            error = await rpc_error(cache_pb2_grpc.CacheServiceStub(ch).Get(pb.GetRequest(key="k")))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "Traceback" not in error.details()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    if not TlsFiles.available():
        pytest.skip("openssl is not installed: TLS deployments cannot be made")
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("kind", ["standalone", "sentinel", "cluster"])
async def test_tls_on_every_topology(kind, tls_files, namespace):
    """rediss://, rediss+sentinel:// and rediss+cluster:// against deployments that
    listen on TLS only (plain TCP off), with a CA given in the URL."""
    deployment = {
        "standalone": lambda: RedisProcess(tls=tls_files),
        "sentinel": lambda: SentinelGroup(tls=tls_files),
        "cluster": lambda: ClusterGroup(tls=tls_files),
    }[kind]()
    deployment.start()
    try:
        assert deployment.url.startswith("rediss")
        async with running(make_settings(deployment.url)) as app:
            async with channel_to(app.port, namespace) as channel:
                cache = cache_pb2_grpc.CacheServiceStub(channel)
                keys = [f"k{i}" for i in range(20)]
                for key in keys:
                    await cache.Set(pb.SetRequest(key=key, value=key.encode()))
                got = await cache.GetMany(pb.GetManyRequest(keys=keys))
                assert [e.value for e in got.entries] == [k.encode() for k in keys]
    finally:
        deployment.stop()


async def test_scripts_route_by_key_and_scans_cover_every_primary(cachet, cache, namespace):
    """Keys of many slots: each write runs on its slot's primary, and a SCAN over
    `Backend.primaries()` (one client per Cluster primary) finds every one of them."""
    keys = [f"spread-{i}" for i in range(60)]
    for key in keys:
        await cache.Set(pb.SetRequest(key=key, value=b"v"))
    primaries = await cachet.backend.primaries()
    found_per_primary = []
    for node in primaries:
        found = {
            name.decode()
            async for name in node.scan_iter(match=f"cachet:{namespace}:k*", count=1000)
        }
        found_per_primary.append(found)
    everything = set().union(*found_per_primary)
    assert everything == {CacheKeys.of(namespace, key).data for key in keys}
    if cachet.backend.kind == "cluster":
        assert len(primaries) == 3
        assert all(found_per_primary), "keys of many slots land on every primary"
        assert len({key_slot(name.encode()) for name in everything}) > 10


@pytest.mark.topologies("cluster", reason="per-node clients exist only on Cluster")
async def test_clients_of_a_primary_demoted_by_a_failover_are_closed(topology):
    """After a failover the old primary is a replica: its per-node client (made for SCAN
    and admin) is closed and dropped, not kept open until shutdown."""
    del topology  # only selects the Cluster run; this test starts a cluster of its own
    group = ClusterGroup().start()
    try:
        async with running(make_settings(group.url)) as app:
            for node in await app.backend.primaries():
                await node.ping()
            master = group.masters()[0]
            name = f"127.0.0.1:{master.port}"
            clients = app.backend.topology._node_clients
            old = clients[name]
            assert any(c.is_connected for c in old.connection_pool._available_connections)
            group.replica_of(master).client().execute_command("CLUSTER", "FAILOVER")
            for _ in range(200):
                await asyncio.sleep(0.1)
                app.backend.redis._initialize = True  # re-read the slot table now
                await app.backend.primaries()
                names = {n.name for n in app.backend.redis.get_primaries()}
                if name not in names and len(names) == len(group.masters()):
                    break
            else:
                raise AssertionError("the failover never showed in the slot table")
            assert name not in clients
            pool = old.connection_pool
            assert not pool._in_use_connections
            assert not any(c.is_connected for c in pool._available_connections)
            for node in await app.backend.primaries():
                await node.ping()
    finally:
        group.stop()
