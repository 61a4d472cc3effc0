"""Export a trained module as a servable model: TorchScript plus `model.yaml`, in the model
repository format `kubemaas serve` loads.

    export.export_model(
        ddp_model, torch.randn(8, 4), name="regressor",
        inputs=[("x", "FP32", [4])], outputs=[("y", "FP32", [1])], max_batch_size=64,
    )   # -> $KUBEMAAS_OUTPUT_DIR/regressor/model.yaml and .../regressor/<next version>/model.pt

Call it on every rank: rank 0 writes, the others wait and get the same `ExportedModel`.

What it guarantees, so a served model never surprises at request time:

- The program is built from a CPU copy of the module (DistributedDataParallel unwrapped, put in
  eval mode), so the archive loads on any machine and the server chooses the device.
- It answers the example inputs exactly as the module does, and for a batched model
  (`max_batch_size > 0`) also at another batch size: a trace that baked the example's batch
  size into a reshape would otherwise pass here and fail on the first request of another size.
- The signature agrees with the tensors: declared datatypes and shapes are checked against the
  example inputs and the module's outputs; left out, they are inferred from them
  (`input__0`, `output__0`, ... or the keys of a dict output), with fixed sizes.
- `model.yaml` is written by the server's own `write_model_config`, so both sides share one
  definition of the format.
- Atomic versions: everything is written into a hidden staging folder inside the model folder
  (which the server ignores), fsynced, and renamed to the next integer version in one step, so a
  server scanning the repository sees a complete version or none. `model.yaml` is replaced
  (atomically too) just before the version appears; it is per model, not per version, so a
  re-export that changes the signature briefly pairs the new signature with the old version.
"""

from __future__ import annotations

import copy
import enum
import errno
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import torch

from kubemaas.logs import kv
from kubemaas_server.model_config import (
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    DataType,
    Device,
    DynamicBatching,
    ModelConfig,
    ModelConfigError,
    TensorSpec,
    model_config_to_dict,
    parse_model_config,
    write_model_config,
)
from kubemaas_server.runtime import TORCH_DTYPES
from kubemaas_trainer.checkpoint import fsync_directory
from kubemaas_trainer.distributed import broadcast_from_main, is_main, rank
from kubemaas_trainer.launch_settings import PodEnv

__all__ = [
    "DataType",
    "Device",
    "DynamicBatching",
    "ExportError",
    "ExportMethod",
    "ExportedModel",
    "TensorSpec",
    "export_model",
    "next_version",
]

log = logging.getLogger(__name__)

V2_DATATYPES: Final[dict[torch.dtype, DataType]] = {
    dtype: datatype for datatype, dtype in TORCH_DTYPES.items()
}

# A signature entry: a TensorSpec, `(name, datatype, shape)`, or `{name, datatype, shape}`.
SpecLike: TypeAlias = TensorSpec | tuple[str, DataType | str, Sequence[int]] | Mapping[str, Any]


class ExportError(RuntimeError):
    """The module cannot be exported as declared; the message says what disagrees."""


class ExportMethod(enum.StrEnum):
    """How the TorchScript program is made: tracing records the ops the example inputs run
    through (any Python, but control flow is frozen); scripting compiles the forward's source
    (keeps control flow, accepts a subset of Python)."""

    TRACE = "trace"
    SCRIPT = "script"


@dataclass(frozen=True, slots=True)
class ExportedModel:
    name: str
    version: int
    model_dir: Path
    model_file: Path
    config: ModelConfig


def next_version(model_dir: Path) -> int:
    """One above the highest integer-named entry (empty folders count: never reuse a number)."""
    try:
        taken = [int(path.name) for path in model_dir.iterdir() if path.name.isdigit()]
    except FileNotFoundError:
        return 1
    return max(taken, default=0) + 1


