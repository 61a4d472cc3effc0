"""The benchmark's Go load generator counts what the server really answered, and refuses answers
of the wrong size: `make bench-server`'s numbers are only as good as this client.

It is built the way the benchmark builds it (`bench_server.py --build-loadgen`, cached by source
hash) and driven against the in-process test server over 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_server.proto import grpc_service_pb2 as pb

from .conftest import RunningServer

ROOT = Path(__file__).resolve().parents[3]
MLP_FEATURES, MLP_OUTPUT_BYTES = 16, 4 * 4


@pytest.fixture(scope="module")
def loadgen() -> Path:
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_server.py"), "--build-loadgen"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(result.stdout.strip().splitlines()[-1])


def request_file(tmp_path: Path, model: str, *, typed: bool = False) -> Path:
    """A raw request, or a typed one (the server then answers typed, as MLServer does)."""
    data = np.arange(MLP_FEATURES, dtype=np.float32).reshape(1, MLP_FEATURES)
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, MLP_FEATURES])
    if typed:
        tensor.contents.fp32_contents.extend(data.ravel().tolist())
    else:
        request.raw_input_contents.append(data.tobytes())
    path = tmp_path / f"{model}-{'typed' if typed else 'raw'}.bin"
    path.write_bytes(request.SerializeToString())
    return path


def run(
    loadgen: Path, served: RunningServer, request: Path, **flags: object
) -> subprocess.CompletedProcess[str]:
    options = {"output-bytes": MLP_OUTPUT_BYTES, "concurrency": 4, "duration": 1, "warmup": 0.2, **flags}
    command = [str(loadgen), "-target", served.target, "-request", str(request)]
    command += [f"-{name}={value}" for name, value in options.items()]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def successes(served: RunningServer) -> float:
    value = served.server.metrics.registry.get_sample_value(
        "kubemaas_requests_total", {"model": "mlp", "outcome": "success"}
    )
    return value or 0.0


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_counts_only_answered_requests_within_the_window(
    loadgen: Path, served: RunningServer, tmp_path: Path, typed: bool
) -> None:
    before = successes(served)
    result = run(loadgen, served, request_file(tmp_path, "mlp", typed=typed))
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    answered = successes(served) - before
    assert summary["errors"] == 0
    assert summary["requests"] > 0
    # The warm-up and the requests still running at the end are answered but not counted.
    assert summary["requests"] <= answered
    assert summary["throughput"] == pytest.approx(summary["requests"] / 1.0)
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    if typed:  # and a typed answer of the wrong size is refused like a raw one
        wrong = run(loadgen, served, request_file(tmp_path, "mlp", typed=True), **{"output-bytes": 4})
        assert wrong.returncode == 1 and "output bytes 16, want 4" in wrong.stderr


def test_fails_on_an_answer_of_the_wrong_size(loadgen: Path, served: RunningServer, tmp_path: Path) -> None:
    result = run(loadgen, served, request_file(tmp_path, "mlp"), **{"output-bytes": MLP_OUTPUT_BYTES + 4})
    assert result.returncode == 1
    assert "unexpected response (output bytes 16, want 20)" in result.stderr


def test_counts_refused_requests_as_errors(loadgen: Path, served: RunningServer, tmp_path: Path) -> None:
    result = run(loadgen, served, request_file(tmp_path, "no-such-model"), concurrency=1)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == 0 and summary["errors"] > 0
    assert summary["p50_ms"] is None and summary["p99_ms"] is None


def test_dials_loopback_addresses_only(loadgen: Path, tmp_path: Path) -> None:
    request = request_file(tmp_path, "mlp")
    for target in ("0.0.0.0:8001", "example.com:8001", "localhost:8001"):
        result = subprocess.run(
            [str(loadgen), "-target", target, "-request", str(request)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 2
        assert "is not a loopback IP address" in result.stderr
