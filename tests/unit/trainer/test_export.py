"""export_model: the TorchScript program answers like the module, `model.yaml` is the server's
own format with the declared (or inferred) signature, versions count up and appear atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kubemaas_server.model_config import DataType, ModelConfig, TensorSpec, load_model_config
from kubemaas_server.runtime import ModelRuntime
from kubemaas_trainer import distributed
from kubemaas_trainer.export import ExportError, export_model, next_version


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h * 2, h.sum(dim=1, keepdim=True) + ids.to(h.dtype)


class NamedOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": x.mean(dim=1, keepdim=True), "max": x.amax(dim=1, keepdim=True)}


class FixedBatch(nn.Module):
    """Bakes the traced batch size into a reshape: a classic trace that only serves one size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(8, -1).sum(dim=1, keepdim=True)


class WholeBatchSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum().reshape(1)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return x * 2
        return -x


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SIGNATURE: dict[str, Any] = {
    "name": "mlp",
    "inputs": [("x", "FP32", [4])],
    "outputs": [("y", "FP32", [2])],
    "max_batch_size": 32,
}


def test_the_exported_program_answers_like_the_module(tmp_path: Path) -> None:
    model = mlp()
    exported = export_model(model, torch.randn(8, 4), tmp_path, **SIGNATURE)
    assert exported.version == 1
    assert exported.model_file == tmp_path / "mlp" / "1" / "model.pt"
    program = torch.jit.load(os.fspath(exported.model_file))  # type: ignore[no-untyped-call]
    for rows in (1, 3, 32):
        x = torch.randn(rows, 4)
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=0)
    assert model.training  # the caller's module is left as it was


def test_model_yaml_is_the_declared_signature_in_the_servers_format(tmp_path: Path) -> None:
    export_model(mlp(), torch.randn(8, 4), tmp_path, **SIGNATURE)
    assert load_model_config(tmp_path / "mlp") == ModelConfig(
        name="mlp",
        inputs=(TensorSpec("x", DataType.FP32, (4,)),),
        outputs=(TensorSpec("y", DataType.FP32, (2,)),),
        max_batch_size=32,
    )


def test_a_second_export_is_version_2_and_the_first_stays(tmp_path: Path) -> None:
    first = export_model(mlp(), torch.randn(8, 4), tmp_path, **SIGNATURE)
    second = export_model(nn.Sequential(nn.Linear(4, 2)), torch.randn(8, 4), tmp_path, **SIGNATURE)
    assert (first.version, second.version) == (1, 2)
    assert first.model_file.is_file() and second.model_file.is_file()
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == ["1", "2", "model.yaml"]  # no staging left


def test_the_servers_runtime_answers_like_the_module(tmp_path: Path) -> None:
    model = mlp()
    exported = export_model(model, torch.randn(8, 4), tmp_path, **SIGNATURE)
    runtime = ModelRuntime(load_model_config(exported.model_dir), exported.model_file)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    (y,) = runtime.run([x], rows=5)
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_version_folders_are_readable_by_another_user(tmp_path: Path) -> None:
    exported = export_model(mlp(), torch.randn(2, 4), tmp_path, **SIGNATURE)
    mode = stat.S_IMODE(exported.model_file.parent.stat().st_mode)
    assert mode & 0o055 == 0o055


def test_next_version_never_reuses_a_number(tmp_path: Path) -> None:
    assert next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "latest", ".export-abc"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 4


def test_the_signature_is_inferred_when_left_out(tmp_path: Path) -> None:
    exported = export_model(
        TwoHeads(),
        (torch.randn(4, 3), torch.arange(4).reshape(4, 1)),
        tmp_path,
        name="heads",
        max_batch_size=8,
    )
    config = load_model_config(exported.model_dir)
    assert config.inputs == (
        TensorSpec("input__0", DataType.FP32, (3,)),
        TensorSpec("input__1", DataType.INT64, (1,)),
    )
    assert config.outputs == (
        TensorSpec("output__0", DataType.FP32, (3,)),
        TensorSpec("output__1", DataType.FP32, (1,)),
    )


def test_an_unbatched_model_keeps_every_dimension(tmp_path: Path) -> None:
    exported = export_model(mlp(), torch.randn(8, 4), tmp_path, name="whole")
    config = load_model_config(exported.model_dir)
    assert config.max_batch_size == 0
    assert config.inputs[0].shape == (8, 4) and config.outputs[0].shape == (8, 2)


def test_dict_outputs_are_named_by_their_keys(tmp_path: Path) -> None:
    exported = export_model(NamedOutputs(), torch.randn(4, 5), tmp_path, name="stats", max_batch_size=4)
    assert [spec.name for spec in load_model_config(exported.model_dir).outputs] == ["mean", "max"]
    with pytest.raises(
        ExportError, match="'median' is declared but the module's dict output has no such key"
    ):
        export_model(
            NamedOutputs(),
            torch.randn(4, 5),
            tmp_path,
            name="stats",
            max_batch_size=4,
            outputs=[("median", "FP32", [1]), ("max", "FP32", [1])],
        )


