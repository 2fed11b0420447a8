"""RateLimitService: lands with issue 4; until then its methods answer UNIMPLEMENTED."""

from __future__ import annotations

from cachet_client.proto.cachet.ratelimit.v1 import ratelimit_pb2_grpc

from .base import Servicer


class RateLimitService(Servicer, ratelimit_pb2_grpc.RateLimitServiceServicer):
    pass
