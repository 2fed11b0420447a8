"""EventBusService: lands with issue 5; until then its methods answer UNIMPLEMENTED."""

from __future__ import annotations

from cachet_client.proto.cachet.eventbus.v1 import eventbus_pb2_grpc

from .base import Servicer


class EventBusService(Servicer, eventbus_pb2_grpc.EventBusServiceServicer):
    pass
