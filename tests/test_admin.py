"""AdminService against real Redis: statistics, slow log, scans, inspection, config, flush."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter

import grpc
import pytest
from cachet_client.proto.cachet.admin.v1 import admin_pb2 as pb
from cachet_client.proto.cachet.admin.v1 import admin_pb2_grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as cache_pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server import __version__
from cachet_server.backend.keys import Kind, redis_key
from cachet_server.backend.topology import TopologyKind
from google.protobuf.duration_pb2 import Duration
from redis.crc import key_slot

from .conftest import bad_fields, channel_to, error_reason, rpc_error


@pytest.fixture
def admin(channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def fill(cache, keys, value=b"v", batch=1000):
    """Write keys with CacheService/SetMany, `batch` at a time."""
    for start in range(0, len(keys), batch):
        entries = [cache_pb.SetManyEntry(key=k, value=value) for k in keys[start : start + batch]]
        await cache.SetMany(cache_pb.SetManyRequest(entries=entries, ttl=Duration(seconds=600)))


async def scan_all(admin, request: pb.ScanKeysRequest) -> list[str]:
    keys: list[str] = []
    while True:
        page = await admin.ScanKeys(request)
        assert len(page.keys) <= (request.page_size or 100)
        keys += page.keys
        if not page.next_page_token:
            return keys
        request.page_token = page.next_page_token


def edit_token(token: str, change) -> str:
    """Decode a page token, let `change` edit its JSON, encode it again (a forgery)."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    change(data)
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# -- service statistics -------------------------------------------------------------------


async def namespace_stats(admin, namespace: str) -> tuple[pb.NamespaceStats, int]:
    """The namespace's entry, and how many GetServiceStats calls it took to find it."""
    request = pb.GetServiceStatsRequest(page_size=1000)
    calls = 0
    while True:
        page = await admin.GetServiceStats(request)
        calls += 1
        for entry in page.namespaces:
            if entry.namespace == namespace:
                return entry, calls
        if not page.next_page_token:
            raise AssertionError(f"namespace {namespace} not in GetServiceStats")
        request.page_token = page.next_page_token


async def test_hit_ratio_changes_exactly_with_the_hits_and_misses_made(admin, cache, namespace):
    await fill(cache, [f"present:{i}" for i in range(7)])
    for i in range(7):
        assert (await cache.Get(cache_pb.GetRequest(key=f"present:{i}"))).found
    for i in range(3):
        assert not (await cache.Get(cache_pb.GetRequest(key=f"absent:{i}"))).found
    stats, _ = await namespace_stats(admin, namespace)
    assert (stats.hits, stats.misses) == (7, 3)
    assert stats.hit_ratio == pytest.approx(0.7)
    calls_before = stats.calls

    await cache.GetMany(cache_pb.GetManyRequest(keys=["present:0", "absent:0", "absent:1"]))
    stats, pages = await namespace_stats(admin, namespace)
    assert (stats.hits, stats.misses) == (8, 5)
    assert stats.hit_ratio == pytest.approx(8 / 13)
    assert stats.calls == calls_before + 1 + pages, "the GetMany and the GetServiceStats"


async def test_service_stats_pages_through_namespaces_and_counts_methods(admin, cache):
    await cache.Get(cache_pb.GetRequest(key="x"))
    first = await admin.GetServiceStats(pb.GetServiceStatsRequest(page_size=1))
    assert first.server_id and first.since.seconds > 0
    methods = {m.method: m for m in first.methods}
    get = methods["/cachet.cache.v1.CacheService/Get"]
    assert get.calls >= 1 and get.total_duration.ToNanoseconds() > 0
    names = [n.namespace for n in first.namespaces]
    request = pb.GetServiceStatsRequest(page_size=1, page_token=first.next_page_token)
    while request.page_token:
        page = await admin.GetServiceStats(request)
        assert not page.methods, "methods come on the first page only"
        names += [n.namespace for n in page.namespaces]
        request.page_token = page.next_page_token
    assert names == sorted(set(names)) and len(names) >= 2


async def test_errors_are_counted_by_code(admin, cache):
    before = await admin.GetServiceStats(pb.GetServiceStatsRequest())
    method = "/cachet.cache.v1.CacheService/Set"
    old = {m.method: m for m in before.methods}.get(method)
    old_count = old.errors_by_code.get("INVALID_ARGUMENT", 0) if old else 0
    await rpc_error(cache.Set(cache_pb.SetRequest(key="")))
    after = await admin.GetServiceStats(pb.GetServiceStatsRequest())
    counted = {m.method: m for m in after.methods}[method]
    assert counted.errors_by_code["INVALID_ARGUMENT"] == old_count + 1


