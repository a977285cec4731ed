"""Constant subexpressions: the value a tensor always carries when it is computed from
constants only (Rsqrt, Sqrt, Pow, Maximum... of Consts, through Reshape and Cast),
evaluated in float64, with the ops and Consts it reads. It also notes where
sqrt(variance + epsilon) is taken: the signature of a batch norm.

Pure numpy over a GraphIndex; affine.py builds chains on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tensorboard.compat.proto import types_pb2

from . import names, tensors
from .index import PASSTHROUGH, GraphIndex

FLOAT_TYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_DOUBLE})
# The largest finite value of each (bfloat16 has float32's exponent and 8 bits of mantissa).
_LARGEST = {types_pb2.DT_FLOAT: float(np.finfo(np.float32).max), types_pb2.DT_HALF: float(np.finfo(np.float16).max),
            types_pb2.DT_BFLOAT16: 3.3895313892515355e38, types_pb2.DT_DOUBLE: float(np.finfo(np.float64).max)}
# Larger constants are not evaluated: per-channel parameters are far smaller.
MAX_CONSTANT = 1 << 16


def _rsqrt(a: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(a)


def _reciprocal(a: np.ndarray) -> np.ndarray:
    return 1.0 / a


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Rsqrt": _rsqrt, "Sqrt": np.sqrt, "Reciprocal": _reciprocal, "Inv": _reciprocal,
    "Square": np.square, "Neg": np.negative, "Abs": np.abs, "Exp": np.exp, "Log": np.log,
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply, "RealDiv": np.divide,
    "Div": np.divide, "Pow": np.power, "Maximum": np.maximum, "Minimum": np.minimum,
    "SquaredDifference": lambda a, b: np.square(a - b),
}
# Ops index.const_value reads a Const through, and all ops a constant can come out of.
_READS = PASSTHROUGH | {"Const", "Switch", "Cast"}
_EVALUATED = frozenset(UNARY) | frozenset(BINARY) | _READS | {"Reshape", "ExpandDims"}
# 1 / sqrt(v + e) spelled as one op, or as Pow with these exponents.
_ROOTS = {"Rsqrt": -0.5, "Sqrt": 0.5}


@dataclass(frozen=True)
class Constant:
    """A constant operand: its float64 value, the ops computing it, and its leaves."""
    value: np.ndarray
    ops: frozenset[str]  # computing ops (Rsqrt, Add of variance and epsilon...), not leaves
    leaves: tuple[tuple[str, np.ndarray], ...]  # Const tensors it reads, with their values
    leaf_nodes: frozenset[str]  # the Consts and their read chains
    norms: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # (variance, epsilon) under a root


NOTHING = Constant(np.zeros(()), frozenset(), (), frozenset())


class Evaluator:
    """Constant values of tensors, memoised: one per graph analysis."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self._constants: dict[str, Constant | None] = {}
        self._known: dict[str, bool] = {}

    def constant(self, tensor: str) -> Constant | None:
        return self._constant(names.canonical(tensor))

    def known(self, tensor: str) -> bool:
        """Whether `tensor` may be a constant (constant() can still fail to evaluate it):
        by op types alone, so a graph computing on constants costs no arithmetic here."""
        tensor = names.canonical(tensor)
        if tensor not in self._known:
            self._known[tensor] = False  # cycles through a malformed graph end here
            node = self.index.node(tensor)
            self._known[tensor] = node is not None and node.op in _EVALUATED and (
                (node.op in _READS and self.index.const_value(tensor) is not None)
                or (node.op not in ("Const", "Switch") and bool(node.input)
                    and all(self.known(t) for t in self.index.data_inputs(node.name))))
        return self._known[tensor]

    def _constant(self, tensor: str) -> Constant | None:
        """`tensor` canonical, as GraphIndex.data_inputs gives them."""
        if tensor not in self._constants:
            self._constants[tensor] = None  # cycles through a malformed graph end here
            self._constants[tensor] = self._evaluate(tensor)
        return self._constants[tensor]

    def _evaluate(self, tensor: str) -> Constant | None:
        node = self.index.node(tensor)
        if node is None or node.op not in _EVALUATED:
            return None  # most operands: the cheap answer first
        leaf = self.index.const_value(tensor) if node.op in _READS else None
        if leaf is not None:
            value = leaf.value
            if value.size > MAX_CONSTANT or value.dtype.kind not in "iufc":  # numbers (np.issubdtype costs 7 us)
                return None
            value = value.astype(np.float64)
            return Constant(value, frozenset(), ((tensor, value),), frozenset(leaf.chain))
        source, through = self.index.skip_passthrough(tensor, PASSTHROUGH)
        node = self.index.node(source)
        if node is None or names.parse(source).index != 0:
            return None
        inputs = self.index.data_inputs(node.name)
        if node.op in ("Reshape", "ExpandDims"):
            return self._reshaped(node, inputs, frozenset(through))
        if node.op == "Cast":
            inner = self._constant(inputs[0]) if inputs else None
            target = tensors.numpy_dtype(self.index.attr(node.name, "DstT", kind=int))
            if inner is None or target is None:
                return None
            return Constant(inner.value.astype(target).astype(np.float64), inner.ops | {node.name, *through},
                            inner.leaves, inner.leaf_nodes, inner.norms)
        table = UNARY if len(inputs) == 1 else BINARY if len(inputs) == 2 else {}
        dtype = self.index.attr(node.name, "T", kind=int)
        if node.op not in table or dtype not in FLOAT_TYPES:
            return None
        parts = [self._constant(t) for t in inputs]
        if any(p is None for p in parts):
            return None
        try:
            value = np.asarray(table[node.op](*(p.value for p in parts)), np.float64)
        except ValueError:  # shapes that do not broadcast: TensorFlow refuses the graph
            return None
        if value.size > MAX_CONSTANT:
            return None
        # Where the graph's own type overflows (beta / gamma with a tiny gamma), it computes
        # an infinity: so does this, and the plan leaves such a batch norm as it is.
        value = np.where(np.abs(value) > _LARGEST[dtype], np.copysign(np.inf, value), value)
        norms = tuple(n for p in parts for n in p.norms) + self._norm(node, inputs, parts)
        return Constant(value, frozenset({node.name, *through}).union(*(p.ops for p in parts)),
                        tuple(leaf for p in parts for leaf in p.leaves),
                        frozenset().union(*(p.leaf_nodes for p in parts)), norms)

    def _reshaped(self, node, inputs: list[str], through: frozenset[str]) -> Constant | None:
        inner = self._constant(inputs[0]) if len(inputs) == 2 else None
        shape = self.index.const_value(inputs[1]) if inner is not None else None
        if shape is None or shape.value.dtype.kind not in "iu":
            return None
        try:
            if node.op == "Reshape":
                value = inner.value.reshape([int(d) for d in shape.value.reshape(-1)])
            else:
                value = np.expand_dims(inner.value, int(shape.value.reshape(-1)[0]))
        except (ValueError, IndexError):  # AxisError is both; numpy 2 has no np.AxisError
            return None
        return Constant(value, inner.ops | through | {node.name}, inner.leaves,
                        inner.leaf_nodes | set(shape.chain), inner.norms)

    def _norm(self, node, inputs: list[str], parts: list[Constant]) -> tuple:
        """sqrt(variance + epsilon), its reciprocal, or a power of ±1/2 of it: the batch norm's
        signature. Epsilon is the scalar of the sum (the smaller one if both are)."""
        power = _ROOTS.get(node.op)
        if node.op == "Pow" and parts[1].value.size == 1:
            power = float(parts[1].value.reshape(-1)[0])
        if power not in (-0.5, 0.5):
            return ()
        summed = self.index.node(self.index.skip_passthrough(inputs[0], PASSTHROUGH)[0])
        if summed is None or summed.op not in ("Add", "AddV2"):
            return ()
        terms = [self._constant(t) for t in self.index.data_inputs(summed.name)]
        if len(terms) != 2 or None in terms:
            return ()
        a, b = sorted((t.value for t in terms), key=lambda v: (v.size, float(np.abs(v).max()) if v.size else 0.0))
        return ((b, a),) if a.size == 1 else ()
