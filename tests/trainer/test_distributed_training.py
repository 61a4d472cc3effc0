"""The example training script run the way the operator runs it: two worker pods (node ranks 0
and 1, one process each) of `kubemaas train -- python examples/train_regressor.py`, torchrun
with gloo on 127.0.0.1. Then a worker is SIGKILLed mid-run and the group relaunched, and the
export is served by a real `kubemaas serve` process."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from kubemaas_server.model_config import DataType, ModelConfig, TensorSpec, load_model_config
from kubemaas_trainer.checkpoint import CheckpointStore

from .pods import EXAMPLE, Pod, describe, free_port, kill_pods, kubemaas_command, launch_pods, wait_for_pods

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
]

EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 4, 10, 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
HIDDEN = 32
TRAINING_ARGS = [
    f"--epochs={EPOCHS}",
    f"--steps-per-epoch={STEPS_PER_EPOCH}",
    f"--checkpoint-every={CHECKPOINT_EVERY}",
    "--batch-size=128",
    f"--hidden={HIDDEN}",
    "--lr=0.02",
]


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_regressor", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    root: Path
    pods: list[Pod]

    @property
    def output(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def report(self, rank: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "report" / f"rank-{rank}.json").read_text())
        return data

    def trained_module(self) -> torch.nn.Module:
        """The model as training left it, rebuilt from the last checkpoint."""
        latest = CheckpointStore(self.checkpoints).load_latest()
        assert latest is not None and latest.step == TOTAL_STEPS
        model: torch.nn.Module = example_module().build_model(HIDDEN)
        model.load_state_dict(latest.state["model"])
        return model.eval()


def start_run(root: Path, *extra: str, restart_count: int = 0) -> list[Pod]:
    command = ["python", str(EXAMPLE), *TRAINING_ARGS, f"--report={root / 'report'}", *extra]
    return launch_pods(
        command,
        workers=2,
        output=root / "models",
        checkpoints=root / "checkpoints",
        logs=root / "logs",
        restart_count=restart_count,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("two-nodes")
    pods = start_run(root)
    try:
        codes = wait_for_pods(pods, timeout=180)
        assert codes == [0, 0], describe(pods)
        yield Run(root, pods)
    finally:
        kill_pods(pods)


def test_both_nodes_end_with_identical_parameters(trained: Run) -> None:
    reports = [trained.report(rank) for rank in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["final_step"] for r in reports] == [TOTAL_STEPS, TOTAL_STEPS]
    assert reports[0]["param_sha256"] == reports[1]["param_sha256"]


def test_the_loss_goes_down(trained: Run) -> None:
    losses = [entry["loss"] for entry in trained.report(0)["losses"]]
    assert len(losses) == EPOCHS
    assert losses[-1] < 0.5 * losses[0], losses
    assert 'msg="epoch done"' in trained.pods[0].output()
    assert 'msg="epoch done"' not in trained.pods[1].output()  # only rank 0 logs progress


def test_checkpoints_exist_and_only_the_newest_are_kept(trained: Run) -> None:
    assert CheckpointStore(trained.checkpoints).steps() == [32, 36, 40]
    assert not [p for p in trained.checkpoints.iterdir() if p.name.startswith(".")]


def test_the_launcher_chose_gloo_and_the_job_shape(trained: Run) -> None:
    for pod in trained.pods:
        log = pod.output()
        assert f"node_rank={pod.node_rank}" in log and "backend=gloo" in log and "workers=2" in log


def test_the_export_answers_like_the_trained_module(trained: Run) -> None:
    model_dir = trained.output / "regressor"
    assert load_model_config(model_dir) == ModelConfig(
        name="regressor",
        inputs=(TensorSpec("x", DataType.FP32, (4,)),),
        outputs=(TensorSpec("y", DataType.FP32, (1,)),),
        max_batch_size=64,
    )
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "model.yaml"]
    program = torch.jit.load(os.fspath(model_dir / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    model = trained.trained_module()
    x = torch.randn(17, 4)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=0)
    assert (
        trained.report(0)["export"]
        == trained.report(1)["export"]
        == {"version": 1, "path": str(model_dir / "1" / "model.pt")}
    )


def test_kubemaas_serve_answers_like_the_trained_module(trained: Run) -> None:
    import tritonclient.grpc as triton

    port = free_port()
    command = [
        *kubemaas_command(), "serve", "--model-repository", str(trained.output),
        "--grpc-port", str(port), "--metrics-port", str(free_port()), "--host", "127.0.0.1", "--torch-threads", "1",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            try:
                if client.is_model_ready("regressor"):
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "kubemaas serve did not load the exported model"
            time.sleep(0.2)
        x = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
        request = triton.InferInput("x", [5, 4], "FP32")
        request.set_data_from_numpy(x)
        answer = client.infer("regressor", [request]).as_numpy("y")
        with torch.no_grad():
            expected = trained.trained_module()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(answer, expected, rtol=1e-6, atol=1e-7)
        client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    tmp_path: Path, trained: Run, request: pytest.FixtureRequest
) -> None:
    # Slowed down so the kill lands mid-run; the sleep does not change what is computed.
    pods = start_run(tmp_path, "--sleep-per-step=0.25")
    request.addfinalizer(lambda: kill_pods(pods))
    store = CheckpointStore(tmp_path / "checkpoints")
    deadline = time.monotonic() + 120
    while not store.steps():
        assert all(pod.process.poll() is None for pod in pods), describe(pods)
        assert time.monotonic() < deadline, "no checkpoint appeared\n" + describe(pods)
        time.sleep(0.05)
    (worker,) = pods[1].worker_pids()
    os.kill(worker, signal.SIGKILL)

    codes = wait_for_pods(pods, timeout=120)
    assert all(code != 0 for code in codes), describe(pods)  # the whole group fails, as in the Job
    steps = store.steps()
    assert steps and 0 < steps[-1] < TOTAL_STEPS, steps
    last_checkpoint = steps[-1]

    # The operator restarts the whole group; the script resumes from the newest checkpoint.
    relaunched = start_run(tmp_path, restart_count=1)
    request.addfinalizer(lambda: kill_pods(relaunched))
    assert wait_for_pods(relaunched, timeout=180) == [0, 0], describe(relaunched)
    reports = [json.loads((tmp_path / "report" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["start_step"] for r in reports] == [last_checkpoint, last_checkpoint]
    assert [r["restart_count"] for r in reports] == [1, 1]
    assert f"start_step={last_checkpoint}" in relaunched[0].output()
    # Resuming is exact: the same parameters, bit for bit, as the run that was never interrupted.
    assert reports[0]["param_sha256"] == reports[1]["param_sha256"] == trained.report(0)["param_sha256"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
