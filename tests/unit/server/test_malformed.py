"""Malformed requests get the exact status code and a message naming the problem, and the
server keeps serving afterwards."""

from __future__ import annotations

import struct
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .conftest import MAX_MESSAGE_BYTES

Code = grpc.StatusCode


def fp32_request(
    shape: list[int], data: bytes | None = None, *, model: str = "mlp", **fields: object
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    count = int(np.prod(shape)) if all(0 <= d < 10**6 for d in shape) else 0
    request.raw_input_contents.append(data if data is not None else bytes(4 * count))
    return request


def with_inputs(
    model: str, *tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def typed_fp32(values: int, field: str = "fp32_contents") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    getattr(tensor.contents, field).extend([1] * values)
    return request


def requested_outputs(*names: str) -> pb.ModelInferRequest:
    request = fp32_request([1, 16])
    for name in names:
        request.outputs.add(name=name)
    return request


def duplicated_input() -> pb.ModelInferRequest:
    request = fp32_request([1, 16])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(bytes(64))
    return request


def raw_and_typed() -> pb.ModelInferRequest:
    request = fp32_request([1, 16])
    request.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    return request


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


CASES: dict[str, tuple[Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]] = {
    "unknown model": (lambda: fp32_request([1, 16], model="nope"), Code.NOT_FOUND, "'nope' is not in"),
    "unknown version": (lambda: fp32_request([1, 16], model_version="7"), Code.NOT_FOUND, "no version '7'"),
    "no inputs": (
        lambda: pb.ModelInferRequest(model_name="mlp"),
        Code.INVALID_ARGUMENT,
        "missing input(s) ['input']",
    ),
    "unknown input": (
        lambda: with_inputs("mlp", ("bogus", "FP32", [1, 16]), raw=[bytes(64)]),
        Code.INVALID_ARGUMENT,
        "unknown input 'bogus'",
    ),
    "wrong datatype": (
        lambda: with_inputs("mlp", ("input", "INT32", [1, 16]), raw=[bytes(64)]),
        Code.INVALID_ARGUMENT,
        "datatype INT32 given, expected FP32",
    ),
    "empty datatype": (
        lambda: with_inputs("mlp", ("input", "", [1, 16]), raw=[bytes(64)]),
        Code.INVALID_ARGUMENT,
        "datatype (empty) given, expected FP32",
    ),
    "missing batch dimension": (
        lambda: fp32_request([16]),
        Code.INVALID_ARGUMENT,
        "shape [16] given, expected [-1, 16]",
    ),
    "wrong inner dimension": (
        lambda: fp32_request([1, 15]),
        Code.INVALID_ARGUMENT,
        "shape [1, 15] given, expected [-1, 16]",
    ),
    "negative dimension": (
        lambda: fp32_request([-1, 16], b""),
        Code.INVALID_ARGUMENT,
        "shape [-1, 16] given",
    ),
    "huge dimension": (
        lambda: fp32_request([1, 2**40], b""),
        Code.INVALID_ARGUMENT,
        "shape [1, 1099511627776]",
    ),
    "huge variable dimension": (
        lambda: with_inputs("rowsum", ("x", "FP64", [2**40, 3]), raw=[bytes(24)]),
        Code.INVALID_ARGUMENT,
        "raw content has 24 bytes, expected 26388279066624",
    ),
    "zero rows": (lambda: fp32_request([0, 16]), Code.INVALID_ARGUMENT, "batch dimension 0 outside 1..8"),
    "too many rows": (lambda: fp32_request([9, 16]), Code.INVALID_ARGUMENT, "batch dimension 9 outside 1..8"),
    "short raw content": (
        lambda: fp32_request([1, 16], bytes(63)),
        Code.INVALID_ARGUMENT,
        "raw content has 63 bytes, expected 64",
    ),
    "long raw content": (
        lambda: fp32_request([2, 16], bytes(129)),
        Code.INVALID_ARGUMENT,
        "raw content has 129 bytes, expected 128",
    ),
    "empty raw content": (
        lambda: fp32_request([1, 16], b""),
        Code.INVALID_ARGUMENT,
        "raw content has 0 bytes",
    ),
    "more raw entries than inputs": (
        lambda: with_inputs("mlp", ("input", "FP32", [1, 16]), raw=[bytes(64), bytes(64)]),
        Code.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs",
    ),
    "typed count": (
        lambda: typed_fp32(15),
        Code.INVALID_ARGUMENT,
        "contents.fp32_contents has 15 elements, expected 16",
    ),
    "typed wrong field": (
        lambda: typed_fp32(16, "int_contents"),
        Code.INVALID_ARGUMENT,
        "contents.fp32_contents has 0 elements",
    ),
    "raw and typed at once": (
        lambda: raw_and_typed(),
        Code.INVALID_ARGUMENT,
        "typed contents and raw_input_contents",
    ),
    "input given twice": (lambda: duplicated_input(), Code.INVALID_ARGUMENT, "input 'input' given twice"),
    "unknown output": (lambda: requested_outputs("nope"), Code.INVALID_ARGUMENT, "unknown output 'nope'"),
    "output requested twice": (
        lambda: requested_outputs("output", "output"),
        Code.INVALID_ARGUMENT,
        "output 'output' requested twice",
    ),
    "model name of 100 000 characters": (
        lambda: fp32_request([1, 16], model="\u00e9" * 100_000),
        Code.NOT_FOUND,
        "... (100000 characters) is not in this server's repository",
    ),
    "typed FP16": (
        lambda: with_inputs("kinds", ("in_fp16", "FP16", [1, 2])),
        Code.INVALID_ARGUMENT,
        "FP16 has no typed contents field",
    ),
    "inputs disagree on rows": (
        lambda: with_inputs(
            "kinds", ("in_bool", "BOOL", [1, 2]), ("in_int8", "INT8", [2, 2]), raw=[bytes(2), bytes(4)]
        ),
        Code.INVALID_ARGUMENT,
        "input 'in_int8' has 2 rows, an earlier input has 1",
    ),
    "BOOL byte other than 0 or 1": (
        lambda: with_inputs("kinds", ("in_bool", "BOOL", [1, 2]), raw=[b"\x01\x02"]),
        Code.INVALID_ARGUMENT,
        "input 'in_bool': BOOL elements are one byte each, 0 or 1; element 1 is 2",
    ),
    "BYTES length prefix past the end": (
        lambda: with_inputs("text", ("text", "BYTES", [1, 1]), raw=[struct.pack("<I", 10) + b"abc"]),
        Code.INVALID_ARGUMENT,
        "claims 10 bytes, 3 remain",
    ),
    "BYTES element count": (
        lambda: with_inputs("text", ("text", "BYTES", [2, 1]), raw=[length_prefixed(b"a")]),
        Code.INVALID_ARGUMENT,
        "holds 1 BYTES elements, expected 2",
    ),
    "BYTES not UTF-8": (
        lambda: with_inputs("text", ("text", "BYTES", [1, 1]), raw=[length_prefixed(b"\xff\xfe")]),
        Code.INVALID_ARGUMENT,
        "not UTF-8",
    ),
    "model raises": (
        lambda: with_inputs(
            "poison", ("x", "FP32", [1, 2]), raw=[np.array([[-5000.0, 1.0]], np.float32).tobytes()]
        ),
        Code.INTERNAL,
        "poisoned row",
    ),
    "oversize message": (
        lambda: fp32_request([1, 16], bytes(MAX_MESSAGE_BYTES + 1)),
        Code.RESOURCE_EXHAUSTED,
        "",
    ),
}


def assert_still_serving(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(fp32_request([1, 16], np.ones((1, 16), np.float32).tobytes()))
    assert list(response.outputs[0].shape) == [1, 4]


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_gets_its_status_and_the_server_keeps_serving(
    case: str, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    build, code, message = CASES[case]
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(build(), timeout=30)
    assert failure.value.code() == code, failure.value.details()
    assert message in (failure.value.details() or ""), failure.value.details()
    assert_still_serving(stub)


DATATYPES = ["FP32", "FP16", "INT64", "INT32", "BOOL", "BYTES", "fp32", "", "COMPLEX64"]


@settings(max_examples=150)
@given(
    shape=st.lists(st.one_of(st.integers(-3, 20), st.sampled_from([2**31, 2**62, -(2**63)])), max_size=4),
    size=st.one_of(st.integers(0, 700), st.just(-1)),
    datatype=st.sampled_from(DATATYPES),
    typed=st.booleans(),
)
def test_random_shapes_sizes_and_datatypes_never_hurt_the_server(
    stub: pb_grpc.GRPCInferenceServiceStub, shape: list[int], size: int, datatype: str, typed: bool
) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    valid_shape = len(shape) == 2 and 1 <= shape[0] <= 8 and shape[1] == 16
    elements = shape[0] * 16 if valid_shape else 3
    if size == -1:  # the exact size a valid request would have
        size = elements if typed else 4 * elements
    if typed:
        tensor.contents.fp32_contents.extend([0.5] * size)
    else:
        request.raw_input_contents.append(bytes(size))
    valid = valid_shape and datatype == "FP32" and size == (elements if typed else 4 * elements)
    try:
        response = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as failure:
        assert not valid, failure.details()
        assert failure.code() == Code.INVALID_ARGUMENT, failure.details()
        assert "'input'" in (failure.details() or "")
    else:
        assert valid
        assert list(response.outputs[0].shape) == [shape[0], 4]
    assert_still_serving(stub)