# -- slow log -----------------------------------------------------------------------------


async def slow_entries(admin, page_size=10) -> list[pb.SlowLogEntry]:
    entries: list[pb.SlowLogEntry] = []
    request = pb.GetSlowLogRequest(page_size=page_size)
    while True:
        page = await admin.GetSlowLog(request)
        assert len(page.entries) <= page_size
        entries += page.entries
        if not page.next_page_token:
            return entries
        request.page_token = page.next_page_token


async def test_a_slow_command_appears_in_the_slow_log_then_reset_empties_it(
    admin, cache, namespace
):
    threshold = "slowlog-log-slower-than"
    previous = await admin.GetConfig(pb.GetConfigRequest(names=[threshold]))
    old_value = previous.parameters[0].values[0].value
    probe = f"slow-probe-{uuid.uuid4().hex[:8]}"
    raw_probe = redis_key(namespace, Kind.DATA, probe)
    try:
        # Every command counts as slow now, so the probe's write is logged.
        await admin.SetConfig(pb.SetConfigRequest(parameters={threshold: "0"}))
        await cache.Set(cache_pb.SetRequest(key=probe, value=b"x"))
        entries = await slow_entries(admin)
        logged = [e for e in entries if raw_probe in e.keys]
        assert logged, "the probe's write is in the slow log"
        assert logged[0].node and logged[0].time.seconds > 0 and logged[0].client_address
        order = [(-e.time.seconds, e.node, -e.id) for e in entries]
        assert order == sorted(order), "newest first"
        assert len({(e.node, e.id) for e in entries}) == len(entries), "no entry twice"
    finally:
        await admin.SetConfig(pb.SetConfigRequest(parameters={threshold: old_value}))
    reset = await admin.ResetSlowLog(pb.ResetSlowLogRequest())
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    assert reset.nodes_reset == len(info.nodes)
    after = await slow_entries(admin)
    assert not [e for e in after if raw_probe in e.keys]


