"""Calls with deadlines of a few milliseconds end DEADLINE_EXCEEDED (or OK), never
CANCELLED, and the race between the handler's timeout and gRPC's own deadline logs no
ERROR for a call that already ended."""

from __future__ import annotations

import asyncio
import collections
import logging

from cachet_client.proto.cachet.cache.v1 import cache_pb2

CALLS_PER_DEADLINE = 400
DEADLINES = (0.001, 0.002, 0.003, 0.005)


async def test_short_deadlines_end_deadline_exceeded_without_error_logs(cache, caplog):
    await cache.Set(cache_pb2.SetRequest(key="k", value=b"v"))
    codes: collections.Counter[str] = collections.Counter()

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
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
    assert sum(codes.values()) == CALLS_PER_DEADLINE * len(DEADLINES)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]
