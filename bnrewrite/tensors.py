"""TensorProto <-> numpy without TensorFlow.

Constants in frozen graphs hold their values either packed in `tensor_content` or
in a typed `*_val` list that TensorFlow pads by repeating the last element.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
from tensorboard.compat.proto import tensor_pb2, types_pb2

# dtype enum -> (numpy dtype, repeated field holding the values when not packed)
_DTYPES: dict[int, tuple[Any, str]] = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_HALF: (np.float16, "half_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}
_ENUM_OF = {np.dtype(np_type): enum for enum, (np_type, _) in _DTYPES.items()}

# Above this many elements a constant is not decoded: batch-norm parameters and
# weights are far smaller, and a hostile graph must not make us allocate gigabytes.
MAX_ELEMENTS = 1 << 28


def numpy_dtype(enum: int) -> Any | None:
    entry = _DTYPES.get(enum)
    return np.dtype(entry[0]) if entry else None


def dtype_enum(dtype: Any) -> int:
    return _ENUM_OF[np.dtype(dtype)]


def shape_of(proto: Any) -> tuple[int, ...] | None:
    """Static shape of a TensorShapeProto; None when unknown rank."""
    if proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in proto.dim)


def to_numpy(tensor: Any) -> np.ndarray | None:
    """Decode a TensorProto; None for dtypes we do not compute with (strings, resources...)."""
    entry = _DTYPES.get(tensor.dtype)
    shape = shape_of(tensor.tensor_shape)
    if entry is None or shape is None or any(d < 0 for d in shape):
        return None
    np_type, field = entry
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        return None
    if tensor.tensor_content:
        if len(tensor.tensor_content) != size * np.dtype(np_type).itemsize:
            return None  # content that does not fill the shape: not a usable constant
        flat = np.frombuffer(tensor.tensor_content, dtype=np_type)
        return flat.reshape(shape).copy()
    values = getattr(tensor, field)
    if field == "half_val":
        values = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(values, dtype=np_type)
    if size == 0 or values.size == 0:
        return np.zeros(shape, dtype=np_type)
    if values.size > size:
        return None
    if values.size < size:
        values = np.concatenate([values, np.repeat(values[-1:], size - values.size)])
    return values.reshape(shape)


def to_proto(array: np.ndarray) -> Any:
    """Encode a numpy array as a packed TensorProto (deterministic bytes). A 0-d array
    stays a scalar (np.ascontiguousarray would make it shape [1])."""
    array = np.asarray(array, order="C")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return tensor_pb2.TensorProto(dtype=dtype_enum(array.dtype), tensor_content=array.tobytes(),
                                  tensor_shape={"dim": [{"size": int(d)} for d in array.shape]})