async def test_slow_log_of_one_node_and_of_an_unknown_node(admin):
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    node = info.nodes[0].address
    page = await admin.GetSlowLog(pb.GetSlowLogRequest(node=node))
    assert all(e.node == node for e in page.entries)
    error = await rpc_error(admin.GetSlowLog(pb.GetSlowLogRequest(node="127.0.0.1:1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(error) == ["node"]


# -- key scans ----------------------------------------------------------------------------


async def test_scan_of_10000_keys_by_100_yields_every_key_exactly_once(admin, cache):
    # Both key forms: untagged keys are stored wrapped, tagged ones as they are.
    keys = [f"item:{i}" for i in range(9500)] + [f"{{group}}:{i}" for i in range(500)]
    started = time.monotonic()
    await fill(cache, keys)
    filled = time.monotonic()
    found = await scan_all(admin, pb.ScanKeysRequest(page_size=100))
    scanned = time.monotonic()
    counts = Counter(found)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    print(f"\nfill 10000 keys: {filled - started:.2f}s; scan by 100: {scanned - filled:.2f}s")

    tagged = await scan_all(admin, pb.ScanKeysRequest(pattern="{group}:*", page_size=1000))
    assert sorted(tagged) == sorted(keys[9500:])
    some = await scan_all(admin, pb.ScanKeysRequest(pattern="item:1?", page_size=7))
    assert sorted(some) == [f"item:1{i}" for i in range(10)]


async def test_scan_filters_by_type_and_never_sees_other_namespaces(
    cachet, admin, cache, namespace
):
    await fill(cache, ["a", "b"])
    await cachet.backend.redis.hset(redis_key(namespace, Kind.DATA, "h"), "f", "1")
    await cachet.backend.redis.expire(redis_key(namespace, Kind.DATA, "h"), 600)
    async with channel_to(cachet.port, namespace + "-other") as other_channel:
        other = cache_pb2_grpc.CacheServiceStub(other_channel)
        await fill(other, ["a", "c"])
    assert sorted(await scan_all(admin, pb.ScanKeysRequest())) == ["a", "b", "h"]
    hashes = await scan_all(admin, pb.ScanKeysRequest(type=pb.KEY_TYPE_HASH))
    assert hashes == ["h"]
    assert await scan_all(admin, pb.ScanKeysRequest(kind=pb.KEY_KIND_STREAM)) == []


async def test_scan_rejects_bad_input(admin):
    for request, field in [
        (pb.ScanKeysRequest(page_size=-1), "page_size"),
        (pb.ScanKeysRequest(page_size=1001), "page_size"),
        (pb.ScanKeysRequest(pattern="abc\\"), "pattern"),
        (pb.ScanKeysRequest(type=99), "type"),
        (pb.ScanKeysRequest(kind=99), "kind"),
    ]:
        error = await rpc_error(admin.ScanKeys(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == [field]


# -- page tokens --------------------------------------------------------------------------


async def test_bad_page_tokens_are_refused(cachet, admin, cache, namespace):
    await fill(cache, [f"k{i}" for i in range(30)])
    first = await admin.ScanKeys(pb.ScanKeysRequest(page_size=5))
    token = first.next_page_token
    assert token
    refused = [
        admin.ScanKeys(pb.ScanKeysRequest(page_size=5, page_token="garbage!")),
        admin.ScanKeys(pb.ScanKeysRequest(page_size=5, page_token="e30")),  # "{}"
        admin.ScanKeys(pb.ScanKeysRequest(page_size=5, page_token=token[:-3])),
        # the same token for a different pattern, kind, or call
        admin.ScanKeys(pb.ScanKeysRequest(pattern="k1*", page_size=5, page_token=token)),
        admin.ScanKeys(pb.ScanKeysRequest(kind=pb.KEY_KIND_LOCK, page_token=token)),
        admin.GetBigKeys(pb.GetBigKeysRequest(page_token=token)),
        admin.ListClients(pb.ListClientsRequest(page_token=token)),
        admin.GetSlowLog(pb.GetSlowLogRequest(page_token=token)),
        admin.GetServiceStats(pb.GetServiceStatsRequest(page_token=token)),
        # a forged token that smuggles in a key of another namespace
        admin.ScanKeys(
            pb.ScanKeysRequest(
                page_size=5,
                page_token=edit_token(
                    token, lambda d: d["p"].update(p=[redis_key("other", Kind.DATA, "x")])
                ),
            )
        ),
        admin.ScanKeys(
            pb.ScanKeysRequest(
                page_size=5, page_token=edit_token(token, lambda d: d["p"].update(c=-1))
            )
        ),
    ]
    for call in refused:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert bad_fields(error) == ["page_token"]
    async with channel_to(cachet.port, namespace + "-other") as other_channel:
        other = admin_pb2_grpc.AdminServiceStub(other_channel)
        error = await rpc_error(other.ScanKeys(pb.ScanKeysRequest(page_size=5, page_token=token)))
        assert bad_fields(error) == ["page_token"], "a token is bound to its namespace"
    # The page size may change between pages.
    await admin.ScanKeys(pb.ScanKeysRequest(page_size=50, page_token=token))


async def test_a_scan_resumed_on_another_topology_is_aborted(admin, cache):
    await fill(cache, [f"k{i}" for i in range(30)])
    first = await admin.ScanKeys(pb.ScanKeysRequest(page_size=5))
    moved = edit_token(first.next_page_token, lambda d: d["p"].update(t="0" * 16))
    error = await rpc_error(admin.ScanKeys(pb.ScanKeysRequest(page_size=5, page_token=moved)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error) == "TOPOLOGY_CHANGED"


# -- one key ------------------------------------------------------------------------------


async def test_inspect_key(cachet, admin, cache, namespace):
    stored = await cache.Set(
        cache_pb.SetRequest(key="user:1", value=b"alice", ttl=Duration(seconds=60), fencing_token=7)
    )
    found = await admin.InspectKey(pb.InspectKeyRequest(key="user:1"))
    assert found.found and found.type == pb.KEY_TYPE_STRING
    assert found.size == 5 and found.memory_bytes > 0 and found.encoding
    assert 0 < found.ttl.ToMilliseconds() <= 60_000
    assert (found.version, found.fencing_token) == (stored.version, 7)
    assert found.HasField("idle") and not found.HasField("lfu_frequency")
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    assert found.node in {n.address for n in info.nodes if n.role == pb.NODE_ROLE_PRIMARY}
    if cachet.backend.kind is TopologyKind.CLUSTER:
        assert found.slot == key_slot(redis_key(namespace, Kind.DATA, "user:1").encode())
    else:
        assert found.slot == -1

    await cachet.backend.redis.rpush(redis_key(namespace, Kind.DATA, "queue"), "a", "b", "c")
    listed = await admin.InspectKey(pb.InspectKeyRequest(key="queue"))
    assert listed.type == pb.KEY_TYPE_LIST and listed.size == 3
    assert not listed.HasField("ttl") and listed.version == 0
    assert not (await admin.InspectKey(pb.InspectKeyRequest(key="nobody"))).found
    error = await rpc_error(admin.InspectKey(pb.InspectKeyRequest(key="")))
    assert bad_fields(error) == ["key"]


async def test_key_memory_usage(admin, cache):
    await cache.Set(cache_pb.SetRequest(key="blob", value=b"x" * 5000))
    usage = await admin.GetKeyMemoryUsage(pb.GetKeyMemoryUsageRequest(key="blob", samples=0))
    assert usage.found and usage.bytes >= 5000
    missing = await admin.GetKeyMemoryUsage(pb.GetKeyMemoryUsageRequest(key="nobody"))
    assert not missing.found and missing.bytes == 0
    for samples in (-1, 100_001):
        error = await rpc_error(
            admin.GetKeyMemoryUsage(pb.GetKeyMemoryUsageRequest(key="blob", samples=samples))
        )
        assert bad_fields(error) == ["samples"]


# -- big keys -----------------------------------------------------------------------------


async def test_big_keys_by_memory_and_by_elements(cachet, admin, cache, namespace):
    for size in (10, 100, 1000, 10_000):
        await cache.Set(cache_pb.SetRequest(key=f"s{size}", value=b"x" * size))
    data = cachet.backend.redis
    await data.rpush(redis_key(namespace, Kind.DATA, "list5"), *"abcde")
    await data.rpush(redis_key(namespace, Kind.DATA, "list2"), *"ab")

    report = await admin.GetBigKeys(pb.GetBigKeysRequest(page_size=2))
    assert [k.key for k in report.keys] == ["s10000", "s1000"]
    assert report.keys[0].memory_bytes >= 10_000 and report.keys[0].elements == 10_000
    assert report.scanned_keys == 6 and not report.next_page_token
    totals = {t.type: t for t in report.types}
    assert totals[pb.KEY_TYPE_STRING].keys == 4
    assert totals[pb.KEY_TYPE_STRING].elements == 11_110
    assert totals[pb.KEY_TYPE_LIST].keys == 2 and totals[pb.KEY_TYPE_LIST].elements == 7

    by_elements = await admin.GetBigKeys(
        pb.GetBigKeysRequest(order=pb.BIG_KEYS_ORDER_ELEMENTS, page_size=1)
    )
    assert [(k.key, k.elements, k.memory_bytes) for k in by_elements.keys] == [
        ("s10000", 10_000, 0),
        ("list5", 5, 0),
    ]


async def test_big_keys_scan_continues_where_its_budget_ran_out(admin, cache):
    keys = [f"k{i}" for i in range(25)]
    await fill(cache, keys)
    request = pb.GetBigKeysRequest(scan_budget=10, page_size=1000)
    seen: list[str] = []
    while True:
        report = await admin.GetBigKeys(request)
        assert report.scanned_keys <= 10
        seen += [k.key for k in report.keys]
        if not report.next_page_token:
            break
        request.page_token = report.next_page_token
    assert sorted(seen) == sorted(keys)
    error = await rpc_error(admin.GetBigKeys(pb.GetBigKeysRequest(scan_budget=-1)))
    assert bad_fields(error) == ["scan_budget"]
    error = await rpc_error(admin.GetBigKeys(pb.GetBigKeysRequest(order=9)))
    assert bad_fields(error) == ["order"]


# -- deployment ---------------------------------------------------------------------------


async def test_server_info(cachet, admin, cache):
    await cache.Set(cache_pb.SetRequest(key="k", value=b"v"))
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    assert info.cachet_version == __version__
    assert info.server_id and info.uptime.ToNanoseconds() > 0
    expected = {
        TopologyKind.STANDALONE: pb.TOPOLOGY_KIND_STANDALONE,
        TopologyKind.SENTINEL: pb.TOPOLOGY_KIND_SENTINEL,
        TopologyKind.CLUSTER: pb.TOPOLOGY_KIND_CLUSTER,
    }[cachet.backend.kind]
    assert info.topology == expected
    assert info.redis_version.count(".") == 2
    assert abs(info.server_time.seconds - time.time()) < 60
    roles = [n.role for n in info.nodes]
    assert roles == sorted(roles), "primaries first"
    primaries = [n for n in info.nodes if n.role == pb.NODE_ROLE_PRIMARY]
    assert primaries and all(n.reachable and not n.error for n in info.nodes)
    for node in primaries:
        assert node.memory.used_bytes > 0 and node.stats.total_commands > 0
        assert node.connected_clients >= 1 and node.uptime.seconds >= 0
    assert sum(db.keys for n in primaries for db in n.keyspace) >= 1
    if expected == pb.TOPOLOGY_KIND_CLUSTER:
        slots = sum(r.end - r.start + 1 for n in primaries for r in n.slots)
        assert slots == 16384 and all(len(n.node_id) == 40 for n in info.nodes)
    if expected == pb.TOPOLOGY_KIND_SENTINEL:
        assert info.sentinel_primary_name and info.sentinel_addresses
    for node in info.nodes:
        if node.role == pb.NODE_ROLE_REPLICA:
            assert node.replication.primary_address and node.replication.primary_link_up


async def test_memory_stats_of_every_node(admin):
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    stats = await admin.GetMemoryStats(pb.GetMemoryStatsRequest())
    assert sorted(n.node for n in stats.nodes) == sorted(n.address for n in info.nodes)
    for node in stats.nodes:
        assert not node.error and node.total_allocated_bytes > 0 and node.doctor


async def test_client_list_pages_through_every_connection(admin):
    clients: list[pb.ClientEntry] = []
    request = pb.ListClientsRequest(page_size=1)
    while True:
        page = await admin.ListClients(request)
        assert len(page.clients) <= 1
        clients += page.clients
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert clients and all(c.node and c.id > 0 and c.address for c in clients)
    listed = [(c.node, c.id) for c in clients]
    assert listed == sorted(set(listed)), "by node, then id, each once"


# -- configuration ------------------------------------------------------------------------


async def test_config_get_and_set_whitelisted_parameters_on_every_node(admin):
    info = await admin.GetServerInfo(pb.GetServerInfoRequest())
    everything = await admin.GetConfig(pb.GetConfigRequest())
    assert "slowlog-max-len" in everything.whitelist
    assert {p.name for p in everything.parameters} == set(everything.whitelist)
    before = await admin.GetConfig(pb.GetConfigRequest(names=["slowlog-max-len"]))
    old = before.parameters[0].values[0].value
    try:
        changed = await admin.SetConfig(pb.SetConfigRequest(parameters={"slowlog-max-len": "200"}))
        assert sorted(changed.nodes) == sorted(n.address for n in info.nodes)
        after = await admin.GetConfig(pb.GetConfigRequest(names=["SLOWLOG-MAX-LEN"]))
        assert [v.value for v in after.parameters[0].values] == ["200"] * len(info.nodes)
    finally:
        await admin.SetConfig(pb.SetConfigRequest(parameters={"slowlog-max-len": old}))


async def test_config_outside_the_whitelist_or_bounds_is_refused_and_changes_nothing(admin):
    before = await admin.GetConfig(pb.GetConfigRequest(names=["slowlog-max-len"]))
    for parameters in ({"appendonly": "yes"}, {"slowlog-max-len": "300", "dir": "/tmp"}):
        error = await rpc_error(admin.SetConfig(pb.SetConfigRequest(parameters=parameters)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(error) == "CONFIG_NOT_WHITELISTED"
    error = await rpc_error(admin.GetConfig(pb.GetConfigRequest(names=["requirepass"])))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    for parameters, field in [
        ({"slowlog-max-len": "-5"}, "parameters[slowlog-max-len]"),
        ({"slowlog-max-len": "many"}, "parameters[slowlog-max-len]"),
        ({"maxmemory-policy": "sometimes"}, "parameters[maxmemory-policy]"),
        ({"maxmemory": "lots"}, "parameters[maxmemory]"),
        ({}, "parameters"),
    ]:
        error = await rpc_error(admin.SetConfig(pb.SetConfigRequest(parameters=parameters)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == [field]
    for names, field in [([""], "names[0]"), (["slowlog-*"], "names[0]")]:
        error = await rpc_error(admin.GetConfig(pb.GetConfigRequest(names=names)))
        assert bad_fields(error) == [field]
    after = await admin.GetConfig(pb.GetConfigRequest(names=["slowlog-max-len"]))
    assert after == before


# -- namespace flush ----------------------------------------------------------------------


async def test_flush_needs_confirmation_and_removes_only_its_namespace(
    cachet, admin, cache, namespace
):
    keys = [f"k{i}" for i in range(50)] + [f"{{t}}:{i}" for i in range(10)]
    await fill(cache, keys)
    # Namespaces whose names extend this one must survive: the pattern ends at ':'.
    neighbours = [namespace + "-2", namespace + ".x", namespace + "_"]
    for name in neighbours:
        async with channel_to(cachet.port, name) as other:
            await fill(cache_pb2_grpc.CacheServiceStub(other), keys)

    for confirm in ("", namespace + "-2", namespace.upper()):
        error = await rpc_error(admin.FlushNamespace(pb.FlushNamespaceRequest(confirm=confirm)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "CONFIRMATION_MISMATCH"
    assert len(await scan_all(admin, pb.ScanKeysRequest(page_size=1000))) == len(keys)

    counted = await admin.FlushNamespace(pb.FlushNamespaceRequest(confirm=namespace, dry_run=True))
    assert counted.deleted_keys == 2 * len(keys), "a value and its metadata hash per key"
    assert len(await scan_all(admin, pb.ScanKeysRequest(page_size=1000))) == len(keys)

    flushed = await admin.FlushNamespace(pb.FlushNamespaceRequest(confirm=namespace))
    assert flushed.deleted_keys == 2 * len(keys)
    assert await scan_all(admin, pb.ScanKeysRequest(page_size=1000)) == []
    assert not (await cache.Get(cache_pb.GetRequest(key="k1"))).found
    for name in neighbours:
        async with channel_to(cachet.port, name) as other:
            others = admin_pb2_grpc.AdminServiceStub(other)
            left = await scan_all(others, pb.ScanKeysRequest(page_size=1000))
            assert sorted(left) == sorted(keys), f"namespace {name} was touched"
            await others.FlushNamespace(pb.FlushNamespaceRequest(confirm=name))


async def test_flush_can_be_disabled(cachet):
    from cachet_server.app import running

    from .conftest import make_settings

    settings = make_settings(cachet.settings.redis_url, admin={"flush_enabled": False})
    async with running(settings) as app, channel_to(app.port, "anything") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        error = await rpc_error(admin.FlushNamespace(pb.FlushNamespaceRequest(confirm="anything")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error) == "FLUSH_DISABLED"


async def test_refusals_by_redis_are_invalid_argument_naming_the_parameter(cachet):
    from cachet_server.app import running

    from .conftest import make_settings

    settings = make_settings(
        cachet.settings.redis_url, admin={"config_whitelist": ["appendfsync", "slowlog-max-len"]}
    )
    async with running(settings) as app, channel_to(app.port, "ops") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        before = await admin.GetConfig(pb.GetConfigRequest())
        assert list(before.whitelist) == ["appendfsync", "slowlog-max-len"]
        error = await rpc_error(
            admin.SetConfig(
                pb.SetConfigRequest(
                    parameters={"appendfsync": "sometimes", "slowlog-max-len": "333"}
                )
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(error) == ["parameters[appendfsync]"]
        assert "refused by Redis" in error.details()
        assert await admin.GetConfig(pb.GetConfigRequest()) == before, "nothing changed"


async def test_admin_calls_while_redis_is_down():
    from cachet_server.app import running

    from .conftest import make_settings
    from .redis_procs import RedisProcess

    redis_server = RedisProcess().start()
    try:
        async with running(make_settings(redis_server.url)) as app:
            async with channel_to(app.port, "ops") as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                assert (await admin.GetServerInfo(pb.GetServerInfoRequest())).nodes[0].reachable
                redis_server.kill()
                info_error = await rpc_error(admin.GetServerInfo(pb.GetServerInfoRequest()))
                assert info_error.code() == grpc.StatusCode.UNAVAILABLE
                assert redis_server.address in info_error.details()
                memory = await admin.GetMemoryStats(pb.GetMemoryStatsRequest())
                assert memory.nodes[0].error and memory.nodes[0].node == redis_server.address
                for call in [
                    admin.GetSlowLog(pb.GetSlowLogRequest()),
                    admin.ResetSlowLog(pb.ResetSlowLogRequest()),
                    admin.ListClients(pb.ListClientsRequest()),
                    admin.GetConfig(pb.GetConfigRequest()),
                    admin.SetConfig(pb.SetConfigRequest(parameters={"slowlog-max-len": "5"})),
                    admin.ScanKeys(pb.ScanKeysRequest()),
                    admin.InspectKey(pb.InspectKeyRequest(key="k")),
                    admin.FlushNamespace(pb.FlushNamespaceRequest(confirm="ops")),
                ]:
                    error = await rpc_error(call)
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    assert "Traceback" not in error.details()
    finally:
        redis_server.stop()
