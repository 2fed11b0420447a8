"""backend/connection.py: redis-py's asyncio writes without a Task per command, with the
same timeout and error behaviour, against a real redis-server."""

from __future__ import annotations

import hashlib
import inspect
import time

import pytest
import redis.asyncio as aioredis
from cachet_server.backend import connection
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_procs import RedisProcess

pytestmark = pytest.mark.topologies("standalone", reason="one connection's write path")

# The source of redis-py 8.1.0's AbstractConnection.send_packed_command, which
# connection.py re-implements; a redis-py upgrade that changes it must be reviewed.
REPLACED_SOURCE_SHA256 = "baaeabd916209157db40455f034a0bac6fb3e2db902271313e0702bcbc678321"


def test_the_replaced_method_is_the_one_reviewed():
    source = inspect.getsource(connection.REPLACED)
    assert hashlib.sha256(source.encode()).hexdigest() == REPLACED_SOURCE_SHA256
    assert "asyncio.wait_for" in source, "redis-py still makes a Task per write"


async def test_commands_go_through_and_a_stuck_write_times_out():
    connection.install()
    assert AbstractConnection.send_packed_command is connection.send_packed_command
    redis_proc = RedisProcess().start()
    client = aioredis.Redis(
        host="127.0.0.1", port=redis_proc.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        await client.set("k", b"v")
        assert await client.get("k") == b"v"
        redis_proc.pause()  # it reads nothing: a large write fills the socket buffers
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="writing"):
            await client.set("big", b"x" * (128 * 1024 * 1024))
        assert time.monotonic() - started < 30
        redis_proc.resume()
        assert await client.get("k") == b"v", "a new connection replaces the dropped one"
    finally:
        redis_proc.resume()
        await client.aclose()
        redis_proc.stop()
