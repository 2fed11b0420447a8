"""AdminService: lands with issue 5; until then its methods answer UNIMPLEMENTED."""

from __future__ import annotations

from cachet_client.proto.cachet.admin.v1 import admin_pb2_grpc

from .base import Servicer


class AdminService(Servicer, admin_pb2_grpc.AdminServiceServicer):
    pass
