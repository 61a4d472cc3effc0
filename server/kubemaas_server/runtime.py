"""Runs a TorchScript model: the only module that touches torch on the request path.

`ModelRuntime.run` takes one numpy array per input (the batch already concatenated) and returns
one numpy array per output, in `model.yaml` order. It is called from a worker thread, never on
the event loop: TorchScript releases the GIL while it computes, so the loop keeps receiving and
answering requests during a forward pass.

Models load with `torch.jit.load`, which reads TorchScript archives without unpickling arbitrary
Python objects. Inputs of datatype BYTES reach the model as `List[str]`; every other input as a
tensor of the declared type (cast to `dtype` from model.yaml when that is set and the input is
floating). A model may return one tensor, a tuple or list in output order, or a dict keyed by
output name; outputs are cast back to their declared datatypes.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from kubemaas.logs import kv
from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.model_config import DataType, Device, ModelConfig, TensorSpec
from kubemaas_server.tensor_codec import NUMPY_DTYPES, Array

log = logging.getLogger(__name__)

TORCH_DTYPES: Final[dict[DataType, torch.dtype]] = {
    DataType.BOOL: torch.bool,
    DataType.UINT8: torch.uint8,
    DataType.UINT16: torch.uint16,
    DataType.UINT32: torch.uint32,
    DataType.UINT64: torch.uint64,
    DataType.INT8: torch.int8,
    DataType.INT16: torch.int16,
    DataType.INT32: torch.int32,
    DataType.INT64: torch.int64,
    DataType.FP16: torch.float16,
    DataType.BF16: torch.bfloat16,
    DataType.FP32: torch.float32,
    DataType.FP64: torch.float64,
}


class ModelOutputError(RuntimeError):
    """The model returned something its signature does not allow."""


def configure_torch(*, threads: int | None, interop_threads: int | None = None) -> None:
    """Process-wide torch settings; call once before loading models."""
    if threads:
        torch.set_num_threads(threads)
    if interop_threads:
        try:
            torch.set_num_interop_threads(interop_threads)
        except RuntimeError:  # already set, or parallel work already started: keep what is there
            log.warning("interop threads unchanged", extra=kv(requested=interop_threads))


def resolve_device(requested: Device) -> torch.device:
    if requested == Device.CPU:
        return torch.device("cpu")
    if requested == Device.CUDA:
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was requested but CUDA is not available on this machine")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelRuntime:
    """One loaded TorchScript module and the conversions around its forward pass."""

    def __init__(self, config: ModelConfig, model_file: Path, *, device: Device | None = None) -> None:
        self.config = config
        self.device = resolve_device(device or config.device)
        self.compute_dtype = TORCH_DTYPES[config.dtype] if config.dtype else None
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} does not exist")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            module = torch.jit.load(os.fspath(model_file), map_location=self.device)  # type: ignore[no-untyped-call]
        if not isinstance(module, torch.jit.ScriptModule):
            raise TypeError(f"{model_file} is not a TorchScript module")
        module.eval()
        if self.compute_dtype is not None:
            module = module.to(self.compute_dtype)
        self.module = module
        self._is_cpu = self.device.type == "cpu"

    def warm_up(self) -> None:
        """Two forward passes on zeros, when every dimension is known: the first TorchScript
        calls are slow (they profile and optimise the graph), and a model that cannot run its
        own signature should fail at load, not on the first request."""
        if any(spec.datatype == DataType.BYTES or -1 in spec.shape for spec in self.config.inputs):
            return
        rows = (1,) if self.config.batched else ()
        inputs = [
            np.zeros(rows + spec.shape, dtype=NUMPY_DTYPES[spec.datatype]) for spec in self.config.inputs
        ]
        for _ in range(2):
            self.run(inputs, rows=rows[0] if rows else 0)

    def run(self, inputs: Sequence[Array], *, rows: int) -> list[Array]:
        """Forward pass on whole-batch arrays; `rows` is the batch size (0 for unbatched models)."""
        args = [self._to_model(spec, array) for spec, array in zip(self.config.inputs, inputs, strict=True)]
        with torch.inference_mode():
            result = self.module(*args)
        return self._outputs(result, rows)

    def _to_model(self, spec: TensorSpec, array: Array) -> Any:
        if spec.datatype == DataType.BYTES:
            try:
                return [item.decode() for item in array.reshape(-1)]
            except UnicodeDecodeError as error:
                raise InferenceError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"input {spec.name!r}: this model takes strings and a BYTES element is not UTF-8 "
                    f"({error.reason})",
                ) from None
        if spec.datatype == DataType.BF16:
            tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array)
        if not self._is_cpu:
            tensor = tensor.to(self.device, non_blocking=True)
        if self.compute_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.compute_dtype)
        return tensor

    def _outputs(self, result: Any, rows: int) -> list[Array]:
        specs = self.config.outputs
        if isinstance(result, dict):
            missing = [spec.name for spec in specs if spec.name not in result]
            if missing:
                raise ModelOutputError(f"model returned no output named {', '.join(map(repr, missing))}")
            values = [result[spec.name] for spec in specs]
        elif isinstance(result, list | tuple) and not (
            len(specs) == 1 and specs[0].datatype == DataType.BYTES
        ):
            if len(result) != len(specs):
                raise ModelOutputError(
                    f"model returned {len(result)} outputs, its signature has {len(specs)}"
                )
            values = list(result)
        else:
            if len(specs) != 1:
                raise ModelOutputError(f"model returned one value, its signature has {len(specs)} outputs")
            values = [result]
        return [self._from_model(spec, value, rows) for spec, value in zip(specs, values, strict=True)]

    def _from_model(self, spec: TensorSpec, value: Any, rows: int) -> Array:
        if spec.datatype == DataType.BYTES:
            if not isinstance(value, list | tuple):
                raise ModelOutputError(f"output {spec.name!r}: BYTES outputs must be a list of str")
            array = np.empty(len(value), dtype=object)
            array[:] = [item.encode() if isinstance(item, str) else bytes(item) for item in value]
            if rows:
                if len(value) % rows:
                    raise ModelOutputError(
                        f"output {spec.name!r}: {len(value)} strings do not split into {rows} rows"
                    )
                return array.reshape(rows, -1) if spec.shape else array
            return array
        if not isinstance(value, torch.Tensor):
            raise ModelOutputError(f"output {spec.name!r}: expected a tensor, got {type(value).__name__}")
        if rows and (value.dim() == 0 or value.shape[0] != rows):
            raise ModelOutputError(
                f"output {spec.name!r}: shape {list(value.shape)} has no batch dimension of {rows} rows"
            )
        expected = TORCH_DTYPES[spec.datatype]
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if tensor.dtype != expected:
            tensor = tensor.to(expected)
        if spec.datatype == DataType.BF16:
            return tensor.view(torch.int16).numpy().view(np.uint16)
        return tensor.numpy()
