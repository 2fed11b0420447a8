"""One change to redis-py's asyncio connection: no Task per command.

redis-py (8.1, pinned) writes each command under `asyncio.wait_for` when the
connection has a socket timeout, and `wait_for` runs the write in a Task of its own:
tens of µs of CPU on every Redis round trip of every RPC. `install()` replaces that one
method with the same code bounded by `asyncio.timeout` instead, which cancels the
write in the calling task: the same timeout, the same errors (TimeoutError "Timeout
writing to socket", ConnectionError on OSError), the same disconnect on any failure,
and no Task. tests/test_connection_patch.py pins the source of the method it replaces,
so a redis-py upgrade that changes it fails loudly instead of being silently undone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REPLACED = AbstractConnection.send_packed_command


async def send_packed_command(
    self: Any, command: bytes | str | Iterable[bytes], check_health: bool = True
) -> None:
    if not self.is_connected:
        await self.connect_check_health(check_health=False)
    if check_health:
        await self.check_health()
    try:
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        self._writer.writelines(command)
        if self.socket_timeout:
            async with asyncio.timeout(self.socket_timeout):
                await self._writer.drain()
        else:
            await self._writer.drain()
    except TimeoutError:
        await self.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as e:
        await self.disconnect(nowait=True)
        err_no, errmsg = ("UNKNOWN", e.args[0]) if len(e.args) == 1 else e.args[:2]
        raise RedisConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
    except BaseException:
        # As redis-py: a write cut short leaves the connection unusable.
        await self.disconnect(nowait=True)
        raise


def install() -> None:
    """Make every redis-py asyncio connection write without a Task (idempotent)."""
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
