"""Affine chains: elementwise arithmetic with constant operands, reduced to y = scale * x + shift.

A chain is a run of Mul, Add, AddV2, Sub, RealDiv, Div, Neg and BiasAdd ops (Identity-like
ops between them looked through) in which every op has exactly one operand computed from
x and every other operand is a constant or a constant subexpression (Rsqrt, Sqrt, Pow,
Maximum... of constants). Whatever the spelling, order or association, the chain is one
per-channel map, evaluated here in float64. A FakeQuant op inside a chain splits it into
segments: the arithmetic on each side is still one map, but nothing may cross it.

Pure numpy over a GraphIndex: no TensorFlow, no decisions (plan.py makes those).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from tensorboard.compat.proto import types_pb2

from . import names, tensors
from .index import PASSTHROUGH, GraphIndex

FLOAT_TYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_DOUBLE})
FAKE_QUANT = frozenset({"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs",
                        "FakeQuantWithMinMaxVarsPerChannel"})
CHAIN_OPS = frozenset({"Mul", "Add", "AddV2", "Sub", "RealDiv", "Div", "Neg", "BiasAdd"})
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


@dataclass(frozen=True)
class Affine:
    """y = scale * x + shift, arrays broadcast like the graph's constants."""
    scale: np.ndarray
    shift: np.ndarray

    def then(self, other: "Affine") -> "Affine":
        return Affine(other.scale * self.scale, other.scale * self.shift + other.shift)


IDENTITY = Affine(np.ones(()), np.zeros(()))


