"""V2 tensor encodings <-> numpy arrays, with no object model in between.

Two encodings exist on the wire: `raw_*_contents` (little-endian bytes, one entry per tensor;
BYTES elements each prefixed with a 4-byte little-endian length) and the typed
`InferTensorContents` fields (one repeated field per family of datatypes). Decoding checks the
element count against the declared shape and reports mismatches as `InferenceError`s naming the
tensor. BYTES tensors travel as numpy object arrays of `bytes`.

numpy has no bfloat16: BF16 data is carried as uint16 bit patterns and reinterpreted by the
runtime (`torch.Tensor.view(torch.bfloat16)`), which is exact.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.model_config import DataType

NUMPY_DTYPES: Final[dict[DataType, np.dtype[Any]]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype("<u1"),
    DataType.UINT16: np.dtype("<u2"),
    DataType.UINT32: np.dtype("<u4"),
    DataType.UINT64: np.dtype("<u8"),
    DataType.INT8: np.dtype("<i1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.BF16: np.dtype("<u2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
    DataType.BYTES: np.dtype(object),
}

# The typed field of InferTensorContents each datatype travels in; FP16 and BF16 have none.
TYPED_FIELDS: Final[dict[DataType, str]] = {
    DataType.BOOL: "bool_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}

_LENGTH = struct.Struct("<I")

Array = npt.NDArray[Any]


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def decode_raw(name: str, datatype: DataType, shape: tuple[int, ...], raw: bytes) -> Array:
    """One tensor from its raw bytes; the byte count must match the shape exactly."""
    count = element_count(shape)
    if datatype == DataType.BYTES:
        return np.array(deserialize_bytes(name, raw, count), dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r}: raw content has {len(raw)} bytes, expected {expected} "
            f"({count} {datatype.value} elements of shape {list(shape)})",
        )
    if datatype == DataType.BOOL and raw.translate(None, b"\x00\x01"):
        # numpy and torch would take any other byte as a bool holding that byte, which later
        # arithmetic on it (`~`, sums) treats as neither True nor False.
        at = int(np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) > 1)[0])
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r}: BOOL elements are one byte each, 0 or 1; element {at} is {raw[at]}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_typed(name: str, datatype: DataType, shape: tuple[int, ...], contents: Any) -> Array:
    """One tensor from the typed field of its `InferTensorContents`."""
    field = TYPED_FIELDS.get(datatype)
    if field is None:
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r}: {datatype.value} has no typed contents field; send it in raw_input_contents",
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r}: contents.{field} has {len(values)} elements, expected {count} "
            f"for shape {list(shape)}",
        )
    for other in TYPED_FIELDS.values():
        if other != field and len(getattr(contents, other)):
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {name!r}: datatype {datatype.value} travels in contents.{field}, "
                f"but contents.{other} is set",
            )
    if datatype == DataType.BYTES:
        return np.array(list(values), dtype=object).reshape(shape)
    try:
        return np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except OverflowError:
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT, f"input {name!r}: a value does not fit in {datatype.value}"
        ) from None


def deserialize_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """Splits length-prefixed BYTES elements; the count and the total length must match."""
    items: list[bytes] = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {name!r}: BYTES element {len(items)} has a truncated length",
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InferenceError(
                ErrorKind.INVALID_ARGUMENT,
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes, {end - offset} remain",
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r}: raw content holds {len(items)}{'+' if len(items) > count else ''} "
            f"BYTES elements, expected {count}",
        )
    return items


def serialize_bytes(values: Array) -> bytes:
    parts: list[bytes] = []
    for item in values.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_raw(datatype: DataType, array: Array) -> bytes:
    if datatype == DataType.BYTES:
        return serialize_bytes(array)
    return array.tobytes()


def has_typed_form(datatype: DataType) -> bool:
    return datatype in TYPED_FIELDS


def encode_typed(datatype: DataType, array: Array, contents: Any) -> None:
    """Fills the typed field of an `InferTensorContents` message with `array`."""
    field = getattr(contents, TYPED_FIELDS[datatype])
    flat = array.reshape(-1)
    if datatype == DataType.BYTES:
        field.extend(item if isinstance(item, bytes) else str(item).encode() for item in flat)
    else:
        field.extend(flat.tolist())
