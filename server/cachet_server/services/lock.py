"""LockService: lands with issue 4; until then its methods answer UNIMPLEMENTED."""

from __future__ import annotations

from cachet_client.proto.cachet.lock.v1 import lock_pb2_grpc

from .base import Servicer


class LockService(Servicer, lock_pb2_grpc.LockServiceServicer):
    pass
