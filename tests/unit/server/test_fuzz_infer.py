"""A fuzzer for ModelInfer: hypothesis sends a few thousand requests, valid, broken and wild,
through a real gRPC channel to the session's in-process server (`served`, on 127.0.0.1).

Every answer must be one of:

- OK, and right: the outputs asked for, in the encoding the request used, with the values the
  model computes for exactly the tensors the request describes. The request is decoded here,
  independently of the server's codec, and run through the model's own file (`ModelRuntime`);
  an OK to a request this decoding refuses is a failure too.
- INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED or UNAVAILABLE, sent by the server (not a
  client-side "Stream removed"), with a non-empty message of at most MAX_STATUS_MESSAGE_BYTES.

Never UNKNOWN, INTERNAL or a deadline. Three families of requests:

- valid requests with odd but harmless parts (inputs in any order, unicode ids, parameters of
  every type, output subsets, NaN and infinities, zero-row variable dimensions) must succeed;
- broken requests, a valid one after mutations that each certainly break it, must get the exact
  code of the first rule they break: size (gRPC), then model, then version, then readiness, then
  the request's content;
- wild requests, random names, datatypes, shapes and contents, and raw bodies that are not even
  a message, may get any allowed answer.

Every LIVENESS_EVERY requests, and after the last, a valid request must get its right answer.
poison and slow stay out of the mix: poison raises by design (INTERNAL, in test_malformed), slow
costs tens of milliseconds a request.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import struct
from collections.abc import Iterator
from typing import Any, Final, Literal

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kubemaas_server.model_config import Device, ModelConfig, TensorSpec
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc
from kubemaas_server.runtime import ModelRuntime
from kubemaas_server.servicer import MAX_STATUS_MESSAGE_BYTES

from .conftest import MAX_MESSAGE_BYTES, RunningServer
from .models import BROKEN, INTS, KINDS, MLP, ROWSUM, SERVED_VERSIONS, TEXT

Code = grpc.StatusCode
ALLOWED_CODES: Final = frozenset(
    {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE}
)
CONFIGS: Final = {config.name: config for config in (MLP, INTS, TEXT, ROWSUM, KINDS, BROKEN)}
SERVING: Final = ("mlp", "ints", "text", "rowsum", "kinds")
IN_REPOSITORY: Final = frozenset({*CONFIGS, "poison", "slow"})
METHOD: Final = "/inference.GRPCInferenceService/ModelInfer"
LIVENESS_EVERY: Final = 100
TIMEOUT_S: Final = 30.0

FUZZ_SETTINGS: Final = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# The wire format, written out here rather than imported from the server's tensor_codec, so that
# this test decodes requests and answers on its own: numpy type, typed field (None: raw only).
WIRE: Final[dict[str, tuple[str | None, str | None]]] = {
    "BOOL": ("|b1", "bool_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "FP16": ("<f2", None),
    "BF16": ("<u2", None),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
    "BYTES": (None, "bytes_contents"),
}
TYPED_FIELDS: Final = sorted({field for _, field in WIRE.values() if field})
FLOATS: Final = frozenset({"FP16", "BF16", "FP32", "FP64"})


@dataclasses.dataclass(frozen=True)
class Case:
    """A request and what it must get: "ok" (and the right outputs), one exact status code,
    or "any" allowed answer."""

    request: Any  # pb.ModelInferRequest
    expected: grpc.StatusCode | Literal["ok", "any"]
    why: str = ""


# ---------------------------------------------------------------------------------------------
# Strategies


def repeated(pieces: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    """Long strings without drawing every character: a short piece, repeated."""
    return st.builds(operator.mul, pieces, st.integers(low, high))


def huge_text(low: int = 1_000, high: int = 20_000) -> st.SearchStrategy[str]:
    """Up to 60 000 characters (240 KB of UTF-8): far past any status message, short of the
    message limit. Requests past that limit are drawn on purpose, and rarely: gRPC takes 0.1 to
    1 s to refuse one."""
    return repeated(st.text(min_size=1, max_size=3), low, high)


NAMES: Final = st.one_of(
    st.just(""), st.text(max_size=12), st.text(alphabet="\U0001f600\u00e9\u0000 \t", max_size=6), huge_text()
)
DATATYPES: Final = st.one_of(
    st.sampled_from([*WIRE, "", "fp32", "Bytes", "FP8", "STRING", "COMPLEX64", "FP32 ", "INT128"]),
    st.text(max_size=10),
    huge_text(100, 20_000),
)
DIMS: Final = st.one_of(
    st.integers(-3, 20),
    st.sampled_from([0, -1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]),
)
SHAPES: Final = st.one_of(
    st.lists(DIMS, max_size=5),
    st.integers(9, 5_000).map(lambda dims: [1] * dims),  # many dimensions
)


def parameter(value: bool | int | float | str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return (
            pb.InferParameter(int64_param=value) if value < 2**63 else pb.InferParameter(uint64_param=value)
        )
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


PARAMETERS: Final = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        huge_text(100, 2_000),
    ).map(parameter),
    max_size=3,
)
IDS: Final = st.one_of(st.just(""), st.text(max_size=20), huge_text(100, 5_000))


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def random_values(rng: np.random.Generator, datatype: str, count: int, *, special: bool) -> np.ndarray:
    """`count` values of a fixed-size datatype (BF16 as its uint16 bit patterns)."""
    if datatype == "BOOL":
        return rng.integers(0, 2, count).astype(np.bool_)
    if datatype in FLOATS:
        values = rng.standard_normal(count) * 10.0 ** rng.integers(-3, 4, count)
        if special and count:
            odd = [np.nan, np.inf, -np.inf, -0.0, 1e-42, 3e38]
            values[rng.integers(0, count, max(1, count // 4))] = rng.choice(odd)
        if datatype == "BF16":
            return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        with np.errstate(over="ignore"):
            return values.astype(WIRE[datatype][0])
    dtype = np.dtype(WIRE[datatype][0])
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)


@st.composite
def valid_requests(draw: st.DrawFn, name: str) -> pb.ModelInferRequest:
    """A request the model must answer, with harmless oddities drawn in."""
    config = CONFIGS[name]
    rows = draw(st.integers(1, config.max_batch_size) if config.batched else st.integers(0, 5))
    typed = all(WIRE[spec.datatype][1] for spec in config.inputs) and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    special = draw(st.booleans())
    request = pb.ModelInferRequest(
        model_name=name, model_version=draw(st.sampled_from(["", SERVED_VERSIONS[name]])), id=draw(IDS)
    )
    for key, value in draw(PARAMETERS).items():
        request.parameters[key].CopyFrom(value)
    for spec in draw(st.permutations(config.inputs)):
        shape = [rows, *spec.shape] if config.batched else [rows if dim == -1 else dim for dim in spec.shape]
        count = math.prod(shape)
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype.value, shape=shape)
        for key, value in draw(PARAMETERS).items():
            tensor.parameters[key].CopyFrom(value)
        if spec.datatype == "BYTES":
            items = [
                text.encode() for text in draw(st.lists(st.text(max_size=12), min_size=count, max_size=count))
            ]
            if typed:
                tensor.contents.bytes_contents.extend(items)
            else:
                request.raw_input_contents.append(length_prefixed(items))
        else:
            values = random_values(rng, spec.datatype, count, special=special)
            if typed:
                getattr(tensor.contents, str(WIRE[spec.datatype][1])).extend(values.tolist())
            else:
                request.raw_input_contents.append(values.tobytes())
        if typed:
            tensor.contents.SetInParent()  # present even when empty (zero rows)
    if draw(st.booleans()):
        names = [spec.name for spec in config.outputs]
        for output in draw(st.lists(st.sampled_from(names), min_size=1, unique=True)):
            requested = request.outputs.add(name=output)
            for key, value in draw(PARAMETERS).items():
                requested.parameters[key].CopyFrom(value)
    return request


def spec_of(config: ModelConfig, tensor: Any) -> TensorSpec | None:
    return next((spec for spec in config.inputs if spec.name == tensor.name), None)


def fillable_count(shape: Any) -> int | None:
    """The element count of a shape small enough to fill with data; None for the others."""
    if any(dim < 0 for dim in shape):
        return None
    count = math.prod(shape)
    return count if count <= 4096 else None


def filler(field: str) -> Any:
    """A value any typed field of this name takes."""
    return {"bytes_contents": b"x", "bool_contents": True}.get(field, 1)


def some_input(draw: st.DrawFn, request: Any) -> Any:
    return draw(st.sampled_from(list(request.inputs)))


# Mutations: each certainly breaks a valid request, and says which rule it breaks.
Broken = Literal["model", "version", "content"]


def unknown_model(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    request.model_name = draw(NAMES.filter(lambda name: name not in IN_REPOSITORY))
    return "model"


def unknown_version(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    served = SERVED_VERSIONS[config.name]
    versions = st.one_of(st.integers(0, 10**6).map(str), NAMES)
    request.model_version = draw(versions.filter(lambda version: version not in ("", served)))
    return "version"


def rename_input(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    known = {spec.name for spec in config.inputs}
    tensor = some_input(draw, request) if request.inputs else request.inputs.add()
    tensor.name = draw(NAMES.filter(lambda name: name not in known))
    return "content"


def wrong_datatype(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    if not request.inputs:
        return "content"  # no inputs at all is already missing every input
    tensor = some_input(draw, request)
    spec = spec_of(config, tensor)
    tensor.datatype = draw(DATATYPES.filter(lambda datatype: spec is None or datatype != spec.datatype))
    return "content"


def wrong_shape(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """A shape no content can make valid: negative, the wrong rank, a fixed dimension changed,
    or a batch dimension outside 1..max_batch_size."""
    if not request.inputs:
        return "content"
    tensor = some_input(draw, request)
    shape = list(tensor.shape)
    spec = spec_of(config, tensor)
    wanted = list(config.reported_shape(spec)) if spec else []
    how = draw(st.sampled_from(["negative", "rank", "fixed", "batch"]))
    fixed = [i for i, want in enumerate(wanted) if want != -1 and i < len(shape)]
    if how == "negative" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from([-1, -2, -(2**40), -(2**63)]))
    elif how == "fixed" and fixed and len(shape) == len(wanted):
        position = draw(st.sampled_from(fixed))
        shape[position] = draw(DIMS.filter(lambda dim: dim != wanted[position]))
    elif how == "batch" and config.batched and shape:
        shape[0] = draw(st.sampled_from([0, config.max_batch_size + 1, 2**40, 2**63 - 1]))
    else:
        shape = draw(SHAPES.filter(lambda dims: len(dims) != len(wanted)))
    del tensor.shape[:]
    tensor.shape.extend(shape)
    return "content"


def wrong_content_size(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """Contents whose element or byte count disagrees with the declared shape; BYTES with
    length prefixes that do not add up."""
    if not request.inputs:
        return "content"
    position = draw(st.integers(0, len(request.inputs) - 1))
    tensor = request.inputs[position]
    spec = spec_of(config, tensor)
    datatype = spec.datatype.value if spec else "FP32"
    # None: a shape no content can fill; any content is then the wrong size.
    count = fillable_count(tensor.shape)
    raw = len(request.raw_input_contents) > position
    if raw and datatype == "BYTES":
        items = [b"a"] * (count if count is not None else 1)
        data = draw(
            st.sampled_from(
                [
                    length_prefixed(items)[:-1],  # the last element cut short
                    length_prefixed(items) + b"\x01\x00",  # a truncated length
                    length_prefixed([*items, b"extra"]),  # one element too many
                    length_prefixed(items[:-1]),  # one too few
                    struct.pack("<I", 2**32 - 1) + b"abc",  # claims 4 GiB
                    length_prefixed(items)[:-5] + struct.pack("<I", 10**6),  # a prefix past the end
                ]
            ).filter(lambda data: count is None or data != length_prefixed(items))
        )
        request.raw_input_contents[position] = data
    elif raw:
        itemsize = np.dtype(str(WIRE[datatype][0])).itemsize
        sizes = st.one_of(st.integers(0, 600), st.just(300_000))
        size = draw(sizes.filter(lambda n: count is None or n != count * itemsize))
        request.raw_input_contents[position] = bytes(size)
    else:
        field = WIRE[datatype][1] or "fp32_contents"
        values = getattr(tensor.contents, field)
        size = draw(st.integers(0, 300).filter(lambda n: count is None or n != count))
        del values[:]
        values.extend([filler(field)] * size)
    return "content"


def stray_typed_field(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """Typed values in a field the datatype does not travel in (or any typed values at all
    beside raw_input_contents)."""
    if not request.inputs:
        return "content"
    tensor = some_input(draw, request)
    spec = spec_of(config, tensor)
    own = WIRE[spec.datatype.value][1] if spec else None
    field = draw(st.sampled_from([field for field in TYPED_FIELDS if field != own]))
    getattr(tensor.contents, field).extend([filler(field)] * draw(st.integers(1, 4)))
    return "content"


def mixed_encoding(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """A raw entry beside typed contents, or typed contents beside raw entries."""
    if request.raw_input_contents and request.inputs:
        tensor = some_input(draw, request)
        spec = spec_of(config, tensor)
        field = (WIRE[spec.datatype.value][1] if spec else None) or "fp32_contents"
        getattr(tensor.contents, field).append(filler(field))
    else:
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    return "content"


def duplicate_input(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    if not request.inputs:
        return "content"
    position = draw(st.integers(0, len(request.inputs) - 1))
    request.inputs.add().CopyFrom(request.inputs[position])
    if len(request.raw_input_contents) > position:
        request.raw_input_contents.append(request.raw_input_contents[position])
    return "content"


def drop_input(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """Every copy of one input goes (a single copy would leave a duplicate's twin: valid)."""
    if request.inputs:
        name = request.inputs[draw(st.integers(0, len(request.inputs) - 1))].name
        for position in reversed(range(len(request.inputs))):
            if request.inputs[position].name == name:
                del request.inputs[position]
                if len(request.raw_input_contents) > position:
                    del request.raw_input_contents[position]
    return "content"


def extra_raw_entry(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    if not request.raw_input_contents:
        return mixed_encoding(draw, request, config)
    request.raw_input_contents.append(draw(st.binary(max_size=64)))
    return "content"


def unknown_output(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    known = {spec.name for spec in config.outputs}
    request.outputs.add(name=draw(NAMES.filter(lambda name: name not in known)))
    return "content"


def repeated_output(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    if request.outputs:
        request.outputs.add(name=draw(st.sampled_from(request.outputs)).name)
    else:
        name = draw(st.sampled_from(config.outputs)).name
        request.outputs.add(name=name)
        request.outputs.add(name=name)
    return "content"


def not_utf8(draw: st.DrawFn, request: Any, config: ModelConfig) -> Broken:
    """A BYTES element that is not UTF-8, for a model that takes strings."""
    text = next((tensor for tensor in request.inputs if tensor.name == "text"), None)
    if config.name != "text" or text is None:
        return wrong_datatype(draw, request, config)
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"a\xed\xa0\x80", b"\xfe\xff"]))
    position = next(i for i, tensor in enumerate(request.inputs) if tensor is text)
    if len(request.raw_input_contents) > position:
        request.raw_input_contents[position] = length_prefixed([bad] * (fillable_count(text.shape) or 1))
    elif text.contents.bytes_contents:
        text.contents.bytes_contents[0] = bad
    else:
        text.contents.bytes_contents.append(bad)
    return "content"


# hypothesis draws the first entries of a list more often: the mutations that reach the deepest
# checks come first, the ones that stop a request early last.
MUTATIONS: Final = (
    wrong_content_size, wrong_shape, not_utf8, stray_typed_field, mixed_encoding, duplicate_input,
    drop_input, repeated_output, unknown_output, extra_raw_entry, wrong_datatype, rename_input,
    unknown_version, unknown_model,
)  # fmt: skip


def expected_code(request: Any, broken: set[Broken]) -> grpc.StatusCode:
    """The code of the first rule a request breaks, in the order the server checks them."""
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        return Code.RESOURCE_EXHAUSTED
    if "model" in broken or "version" in broken:
        return Code.NOT_FOUND
    if request.model_name == "broken":
        return Code.UNAVAILABLE
    return Code.INVALID_ARGUMENT


@st.composite
def broken_cases(draw: st.DrawFn, *, oversize: bool = False) -> Case:
    """A valid request after one to three mutations; `oversize`: then past the message limit
    too, which gRPC refuses before anything else is looked at (and takes 0.1 to 1 s to, so
    these are drawn apart and few)."""
    name = draw(st.sampled_from([*SERVING, "broken"]))
    config = CONFIGS[name]
    request = draw(valid_requests(name))
    broken: set[Broken] = set()
    applied = []
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=int(not oversize), max_size=3)):
        broken.add(mutation(draw, request, config))
        applied.append(mutation.__name__)
    if oversize:
        if request.raw_input_contents and draw(st.booleans()):
            request.raw_input_contents[0] = bytes(MAX_MESSAGE_BYTES)
        else:
            request.id = "i" * MAX_MESSAGE_BYTES
        applied.append("oversize")
    return Case(request, expected_code(request, broken), ", ".join(applied))