def export_model(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    output_dir: str | os.PathLike[str] | None = None,
    *,
    name: str,
    inputs: Sequence[SpecLike] | None = None,
    outputs: Sequence[SpecLike] | None = None,
    max_batch_size: int = 0,
    method: ExportMethod | str = ExportMethod.TRACE,
    dynamic_batching: DynamicBatching | None = None,
    device: Device | str = Device.AUTO,
    dtype: DataType | str | None = None,
) -> ExportedModel:
    """Writes `module` as the next version of model `name` under `output_dir`
    (default $KUBEMAAS_OUTPUT_DIR). `example_inputs` are the forward's positional arguments;
    for a batched model their first dimension is the batch. Returns the same result on every rank.
    """
    outcome: ExportedModel | str | None = None
    failure: BaseException | None = None
    if is_main():
        try:
            with _quiet_torchscript_deprecation():
                outcome = _export_here(
                    module,
                    example_inputs,
                    output_dir,
                    name=name,
                    inputs=inputs,
                    outputs=outputs,
                    max_batch_size=max_batch_size,
                    method=ExportMethod(method),
                    dynamic_batching=dynamic_batching,
                    device=Device(device),
                    dtype=None if dtype is None else DataType(dtype),
                )
        except Exception as error:
            failure = error
            outcome = f"{type(error).__name__}: {error}"
    # Every rank learns the result, a failure included: the others must not wait for a rank 0
    # that has given up, nor carry on as if the model had been written.
    outcome = broadcast_from_main(outcome)
    if failure is not None:
        raise failure
    if isinstance(outcome, ExportedModel):
        return outcome
    if outcome is None:
        raise ExportError(
            f"rank {rank()} cannot learn rank 0's export result without a process group; "
            "call kubemaas_trainer.distributed.init() first"
        )
    raise ExportError(f"export failed on rank 0: {outcome}")


@contextmanager
def _quiet_torchscript_deprecation() -> Iterator[None]:
    # torch marks torch.jit as deprecated in favour of torch.export; TorchScript is still what
    # the model repository holds (see DESIGN), so the warning tells the user nothing to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        yield


def _export_here(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    output_dir: str | os.PathLike[str] | None,
    *,
    name: str,
    inputs: Sequence[SpecLike] | None,
    outputs: Sequence[SpecLike] | None,
    max_batch_size: int,
    method: ExportMethod,
    dynamic_batching: DynamicBatching | None,
    device: Device,
    dtype: DataType | None,
) -> ExportedModel:
    repository = _output_directory(output_dir)
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name:
        raise ExportError(f"model name {name!r} must be non-empty, without '/', and not start with '.'")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ExportError(f"max_batch_size must be an integer >= 0, got {max_batch_size!r}")
    batched = max_batch_size > 0

    examples = _example_tuple(example_inputs)
    eager = copy.deepcopy(_unwrap(module)).cpu().eval()
    with torch.no_grad():
        expected = eager(*examples)
        program = _compile(eager, examples, method)
        _check_same(program(*examples), expected, "on the example inputs")
        if batched:
            _check_other_batch_size(program, eager, examples)

    output_tensors = _output_tensors(expected)
    input_specs = _signature(inputs, list(enumerate(examples)), "input", batched=batched)
    output_specs = _signature(outputs, output_tensors, "output", batched=batched)
    if batched:
        _check_batch_dimension(examples, output_tensors, output_specs)

    config = ModelConfig(
        name=name,
        inputs=tuple(input_specs),
        outputs=tuple(output_specs),
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching or DynamicBatching(),
        device=device,
        dtype=dtype,
    )
    try:
        # Round trip through the server's parser: whatever it would refuse at load, refuse now.
        parse_model_config(model_config_to_dict(config), source=f"model {name!r}")
    except ModelConfigError as error:
        raise ExportError(str(error)) from None

    model_dir = repository / name
    version = _publish(program, config, model_dir)
    exported = ExportedModel(
        name=name,
        version=version,
        model_dir=model_dir,
        model_file=model_dir / str(version) / MODEL_FILE,
        config=config,
    )
    log.info(
        "model exported", extra=kv(model=name, version=version, path=exported.model_file, method=method.value)
    )
    return exported


def _output_directory(output_dir: str | os.PathLike[str] | None) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    env_dir = os.environ.get(PodEnv.OUTPUT_DIR.value, "").strip()
    if not env_dir:
        raise ExportError(
            f"no output directory: pass one or set {PodEnv.OUTPUT_DIR.value} "
            "(the operator sets it to the TrainingJob's output volume)"
        )
    return Path(env_dir)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside wrappers that cannot be exported as they are:
    DistributedDataParallel (its forward synchronizes with the other ranks) and torch.compile's
    OptimizedModule (TorchScript cannot see through the compiled frame); both keep the original."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            inner = module.module
        else:
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def _example_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not items:
        raise ExportError("example_inputs is empty: give one tensor per forward argument")
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise ExportError(f"example input {i} is a {type(item).__name__}, not a tensor")
    return tuple(item.detach().cpu() for item in items)


