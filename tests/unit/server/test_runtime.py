"""The runtime on its own: device choice, compute dtype, output conversions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kubemaas_server.model_config import DataType, Device, ModelConfig, TensorSpec
from kubemaas_server.repository import save_model
from kubemaas_server.runtime import ModelOutputError, ModelRuntime, resolve_device

from .models import IntAffine, Mlp


class DtypeProbe(torch.nn.Module):
    """Returns its input unchanged and a flag: 1 when the input arrived as float64."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flag = torch.ones(x.shape[0], 1) if x.dtype == torch.float64 else torch.zeros(x.shape[0], 1)
        return x, flag


class WrongRows(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1]


def test_auto_device_uses_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(Device.AUTO).type == "cuda"
    assert resolve_device(Device.CPU).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(Device.AUTO).type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device(Device.CUDA)


def test_compute_dtype_casts_float_inputs_and_outputs_back(tmp_path: Path) -> None:
    config = ModelConfig(
        "probe",
        inputs=(TensorSpec("x", DataType.FP32, (2,)),),
        outputs=(TensorSpec("y", DataType.FP32, (2,)), TensorSpec("flag", DataType.FP32, (1,))),
        max_batch_size=4,
        dtype=DataType.FP64,
    )
    path = save_model(tmp_path, config, DtypeProbe())
    runtime = ModelRuntime(config, path)
    y, flag = runtime.run([np.array([[1.5, -2.0]], dtype=np.float32)], rows=1)
    assert y.dtype == np.float32 and flag.dtype == np.float32
    np.testing.assert_array_equal(y, [[1.5, -2.0]])
    np.testing.assert_array_equal(flag, [[1.0]])


def test_outputs_are_cast_to_their_declared_datatypes(tmp_path: Path) -> None:
    config = ModelConfig(
        "ints",
        inputs=(TensorSpec("x", DataType.INT64, (4,)),),
        outputs=(TensorSpec("doubled", DataType.INT32, (4,)), TensorSpec("total", DataType.FP64, (1,))),
        max_batch_size=4,
    )
    runtime = ModelRuntime(config, save_model(tmp_path, config, IntAffine()))
    doubled, total = runtime.run([np.array([[1, 2, 3, 4]], dtype=np.int64)], rows=1)
    assert doubled.dtype == np.int32 and total.dtype == np.float64
    np.testing.assert_array_equal(doubled, [[3, 5, 7, 9]])
    np.testing.assert_array_equal(total, [[10.0]])


def test_a_model_that_loses_rows_is_an_error_naming_the_output(tmp_path: Path) -> None:
    config = ModelConfig(
        "rows",
        inputs=(TensorSpec("x", DataType.FP32, (2,)),),
        outputs=(TensorSpec("y", DataType.FP32, (2,)),),
        max_batch_size=4,
    )
    runtime = ModelRuntime(config, save_model(tmp_path, config, WrongRows()))
    with pytest.raises(
        ModelOutputError, match="output 'y': shape \\[1, 2\\] has no batch dimension of 3 rows"
    ):
        runtime.run([np.zeros((3, 2), dtype=np.float32)], rows=3)


def test_warm_up_catches_a_model_that_cannot_run_its_signature(tmp_path: Path) -> None:
    config = ModelConfig(
        "mlp",
        inputs=(TensorSpec("input", DataType.FP32, (5,)),),
        outputs=(TensorSpec("output", DataType.FP32, (2,)),),
        max_batch_size=4,
    )
    runtime = ModelRuntime(config, save_model(tmp_path, config, Mlp([4, 8, 2])))
    with pytest.raises(RuntimeError):
        runtime.warm_up()
