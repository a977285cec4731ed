"""NodeDef factories for what the rewrite adds: constants, BiasAdd, Mul/Add,
FusedBatchNorm(V3), Reshape, Shape. One place knows each op's attributes."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from tensorboard.compat.proto import node_def_pb2, types_pb2

from . import tensors


def set_attrs(node: Any, **attrs: Any) -> Any:
    """Attributes by Python type: bool, float, str, list of ints, ndarray (a tensor),
    and int for a dtype enum (the only ints a NodeDef holds outside lists)."""
    for key, value in attrs.items():
        slot = node.attr[key]
        if isinstance(value, bool):
            slot.b = value
        elif isinstance(value, float):
            slot.f = value
        elif isinstance(value, str):
            slot.s = value.encode()
        elif isinstance(value, list):
            slot.list.i.extend(value)
        elif isinstance(value, np.ndarray):
            slot.tensor.CopyFrom(tensors.to_proto(value))
        else:
            slot.type = value
    return node


def _node(name: str, op: str, inputs: Iterable[str], device: str = "", **attrs: Any) -> Any:
    return set_attrs(node_def_pb2.NodeDef(name=name, op=op, input=list(inputs), device=device), **attrs)


def const(name: str, value: np.ndarray, device: str = "") -> Any:
    value = np.asarray(value)
    return _node(name, "Const", [], device, dtype=tensors.dtype_enum(value.dtype), value=value)


def bias_add(name: str, x: str, bias: str, dtype: int, data_format: str, device: str = "") -> Any:
    return _node(name, "BiasAdd", [x, bias], device, T=dtype, data_format=data_format)


def binary(name: str, op: str, a: str, b: str, dtype: int, device: str = "") -> Any:
    return _node(name, op, [a, b], device, T=dtype)


def fused_batch_norm(name: str, inputs: list[str], dtype: int, epsilon: float, data_format: str,
                     training: bool, op: str = "FusedBatchNormV3", device: str = "") -> Any:
    """FusedBatchNormV3, or FusedBatchNorm with only the attributes TF 1.x knew (a TF 1.x
    runtime refuses a NodeDef holding an attribute its op does not declare)."""
    node = _node(name, op, inputs, device, T=dtype, epsilon=float(epsilon), data_format=data_format,
                 is_training=training)
    return set_attrs(node, U=types_pb2.DT_FLOAT, exponential_avg_factor=1.0) if op == "FusedBatchNormV3" else node


def reshape(name: str, x: str, shape: str, dtype: int, device: str = "") -> Any:
    return _node(name, "Reshape", [x, shape], device, T=dtype, Tshape=types_pb2.DT_INT32)


def shape(name: str, x: str, dtype: int, device: str = "") -> Any:
    return _node(name, "Shape", [x], device, T=dtype, out_type=types_pb2.DT_INT32)
