"""Baseline: a bare grpc.aio + uvloop server answering CacheService/Get with a fixed
value of the size cachet's rows use, and nothing else (no interceptor, no Redis).

It is the floor of a Python gRPC unary call of Get's shape on this machine:
`unary_get_vs_echo` compares cachet against it. With `--processes N` it runs N such
servers sharing the port (SO_REUSEPORT), as `cachet-server --workers N` does: what two
processes gain on the machine and placement at hand, with nothing of cachet's in them.

    python bench/echo_server.py 127.0.0.1:50099 100 [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
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


async def serve(listen: str, value_bytes: int, *, reuse_port: bool) -> None:
    server = aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    cache_pb2_grpc.add_CacheServiceServicer_to_server(EchoCache(value_bytes), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1)


def supervise(listen: str, value_bytes: int, processes: int) -> None:
    """`processes` servers on one port; SIGTERM stops them all."""
    command = [sys.executable, __file__, listen, str(value_bytes), "--reuse-port"]
    children = [subprocess.Popen(command) for _ in range(processes)]

    def stop(signum: int, frame: object) -> None:
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("listen")
    parser.add_argument("value_bytes", type=int)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes > 1:
        supervise(args.listen, args.value_bytes, args.processes)
    else:
        uvloop.run(serve(args.listen, args.value_bytes, reuse_port=args.reuse_port))