def test_variable_dimensions_accept_any_size(tmp_path: Path) -> None:
    exported = export_model(
        nn.Identity(),
        torch.randn(2, 7),
        tmp_path,
        name="identity",
        inputs=[TensorSpec("x", DataType.FP32, (-1,))],
        outputs=[{"name": "y", "datatype": "fp32", "shape": [-1]}],
        max_batch_size=4,
    )
    assert load_model_config(exported.model_dir).inputs[0].shape == (-1,)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"inputs": [("x", "FP16", [4])]}, "input 'x': declared FP16, but the tensor is FP32"),
        ({"inputs": [("x", "FP32", [5])]}, r"input 'x': declared shape \[5\], but the tensor has \[4\]"),
        ({"inputs": [("x", "FP32", [8, 4])]}, "batch dimension left out"),
        (
            {"outputs": [("y", "FP32", [2]), ("z", "FP32", [2])]},
            r"2 output\(s\) declared, but the module has 1",
        ),
        ({"inputs": [("x", "FLOAT", [4])]}, "expected \\(name, datatype, shape\\) with a V2 datatype"),
        ({"name": "a/b"}, "model name 'a/b'"),
        ({"name": ".hidden"}, "model name '.hidden'"),
        ({"max_batch_size": -1}, "max_batch_size must be an integer >= 0"),
        ({"method": "compile"}, "'compile' is not a valid ExportMethod"),
    ],
)
def test_a_signature_that_disagrees_with_the_tensors_is_refused(
    tmp_path: Path, override: dict[str, Any], message: str
) -> None:
    with pytest.raises((ExportError, ValueError), match=message):
        export_model(mlp(), torch.randn(8, 4), tmp_path, **{**SIGNATURE, **override})
    assert not (tmp_path / "mlp").exists() or not any((tmp_path / "mlp").iterdir())


def test_a_trace_that_only_works_at_one_batch_size_is_caught(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"fails at 1.*method='script'"):
        export_model(FixedBatch(), torch.randn(8, 4), tmp_path, name="fixed", max_batch_size=8)


def test_a_batched_model_must_answer_one_row_per_input_row(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="1 rows for 4 input rows"):
        export_model(
            WholeBatchSum(), torch.randn(4, 3), tmp_path, name="total", max_batch_size=4, method="script"
        )


def test_scripting_keeps_control_flow(tmp_path: Path) -> None:
    exported = export_model(
        Branchy(), torch.ones(2, 3), tmp_path, name="branchy", max_batch_size=4, method="script"
    )
    program = torch.jit.load(os.fspath(exported.model_file))  # type: ignore[no-untyped-call]
    assert torch.equal(program(-torch.ones(1, 3)), torch.ones(1, 3))  # the branch the example never took


def test_a_failed_write_leaves_no_version_and_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_save(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export_model(mlp(), torch.randn(8, 4), tmp_path, **SIGNATURE)
    assert list((tmp_path / "mlp").iterdir()) == []


def test_the_output_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ExportError, match="KUBEMAAS_OUTPUT_DIR"):
        export_model(mlp(), torch.randn(8, 4), **SIGNATURE)
    monkeypatch.setenv("KUBEMAAS_OUTPUT_DIR", str(tmp_path))
    assert export_model(mlp(), torch.randn(8, 4), **SIGNATURE).model_dir == tmp_path / "mlp"


def test_a_ddp_wrapped_model_exports_the_model_inside(
    tmp_path: Path, process_group: distributed.DistributedContext
) -> None:
    model = mlp()
    wrapped = nn.parallel.DistributedDataParallel(model)
    exported = export_model(wrapped, torch.randn(8, 4), tmp_path, **SIGNATURE)
    program = torch.jit.load(os.fspath(exported.model_file))  # type: ignore[no-untyped-call]
    x = torch.randn(3, 4)
    torch.testing.assert_close(program(x), model(x))
    assert not any("DistributedDataParallel" in name for name in program.code.split())


def test_a_compiled_module_exports_the_module_it_wraps(tmp_path: Path) -> None:
    model = mlp()
    compiled = torch.compile(model)  # compiles lazily: never run here, only unwrapped
    assert isinstance(compiled, nn.Module)
    exported = export_model(compiled, torch.randn(8, 4), tmp_path, **SIGNATURE)
    program = torch.jit.load(os.fspath(exported.model_file))  # type: ignore[no-untyped-call]
    x = torch.randn(3, 4)
    torch.testing.assert_close(program(x), model(x))
