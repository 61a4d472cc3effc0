"""`kubemaas serve` as a real process: it serves, and on SIGTERM it turns NOT_SERVING (gRPC
health and the HTTP ready path alike), lets the requests it holds finish, and exits 0 within its
grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .conftest import http_get
from .models import build_busy_repository

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """The server process, its gRPC target and its HTTP (metrics and health) port, once ready."""
    repository = build_busy_repository(tmp_path / "repository")
    port = free_port()
    http_port = free_port()
    command = [
        sys.executable, "-m", "kubemaas", "serve", "--model-repository", str(repository),
        "--grpc-port", str(port), "--metrics-port", str(http_port), "--grace-seconds", "20",
        "--torch-threads", "1",
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                assert child.poll() is None, child.stdout.read() if child.stdout else ""
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
        yield child, target, http_port
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def busy_request(rounds: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="busy")
    request.inputs.add(name="rounds", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[rounds]], dtype=np.float32).tobytes())
    return request


def test_sigterm_drains_in_flight_requests_then_exits_zero(
    process: tuple[subprocess.Popen[str], str, int],
) -> None:
    child, target, http_port = process
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert http_get(http_port, "/v2/health/ready").status == 200
        # Calibrate: how many rounds make a request take about half a second on this machine.
        started = time.perf_counter()
        stub.ModelInfer(busy_request(200))
        rounds = float(round(max(200.0, 200 * 0.5 / max(time.perf_counter() - started, 1e-3))))

        outcomes: list[object] = []

        def call() -> None:
            try:
                response = stub.ModelInfer(busy_request(rounds), timeout=60)
                outcomes.append(np.frombuffer(response.raw_output_contents[0], dtype=np.float32)[0])
            except grpc.RpcError as error:
                outcomes.append(error)

        callers = [threading.Thread(target=call) for _ in range(3)]
        for caller in callers:
            caller.start()
        time.sleep(0.2)  # the requests are in the server: one computing, two queued
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)

        # While it drains, the server says it is going away.
        deadline = time.monotonic() + 5
        status = SERVING
        while status == SERVING and time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            time.sleep(0.02)
        assert status == NOT_SERVING
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready
        assert http_get(http_port, "/v2/health/ready").status == 503  # kubelet's httpGet probe
        assert http_get(http_port, "/v2/health/live").status == 200
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(busy_request(1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        for caller in callers:
            caller.join(60)
        assert outcomes == [rounds, rounds, rounds]  # every in-flight request got its answer

    assert child.wait(30) == 0
    assert time.monotonic() - sent < 25  # within the 20 s grace, plus process teardown
    output = child.stdout.read() if child.stdout else ""
    assert "msg=stopping" in output and "msg=stopped" in output


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubemaas",
            "serve",
            "--model-repository",
            str(tmp_path / "none"),
            "--grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, KUBEMAAS_LOG_LEVEL="WARNING"),
    )
    assert result.returncode == 2
    assert "is not a directory" in result.stderr
