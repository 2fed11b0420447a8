"""Envoy's envoy.service.ratelimit.v3.RateLimitService: lands with issue 4."""

from __future__ import annotations

from cachet_client.proto.envoy.service.ratelimit.v3 import rls_pb2_grpc

from .base import Servicer


class EnvoyRateLimitService(Servicer, rls_pb2_grpc.RateLimitServiceServicer):
    pass
