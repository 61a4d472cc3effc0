"""The model repository: scanning it, loading every model, and writing one.

    <repository>/<model-name>/model.yaml
    <repository>/<model-name>/<version>/model.pt

Each folder of the repository is one model; its highest integer version folder that holds a
`model.pt` is served. A model that fails anywhere (bad model.yaml, no version, a TorchScript
archive that does not load, a warm-up pass that raises) is kept in the registry as NOT ready
with the reason, and the other models serve regardless.

`save_model` is the writing side of the same format (scripts a module, writes model.yaml and the
version folder); the trainer's export and the tests build repositories with it.
"""

from __future__ import annotations

import enum
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubemaas.logs import kv
from kubemaas_server.batcher import BatchQueue
from kubemaas_server.errors import ErrorKind, InferenceError, quoted, shape_text
from kubemaas_server.metrics import ServerMetrics
from kubemaas_server.model_config import (
    MODEL_FILE,
    BatchingOverride,
    DataType,
    Device,
    ModelConfig,
    ModelConfigError,
    TensorSpec,
    load_model_config,
    write_model_config,
)

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BoundInput:
    """Where a named input goes: its position in the model's argument list and its spec."""

    index: int
    spec: TensorSpec


@dataclass(eq=False)
class ServedModel:
    name: str
    state: ModelState
    config: ModelConfig | None = None
    version: str = ""
    reason: str = ""
    queue: BatchQueue | None = None
    inputs: dict[str, BoundInput] = field(default_factory=dict)
    outputs: dict[str, BoundInput] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == ModelState.READY

    def check_version(self, version: str) -> None:
        if version and version != self.version:
            served = f"version {self.version!r}" if self.version else "no version"
            raise InferenceError(
                ErrorKind.NOT_FOUND,
                f"model {self.name!r} has no version {quoted(version)} (it serves {served})",
            )

    def require_ready(self) -> tuple[ModelConfig, BatchQueue]:
        if self.state != ModelState.READY or self.config is None or self.queue is None:
            raise InferenceError(ErrorKind.UNAVAILABLE, f"model {self.name!r} is not ready: {self.reason}")
        return self.config, self.queue

    def check_shape(self, spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> int:
        """Validates one input's datatype and shape against the signature; returns its rows."""
        assert self.config is not None
        if datatype != spec.datatype:
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {spec.name!r}: datatype {_datatype_text(datatype)} given, "
                f"expected {spec.datatype.value}",
            )
        config = self.config
        expected = config.reported_shape(spec)
        if len(shape) != len(expected) or any(
            dim < 0 or (want != -1 and dim != want) for dim, want in zip(shape, expected, strict=False)
        ):
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {spec.name!r}: shape {shape_text(shape)} given, expected {list(expected)} "
                "(-1: any size)",
            )
        if not config.batched:
            return 0
        rows = shape[0]
        if rows < 1 or rows > config.max_batch_size:
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {spec.name!r}: batch dimension {rows} outside 1..{config.max_batch_size} "
                "(max_batch_size)",
            )
        return rows


def _datatype_text(datatype: str) -> str:
    """A requested datatype for an error message: bare when it looks like one (`INT32`), quoted
    and cut otherwise, `(empty)` when missing."""
    if not datatype:
        return "(empty)"
    if len(datatype) <= 16 and datatype.isascii() and datatype.isalnum():
        return datatype
    return quoted(datatype)


class ModelRegistry:
    """Every model of one repository, by name."""

    def __init__(self, models: Iterable[ServedModel]) -> None:
        self.models: dict[str, ServedModel] = {model.name: model for model in models}

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise InferenceError(
                ErrorKind.NOT_FOUND, f"model {quoted(name)} is not in this server's repository"
            )
        return model

    @property
    def all_ready(self) -> bool:
        return all(model.ready for model in self.models.values())

    def start(self) -> None:
        """Starts every ready model's batch worker; call on the serving event loop."""
        for model in self.models.values():
            if model.queue is not None:
                model.queue.start()

    async def close(self) -> None:
        for model in self.models.values():
            if model.queue is not None:
                await model.queue.close()