@st.composite
def wild_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Requests shaped after a signature, each part of which may go wrong on its own: a name, a
    datatype, a shape, a count, a value out of range, an encoding, an input too many or too few.
    Some come out valid (and must then be answered right), most break one rule or several."""

    def odd(one_in: int = 6) -> bool:
        return draw(st.integers(0, one_in - 1)) == one_in - 1

    name = draw(NAMES) if odd(8) else draw(st.sampled_from([*SERVING, "broken"]))
    config = CONFIGS.get(name, MLP)  # an unknown model gets a request shaped like mlp's
    version = ""
    if odd(4):
        version = draw(st.one_of(st.sampled_from([SERVED_VERSIONS.get(name, ""), "1", "2"]), NAMES))
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=draw(IDS))
    for key, value in draw(PARAMETERS).items():
        request.parameters[key].CopyFrom(value)
    encoding = draw(st.sampled_from(["raw", "typed", "raw", "typed", "both", "neither"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(0, config.max_batch_size + 1))
    specs = list(draw(st.permutations(config.inputs)))
    if odd():
        specs.append(draw(st.sampled_from(config.inputs)))  # given twice
    if odd() and specs:
        del specs[draw(st.integers(0, len(specs) - 1))]  # missing
    for spec in specs:
        tensor = request.inputs.add(name=draw(NAMES) if odd(10) else spec.name)
        datatype = draw(DATATYPES) if odd(10) else spec.datatype.value
        tensor.datatype = datatype
        if odd(8):
            shape = draw(SHAPES)
        else:
            shape = [rows if dim == -1 else dim for dim in config.reported_shape(spec)]
        tensor.shape.extend(shape)
        count = fillable_count(shape)
        if count is None:
            count = draw(st.integers(0, 50))
        elif odd(8):
            count = max(0, count + draw(st.sampled_from([-1, 1, 7])))
        wire, field = WIRE.get(datatype, (None, None))
        if encoding in ("typed", "both") or (encoding == "raw" and odd(20)):
            if field is None or odd(10):
                field = draw(st.sampled_from(TYPED_FIELDS))
            values: list[Any]
            if field == "bytes_contents":
                values = [draw(st.binary(max_size=6)) if odd(4) else b"ok"] * count
            elif WIRE.get(datatype, (None, None))[1] == field:
                values = random_values(rng, datatype, count, special=odd(3)).tolist()
                if values and odd(4):  # the field's extreme, outside a narrower datatype's range
                    values[0] = {"int_contents": -(2**31), "uint_contents": 2**32 - 1}.get(field, values[0])
            else:
                values = [filler(field)] * count
            getattr(tensor.contents, field).extend(values)
            tensor.contents.SetInParent()
        if encoding in ("raw", "both") or (encoding == "typed" and odd(20)):
            if datatype == "BYTES":
                items = [
                    draw(st.text(max_size=5)).encode() if not odd(5) else draw(st.binary(max_size=5))
                    for _ in range(min(count, 16))
                ]
                data = length_prefixed(items)
                if odd(4):
                    data = draw(
                        st.sampled_from([data[:-1], data + b"\x05\x00", struct.pack("<I", 2**31) + data])
                    )
            else:
                itemsize = np.dtype(wire).itemsize if wire else draw(st.sampled_from([1, 2, 4, 8]))
                data = rng.bytes(count * itemsize)
                if odd(10):
                    data = draw(st.binary(max_size=80))
            request.raw_input_contents.append(data)
    if odd(10) and request.raw_input_contents:
        request.raw_input_contents.append(b"")  # one raw entry too many
    names = [spec.name for spec in config.outputs]
    for _ in range(draw(st.integers(0, len(names)))):
        request.outputs.add(name=draw(NAMES) if odd(10) else draw(st.sampled_from(names)))
    return request


def corrupted(data: bytes, how: str, position: int, noise: bytes) -> bytes:
    at = position % (len(data) + 1)
    if how == "truncate":
        return data[:at]
    if how == "flip" and data:
        at %= len(data)
        return data[:at] + bytes([data[at] ^ (noise[0] if noise else 0xFF) or 1]) + data[at + 1 :]
    return data[:at] + noise + data[at:]


@st.composite
def wire_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are rarely a valid ModelInferRequest: random bytes, or a valid request's
    bytes cut, flipped or spliced."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = draw(valid_requests(draw(st.sampled_from(SERVING)))).SerializeToString()
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "insert"]))
        data = corrupted(data, how, draw(st.integers(0, 2**20)), draw(st.binary(min_size=1, max_size=8)))
    return data


# ---------------------------------------------------------------------------------------------
# Checking answers


def decode_tensor(datatype: str, count: int, raw: bytes | None, contents: Any) -> np.ndarray:
    """One tensor from the wire, as a flat array (object array of bytes for BYTES); asserts the
    encoding is consistent."""
    wire, field = WIRE[datatype]
    if raw is not None:
        if datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                assert offset + 4 <= len(raw), "a BYTES length prefix is cut short"
                (length,) = struct.unpack_from("<I", raw, offset)
                assert offset + 4 + length <= len(raw), "a BYTES element runs past the end"
                items.append(raw[offset + 4 : offset + 4 + length])
                offset += 4 + length
            assert len(items) == count, f"{len(items)} BYTES elements for {count}"
            array = np.empty(count, dtype=object)
            array[:] = items
            return array
        dtype = np.dtype(str(wire))
        assert len(raw) == count * dtype.itemsize, f"{len(raw)} bytes for {count} {datatype} elements"
        return np.frombuffer(raw, dtype=dtype)
    assert field is not None, f"{datatype} has no typed form"
    values = list(getattr(contents, field))
    assert len(values) == count, f"{len(values)} typed values for {count}"
    for other in TYPED_FIELDS:
        assert other == field or not getattr(contents, other), f"{other} set beside {field}"
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        return array
    return np.array(values, dtype=np.dtype(str(wire)))  # OverflowError: a value does not fit


def decode_request(request: Any, config: ModelConfig) -> tuple[list[np.ndarray], int]:
    """The model's inputs, in signature order, and the batch's rows, as this test reads the
    request; an AssertionError when it is not a valid request for the model."""
    raw = list(request.raw_input_contents)
    assert not raw or len(raw) == len(request.inputs), "raw entries and inputs disagree"
    assert sorted(tensor.name for tensor in request.inputs) == sorted(spec.name for spec in config.inputs)
    arrays: dict[str, np.ndarray] = {}
    rows: int | None = None
    for position, tensor in enumerate(request.inputs):
        spec = spec_of(config, tensor)
        assert spec is not None and tensor.datatype == spec.datatype.value
        shape = tuple(tensor.shape)
        wanted = config.reported_shape(spec)
        assert len(shape) == len(wanted) and all(
            dim >= 0 and want in (-1, dim) for dim, want in zip(shape, wanted, strict=True)
        ), f"shape {shape} for {wanted}"
        tensor_rows = shape[0] if config.batched else 0
        assert not config.batched or 1 <= tensor_rows <= config.max_batch_size
        assert rows is None or rows == tensor_rows
        rows = tensor_rows
        if raw:
            assert not tensor.HasField("contents"), "typed contents beside raw entries"
        try:
            flat = decode_tensor(
                spec.datatype.value, math.prod(shape), raw[position] if raw else None, tensor.contents
            )
        except OverflowError:
            raise AssertionError(f"a typed value does not fit {spec.datatype.value}") from None
        if spec.datatype == "BYTES":
            for item in flat:
                item.decode()  # the text model takes strings: UnicodeDecodeError fails the test
        arrays[spec.name] = np.array(flat).reshape(shape)
    return [arrays[spec.name] for spec in config.inputs], rows or 0


def same_values(datatype: str, got: np.ndarray, want: np.ndarray) -> bool:
    if datatype == "BYTES":
        return [bytes(item) for item in got.reshape(-1)] == [bytes(item) for item in want.reshape(-1)]
    if datatype == "BF16":
        got, want = (np.asarray(a, np.uint16).astype(np.uint32) << 16 for a in (got, want))
        return np.allclose(got.view(np.float32), want.view(np.float32), rtol=1e-2, equal_nan=True)
    if datatype in FLOATS:
        return np.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    return np.array_equal(got, want)


class Oracle:
    """The expected answer for a request: the model's own file, run here on the request's tensors."""

    def __init__(self, served: RunningServer) -> None:
        self._served = served
        self._runtimes: dict[str, ModelRuntime] = {}

    def runtime(self, name: str) -> ModelRuntime:
        if name not in self._runtimes:
            path = self._served.repository / name / SERVED_VERSIONS[name] / "model.pt"
            self._runtimes[name] = ModelRuntime(CONFIGS[name], path, device=Device.CPU)
        return self._runtimes[name]

    def check_ok(self, request: Any, response: Any) -> None:
        """An OK answer is right: the outputs asked for, encoded as asked, with the model's values."""
        name = request.model_name
        assert name in SERVING, f"model {name!r} answered OK"
        config = CONFIGS[name]
        assert request.model_version in ("", SERVED_VERSIONS[name])
        inputs, rows = decode_request(request, config)
        assert (response.model_name, response.model_version, response.id) == (
            name,
            SERVED_VERSIONS[name],
            request.id,
        )
        outputs = self.runtime(name).run([np.array(array) for array in inputs], rows=rows)
        wanted = [output.name for output in request.outputs] or [spec.name for spec in config.outputs]
        assert [output.name for output in response.outputs] == wanted
        selected = [next(i for i, spec in enumerate(config.outputs) if spec.name == name) for name in wanted]
        typed = not request.raw_input_contents and all(WIRE[config.outputs[i].datatype][1] for i in selected)
        assert len(response.raw_output_contents) == (0 if typed else len(wanted))
        for position, (index, output) in enumerate(zip(selected, response.outputs, strict=True)):
            spec, want = config.outputs[index], outputs[index]
            assert output.datatype == spec.datatype.value
            assert tuple(output.shape) == want.shape, (tuple(output.shape), want.shape)
            raw = None if typed else response.raw_output_contents[position]
            got = decode_tensor(spec.datatype.value, want.size, raw, output.contents)
            if spec.datatype == "BOOL" and raw is not None:
                assert set(raw) <= {0, 1}, f"BOOL output bytes {set(raw)}"
            assert same_values(spec.datatype.value, got, want.reshape(-1)), f"{spec.name}: {got} != {want}"


