"""CacheService Batch (one pipeline of heterogeneous operations) and Session (a stream
of independent operations answered as each completes), against a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import grpc
import pytest
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from cachet_server.app import running
from cachet_server.backend.keys import Kind, redis_key
from google.protobuf.duration_pb2 import Duration

from .conftest import bad_fields, channel_to, make_settings, rpc_error
from .redis_procs import RedisProcess, standalone

OK = 0


def op(**kind: object) -> pb.BatchOperation:
    return pb.BatchOperation(**kind)  # type: ignore[arg-type]


def get(key: str) -> pb.BatchOperation:
    return op(get=pb.GetRequest(key=key))


def put(key: str, value: bytes, **extra: object) -> pb.BatchOperation:
    return op(set=pb.SetRequest(key=key, value=value, **extra))  # type: ignore[arg-type]


async def test_one_batch_runs_every_kind_of_operation(cache):
    await cache.Set(pb.SetRequest(key="old", value=b"x"))
    reply = await cache.Batch(
        pb.BatchRequest(
            operations=[
                put("user:1", b"alice"),
                get("user:1"),
                op(increment=pb.IncrementRequest(key="hits", by_int=5)),
                op(delete=pb.DeleteRequest(keys=["old", "never"])),
                op(expire=pb.ExpireRequest(key="user:1", ttl=Duration(seconds=90))),
                op(
                    hash_set=pb.HashSetRequest(
                        key="profile", fields=[pb.HashField(field="name", value=b"al")]
                    )
                ),
                op(hash_get=pb.HashGetRequest(key="profile", fields=["name", "age"])),
                get("missing"),
            ]
        )
    )
    results = list(reply.results)
    assert [r.status.code for r in results] == [OK] * 8
    assert [r.WhichOneof("result") for r in results] == [
        "set",
        "get",
        "increment",
        "delete",
        "expire",
        "hash_set",
        "hash_get",
        "get",
    ]
    assert results[1].get.found and results[1].get.value == b"alice"
    assert results[1].get.version == results[0].set.version
    assert results[2].increment.int_value == 5 and results[2].increment.created
    assert results[3].delete.deleted == 1
    assert results[4].expire.found
    assert results[5].hash_set.added == 1
    assert [(f.field, f.found, f.value) for f in results[6].hash_get.fields] == [
        ("name", True, b"al"),
        ("age", False, b""),
    ]
    assert not results[7].get.found
    ttl = await cache.GetTtl(pb.GetTtlRequest(key="user:1"))
    assert 80 < ttl.ttl.seconds <= 90, "the expire in the batch applied"


async def test_operations_on_one_key_apply_in_request_order(cache):
    reply = await cache.Batch(
        pb.BatchRequest(
            operations=[
                put("seq", b"1"),
                op(increment=pb.IncrementRequest(key="seq", by_int=1)),
                get("seq"),
                op(delete=pb.DeleteRequest(keys=["seq"])),
                get("seq"),
            ]
        )
    )
    assert reply.results[1].increment.int_value == 2
    assert reply.results[2].get.value == b"2"
    assert reply.results[3].delete.deleted == 1
    assert not reply.results[4].get.found


async def test_each_operation_fails_alone_with_its_own_status(cache):
    await cache.Set(pb.SetRequest(key="text", value=b"abc"))
    reply = await cache.Batch(
        pb.BatchRequest(
            operations=[
                get(""),  # bad key
                put("tagged", b"v", tags=["t"]),  # tags are refused in a batch
                op(increment=pb.IncrementRequest(key="text")),  # not a number
                put("text", b"new", condition=pb.SET_CONDITION_IF_ABSENT),
                put("text", b"new", if_version=1),
                pb.BatchOperation(),  # no operation
                put("fine", b"ok"),
                op(expire=pb.ExpireRequest(key="fine")),  # ttl missing
            ]
        )
    )
    statuses = [(r.status.code, r.status.reason) for r in reply.results]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert statuses == [
        (invalid, "INVALID_ARGUMENT"),
        (invalid, "INVALID_ARGUMENT"),
        (grpc.StatusCode.FAILED_PRECONDITION.value[0], "NOT_A_NUMBER"),
        (grpc.StatusCode.FAILED_PRECONDITION.value[0], "KEY_EXISTS"),
        (grpc.StatusCode.ABORTED.value[0], "VERSION_MISMATCH"),
        (invalid, "INVALID_ARGUMENT"),
        (OK, ""),
        (invalid, "INVALID_ARGUMENT"),
    ]
    assert "tags" in reply.results[1].status.message
    assert reply.results[4].status.metadata["current_version"].isdigit()
    assert reply.results[0].WhichOneof("result") is None
    assert (await cache.Get(pb.GetRequest(key="text"))).value == b"abc"
    assert (await cache.Get(pb.GetRequest(key="fine"))).value == b"ok"
    assert not (await cache.Get(pb.GetRequest(key="tagged"))).found


async def test_batch_size_is_bounded(cache, cachet):
    empty = await rpc_error(cache.Batch(pb.BatchRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(empty) == ["operations"]
    limit = cachet.settings.limits.max_batch
    over = await rpc_error(
        cache.Batch(pb.BatchRequest(operations=[get(f"k{i}") for i in range(limit + 1)]))
    )
    assert over.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_keys_of_every_slot_in_one_batch(cache):
    """On Cluster the keys hash to every node: one pipeline per node, answers in order."""
    keys = [f"spread:{i}" for i in range(60)]
    written = await cache.Batch(pb.BatchRequest(operations=[put(k, k.encode()) for k in keys]))
    assert all(r.status.code == OK for r in written.results)
    read = await cache.Batch(pb.BatchRequest(operations=[get(k) for k in keys]))
    assert [r.get.value for r in read.results] == [k.encode() for k in keys]
    many = await cache.GetMany(pb.GetManyRequest(keys=keys))
    assert [e.version for e in many.entries] == [r.set.version for r in written.results]


async def test_namespaces_never_mix_in_batches_or_sessions(cachet):
    keys = [f"shared:{i}" for i in range(30)]
    names = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    async with channel_to(cachet.port, names[0]) as a, channel_to(cachet.port, names[1]) as b:
        stubs = [cache_pb2_grpc.CacheServiceStub(a), cache_pb2_grpc.CacheServiceStub(b)]
        await asyncio.gather(
            *(
                stub.Batch(pb.BatchRequest(operations=[put(k, f"{ns}/{k}".encode()) for k in keys]))
                for stub, ns in zip(stubs, names, strict=True)
            )
        )
        for stub, ns in zip(stubs, names, strict=True):
            read = await stub.Batch(pb.BatchRequest(operations=[get(k) for k in keys]))
            assert [r.get.value for r in read.results] == [f"{ns}/{k}".encode() for k in keys]
            answers = await _session(stub, [(i, get(k)) for i, k in enumerate(keys)])
            assert {i: r.get.value for i, r in answers.items()} == {
                i: f"{ns}/{k}".encode() for i, k in enumerate(keys)
            }


async def _session(
    stub: cache_pb2_grpc.CacheServiceStub, requests: list[tuple[int, pb.BatchOperation]]
) -> dict[int, pb.BatchResult]:
    call = stub.Session(iter(pb.SessionRequest(id=i, operation=o) for i, o in requests))
    answers: dict[int, pb.BatchResult] = {}
    async for response in call:
        assert response.id not in answers, "each request is answered once"
        answers[response.id] = response.result
    return answers


async def _packed_session(
    stub: cache_pb2_grpc.CacheServiceStub,
    messages: list[pb.SessionRequest],
) -> tuple[dict[int, pb.BatchResult], list[pb.SessionResponse]]:
    """Answers by id, from either shape, and the response messages as they came."""
    responses = [response async for response in stub.Session(iter(messages))]
    answers: dict[int, pb.BatchResult] = {}
    for response in responses:
        if response.HasField("result"):
            assert not response.answers, "a message answers one shape"
            pairs = [(response.id, response.result)]
        else:
            pairs = [(answer.id, answer.result) for answer in response.answers]
        for id_, result in pairs:
            assert id_ not in answers, "each operation is answered once"
            answers[id_] = result
    return answers, responses


def packed(*operations: tuple[int, pb.BatchOperation]) -> pb.SessionRequest:
    return pb.SessionRequest(
        operations=[pb.SessionOperation(id=i, operation=o) for i, o in operations]
    )


async def test_packed_operations_are_answered_packed(cache):
    writes = [(100 + i, put(f"p:{i}", str(i).encode())) for i in range(120)]
    reads = [(300 + i, get(f"p:{i}")) for i in range(120)]
    bad = (9, op(increment=pb.IncrementRequest(key="p:0", by_float=float("nan"))))
    alone_and_packed = pb.SessionRequest(id=7, operation=get("p:0"), operations=[])
    alone_and_packed.operations.add(id=8, operation=put("p:extra", b"x"))
    messages = [packed(*writes[:60]), packed(*writes[60:], bad), alone_and_packed]
    answers, responses = await _packed_session(cache, messages)
    assert set(answers) == {i for i, _ in writes} | {7, 8, 9}
    assert all(answers[i].set.version > 0 for i, _ in writes)
    assert answers[9].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[8].set.version > 0
    # The lone operation came back alone; the rest in at most one message per round.
    alone = [r for r in responses if r.HasField("result")]
    assert [r.id for r in alone] == [7]
    assert len(responses) - len(alone) <= len(messages)
    answers, responses = await _packed_session(cache, [packed(*reads)])
    assert [answers[i].get.value for i, _ in reads] == [str(i).encode() for i in range(120)]
    assert len(responses) == 1


@pytest.mark.topologies("standalone", reason="the message limit does not depend on the topology")
async def test_a_message_packing_more_than_256_runs_none_of_them(topology, redis_client):
    """256 per message whatever max_batch is (here lower): the clients pack up to 256."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    async with running(make_settings(topology.url, limits={"max_batch": 10})) as app:
        async with channel_to(app.port, namespace) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            over = packed(*((i, put(f"over:{i}", b"v")) for i in range(257)))
            within = packed(*((1000 + i, put(f"within:{i}", b"v")) for i in range(256)))
            answers, _ = await _packed_session(stub, [over, within])
    for i in range(257):
        assert answers[i].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "at most 256 operations" in answers[i].status.message
    assert not redis_client.exists(redis_key(namespace, Kind.DATA, "over:0"))
    assert all(answers[1000 + i].set.version > 0 for i in range(256)), "the stream went on"


