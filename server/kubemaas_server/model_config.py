"""The `model.yaml` schema: one module that both the server (`load_model_config`) and the
trainer's export (`write_model_config`) use, so the repository format has one definition.

    <repository>/<model-name>/model.yaml
    <repository>/<model-name>/<version>/model.pt      # TorchScript; the highest integer version is served

`model.yaml` holds `name`, `max_batch_size` (0: the model takes no batch dimension), `inputs`
and `outputs` as lists of `{name, datatype, shape}` with V2 datatypes and -1 for a variable
dimension. As in Triton, when `max_batch_size > 0` the shapes leave the batch dimension out and
metadata reports it as -1. Optional: `dynamic_batching: {max_queue_delay_ms,
preferred_batch_sizes, max_queue_size, default_queue_timeout_ms}`, `device: auto|cpu|cuda`,
`dtype` (the floating type the model computes in; inputs are cast to it and outputs back to
their declared datatypes).

Parsing is strict: an unknown key, a wrong type or a bad datatype raises `ModelConfigError`
naming the field, because a typo in a serving setting should fail the load, not be ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODEL_CONFIG_FILE = "model.yaml"
MODEL_FILE = "model.pt"
DEFAULT_MAX_QUEUE_DELAY_MS = 5.0
# The default bound of a model's queue: this many full batches of single-row requests, and never
# fewer than DEFAULT_MIN_QUEUE_SIZE requests. A backlog of 16 batches takes 16 forward passes to
# drain; the closed-loop callers of a replica the autoscaler sized (target: 8 in flight) and the
# bursts of a load below capacity never build one, so the default never sheds at normal load.
# A replica that does build one is past saturation, where a longer queue buys nothing but
# latency for every request behind it. The floor is for unbatched and small-batch models, whose
# "16 batches" would be a handful of requests: a few dozen concurrent callers are normal load.
DEFAULT_QUEUE_BATCHES = 16
DEFAULT_MIN_QUEUE_SIZE = 128


def default_max_queue_size(max_batch_size: int) -> int:
    """The queue bound of a model whose model.yaml sets no `max_queue_size`."""
    return max(DEFAULT_MIN_QUEUE_SIZE, DEFAULT_QUEUE_BATCHES * max_batch_size)


class ModelConfigError(ValueError):
    """`model.yaml` is missing, unreadable or does not follow the schema."""


class DataType(enum.StrEnum):
    """The V2 protocol's tensor datatypes."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    BF16 = "BF16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class Device(enum.StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output. `shape` excludes the batch dimension when the model batches."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """How long a request may wait for others under load (an idle model never waits), and how
    much backlog the model's queue accepts before it sheds requests.

    `max_queue_size` counts requests waiting (not the batch being computed); None takes
    `default_max_queue_size(max_batch_size)`. `default_queue_timeout_ms` > 0 answers a request
    that waited longer than that UNAVAILABLE instead of running it; 0 never times out."""

    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int | None = None
    default_queue_timeout_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchingOverride:
    """What the deployment says about batching, over every model's own `model.yaml` (the
    ModelService's `spec.batching` reaches the server this way).

    `max_batch_size` caps the rows merged into one forward pass (0: every request runs alone);
    it never makes a request invalid: which batch sizes a request may carry is the model's own
    `max_batch_size`, and a request larger than the cap runs alone. `max_queue_delay_ms`
    replaces the model's. None leaves the model's setting."""

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None

    def rows_per_pass(self, config: ModelConfig) -> int:
        if self.max_batch_size is None or not config.batched:
            return config.max_batch_size
        return min(config.max_batch_size, self.max_batch_size)

    def queue_delay_ms(self, config: ModelConfig) -> float:
        if self.max_queue_delay_ms is None:
            return config.dynamic_batching.max_queue_delay_ms
        return self.max_queue_delay_ms


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching = field(default_factory=DynamicBatching)
    device: Device = Device.AUTO
    dtype: DataType | None = None

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def max_queue_size(self) -> int:
        """The bound the model's queue enforces: model.yaml's, or the default for its batch size."""
        configured = self.dynamic_batching.max_queue_size
        return default_max_queue_size(self.max_batch_size) if configured is None else configured

    def reported_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """The shape metadata reports: the batch dimension shows as -1."""
        return (-1, *spec.shape) if self.batched else spec.shape


_FLOAT_TYPES = frozenset({DataType.FP16, DataType.BF16, DataType.FP32, DataType.FP64})


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise ModelConfigError(f"{where}: missing required field {key!r}")
    return mapping[key]


def _check_keys(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ModelConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _datatype(value: Any, where: str) -> DataType:
    try:
        return DataType(str(value).upper())
    except ValueError:
        allowed = ", ".join(t.value for t in DataType)
        raise ModelConfigError(f"{where}: unknown datatype {value!r} (one of {allowed})") from None


def _tensor(raw: Any, where: str) -> TensorSpec:
    if not isinstance(raw, Mapping):
        raise ModelConfigError(f"{where}: expected a mapping with name, datatype, shape")
    _check_keys(raw, {"name", "datatype", "shape"}, where)
    name = _require(raw, "name", where)
    if not isinstance(name, str) or not name:
        raise ModelConfigError(f"{where}: name must be a non-empty string")
    shape_raw = _require(raw, "shape", f"{where} ({name})")
    if not isinstance(shape_raw, Sequence) or isinstance(shape_raw, str):
        raise ModelConfigError(f"{where} ({name}): shape must be a list of integers")
    shape = tuple(_as_int(dim, f"{where} ({name}) shape") for dim in shape_raw)
    if any(dim < -1 or dim == 0 for dim in shape):
        raise ModelConfigError(f"{where} ({name}): shape {list(shape)} may hold positive sizes and -1 only")
    return TensorSpec(
        name, _datatype(_require(raw, "datatype", f"{where} ({name})"), f"{where} ({name})"), shape
    )


def _tensors(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise ModelConfigError(f"{where}: expected a non-empty list of tensors")
    specs = tuple(_tensor(item, f"{where}[{i}]") for i, item in enumerate(raw))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelConfigError(f"{where}: duplicate tensor name(s) {duplicates}")
    return specs


def _dynamic_batching(raw: Any) -> DynamicBatching:
    where = "dynamic_batching"
    if raw is None:
        return DynamicBatching()
    if not isinstance(raw, Mapping):
        raise ModelConfigError(f"{where}: expected a mapping")
    _check_keys(
        raw,
        {"max_queue_delay_ms", "preferred_batch_sizes", "max_queue_size", "default_queue_timeout_ms"},
        where,
    )
    delay = raw.get("max_queue_delay_ms", DEFAULT_MAX_QUEUE_DELAY_MS)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ModelConfigError(f"{where}.max_queue_delay_ms: expected a number >= 0, got {delay!r}")
    preferred = raw.get("preferred_batch_sizes") or []
    if not isinstance(preferred, Sequence) or isinstance(preferred, str):
        raise ModelConfigError(f"{where}.preferred_batch_sizes: expected a list of integers")
    sizes = tuple(_as_int(size, f"{where}.preferred_batch_sizes") for size in preferred)
    if any(size < 1 for size in sizes):
        raise ModelConfigError(f"{where}.preferred_batch_sizes: sizes must be >= 1")
    queue_size = raw.get("max_queue_size")
    if queue_size is not None:
        queue_size = _as_int(queue_size, f"{where}.max_queue_size")
        if queue_size < 1:
            # Triton reads 0 as "unbounded"; here every queue is bounded, so say so instead.
            raise ModelConfigError(
                f"{where}.max_queue_size: expected at least 1 request, got {queue_size}; every queue "
                "is bounded (leave the field out for the default)"
            )
    timeout = raw.get("default_queue_timeout_ms", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise ModelConfigError(
            f"{where}.default_queue_timeout_ms: expected milliseconds >= 0 (0: no timeout), got {timeout!r}"
        )
    if 0 < timeout <= delay:
        # A request held back for a fuller batch would time out by the hold alone.
        raise ModelConfigError(
            f"{where}.default_queue_timeout_ms: {timeout:g} must exceed max_queue_delay_ms ({delay:g}), "
            "or requests held for a fuller batch time out; 0 turns the timeout off"
        )
    return DynamicBatching(float(delay), sizes, queue_size, float(timeout))


def parse_model_config(raw: Any, *, source: str = MODEL_CONFIG_FILE) -> ModelConfig:
    """Validates a decoded `model.yaml` document."""
    try:
        if not isinstance(raw, Mapping):
            raise ModelConfigError("expected a mapping at the top level")
        _check_keys(
            raw,
            {"name", "max_batch_size", "inputs", "outputs", "dynamic_batching", "device", "dtype"},
            "model",
        )
        name = _require(raw, "name", "model")
        if not isinstance(name, str) or not name or "/" in name:
            raise ModelConfigError(f"name: expected a non-empty string without '/', got {name!r}")
        max_batch_size = _as_int(raw.get("max_batch_size", 0), "max_batch_size")
        if max_batch_size < 0:
            raise ModelConfigError("max_batch_size: must be >= 0")
        try:
            device = Device(str(raw.get("device", "auto")).lower())
        except ValueError:
            raise ModelConfigError(f"device: expected auto, cpu or cuda, got {raw.get('device')!r}") from None
        dtype = None if raw.get("dtype") is None else _datatype(raw["dtype"], "dtype")
        if dtype is not None and dtype not in _FLOAT_TYPES:
            raise ModelConfigError(
                f"dtype: expected a floating datatype (FP16, BF16, FP32, FP64), got {dtype}"
            )
        config = ModelConfig(
            name=name,
            inputs=_tensors(_require(raw, "inputs", "model"), "inputs"),
            outputs=_tensors(_require(raw, "outputs", "model"), "outputs"),
            max_batch_size=max_batch_size,
            dynamic_batching=_dynamic_batching(raw.get("dynamic_batching")),
            device=device,
            dtype=dtype,
        )
    except ModelConfigError as error:
        raise ModelConfigError(f"{source}: {error}") from None
    return config


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The plain document `write_model_config` writes; optional fields at defaults are left out."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": spec.datatype.value, "shape": list(spec.shape)}

    doc: dict[str, Any] = {
        "name": config.name,
        "max_batch_size": config.max_batch_size,
        "inputs": [tensor(spec) for spec in config.inputs],
        "outputs": [tensor(spec) for spec in config.outputs],
    }
    if config.dynamic_batching != DynamicBatching():
        settings = config.dynamic_batching
        batching: dict[str, Any] = {"max_queue_delay_ms": settings.max_queue_delay_ms}
        if settings.preferred_batch_sizes:
            batching["preferred_batch_sizes"] = list(settings.preferred_batch_sizes)
        if settings.max_queue_size is not None:
            batching["max_queue_size"] = settings.max_queue_size
        if settings.default_queue_timeout_ms:
            batching["default_queue_timeout_ms"] = settings.default_queue_timeout_ms
        doc["dynamic_batching"] = batching
    if config.device != Device.AUTO:
        doc["device"] = config.device.value
    if config.dtype is not None:
        doc["dtype"] = config.dtype.value
    return doc


def load_model_config(model_dir: Path) -> ModelConfig:
    """Reads `<model_dir>/model.yaml`; the name in the file must match the folder."""
    path = model_dir / MODEL_CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ModelConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ModelConfigError(f"{path}: not valid YAML: {error}") from None
    config = parse_model_config(raw, source=str(path))
    if config.name != model_dir.name:
        raise ModelConfigError(f"{path}: name {config.name!r} differs from its folder {model_dir.name!r}")
    return config


def write_model_config(config: ModelConfig, model_dir: Path) -> Path:
    """Writes `<model_dir>/model.yaml` (creating the folder) and returns its path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MODEL_CONFIG_FILE
    path.write_text(yaml.safe_dump(model_config_to_dict(config), sort_keys=False))
    return path