def check_answer(oracle: Oracle, case: Case, call: Any) -> None:
    """Sends the request; its answer must be what `case` expects, and allowed in any case."""
    try:
        response = call(case.request, timeout=TIMEOUT_S)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
        assert code in ALLOWED_CODES, f"{code}: {details} ({case.why})"
        assert details, f"{code} without a message ({case.why})"
        assert "Stream removed" not in details, f"the client dropped the server's answer: {details}"
        assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES
        assert case.expected in (code, "any"), f"expected {case.expected}, got {code}: {details} ({case.why})"
        return
    assert case.expected in ("ok", "any"), f"expected {case.expected}, got OK ({case.why})"
    request = (
        case.request if not isinstance(case.request, bytes) else pb.ModelInferRequest.FromString(case.request)
    )
    if isinstance(response, bytes):
        response = pb.ModelInferResponse.FromString(response)
    oracle.check_ok(request, response)


# ---------------------------------------------------------------------------------------------
# Fixtures and the liveness check


def liveness_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id="liveness")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 16])
    request.raw_input_contents.append(np.linspace(-1, 1, 32, dtype=np.float32).tobytes())
    return request


@pytest.fixture(scope="module")
def oracle(served: RunningServer) -> Oracle:
    return Oracle(served)


@pytest.fixture(scope="module", autouse=True)
def still_serving_at_the_end(oracle: Oracle, stub: pb_grpc.GRPCInferenceServiceStub) -> Iterator[None]:
    """After the module, a valid request must still get its right answer."""
    yield
    check_answer(oracle, Case(liveness_request(), "ok", "liveness"), stub.ModelInfer)


