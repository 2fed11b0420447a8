"""Baseline: a bare grpc.aio + uvloop server answering CacheService/Get with a fixed
value of the size cachet's rows use, and nothing else (no interceptor, no Redis).

It is the floor of a Python gRPC unary call of Get's shape on this machine:
`unary_get_vs_echo` compares cachet against it.

    python bench/echo_server.py 127.0.0.1:50099 100
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from cachet_client.proto.cachet.cache.v1 import cache_pb2 as pb
from cachet_client.proto.cachet.cache.v1 import cache_pb2_grpc
from grpc import aio


class EchoCache(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, value_bytes: int) -> None:
        self.value = b"x" * value_bytes

    async def Get(self, request: pb.GetRequest, context: aio.ServicerContext) -> pb.GetResponse:  # type: ignore[type-arg]
        return pb.GetResponse(found=True, value=self.value, version=1)


async def serve(listen: str, value_bytes: int) -> None:
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    cache_pb2_grpc.add_CacheServiceServicer_to_server(EchoCache(value_bytes), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
