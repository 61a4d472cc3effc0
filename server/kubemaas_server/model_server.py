"""Assembles and runs one model server: registry, gRPC services, health, reflection, the gRPC
port itself, plaintext or TLS (`kubemaas_server.tls`), and the plain HTTP port for metrics and
health probes (`kubemaas_server.http_endpoints`).

One asyncio event loop carries every RPC (grpc.aio); each model computes in a thread of its own.
Shutdown (SIGTERM or SIGINT) is graceful: health and readiness turn NOT_SERVING first (the HTTP
ready paths 503), queued and running requests finish, then the gRPC server stops with a bounded
grace, the HTTP port closes last, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from kubemaas.logs import kv
from kubemaas_server.http_endpoints import HttpEndpoints
from kubemaas_server.metrics import ServerMetrics
from kubemaas_server.model_config import BatchingOverride, Device
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.repository import ModelRegistry, load_repository
from kubemaas_server.servicer import InferenceServicer, add_inference_service
from kubemaas_server.standard_services import (
    HEALTH_SERVICE,
    REFLECTION_SERVICE,
    add_health_service,
    add_reflection_service,
)
from kubemaas_server.tls import ServerTls, TlsMode

log = logging.getLogger(__name__)

SERVER_NAME = "kubemaas"
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# The interpreter hands the GIL to a waiting thread only every `switch interval` (5 ms by
# default). A model thread returning from a forward pass would otherwise sit idle that long
# behind the busy event loop; at 0.5 ms the loop yields often enough to keep the model busy.
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True, slots=True)
class ServerOptions:
    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_port: int = 8002  # metrics and HTTP health; 0 picks a free port; -1 disables it
    max_message_bytes: int = 64 * 1024 * 1024
    device: Device | None = None  # overrides every model's `device`
    torch_threads: int | None = None
    grace_seconds: float = 10.0
    warm_up: bool = True
    # None: plaintext gRPC. The metrics port is plain HTTP either way: kubelet probes it, and
    # kubelet's probes cannot speak TLS (nor can its `grpc:` probes reach a TLS gRPC port).
    batching: BatchingOverride | None = None  # over every model's model.yaml (spec.batching)
    tls: ServerTls | None = None


def _server_version() -> str:
    from kubemaas import __version__

    return str(__version__)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class ModelServer:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.metrics = ServerMetrics()
        self.registry: ModelRegistry | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._server: Any = None
        self._servicer: InferenceServicer | None = None
        self._health: Any = None
        self._http: HttpEndpoints | None = None
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Loads the repository, then starts serving; returns once the ports are bound."""
        from kubemaas_server.runtime import configure_torch

        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        configure_torch(threads=self.options.torch_threads)
        self.registry = await asyncio.to_thread(
            load_repository,
            self.options.model_repository,
            metrics=self.metrics,
            device=self.options.device,
            warm_up=self.options.warm_up,
            batching=self.options.batching,
        )
        limit = self.options.max_message_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._servicer = servicer = InferenceServicer(
            self.registry, self.metrics, name=SERVER_NAME, version=_server_version()
        )
        add_inference_service(servicer, self._server)
        self._health = health_async.HealthServicer()
        add_health_service(self._health, self._server)
        # Our protocol descriptors live in a private pool (see protogen); reflection answers from
        # that pool, so it also needs the health and reflection files in it.
        pool = pb.DESCRIPTOR.pool
        for descriptor in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
            try:
                pool.FindFileByName(descriptor.name)
            except KeyError:
                pool.AddSerializedFile(descriptor.serialized_pb)
        add_reflection_service(
            (INFERENCE_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE), self._server, pool=pool
        )
        address = _address(self.options.host, self.options.grpc_port)
        tls = self.options.tls
        try:
            if tls is None:
                self.grpc_port = self._server.add_insecure_port(address)
            else:
                self.grpc_port = self._server.add_secure_port(address, tls.server_credentials())
        except RuntimeError as error:  # grpc reports a failed bind this way
            raise OSError(f"cannot bind the gRPC port {address}: is it in use?") from error
        self.registry.start()
        await self._server.start()
        await self._publish_health()
        if self.options.metrics_port >= 0:
            # The HTTP health answers read the servicer's readiness, the state behind ServerReady
            # and ModelReady, so they cannot disagree with gRPC and turn 503 when draining starts.
            self._http = HttpEndpoints(
                self.metrics.registry,
                server_ready=lambda: servicer.ready,
                model_ready=servicer.model_ready,
            )
            self.metrics_port = self._http.start(self.options.host, self.options.metrics_port)
        log.info(
            "serving",
            extra=kv(
                grpc_port=self.grpc_port,
                metrics_port=self.metrics_port,
                host=self.options.host,
                models=len(self.registry.models),
                ready=servicer.ready,
                tls=tls.mode if tls else TlsMode.OFF,
                **(tls.log_fields() if tls else {}),
            ),
        )
        if tls is not None and tls.expired():
            # Served anyway (this clock may be the wrong one), but clients that check will refuse it.
            log.warning("tls certificate expired", extra=kv(**tls.log_fields()))

    async def _publish_health(self) -> None:
        assert self.registry is not None and self._servicer is not None
        overall = (
            health_pb2.HealthCheckResponse.SERVING
            if self._servicer.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", overall)
        await self._health.set(INFERENCE_SERVICE, overall)
        for model in self.registry.models.values():
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if model.ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self._health.set(model.name, status)

    def stop_soon(self) -> None:
        """Signal-handler entry: starts the graceful stop once."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        """NOT_SERVING first, then finish queued and running requests, then stop, all within the grace."""
        started = time.monotonic()
        grace = self.options.grace_seconds
        log.info("stopping", extra=kv(grace_seconds=grace))
        if self._servicer is not None:
            self._servicer.draining = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.registry is not None:
            try:
                await asyncio.wait_for(self.registry.close(), grace)
            except TimeoutError:
                log.warning("requests still queued at the end of the grace period")
        if self._server is not None:
            await self._server.stop(max(0.0, grace - (time.monotonic() - started)))
        if self._http is not None:
            # Last: probes and scrapes get answers (ready 503) for the whole drain.
            self._http.stop()
            self._http = None
        log.info("stopped", extra=kv(seconds=round(time.monotonic() - started, 3)))
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(options: ServerOptions) -> None:
    """Runs a server until SIGTERM or SIGINT, then stops it gracefully."""
    server = ModelServer(options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop_soon)
    await server.start()
    await server.wait_stopped()
