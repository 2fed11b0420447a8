"""A lock holder in a process of its own, for the pause and kill tests of test_lock_hold.py.

    python -m tests.lock_holder_proc PORT NAMESPACE LOCK hold    TTL_MS RENEW_MS
    python -m tests.lock_holder_proc PORT NAMESPACE LOCK acquire TTL_MS RENEW_MS

`hold` keeps the lock with a Hold stream (the server renews it). `acquire` takes it
with Acquire and renews it itself with Extend every RENEW_MS. Either prints one
JSON line per event on stdout: {"event": "acquired", "fencing_token": N} first.
In `acquire` mode, a line `write KEY` on stdin makes it write KEY through
CacheService.Set conditioned on its fencing token, and print the outcome as
{"event": "write", "code": ..., "reason": ...}; renewal failures are printed as
{"event": "renew", ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
from cachet_client.proto.cachet.cache.v1 import cache_pb2, cache_pb2_grpc
from cachet_client.proto.cachet.lock.v1 import lock_pb2 as pb
from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from .proto_time import ms


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


def reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


async def hold(locks, metadata, name: str, ttl_ms: int, renew_ms: int) -> None:
    call = locks.Hold(metadata=metadata)
    await call.write(
        pb.HoldRequest(
            acquire=pb.HoldAcquire(name=name, ttl=ms(ttl_ms), renew_interval=ms(renew_ms))
        )
    )
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "acquired":
            say(event="acquired", fencing_token=event.acquired.fencing_token)
        else:
            say(event=kind)


async def acquire(locks, cache, metadata, name: str, ttl_ms: int, renew_ms: int) -> None:
    grant = await locks.Acquire(pb.AcquireRequest(name=name, ttl=ms(ttl_ms)), metadata=metadata)
    say(event="acquired", fencing_token=grant.fencing_token)

    async def renew() -> None:
        while True:
            await asyncio.sleep(renew_ms / 1000)
            try:
                await locks.Extend(
                    pb.ExtendRequest(name=name, owner_token=grant.owner_token, ttl=ms(ttl_ms)),
                    metadata=metadata,
                )
            except grpc.aio.AioRpcError as error:
                say(event="renew", code=error.code().name, reason=reason(error))
                return

    renewing = asyncio.ensure_future(renew())
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, _, key = line.strip().partition(" ")
        if command != "write":
            continue
        try:
            await cache.Set(
                cache_pb2.SetRequest(
                    key=key, value=b"from the paused holder", fencing_token=grant.fencing_token
                ),
                metadata=metadata,
            )
            say(event="write", code="OK", reason="")
        except grpc.aio.AioRpcError as error:
            say(event="write", code=error.code().name, reason=reason(error))
    renewing.cancel()


async def main() -> None:
    port, namespace, name, mode, ttl_ms, renew_ms = sys.argv[1:7]
    metadata = (("cachet-namespace", namespace),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        locks = lock_pb2_grpc.LockServiceStub(channel)
        if mode == "hold":
            await hold(locks, metadata, name, int(ttl_ms), int(renew_ms))
        else:
            cache = cache_pb2_grpc.CacheServiceStub(channel)
            await acquire(locks, cache, metadata, name, int(ttl_ms), int(renew_ms))


if __name__ == "__main__":
    asyncio.run(main())
