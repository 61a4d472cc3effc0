"""`make demo` runs `kubemaas demo`; this runs the same command and checks what it proves."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from kubemaas_cluster.paths import default_state_dir

pytestmark = pytest.mark.e2e


def test_demo_trains_deploys_serves_answers_and_cleans_up() -> None:
    name = f"demo-test-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, "-m", "kubemaas", "demo", "--cluster-name", name],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "[6/6]" in out
    assert "phase=Ready ready=2/2 reason=ModelServing" in out, (
        "the operator must report the ModelService Ready"
    )
    assert any(
        line.startswith("modelservice.kubemaas.io/regressor") and " Ready " in line
        for line in out.splitlines()
    )
    assert "answers over gRPC equal the trained model's own forward pass" in out
    assert "kwok-gpu-0" in out
    assert not default_state_dir(name).exists(), "the demo must take its cluster down"
