"""`grpc.health.v1.Health` with the inference service's request decoding.

The health logic is grpcio-health-checking's own `HealthServicer` (per-service status, Watch
streams, graceful shutdown); only the registration is ours. The stock one answers a body that
does not parse as a `HealthCheckRequest` UNKNOWN ("Unexpected DecodeError"), which reads as a
server fault; this one answers INVALID_ARGUMENT, like every method of the inference service.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from kubemaas_server.servicer import UndecodableRequest, abort_with, request_decoder

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def add_health_service(health: Any, server: Any) -> None:
    """Registers `health` (a grpc_health.v1 aio `HealthServicer`) on a grpc.aio server."""

    async def check(request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        return await health.Check(request, context)

    async def watch(request: Any, context: Any) -> None:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        await health.Watch(request, context)  # it writes each status with context.write

    decode = request_decoder(health_pb2.HealthCheckRequest)
    encode = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=decode, response_serializer=encode
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=decode, response_serializer=encode
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, handlers),))
    server.add_registered_method_handlers(HEALTH_SERVICE, handlers)
