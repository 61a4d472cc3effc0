"""model.yaml: the write/load pair round-trips, and bad documents fail with the field named."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_server.errors import InferenceError
from kubemaas_server.metrics import ServerMetrics
from kubemaas_server.model_config import (
    DataType,
    Device,
    DynamicBatching,
    ModelConfig,
    ModelConfigError,
    TensorSpec,
    load_model_config,
    parse_model_config,
    write_model_config,
)
from kubemaas_server.repository import ModelState, load_repository, save_model, served_version
from kubemaas_server.tensor_codec import decode_raw, deserialize_bytes, serialize_bytes

from .models import Mlp

FULL = ModelConfig(
    name="clf",
    inputs=(TensorSpec("x", DataType.FP32, (3, -1)), TensorSpec("t", DataType.BYTES, (1,))),
    outputs=(TensorSpec("y", DataType.BF16, (2,)),),
    max_batch_size=16,
    dynamic_batching=DynamicBatching(max_queue_delay_ms=2.5, preferred_batch_sizes=(4, 8)),
    device=Device.CPU,
    dtype=DataType.FP16,
)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    write_model_config(FULL, tmp_path / "clf")
    assert load_model_config(tmp_path / "clf") == FULL


def test_minimal_document_takes_the_defaults() -> None:
    config = parse_model_config(
        {
            "name": "m",
            "inputs": [{"name": "a", "datatype": "fp32", "shape": [4]}],
            "outputs": [{"name": "b", "datatype": "INT64", "shape": [1]}],
        }
    )
    assert config.max_batch_size == 0 and not config.batched
    assert config.device == Device.AUTO and config.dtype is None
    assert config.inputs[0].datatype == DataType.FP32
    assert config.reported_shape(config.inputs[0]) == (4,)


def good() -> dict[str, Any]:
    return {
        "name": "m",
        "max_batch_size": 8,
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "b", "datatype": "FP32", "shape": [1]}],
    }


def edited(**changes: Any) -> dict[str, Any]:
    document = good()
    document.update(changes)
    return document


BAD = {
    "not a mapping": ([1, 2], "expected a mapping at the top level"),
    "unknown key": (edited(batch=3), "unknown field(s) 'batch'"),
    "no name": ({k: v for k, v in good().items() if k != "name"}, "missing required field 'name'"),
    "no outputs": ({k: v for k, v in good().items() if k != "outputs"}, "missing required field 'outputs'"),
    "empty inputs": (edited(inputs=[]), "inputs: expected a non-empty list"),
    "bad datatype": (
        edited(inputs=[{"name": "a", "datatype": "FLOAT", "shape": [4]}]),
        "unknown datatype 'FLOAT'",
    ),
    "zero dimension": (
        edited(inputs=[{"name": "a", "datatype": "FP32", "shape": [0]}]),
        "positive sizes and -1",
    ),
    "string shape": (
        edited(inputs=[{"name": "a", "datatype": "FP32", "shape": "4"}]),
        "shape must be a list",
    ),
    "duplicate names": (
        edited(inputs=[{"name": "a", "datatype": "FP32", "shape": [1]}] * 2),
        "duplicate tensor name(s) ['a']",
    ),
    "negative batch": (edited(max_batch_size=-1), "max_batch_size: must be >= 0"),
    "boolean batch": (edited(max_batch_size=True), "expected an integer"),
    "bad device": (edited(device="tpu"), "device: expected auto, cpu or cuda"),
    "integer dtype": (edited(dtype="INT8"), "expected a floating datatype"),
    "negative delay": (edited(dynamic_batching={"max_queue_delay_ms": -1}), "max_queue_delay_ms"),
    "unknown batching key": (edited(dynamic_batching={"window": 1}), "unknown field(s) 'window'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_documents_are_refused_with_the_field_named(case: str) -> None:
    document, message = BAD[case]
    with pytest.raises(ModelConfigError) as refused:
        parse_model_config(document)
    assert message in str(refused.value)


def test_name_must_match_its_folder(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.yaml").write_text(yaml.safe_dump(good()))
    with pytest.raises(ModelConfigError, match="differs from its folder 'other'"):
        load_model_config(tmp_path / "other")


def test_highest_integer_version_with_a_model_file_wins(tmp_path: Path) -> None:
    for version in ("1", "10", "9", "latest"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.pt").write_bytes(b"x")
    (tmp_path / "11").mkdir()  # no model file: not a version
    assert served_version(tmp_path) == "10"


def test_repository_keeps_failed_models_with_their_reasons(tmp_path: Path) -> None:
    config = ModelConfig(
        "ok",
        inputs=(TensorSpec("input", DataType.FP32, (4,)),),
        outputs=(TensorSpec("output", DataType.FP32, (2,)),),
        max_batch_size=2,
    )
    save_model(tmp_path, config, Mlp([4, 8, 2]))
    (tmp_path / "no_yaml" / "1").mkdir(parents=True)
    bad_yaml = tmp_path / "bad_yaml"
    bad_yaml.mkdir()
    (bad_yaml / "model.yaml").write_text("name: bad_yaml\ninputs: [\n")
    wrong_signature = ModelConfig(
        "wrong",
        inputs=(TensorSpec("input", DataType.FP32, (5,)),),
        outputs=(TensorSpec("output", DataType.FP32, (2,)),),
        max_batch_size=2,
    )
    save_model(tmp_path, wrong_signature, Mlp([4, 8, 2]))  # takes 4 features, declares 5
    no_version = ModelConfig("empty", inputs=config.inputs, outputs=config.outputs)
    write_model_config(no_version, tmp_path / "empty")

    registry = load_repository(tmp_path, metrics=ServerMetrics())

    assert registry.get("ok").state == ModelState.READY
    reasons = {name: model.reason for name, model in registry.models.items() if not model.ready}
    assert set(reasons) == {"no_yaml", "bad_yaml", "wrong", "empty"}
    assert "model.yaml" in reasons["no_yaml"] and "cannot read" in reasons["no_yaml"]
    assert "not valid YAML" in reasons["bad_yaml"]
    assert "no version folder" in reasons["empty"]
    assert reasons["wrong"].startswith("RuntimeError")  # the warm-up pass caught the mismatch
    with pytest.raises(InferenceError, match="not in this server's repository"):
        registry.get("missing")


def test_saved_model_is_torchscript_that_loads_without_the_python_class(tmp_path: Path) -> None:
    config = ModelConfig(
        "m",
        inputs=(TensorSpec("input", DataType.FP32, (4,)),),
        outputs=(TensorSpec("output", DataType.FP32, (2,)),),
        max_batch_size=2,
    )
    module = Mlp([4, 8, 2])
    path = save_model(tmp_path, config, module, version=3)
    assert path == tmp_path / "m" / "3" / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), module(x))


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_survive_serialization(items: list[bytes]) -> None:
    array = np.array([*items, b""], dtype=object)[: len(items)]
    assert deserialize_bytes("t", serialize_bytes(array), len(items)) == items


@given(st.binary(max_size=64), st.integers(0, 8))
def test_raw_decoding_of_arbitrary_bytes_either_fits_the_shape_or_says_why(raw: bytes, rows: int) -> None:
    for datatype in (DataType.FP32, DataType.INT8, DataType.FP64, DataType.BYTES):
        try:
            array = decode_raw("t", datatype, (rows, 2), raw)
        except InferenceError as error:
            assert "input 't'" in error.message
        else:
            assert array.shape == (rows, 2)