def _compile(
    module: torch.nn.Module, examples: tuple[torch.Tensor, ...], method: ExportMethod
) -> torch.jit.ScriptModule:
    try:
        if method == ExportMethod.SCRIPT:
            program = torch.jit.script(module)
        else:
            # strict=False admits list and dict outputs, which the server accepts.
            program = torch.jit.trace(module, examples, strict=False)  # type: ignore[no-untyped-call]
    except Exception as error:
        raise ExportError(f"cannot {method.value} the module: {error}") from error
    if not isinstance(program, torch.jit.ScriptModule):
        raise ExportError(f"torch.jit.{method.value} returned a {type(program).__name__}, not a ScriptModule")
    return program


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [tensor for key in value for tensor in _flatten(value[key])]
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in _flatten(item)]
    raise ExportError(f"the module returned a {type(value).__name__}; outputs must be tensors")


def _check_same(got: Any, expected: Any, when: str) -> None:
    got_tensors, expected_tensors = _flatten(got), _flatten(expected)
    if len(got_tensors) != len(expected_tensors):
        raise ExportError(
            f"the TorchScript program returns {len(got_tensors)} tensors {when}, the module {len(expected_tensors)}"
        )
    for i, (a, b) in enumerate(zip(got_tensors, expected_tensors, strict=True)):
        try:
            torch.testing.assert_close(a, b)
        except AssertionError as error:
            raise ExportError(
                f"the TorchScript program differs from the module {when} (output {i}): {error}"
            ) from None


def _check_other_batch_size(
    program: torch.jit.ScriptModule, eager: torch.nn.Module, examples: tuple[torch.Tensor, ...]
) -> None:
    rows = {example.shape[0] for example in examples if example.dim() > 0}
    if len(rows) != 1:
        return  # the signature check below explains what is wrong with the batch dimension
    size = rows.pop()
    other = (
        tuple(example[:1] for example in examples)
        if size > 1
        else tuple(torch.cat([example, example]) for example in examples)
    )
    try:
        got = program(*other)
    except Exception as error:
        raise ExportError(
            f"the TorchScript program runs at batch size {size} but fails at {other[0].shape[0]} "
            f"({type(error).__name__}); tracing froze a batch-size-dependent step (e.g. x.view({size}, -1)): "
            "make it size-independent (x.flatten(1)) or export with method='script'"
        ) from None
    _check_same(got, eager(*other), f"at batch size {other[0].shape[0]} (the example has {size})")


def _output_tensors(result: Any) -> list[tuple[str | int, torch.Tensor]]:
    """The module's outputs in signature order, keyed by name (dict outputs) or position."""
    if isinstance(result, torch.Tensor):
        return [(0, result)]
    if isinstance(result, Mapping):
        pairs = list(result.items())
        if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in pairs):
            raise ExportError("a dict output must map names to tensors")
        return [(key, value) for key, value in pairs]
    if isinstance(result, list | tuple) and all(isinstance(item, torch.Tensor) for item in result):
        return list(enumerate(result))
    raise ExportError(
        f"the module returned {type(result).__name__}; the server accepts a tensor, a tuple or list of "
        "tensors, or a dict of tensors"
    )


def _datatype_of(tensor: torch.Tensor, where: str) -> DataType:
    datatype = V2_DATATYPES.get(tensor.dtype)
    if datatype is None:
        raise ExportError(f"{where} has dtype {tensor.dtype}, which has no V2 datatype")
    return datatype


def _as_spec(raw: SpecLike, where: str) -> TensorSpec:
    if isinstance(raw, TensorSpec):
        return raw
    try:
        if isinstance(raw, Mapping):
            name, datatype, shape = raw["name"], raw["datatype"], raw["shape"]
        else:
            name, datatype, shape = raw
        return TensorSpec(str(name), DataType(str(datatype).upper()), tuple(int(dim) for dim in shape))
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(
            f"{where}: expected (name, datatype, shape) with a V2 datatype, got {raw!r} ({error})"
        ) from None


