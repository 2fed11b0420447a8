"""Calls with deadlines of a few milliseconds end DEADLINE_EXCEEDED (or OK), and the race
between the handler's timeout and gRPC's own deadline logs no ERROR for a call that
already ended.

CANCELLED can still reach a client from gRPC itself: when a call's deadline passes
before the server even dispatches it (a starved machine), gRPC's server core resets the
stream, and a client whose own deadline timer has not run yet reports that reset as
CANCELLED. So every CANCELLED must be a call cachet never saw."""

from __future__ import annotations

import asyncio
import collections
import logging

from cachet_client.proto.cachet.cache.v1 import cache_pb2

CALLS_PER_DEADLINE = 400
DEADLINES = (0.001, 0.002, 0.003, 0.005)
GET = "/cachet.cache.v1.CacheService/Get"


async def test_short_deadlines_end_deadline_exceeded_without_error_logs(cachet, cache, caplog):
    await cache.Set(cache_pb2.SetRequest(key="k", value=b"v"))
    codes: collections.Counter[str] = collections.Counter()
    stats = cachet.servicers[0].deps.stats
    seen_before = stats.methods[GET].calls

    async def one(deadline: float) -> None:
        try:
            await cache.Get(cache_pb2.GetRequest(key="k"), timeout=deadline)
            codes["OK"] += 1
        except Exception as error:
            codes[error.code().name] += 1  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO):
        for deadline in DEADLINES:
            for _ in range(CALLS_PER_DEADLINE // 40):
                await asyncio.gather(*(one(deadline) for _ in range(40)))
        await asyncio.sleep(0.2)  # let late handler ends log, if they would
    total = CALLS_PER_DEADLINE * len(DEADLINES)
    assert sum(codes.values()) == total
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED", "CANCELLED"}, codes
    never_dispatched = total - (stats.methods[GET].calls - seen_before)
    assert codes["CANCELLED"] <= never_dispatched, (codes, never_dispatched)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]


def test_grpc_error_for_a_call_that_already_ended_is_not_logged_as_an_error(cachet, caplog):
    """What grpc logs when a handler's answer meets a call its deadline already ended
    (the race above, too rare to force): the corridor keeps it from reading as a fault."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    with caplog.at_level(logging.INFO):
        try:
            raise RuntimeError("Failed 'execute_batch': ...")
        except RuntimeError:
            grpc_log.exception("ExecuteBatchError raised in core by servicer method [%s]", GET)
        grpc_log.error("some other grpc error")
    ended, other = [r for r in caplog.records if r.name == grpc_log.name]
    assert ended.levelno == logging.INFO and ended.exc_info is None
    assert "before its answer was sent" in ended.getMessage()
    assert other.levelno == logging.ERROR, "other grpc errors stay errors"
