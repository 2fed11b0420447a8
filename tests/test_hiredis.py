"""hiredis parses Redis replies (pinned in pyproject.toml), and the server says so at
start-up, so a deployment that lost it shows up in the log."""

from __future__ import annotations

import redis.asyncio.connection
from redis.utils import HIREDIS_AVAILABLE

from .server_procs import CachetProcess


def test_hiredis_is_installed_and_used():
    assert HIREDIS_AVAILABLE
    assert redis.asyncio.connection.DefaultParser.__name__ == "_AsyncHiredisParser"


def test_the_server_confirms_hiredis_at_start_up(redis_standalone):
    server = CachetProcess(redis_standalone.url).start()
    try:
        assert server.terminate() == 0
        output = server.output()
    finally:
        server.stop()
    assert "redis replies parsed by hiredis" in output