def load_repository(
    repository: Path,
    *,
    metrics: ServerMetrics,
    device: Device | None = None,
    warm_up: bool = True,
    batching: BatchingOverride | None = None,
) -> ModelRegistry:
    """Loads every model folder; failures become NOT ready entries, never exceptions."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    models = []
    for model_dir in sorted(
        path for path in repository.iterdir() if path.is_dir() and not path.name.startswith(".")
    ):
        model = _load_model(
            model_dir,
            metrics=metrics,
            device=device,
            warm_up=warm_up,
            batching=batching or BatchingOverride(),
        )
        metrics.model_ready.labels(model=model.name).set(1 if model.ready else 0)
        if model.ready:
            log.info("model loaded", extra=kv(model=model.name, version=model.version))
        else:
            log.error("model failed to load", extra=kv(model=model.name, reason=model.reason))
        models.append(model)
    return ModelRegistry(models)


def served_version(model_dir: Path) -> str:
    """The highest integer-named version folder that holds a model file."""
    versions = [
        int(path.name)
        for path in model_dir.iterdir()
        if path.is_dir() and path.name.isdigit() and (path / MODEL_FILE).is_file()
    ]
    if not versions:
        raise ModelConfigError(f"no version folder with {MODEL_FILE} under {model_dir}")
    return str(max(versions))


def _load_model(
    model_dir: Path,
    *,
    metrics: ServerMetrics,
    device: Device | None,
    warm_up: bool,
    batching: BatchingOverride,
) -> ServedModel:
    name = model_dir.name
    config: ModelConfig | None = None
    try:
        config = load_model_config(model_dir)
        version = served_version(model_dir)
        from kubemaas_server.runtime import ModelRuntime  # torch loads only when a model does

        runtime = ModelRuntime(config, model_dir / version / MODEL_FILE, device=device)
        if warm_up:
            runtime.warm_up()
    except Exception as error:  # any failure of one model must leave the others serving
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        return ServedModel(name, ModelState.FAILED, config=config, reason=reason)

    def run(inputs: Sequence[Any], rows: int) -> list[Any]:
        return runtime.run(inputs, rows=rows)

    queue = BatchQueue(
        name,
        run,
        max_batch_size=batching.rows_per_pass(config),
        max_queue_delay_ms=batching.queue_delay_ms(config),
        preferred_batch_sizes=config.dynamic_batching.preferred_batch_sizes,
        max_queue_size=config.max_queue_size,
        queue_timeout_ms=config.dynamic_batching.default_queue_timeout_ms,
        metrics=metrics.for_model(name),
    )
    return ServedModel(
        name,
        ModelState.READY,
        config=config,
        version=version,
        queue=queue,
        inputs={spec.name: BoundInput(i, spec) for i, spec in enumerate(config.inputs)},
        outputs={spec.name: BoundInput(i, spec) for i, spec in enumerate(config.outputs)},
    )


def save_model(repository: Path, config: ModelConfig, module: Any, *, version: int = 1) -> Path:
    """Writes `module` (a torch.nn.Module, scripted here unless it already is TorchScript) and
    its `model.yaml` into `repository` and returns the model file's path."""
    import torch

    if version < 1:
        raise ValueError("version must be a positive integer")
    with warnings.catch_warnings():
        # torch 2.9+ marks TorchScript deprecated; it stays the format of DESIGN.md until a
        # torch.export loader exists, so the warning tells our users nothing they can act on.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module.eval())
        model_dir = repository / config.name
        write_model_config(config, model_dir)
        version_dir = model_dir / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        path = version_dir / MODEL_FILE
        torch.jit.save(scripted, os.fspath(path))
    return path


def tensor(name: str, datatype: DataType | str, shape: Sequence[int]) -> TensorSpec:
    """Shorthand for building signatures in code."""
    return TensorSpec(name, DataType(datatype), tuple(shape))