def _signature(
    declared: Sequence[SpecLike] | None,
    tensors: Sequence[tuple[str | int, torch.Tensor]],
    kind: str,
    *,
    batched: bool,
) -> list[TensorSpec]:
    """The declared specs checked against the tensors, or specs inferred from them."""
    if declared is None:
        specs = []
        for key, tensor in tensors:
            if batched and tensor.dim() == 0:
                raise ExportError(f"{kind} {key!r} is a scalar but the model is batched (max_batch_size > 0)")
            name = key if isinstance(key, str) else f"{kind}__{key}"
            shape = tuple(tensor.shape[1:] if batched else tensor.shape)
            specs.append(
                TensorSpec(name, _datatype_of(tensor, f"{kind} {name!r}"), tuple(int(d) for d in shape))
            )
        return specs
    specs = [_as_spec(raw, f"{kind}s[{i}]") for i, raw in enumerate(declared)]
    if len(specs) != len(tensors):
        raise ExportError(f"{len(specs)} {kind}(s) declared, but the module has {len(tensors)}")
    by_name = all(isinstance(key, str) for key, _ in tensors)
    lookup = {key: tensor for key, tensor in tensors}
    for position, spec in enumerate(specs):
        if by_name:
            if spec.name not in lookup:
                raise ExportError(
                    f"{kind} {spec.name!r} is declared but the module's dict output has no such key"
                )
            tensor = lookup[spec.name]
        else:
            tensor = tensors[position][1]
        _check_tensor(spec, tensor, kind, batched=batched)
    return specs


def _check_tensor(spec: TensorSpec, tensor: torch.Tensor, kind: str, *, batched: bool) -> None:
    where = f"{kind} {spec.name!r}"
    if spec.datatype == DataType.BYTES:
        raise ExportError(f"{where}: BYTES cannot be checked against a tensor example; use a tensor datatype")
    actual_type = _datatype_of(tensor, where)
    if actual_type != spec.datatype:
        raise ExportError(
            f"{where}: declared {spec.datatype.value}, but the tensor is {actual_type.value} ({tensor.dtype})"
        )
    if batched and tensor.dim() == 0:
        raise ExportError(f"{where}: a batched model (max_batch_size > 0) needs a batch dimension first")
    shape = tuple(tensor.shape[1:] if batched else tensor.shape)
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        note = " (batch dimension left out, as max_batch_size > 0)" if batched else ""
        raise ExportError(
            f"{where}: declared shape {list(spec.shape)}, but the tensor has {list(shape)}{note}"
        )


def _check_batch_dimension(
    examples: tuple[torch.Tensor, ...],
    outputs: Sequence[tuple[str | int, torch.Tensor]],
    output_specs: Sequence[TensorSpec],
) -> None:
    """The server splits a batched answer by its first dimension, so every input and every output
    must have the same number of rows."""
    rows = examples[0].shape[0]
    for i, example in enumerate(examples):
        if example.shape[0] != rows:
            raise ExportError(
                f"example inputs disagree on the batch size: input 0 has {rows} rows, input {i} has {example.shape[0]}"
            )
    for spec, (_, tensor) in zip(output_specs, outputs, strict=True):
        if tensor.shape[0] != rows:
            raise ExportError(
                f"output {spec.name!r} has {tensor.shape[0]} rows for {rows} input rows: a batched model "
                "must answer one row per input row"
            )


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _publish(program: torch.jit.ScriptModule, config: ModelConfig, model_dir: Path) -> int:
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        # mkdtemp makes the folder private (0700); the server may run as another user.
        os.chmod(staging, 0o755)
        model_file = staging / MODEL_FILE
        torch.jit.save(program, os.fspath(model_file))
        _fsync_file(model_file)
        write_model_config(config, staging)
        _fsync_file(staging / MODEL_CONFIG_FILE)
        os.replace(staging / MODEL_CONFIG_FILE, model_dir / MODEL_CONFIG_FILE)
        fsync_directory(staging)
        version = _rename_to_next_version(staging, model_dir)
        fsync_directory(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def _rename_to_next_version(staging: Path, model_dir: Path) -> int:
    # rename(2) of a folder is atomic. Two exporters racing for one number: the loser finds the
    # target taken (not empty) and tries the next one.
    for _ in range(100):
        version = next_version(model_dir)
        try:
            os.rename(staging, model_dir / str(version))
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return version
    raise ExportError(f"could not claim a version number under {model_dir}")