SENT: Final = itertools.count(1)  # requests sent by this module's fuzzers


def send(oracle: Oracle, case: Case, call: Any, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    check_answer(oracle, case, call)
    if next(SENT) % LIVENESS_EVERY == 0:
        check_answer(oracle, Case(liveness_request(), "ok", "liveness"), stub.ModelInfer)


# ---------------------------------------------------------------------------------------------
# Regression examples, what the fuzzer found: bodies that do not parse were answered UNKNOWN;
# long names, datatypes and shapes were echoed whole into status messages, which the client
# dropped, answering itself RESOURCE_EXHAUSTED "Stream removed" instead of the server's code.


def mlp_request(**fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", **fields)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(bytes(64))
    return request


def changed(request: pb.ModelInferRequest, change: Any) -> pb.ModelInferRequest:
    change(request)
    return request


HUGE_NAME = "\U0001f600" * 3_000  # 12 KB of UTF-8, 36 KB percent-encoded in a status message


# ---------------------------------------------------------------------------------------------
# The fuzzers


@settings(FUZZ_SETTINGS, max_examples=300)
@given(request=st.sampled_from(SERVING).flatmap(valid_requests))
def test_valid_requests_with_odd_but_harmless_parts_get_right_answers(
    request: pb.ModelInferRequest, oracle: Oracle, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    send(oracle, Case(request, "ok", "valid"), stub.ModelInfer, stub)


@settings(FUZZ_SETTINGS, max_examples=1_100)
@example(case=Case(pb.ModelInferRequest(model_name=HUGE_NAME), Code.NOT_FOUND, "huge model name"))
@example(case=Case(mlp_request(model_version="\u00e9" * 10_000), Code.NOT_FOUND, "huge version"))
@example(
    case=Case(
        changed(mlp_request(), lambda r: setattr(r.inputs[0], "name", HUGE_NAME)),
        Code.INVALID_ARGUMENT,
        "huge input name",
    )
)
@example(
    case=Case(
        changed(mlp_request(), lambda r: setattr(r.inputs[0], "datatype", "\u00e9" * 10_000)),
        Code.INVALID_ARGUMENT,
        "huge datatype",
    )
)
@example(
    case=Case(
        changed(mlp_request(), lambda r: r.inputs[0].shape.extend([1] * 20_000)),
        Code.INVALID_ARGUMENT,
        "20 000 dimensions",
    )
)
@example(
    case=Case(
        changed(mlp_request(), lambda r: r.outputs.add(name=HUGE_NAME)), Code.INVALID_ARGUMENT, "huge output"
    )
)
@example(  # was answered with 50 000 copies of the output, refused only for the answer's size
    case=Case(
        changed(mlp_request(), lambda r: [r.outputs.add(name="output") for _ in range(50_000)]),
        Code.INVALID_ARGUMENT,
        "one output requested 50 000 times",
    )
)
@given(case=broken_cases())
def test_broken_requests_get_the_code_of_the_first_rule_they_break(
    case: Case, oracle: Oracle, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    send(oracle, case, stub.ModelInfer, stub)


@settings(FUZZ_SETTINGS, max_examples=20)
@given(case=broken_cases(oversize=True))
def test_requests_past_the_message_limit_are_resource_exhausted(
    case: Case, oracle: Oracle, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert case.expected == Code.RESOURCE_EXHAUSTED
    send(oracle, case, stub.ModelInfer, stub)


@settings(FUZZ_SETTINGS, max_examples=1_000)
@given(request=wild_requests())
def test_wild_requests_get_an_allowed_answer_and_a_right_one_when_ok(
    request: pb.ModelInferRequest, oracle: Oracle, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    send(oracle, Case(request, "any", "wild"), stub.ModelInfer, stub)


@settings(FUZZ_SETTINGS, max_examples=400)
@example(body=b"\xff\xff\xff\xff")
@example(body=b"\x0a\x02\xff\xfe")  # a model name that is not UTF-8
@given(body=wire_bodies())
def test_bodies_that_are_not_a_request_are_invalid_arguments(
    body: bytes, oracle: Oracle, channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    try:
        pb.ModelInferRequest.FromString(body)
    except DecodeError:
        expected: grpc.StatusCode | Literal["any"] = Code.INVALID_ARGUMENT
    else:
        expected = "any"
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    send(oracle, Case(body, expected, "wire"), call, stub)


@pytest.mark.parametrize(
    "method", [method.name for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
)
def test_every_method_answers_an_undecodable_body_invalid_argument(
    method: str, channel: grpc.Channel
) -> None:
    call = channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as failure:
        call(b"\x0a\x05ab", timeout=TIMEOUT_S)  # field 1 claims 5 bytes, 2 follow
    assert failure.value.code() == Code.INVALID_ARGUMENT
    assert "is not a valid inference." in (failure.value.details() or "")