@dataclass(frozen=True)
class Chain:
    root: str  # node producing y
    x: str  # the tensor the chain starts from
    nodes: tuple[str, ...]  # chain ops and the pass-through ops between them, x upward
    constants: tuple[Constant, ...]  # each op's constant operand
    segments: tuple[Affine, ...]  # one map per stretch between FakeQuant ops, x upward
    fake_quants: tuple[str, ...]  # the FakeQuant ops between the segments
    channels: int  # 1: every constant is a scalar
    channel_axis: int  # negative axis of x the constants broadcast along
    rank: int  # the largest constant rank: x must have at least this many dims

    @property
    def affine(self) -> Affine:
        """The whole chain as one map, FakeQuant ops read as identities."""
        result = IDENTITY
        for segment in self.segments:
            result = result.then(segment)
        return result

    @property
    def const_ops(self) -> frozenset[str]:
        return frozenset().union(*(c.ops for c in self.constants))

    @property
    def leaf_nodes(self) -> frozenset[str]:
        return frozenset().union(*(c.leaf_nodes for c in self.constants))

    def leaves(self) -> dict[str, np.ndarray]:
        return {tensor: value for c in self.constants for tensor, value in c.leaves}

    def norms(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [norm for c in self.constants for norm in c.norms]


@dataclass(frozen=True)
class _Step:
    node: str
    variable: str  # the operand computed from x
    map: Affine
    constant: Constant
    layout: tuple[int, int | None]  # (channels, negative axis), axis None for a scalar


def layout_of(shape: tuple[int, ...]) -> tuple[int, int | None] | None:
    """(channels, negative axis) of a per-channel constant's shape; axis None for a scalar,
    None when more than one dim is wide."""
    wide = [i for i, d in enumerate(shape) if d > 1]
    if not wide:
        return 1, None
    if len(wide) > 1:
        return None
    return int(shape[wide[0]]), wide[0] - len(shape)


class Analysis:
    """Every maximal affine chain of a graph. `stop(node)` says that an op must not be
    taken into a chain (a host's own bias, which hosts.py folds)."""

    def __init__(self, index: GraphIndex, stop: Callable[[str], bool]) -> None:
        self.index, self.stop = index, stop
        self._constants: dict[str, Constant | None] = {}
        self._steps: dict[str, _Step | None] = {}

    # ----- constant subexpressions ---------------------------------------------------------
    def constant(self, tensor: str) -> Constant | None:
        tensor = names.canonical(tensor)
        if tensor not in self._constants:
            self._constants[tensor] = None  # cycles through a malformed graph end here
            self._constants[tensor] = self._evaluate(tensor)
        return self._constants[tensor]

    def _evaluate(self, tensor: str) -> Constant | None:
        leaf = self.index.const_value(tensor)
        if leaf is not None:
            value = leaf.value
            if value.size > MAX_CONSTANT or not (np.issubdtype(value.dtype, np.number)):
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
            inner = self.constant(inputs[0]) if inputs else None
            target = tensors.numpy_dtype(self.index.attr(node.name, "DstT", kind=int))
            if inner is None or target is None:
                return None
            return Constant(inner.value.astype(target).astype(np.float64), inner.ops | {node.name, *through},
                            inner.leaves, inner.leaf_nodes, inner.norms)
        table = UNARY if len(inputs) == 1 else BINARY if len(inputs) == 2 else {}
        if node.op not in table or self.index.attr(node.name, "T", kind=int) not in FLOAT_TYPES:
            return None
        parts = [self.constant(t) for t in inputs]
        if any(p is None for p in parts):
            return None
        value = np.asarray(table[node.op](*(p.value for p in parts)), np.float64)
        if value.size > MAX_CONSTANT:
            return None
        norms = tuple(n for p in parts for n in p.norms) + self._norm(node, inputs, parts)
        return Constant(value, frozenset({node.name, *through}).union(*(p.ops for p in parts)),
                        tuple(leaf for p in parts for leaf in p.leaves),
                        frozenset().union(*(p.leaf_nodes for p in parts)), norms)

    def _reshaped(self, node, inputs: list[str], through: frozenset[str]) -> Constant | None:
        inner = self.constant(inputs[0]) if len(inputs) == 2 else None
        shape = self.index.const_value(inputs[1]) if inner is not None else None
        if shape is None or not np.issubdtype(shape.value.dtype, np.integer):
            return None
        try:
            if node.op == "Reshape":
                value = inner.value.reshape([int(d) for d in shape.value.reshape(-1)])
            else:
                value = np.expand_dims(inner.value, int(shape.value.reshape(-1)[0]))
        except (ValueError, IndexError, np.AxisError):
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
        terms = [self.constant(t) for t in self.index.data_inputs(summed.name)]
        if len(terms) != 2 or None in terms:
            return ()
        a, b = sorted((t.value for t in terms), key=lambda v: (v.size, float(np.max(np.abs(v), initial=0))))
        return ((b, a),) if a.size == 1 else ()

    # ----- chains ------------------------------------------------------------------------
    def _step(self, name: str) -> _Step | None:
        if name not in self._steps:
            self._steps[name] = self._make_step(name)
        return self._steps[name]

    def _make_step(self, name: str) -> _Step | None:
        node = self.index.nodes[name]
        if node.op not in CHAIN_OPS or self.index.attr(name, "T", kind=int) not in FLOAT_TYPES:
            return None
        inputs = self.index.data_inputs(name)
        consts = [self.constant(t) for t in inputs]
        variable = [i for i, c in enumerate(consts) if c is None]
        if len(variable) != 1 or self.stop(name):
            return None
        (v,) = variable
        one, zero = np.ones(()), np.zeros(())
        if node.op == "Neg":
            return _made(name, inputs[0], Affine(-one, zero), _NOTHING)
        c = consts[1 - v]
        value = c.value
        if node.op == "BiasAdd":
            if v != 0 or value.ndim != 1:
                return None
            layout = self.index.attr(name, "data_format", "NHWC", str)
            value = value.reshape((-1,) + (1,) * (len(layout) - 2)) if layout.startswith("NC") else value
            return _made(name, inputs[0], Affine(one, value), c)
        maps = {"Add": Affine(one, value), "AddV2": Affine(one, value), "Mul": Affine(value, zero),
                "Sub": Affine(-one, value) if v == 1 else Affine(one, -value)}
        if node.op in maps:
            return _made(name, inputs[v], maps[node.op], c)
        if v == 0:  # x / c; c / x is not affine
            return _made(name, inputs[0], Affine(1.0 / value, zero), c)
        return None

    def chains(self) -> list[Chain]:
        """Maximal chains, in topological order of their roots."""
        partial: dict[str, _Partial] = {}
        absorbed: set[str] = set()
        for name in sorted(self.index.nodes, key=self.index.topo_position.__getitem__):
            step = self._step(name)
            if step is None:
                continue
            found = _Partial([step], [], [], [], step.layout)
            lower = self._below(step)
            if lower is not None and _compatible(partial[lower[0]].layout, step.layout):
                inner, through, quant = lower
                before = partial[inner]
                found = _Partial(before.steps + [step], before.passed + through, before.quants + quant,
                                 before.breaks + ([len(before.steps)] if quant else []),
                                 _joined(before.layout, step.layout))
                absorbed.add(inner)
            partial[name] = found
        return [partial[name].chain(name) for name in partial if name not in absorbed]

    def _below(self, step: _Step) -> tuple[str, list[str], list[str]] | None:
        """The chain op below `step` that it continues, with the pass-through ops and the
        FakeQuant op between them; None when the chain starts at `step`'s operand. Each op
        on the way must be read by the next one only: an intermediate read elsewhere stays."""
        through: list[str] = []
        quant: list[str] = []
        user, tensor = step.node, step.variable
        while True:
            node = self.index.node(tensor)
            if node is None or names.parse(tensor).index != 0 or node.name not in self.index.topo_position                     or self.index.node_consumers(node.name) != {user}:
                return None
            if node.op in PASSTHROUGH or (node.op in FAKE_QUANT and not quant and self._fixed_range(node.name)):
                (quant if node.op in FAKE_QUANT else through).append(node.name)
                user, tensor = node.name, names.canonical(node.input[0])
                continue
            return (node.name, through, quant) if self._step(node.name) is not None else None

    def _fixed_range(self, name: str) -> bool:
        return all(self.constant(t) is not None for t in self.index.data_inputs(name)[1:])


@dataclass
class _Partial:
    steps: list[_Step]
    passed: list[str]
    quants: list[str]
    breaks: list[int]  # indexes of the steps that read a FakeQuant's output
    layout: tuple[int, int | None]

    def chain(self, root: str) -> Chain:
        segments, current = [], IDENTITY
        for i, step in enumerate(self.steps):
            if i in self.breaks:
                segments.append(current)
                current = IDENTITY
            current = current.then(step.map)
        segments.append(current)
        channels, axis = self.layout
        rank = max(np.ndim(s.map.scale * s.map.shift) for s in self.steps)
        return Chain(root, self.steps[0].variable, tuple(s.node for s in self.steps) + tuple(self.passed),
                     tuple(s.constant for s in self.steps), tuple(segments), tuple(self.quants),
                     channels, -1 if axis is None else axis, rank)


def _made(name: str, variable: str, step: Affine, constant: Constant) -> _Step | None:
    layout = layout_of(np.broadcast_shapes(np.shape(step.scale), np.shape(step.shift)))
    return None if layout is None else _Step(name, names.canonical(variable), step, constant, layout)


def _compatible(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    return a[1] is None or b[1] is None or a == b


def _joined(a: tuple[int, int | None], b: tuple[int, int | None]) -> tuple[int, int | None]:
    return a if a[1] is not None else b


_NOTHING = Constant(np.zeros(()), frozenset(), (), frozenset())


def channel_vector(value: np.ndarray, channels: int) -> np.ndarray:
    """A broadcastable per-channel array as a float64 vector of `channels`."""
    array = np.asarray(value, np.float64)
    return np.full(channels, array.reshape(-1)[0]) if array.size == 1 else array.reshape(-1)


def recover(scale: np.ndarray, shift: np.ndarray, variance: np.ndarray, epsilon: float,
            leaves: Iterable[np.ndarray]) -> dict[str, np.ndarray | None]:
    """Batch-norm parameters of the per-channel map scale * x + shift (float64 vectors), given
    the variance and epsilon found under its root. gamma = scale * sqrt(variance + epsilon)
    always; mean and beta where one constant of the chain (`leaves`, as channel vectors) is
    a mean whose beta = shift + mean * scale is another one, or zero (else both None)."""
    gamma = scale * np.sqrt(variance + epsilon)
    zero = np.zeros_like(scale)
    candidates = [v for v in leaves if v.shape == scale.shape and not np.array_equal(v, variance)
                  and not np.allclose(v, gamma, rtol=1e-6, atol=0)]
    pairs = [(m, b) for i, m in enumerate(candidates) for j, b in enumerate(candidates) if i != j]
    pairs += [(m, zero) for m in candidates] + [(zero, b) for b in candidates] + [(zero, zero)]
    for mean, beta in pairs:
        slack = 1e-6 * float(np.max(np.abs(mean * scale), initial=1.0))
        if np.allclose(shift + mean * scale, beta, rtol=1e-6, atol=slack):
            return {"gamma": gamma, "beta": beta, "mean": mean, "variance": variance}
    return {"gamma": gamma, "beta": None, "mean": None, "variance": variance}
