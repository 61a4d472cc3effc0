"""Fixtures: a repository of small TorchScript models and an in-process server serving it.

The server runs on its own asyncio loop in a background thread, as `kubemaas serve` would run
it, on ports the OS picks; tests talk to it through real gRPC clients (tritonclient, raw stubs,
grpc.health.v1, reflection) and plain HTTP (`http_get`) over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton

from kubemaas_server.model_server import ModelServer, ServerOptions
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .models import build_repository

MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass
class RunningServer:
    server: ModelServer
    loop: asyncio.AbstractEventLoop
    repository: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def http_get(
    port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> HttpAnswer:
    """One plain HTTP request to 127.0.0.1:`port`; every HTTP status comes back as a value."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(
            response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def start_server(repository: Path, **options: object) -> RunningServer:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    server = ModelServer(ServerOptions(repository, grpc_port=0, metrics_port=0, **options))  # type: ignore[arg-type]
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=120)
    return RunningServer(server, loop, repository)


def stop_server(running: RunningServer) -> None:
    asyncio.run_coroutine_threadsafe(running.server.stop(), running.loop).result(timeout=30)
    running.loop.call_soon_threadsafe(running.loop.stop)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def served(repository: Path) -> Iterator[RunningServer]:
    running = start_server(repository, max_message_bytes=MAX_MESSAGE_BYTES, torch_threads=1)
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def client(served: RunningServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(served.target) as triton_client:
        yield triton_client


@pytest.fixture(scope="session")
def channel(served: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.target) as grpc_channel:
        yield grpc_channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)
