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

from . import names
from .constants import FLOAT_TYPES, NOTHING, Constant, Evaluator
from .index import PASSTHROUGH, GraphIndex

FAKE_QUANT = frozenset({"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs",
                        "FakeQuantWithMinMaxVarsPerChannel"})
CHAIN_OPS = frozenset({"Mul", "Add", "AddV2", "Sub", "RealDiv", "Div", "Neg", "BiasAdd"})


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
    if 0 in shape:
        return None  # empty: broadcasts against nothing but another empty array
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
        evaluator = Evaluator(index)
        self.constant, self.known = evaluator.constant, evaluator.known
        self._steps: dict[str, _Step | None] = {}

    def _step(self, name: str) -> _Step | None:
        if name not in self._steps:
            self._steps[name] = self._make_step(name)
        return self._steps[name]

    def _make_step(self, name: str) -> _Step | None:
        node = self.index.nodes[name]
        if node.op not in CHAIN_OPS or self.index.attr(name, "T", kind=int) not in FLOAT_TYPES or self.stop(name):
            return None
        inputs = self.index.data_inputs(name)
        variable = [i for i, t in enumerate(inputs) if not self.known(t)]
        if len(variable) != 1 or len(inputs) != (1 if node.op == "Neg" else 2):  # malformed: not ours
            return None
        (v,) = variable
        one, zero = np.ones(()), np.zeros(())
        if node.op == "Neg":
            return _made(name, inputs[0], Affine(-one, zero), NOTHING)
        c = self.constant(inputs[1 - v])
        if c is None:
            return None
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
        candidates = [name for name, op in zip(self.index.order, self.index.ops) if op in CHAIN_OPS]
        for name in sorted(candidates, key=self.index.topo_position.__getitem__):
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
            if node is None or names.parse(tensor).index != 0 or self.index.node_consumers(node.name) != {user}:
                return None
            if node.op in PASSTHROUGH or (node.op in FAKE_QUANT and not quant and self._fixed_range(node.name)):
                data = self.index.data_inputs(node.name)
                if not data:  # malformed (an Identity reading nothing): TensorFlow refuses it
                    return None
                (quant if node.op in FAKE_QUANT else through).append(node.name)
                user, tensor = node.name, data[0]
                continue
            return (node.name, through, quant) if self._step(node.name) is not None else None

    def _fixed_range(self, name: str) -> bool:
        return all(self.known(t) for t in self.index.data_inputs(name)[1:])


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
        rank = max(max(s.map.scale.ndim, s.map.shift.ndim) for s in self.steps)
        return Chain(root, self.steps[0].variable, tuple(s.node for s in self.steps) + tuple(self.passed),
                     tuple(s.constant for s in self.steps), tuple(segments), tuple(self.quants),
                     channels, -1 if axis is None else axis, rank)


def _made(name: str, variable: str, step: Affine, constant: Constant) -> _Step | None:
    # one side of a step is a 0-d array: the other's shape is the broadcast one
    layout = layout_of(max(step.scale.shape, step.shift.shape, key=len))
    return None if layout is None else _Step(name, names.canonical(variable), step, constant, layout)


def _compatible(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    return a[1] is None or b[1] is None or a == b


def _joined(a: tuple[int, int | None], b: tuple[int, int | None]) -> tuple[int, int | None]:
    return a if a[1] is not None else b


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
