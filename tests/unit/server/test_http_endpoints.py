"""The plain HTTP port (`--metrics-port`): `/metrics` as Prometheus scrapes it, the KServe V2
health paths kubelet's `httpGet` probes use, 404 anywhere else, and a readiness that agrees with
gRPC's and turns 503 the moment a graceful shutdown starts. Real servers, real sockets,
127.0.0.1 only."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .conftest import RunningServer, http_get, start_server
from .models import build_busy_repository

METRIC_NAMES = (
    "kubemaas_requests_total",
    "kubemaas_request_duration_seconds",
    "kubemaas_queue_duration_seconds",
    "kubemaas_compute_duration_seconds",
    "kubemaas_batch_size",
    "kubemaas_inflight_requests",
    "kubemaas_model_ready",
)


# --- the shared server (its repository holds a model that fails to load) ------------------------


def test_metrics_path_serves_every_kubemaas_metric_as_prometheus_text(served: RunningServer) -> None:
    answer = http_get(served.server.metrics_port, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.body.decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text
    assert 'kubemaas_model_ready{model="mlp"} 1.0' in text
    assert 'kubemaas_model_ready{model="broken"} 0.0' in text


def test_metrics_path_negotiates_openmetrics_and_gzip_as_prometheus_client_does(
    served: RunningServer,
) -> None:
    port = served.server.metrics_port
    openmetrics = http_get(
        port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.body.endswith(b"# EOF\n")
    zipped = http_get(port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert b"kubemaas_inflight_requests" in gzip.decompress(zipped.body)
    only = http_get(port, "/metrics?name[]=kubemaas_model_ready").body.decode()
    assert "kubemaas_model_ready" in only and "kubemaas_batch_size" not in only


def test_live_is_200_while_the_server_serves(served: RunningServer) -> None:
    answer = http_get(served.server.metrics_port, "/v2/health/live")
    assert (answer.status, answer.body) == (200, b"")


def test_ready_is_503_while_a_model_of_the_repository_failed_to_load(
    served: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert not stub.ServerReady(pb.ServerReadyRequest()).ready  # the same answer as gRPC's
    answer = http_get(served.server.metrics_port, "/v2/health/ready")
    assert (answer.status, answer.body) == (503, b"")
    assert http_get(served.server.metrics_port, "/v2/health/ready?probe=1").status == 503  # query ignored


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/mlp/ready", 200),
        ("/v2/models/mlp/versions/2/ready", 200),
        ("/v2/models/broken/ready", 503),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/mlp/versions/1/ready", 404),  # version 2 is the one served
    ],
)
def test_model_ready_path_answers_like_grpc_model_ready(
    served: RunningServer, path: str, status: int
) -> None:
    assert http_get(served.server.metrics_port, path).status == status


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/favicon.ico",
        "/metrics/extra",
        "/v2",
        "/v2/health",
        "/v2/health/ready/x",
        "/v2/models/mlp",
        "/v2/models//ready",
        "/v2/models/mlp/versions//ready",
    ],
)
def test_any_other_path_is_404(served: RunningServer, path: str) -> None:
    assert http_get(served.server.metrics_port, path).status == 404


def test_head_answers_the_status_and_headers_without_a_body(served: RunningServer) -> None:
    port = served.server.metrics_port
    live = http_get(port, "/v2/health/live", method="HEAD")
    assert (live.status, live.body) == (200, b"")
    metrics = http_get(port, "/metrics", method="HEAD")
    assert metrics.status == 200 and metrics.body == b""
    assert int(metrics.headers["content-length"]) > 0


# --- a server whose every model loads ---------------------------------------------------------


@pytest.fixture(scope="module")
def busy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busy_repository(tmp_path_factory.mktemp("busy"))


@pytest.fixture
def busy(busy_repository: Path) -> Iterator[RunningServer]:
    running = start_server(busy_repository, torch_threads=1, grace_seconds=30.0)
    yield running
    # The path SIGTERM takes; it starts the stop once, so a test may have started it already.
    running.loop.call_soon_threadsafe(running.server.stop_soon)
    asyncio.run_coroutine_threadsafe(running.server.wait_stopped(), running.loop).result(timeout=60)
    running.loop.call_soon_threadsafe(running.loop.stop)


def busy_request(rounds: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="busy")
    request.inputs.add(name="rounds", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[rounds]], dtype=np.float32).tobytes())
    return request


def test_ready_is_200_once_every_model_loaded(busy: RunningServer) -> None:
    port = busy.server.metrics_port
    assert http_get(port, "/v2/health/ready").status == 200
    assert http_get(port, "/v2/models/busy/ready").status == 200


def test_ready_turns_503_as_soon_as_a_graceful_shutdown_starts(busy: RunningServer) -> None:
    port = busy.server.metrics_port
    with grpc.insecure_channel(busy.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # Calibrate: how many rounds make a request take about two seconds on this machine, so
        # one holds the drain open while the test looks.
        started = time.perf_counter()
        stub.ModelInfer(busy_request(200))
        rounds = float(round(max(200.0, 200 * 2.0 / max(time.perf_counter() - started, 1e-3))))
        outcome: list[object] = []
        caller = threading.Thread(
            target=lambda: outcome.append(stub.ModelInfer(busy_request(rounds), timeout=60))
        )
        caller.start()
        deadline = time.monotonic() + 10
        while b'kubemaas_inflight_requests{model="busy"} 1.0' not in http_get(port, "/metrics").body:
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.01)
        assert http_get(port, "/v2/health/ready").status == 200

        busy.loop.call_soon_threadsafe(busy.server.stop_soon)  # what the SIGTERM handler does
        deadline = time.monotonic() + 5
        while (status := http_get(port, "/v2/health/ready").status) == 200:
            assert time.monotonic() < deadline, "ready stayed 200 during the shutdown"
            time.sleep(0.01)
        assert status == 503
        assert caller.is_alive(), "the drain was over before the test looked"
        assert http_get(port, "/v2/models/busy/ready").status == 503
        assert http_get(port, "/v2/health/live").status == 200  # still alive while it drains
        caller.join(60)
    assert len(outcome) == 1  # the in-flight request got its answer
    asyncio.run_coroutine_threadsafe(busy.server.wait_stopped(), busy.loop).result(timeout=60)
    with pytest.raises(ConnectionRefusedError):
        http_get(port, "/v2/health/live")  # the HTTP port closes last, once the drain is done
