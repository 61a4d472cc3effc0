"""gRPC's standard services, health and reflection, with the inference service's request decoding.

Their logic is the stock one (grpcio-health-checking's `HealthServicer`: per-service status,
Watch streams, graceful shutdown; grpcio-reflection's `ReflectionServicer`); only the
registration is ours. The stock registration answers a body that does not parse as the method's
request UNKNOWN ("Unexpected DecodeError"), which reads as a server fault; this one answers
INVALID_ARGUMENT, like every method of the inference service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import _async as reflection_async
from grpc_reflection.v1alpha import reflection, reflection_pb2

from kubemaas_server.servicer import UndecodableRequest, abort_with, request_decoder

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE = reflection.SERVICE_NAME


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
    _register(
        server,
        HEALTH_SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=decode, response_serializer=encode
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=decode, response_serializer=encode
            ),
        },
    )


def add_reflection_service(service_names: Sequence[str], server: Any, *, pool: Any) -> None:
    """Server reflection over `service_names`, answering from the descriptor `pool`."""
    servicer = reflection_async.ReflectionServicer(service_names, pool=pool)

    async def info(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async def decoded() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, UndecodableRequest):
                    await abort_with(context, request.error())
                yield request

        async for response in servicer.ServerReflectionInfo(decoded(), context):
            yield response

    _register(
        server,
        REFLECTION_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                info,
                request_deserializer=request_decoder(reflection_pb2.ServerReflectionRequest),
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )


def _register(server: Any, service: str, handlers: dict[str, Any]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