@pytest.mark.topologies("standalone", reason="the byte budget does not depend on the topology")
async def test_packed_answers_are_split_to_fit_the_message_size(topology):
    settings = make_settings(topology.url, limits={"max_message_bytes": 4096})
    async with running(settings) as app:
        async with channel_to(app.port, f"t-{uuid.uuid4().hex[:8]}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for name in "abcdef":
                await stub.Set(pb.SetRequest(key=name, value=name.encode() * 1500))
            reads = [(i, get(name)) for i, name in enumerate("abcdef")]
            answers, responses = await _packed_session(stub, [packed(*reads)])
    assert [answers[i].get.value for i in range(6)] == [n.encode() * 1500 for n in "abcdef"]
    assert len(responses) >= 3, "two 1.5 kB answers fit in 4096 bytes, three do not"
    assert all(response.ByteSize() <= 4096 for response in responses)


@pytest.mark.topologies("standalone", reason="the byte budget does not depend on the topology")
async def test_packed_answers_stay_within_what_a_client_receives_by_default(topology):
    """Under the default 8 MiB message size, answers are still packed a MiB at most: a
    client receives 4 MiB by gRPC's default, and 12 answers of 300 kB are 3.6 MB."""
    async with running(make_settings(topology.url)) as app:
        async with channel_to(app.port, f"t-{uuid.uuid4().hex[:8]}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            value = b"v" * 300_000
            await stub.Batch(
                pb.BatchRequest(operations=[put(f"big:{i}", value) for i in range(12)])
            )
            reads = [(i, get(f"big:{i}")) for i in range(12)]
            answers, responses = await _packed_session(stub, [packed(*reads)])
    assert [answers[i].get.value for i in range(12)] == [value] * 12
    assert all(response.ByteSize() <= 1 << 20 for response in responses)
    assert len(responses) >= 4


async def test_session_answers_every_request_by_its_id(cache):
    requests = [(1000 + i, put(f"s:{i}", str(i).encode())) for i in range(150)]
    requests += [(5000 + i, get(f"s:{i}")) for i in range(150)]
    requests.append((9, op(increment=pb.IncrementRequest(key="s:0", by_float=float("nan")))))
    requests.append((10, pb.BatchOperation()))
    answers = await _session(cache, requests)
    assert set(answers) == {i for i, _ in requests}
    assert all(answers[1000 + i].set.version > 0 for i in range(150))
    found = [answers[5000 + i].get for i in range(150)]
    # Reads race the writes of the same stream (they are independent), so each either
    # saw its write or nothing, never another key's value.
    assert all(g.value == str(i).encode() for i, g in enumerate(found) if g.found)
    assert answers[9].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[10].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    again = await _session(cache, [(i, get(f"s:{i}")) for i in range(150)])
    assert [again[i].get.value for i in range(150)] == [str(i).encode() for i in range(150)]


async def test_an_empty_session_ends_ok(cache):
    assert await _session(cache, []) == {}


@pytest.mark.topologies("standalone", reason="roles do not depend on the topology")
async def test_roles_decide_per_batch_and_per_session_message(topology):
    read_key, write_key = "read-" + uuid.uuid4().hex, "write-" + uuid.uuid4().hex
    auth = {
        "mode": "required",
        "api_keys": [
            {
                "id": name,
                "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                "namespaces": ["batch"],
                "roles": roles,
            }
            for name, secret, roles in (
                ("reader", read_key, ["read"]),
                ("writer", write_key, ["write"]),
            )
        ],
    }
    async with running(make_settings(topology.url, auth=auth)) as app:
        async with channel_to(app.port, "batch") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)

            def as_(secret: str) -> list[tuple[str, str]]:
                return [("authorization", f"Bearer {secret}")]

            writes = pb.BatchRequest(operations=[put("k", b"v"), get("k")])
            reads = pb.BatchRequest(operations=[get("k")])
            refused = await rpc_error(stub.Batch(writes, metadata=as_(read_key)))
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (await stub.Batch(writes, metadata=as_(write_key))).results[1].get.found
            assert (await stub.Batch(reads, metadata=as_(read_key))).results[0].get.found
            # `write` admits the reads of a batch too, with writes or without.
            assert (await stub.Batch(reads, metadata=as_(write_key))).results[0].get.found

            requests = [
                pb.SessionRequest(id=1, operation=get("k")),
                pb.SessionRequest(id=2, operation=put("k", b"w")),
            ]
            denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
            for secret, expected in (
                (read_key, {1: OK, 2: denied}),
                (write_key, {1: OK, 2: OK}),
            ):
                call = stub.Session(iter(requests), metadata=as_(secret))
                statuses = {r.id: r.result.status async for r in call}
                assert {id_: status.code for id_, status in statuses.items()} == expected
                packed_call = stub.Session(
                    iter([packed(*((r.id, r.operation) for r in requests))]),
                    metadata=as_(secret),
                )
                packed_codes = {
                    a.id: a.result.status.code async for r in packed_call for a in r.answers
                }
                assert packed_codes == expected
                if expected[2] == denied:  # the reason a unary call's refusal has
                    assert statuses[2].reason == "ROLE_NOT_GRANTED"
            # No requests: gRPC's client fails its own send (INTERNAL "Internal error from
            # Core") when the server ends the stream while requests are still going out.
            anonymous = stub.Session(iter([]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [r async for r in anonymous]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.topologies("standalone", reason="stops its own redis-server")
async def test_redis_down_answers_unavailable_and_batches_recover():
    with standalone() as redis_proc:
        async with running(make_settings(redis_proc.url)) as app:
            async with channel_to(app.port, "down") as channel:
                stub = cache_pb2_grpc.CacheServiceStub(channel)
                request = pb.BatchRequest(operations=[put("k", b"v"), get("k")])
                assert (await stub.Batch(request)).results[1].get.found
                redis_proc.kill()
                failed = await rpc_error(stub.Batch(request, timeout=10))
                assert failed.code() == grpc.StatusCode.UNAVAILABLE
                answers = await _session(stub, [(1, get("k"))])
                assert answers[1].status.code == grpc.StatusCode.UNAVAILABLE.value[0]
                redis_proc.start()
                for _ in range(50):
                    try:
                        reply = await stub.Batch(request, timeout=5)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
                assert reply.results[1].get.value == b"v"


async def test_gets_read_together_keep_their_own_options(cache):
    await cache.Set(pb.SetRequest(key="a", value=b"1", ttl=Duration(seconds=100)))
    await cache.Set(pb.SetRequest(key="b", value=b"2", ttl=Duration(seconds=100)))
    reply = await cache.Batch(
        pb.BatchRequest(
            operations=[
                op(get=pb.GetRequest(key="a", include_ttl=True)),
                get("b"),
                get(""),  # refused alone; the reads around it still run
                op(get=pb.GetRequest(key="b", early_refresh_beta=-1)),
                get("a"),
            ]
        )
    )
    first, second, bad, beta, last = reply.results
    assert first.get.value == b"1" and 90 < first.get.ttl.seconds <= 100
    assert second.get.value == b"2" and not second.get.HasField("ttl")
    assert bad.status.code == beta.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert last.get.value == b"1" and not last.get.HasField("ttl")


@pytest.mark.topologies("standalone", reason="needs a primary without replicas")
async def test_with_replica_acknowledgement_each_write_waits_alone(topology):
    settings = make_settings(
        topology.url, redis_min_replicas_acked=1, redis_replica_ack_timeout="PT0.1S"
    )
    async with running(settings) as app:
        async with channel_to(app.port, f"t-{uuid.uuid4().hex[:8]}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            reply = await stub.Batch(
                pb.BatchRequest(
                    operations=[
                        put("k", b"v"),
                        get("k"),
                        op(increment=pb.IncrementRequest(key="n")),
                        get("missing"),
                    ]
                )
            )
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    first, read, counted, missing = reply.results
    assert (first.status.code, first.status.reason) == (unavailable, "NOT_ENOUGH_REPLICAS")
    assert (counted.status.code, counted.status.reason) == (unavailable, "NOT_ENOUGH_REPLICAS")
    # The writes did happen on the primary (as the unary calls document), reads answer.
    assert read.status.code == OK and missing.status.code == OK and not missing.get.found


async def test_a_retried_increment_with_a_request_id_adds_once(cache):
    retried = op(increment=pb.IncrementRequest(key="paid", by_int=10, request_id="order-7"))
    first = await cache.Batch(pb.BatchRequest(operations=[retried]))
    again = await cache.Batch(pb.BatchRequest(operations=[retried, get("paid")]))
    assert first.results[0].increment.int_value == 10
    assert again.results[0].increment.int_value == 10, "the retry answers the first result"
    assert again.results[1].get.value == b"10"


@pytest.mark.topologies("standalone", reason="the byte budget does not depend on the topology")
async def test_gets_over_the_message_size_fail_without_building_the_answer(topology):
    settings = make_settings(topology.url, limits={"max_message_bytes": 4096})
    async with running(settings) as app:
        async with channel_to(app.port, f"t-{uuid.uuid4().hex[:8]}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for key in ("{g}:a", "{g}:b"):
                await stub.Set(pb.SetRequest(key=key, value=b"x" * 3000))
            reply = await stub.Batch(
                pb.BatchRequest(operations=[get("{g}:a"), get("{g}:b"), put("c", b"1")])
            )
    first, second, written = reply.results
    assert first.status.reason == second.status.reason == "RESPONSE_TOO_LARGE"
    assert first.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert written.status.code == OK, "the other operations still ran"


@pytest.mark.topologies("standalone", reason="the byte budget does not depend on the topology")
async def test_each_session_get_has_the_whole_message_size_to_itself(topology, redis_client):
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    settings = make_settings(topology.url, limits={"max_message_bytes": 4096})
    # Written past the server (whose message limit would refuse it): one value that no
    # answer can carry.
    redis_client.set(redis_key(namespace, Kind.DATA, "huge"), b"x" * 5000)
    async with running(settings) as app:
        async with channel_to(app.port, namespace) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Set(pb.SetRequest(key="{g}:a", value=b"a" * 3000))
            await stub.Set(pb.SetRequest(key="{g}:b", value=b"b" * 3000))
            # Many reads at once, so that rounds carry several: together they are far
            # over 4096 bytes, each alone fits, and the huge one fails alone.
            requests = [(i, get("{g}:a" if i % 2 else "{g}:b")) for i in range(40)]
            answers = await _session(stub, [*requests, (99, get("huge"))])
    assert all(
        answers[i].get.value == (b"a" * 3000 if i % 2 else b"b" * 3000) for i, _ in requests
    ), {i: answers[i].status for i, _ in requests if answers[i].status.code}
    assert answers[99].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert answers[99].status.reason == "RESPONSE_TOO_LARGE"


async def test_a_session_outlives_redis_going_away_and_coming_back():
    """Redis killed under an open Session: the next request answers UNAVAILABLE in its
    own result and the stream stays open; once Redis is back, the same stream's
    requests succeed again."""
    redis = RedisProcess().start()
    try:
        async with running(make_settings(redis.url)) as app:
            channel = channel_to(app.port, "session-fault")
            requests: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()

            async def outgoing():
                while (request := await requests.get()) is not None:
                    yield request

            call = cache_pb2_grpc.CacheServiceStub(channel).Session(outgoing())
            answers = call.__aiter__()

            async def ask(id_: int, operation: pb.BatchOperation) -> pb.SessionResponse:
                await requests.put(pb.SessionRequest(id=id_, operation=operation))
                return await asyncio.wait_for(answers.__anext__(), 30)

            put = pb.BatchOperation(set=pb.SetRequest(key="k", value=b"v"))
            get = pb.BatchOperation(get=pb.GetRequest(key="k"))
            try:
                assert (await ask(1, put)).result.status.code == 0
                redis.kill()
                down = await ask(2, get)
                assert down.id == 2
                assert down.result.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
                # Packed, every operation of the message answers UNAVAILABLE on its own.
                await requests.put(packed((10, get), (11, put), (12, get)))
                down_packed = await asyncio.wait_for(answers.__anext__(), 30)
                assert {a.id: a.result.status.code for a in down_packed.answers} == {
                    i: grpc.StatusCode.UNAVAILABLE.value[0] for i in (10, 11, 12)
                }
                redis.start()
                for n in range(3, 100):  # the service reconnects on its own
                    answer = await ask(n, put)
                    if answer.result.status.code == 0:
                        break
                    await asyncio.sleep(0.2)
                assert answer.result.status.code == 0, answer
                again = await ask(n + 1, get)
                assert again.result.get.found and again.result.get.value == b"v"
                await requests.put(None)
                assert [answer async for answer in answers] == []
            finally:
                await channel.close()
    finally:
        redis.stop()
