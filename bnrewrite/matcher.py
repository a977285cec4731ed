"""match(pattern, index, tensor) -> Match | NoMatch: backtracking over pattern.py trees.

Almost every attempt fails, most near the root, so the search keeps one mutable set of
bindings with an undo trail instead of building a new state at every step; a Match is
built only from the bindings of a success.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np

from . import names
from .index import PASSTHROUGH, GraphIndex
from .pattern import COMMUTATIVE, Alt, Const, Op, Param, Pattern, Var

# Ops looked through on an edge between two pattern nodes: fp16 graphs Cast between them.
EDGE_PASSTHROUGH = PASSTHROUGH | {"Cast"}


@dataclass(frozen=True)
class Match:
    tensors: Mapping[str, str]  # Var and op captures -> tensor name
    values: Mapping[str, np.ndarray | None]  # Const/Param -> value (None: not constant)
    nodes: frozenset[str]  # the ops the pattern spans, pass-through ops included
    param_nodes: frozenset[str] = field(default=frozenset())  # Const chains feeding it


@dataclass(frozen=True)
class NoMatch:
    why: Callable[[], str]  # the reason is written only when someone reads it

    @property
    def reason(self) -> str:
        return self.why()

    def __bool__(self) -> bool:
        return False


def match(pattern: Pattern, index: GraphIndex, tensor: str,
          bound: Mapping[str, str] | None = None) -> Match | NoMatch:
    """First way `pattern` explains `tensor`; `bound` pre-binds Vars (e.g. "x")."""
    tensor = names.canonical(tensor)
    if not _plausible(pattern, index, tensor):  # most attempts: the search would fail at once
        return NoMatch(lambda: _search(pattern, index, tensor, bound).reason)
    return _search(pattern, index, tensor, bound)


def _search(pattern: Pattern, index: GraphIndex, tensor: str, bound: Mapping[str, str] | None
            ) -> Match | NoMatch:
    run = _Run(index, bound)
    for _ in run.match(pattern, tensor, 0):
        return Match(dict(run.tensors), dict(run.values), frozenset(run.nodes), frozenset(run.param_nodes))
    return NoMatch(run.deepest[1])


def _plausible(pattern: Pattern, index: GraphIndex, tensor: str) -> bool:
    """What the search checks first, without its bindings: the op's type and arity, and
    the types of the ops one level down (either order for a commutative op)."""
    if type(pattern) is Alt:
        return any(_plausible(option, index, tensor) for option in pattern.options)
    if type(pattern) is not Op:
        return True
    tensor = _through(index, tensor, pattern.types)[0]
    node = index.node(tensor)
    if node is None or node.op not in pattern.types or ":" in tensor:
        return False
    inputs = index.data_inputs(node.name)
    return len(inputs) == len(pattern.inputs) and bool(_orders(index, pattern, node.op, inputs))


def _orders(index: GraphIndex, pattern: Op, op: str, inputs: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The orders of `inputs` worth searching: as they are, and swapped for a commutative op,
    each only where the ops one level down have the types the pattern wants."""
    orders = [inputs]
    if op in COMMUTATIVE and len(inputs) == 2 and inputs[0] != inputs[1]:
        orders.append(inputs[::-1])
    return [order for order in orders if _could_be(index, pattern.inputs, order)]


def _through(index: GraphIndex, tensor: str, wanted: frozenset[str]) -> tuple[str, list[str]]:
    """The tensor behind the pass-through ops (and Casts) in front of it, unless one of them
    is `wanted`; and those ops."""
    chain: list[str] = []
    node = index.node(tensor)
    while node is not None and node.op not in wanted and node.op in EDGE_PASSTHROUGH \
            and node.input and node.name not in chain:
        chain.append(node.name)
        tensor = names.canonical(node.input[0])
        node = index.node(tensor)
    return tensor, chain


def _could_be(index: GraphIndex, patterns: tuple[Pattern, ...], tensors: tuple[str, ...]) -> bool:
    """Whether each input that a pattern wants to be an op has one of its types: a cheap
    look one level down that spares most failing attempts the full search."""
    for pattern, tensor in zip(patterns, tensors):
        types = _wanted(pattern)
        if types is not None:
            node = index.node(_through(index, tensor, types)[0])
            if node is None or node.op not in types:
                return False
    return True


def _op_types(pattern: Pattern) -> frozenset[str] | None:
    """The op types an Alt's options all being ops allows (None: it may match any tensor)."""
    if isinstance(pattern, Op):
        return pattern.types
    if isinstance(pattern, Alt):
        options = [_op_types(option) for option in pattern.options]
        return None if None in options else frozenset().union(*options)
    return None


# id(pattern) -> (pattern, its op types): hashing a pattern walks its whole tree; keeping the
# pattern keeps its id from being reused.
_OP_TYPES: dict[int, tuple[Pattern, frozenset[str] | None]] = {}


def _wanted(pattern: Pattern) -> frozenset[str] | None:
    if type(pattern) is Op:
        return pattern.types
    known = _OP_TYPES.get(id(pattern))
    if known is None or known[0] is not pattern:
        known = _OP_TYPES[id(pattern)] = (pattern, _op_types(pattern))
    return known[1]


def _skeleton(pattern: Op) -> str:
    return ", ".join("|".join(sorted(_op_types(p) or {"*"})) for p in pattern.inputs)


class _Run:
    """One attempt's bindings. Each generator step binds, yields once per way the rest can
    match, and undoes its own bindings before it returns."""

    def __init__(self, index: GraphIndex, bound: Mapping[str, str] | None) -> None:
        self.index = index
        self.tensors: dict[str, str] = dict(bound or {})
        self.values: dict[str, np.ndarray | None] = {}
        self.nodes: list[str] = []
        self.param_nodes: list[str] = []
        self.deepest: tuple[int, Callable[[], str]] = (-1, lambda: "no match")

    def fail(self, depth: int, why: Callable[[], str]) -> None:
        """Remember how to say why the deepest failure failed: almost every attempt fails,
        and almost no reason is ever read."""
        if depth > self.deepest[0]:
            self.deepest = (depth, why)

    def match(self, pattern: Pattern, tensor: str, depth: int) -> Iterator[None]:
        kind = type(pattern)
        if kind is Op:
            return self._op(pattern, tensor, depth)
        if kind is Var:
            return self._var(pattern.name, tensor, depth)
        if kind is Const or kind is Param:
            return self._value(pattern, tensor, depth)
        if kind is Alt:
            return self._alt(pattern, tensor, depth)
        raise TypeError(f"not a pattern: {pattern!r}")

    def _alt(self, pattern: Alt, tensor: str, depth: int) -> Iterator[None]:
        for option in pattern.options:
            yield from self.match(option, tensor, depth)

    def _op(self, pattern: Op, tensor: str, depth: int) -> Iterator[None]:
        tensor, chain = _through(self.index, tensor, pattern.types)
        node = self.index.node(tensor)
        if node is None or node.op not in pattern.types or ":" in tensor:  # output 0 only
            self.fail(depth, lambda: f"{tensor}: want {'|'.join(sorted(pattern.types))}, "
                                     f"found {node.op if node is not None else 'nothing'}")
            return
        known = self.tensors.get(pattern.name) if pattern.name is not None else None
        captured = pattern.name is not None and known is None
        if known is not None and not self._same(known, tensor):
            self.fail(depth, lambda: f"{tensor}: is not '{pattern.name}' ({known})")
            return
        inputs = self.index.data_inputs(node.name)
        if len(inputs) != len(pattern.inputs):
            self.fail(depth, lambda: f"{node.name}: {len(inputs)} inputs, want {len(pattern.inputs)}")
            return
        orders = _orders(self.index, pattern, node.op, inputs)
        if not orders:
            self.fail(depth + 1, lambda: f"{node.name}: inputs are not {_skeleton(pattern)}")
            return
        if captured:
            self.tensors[pattern.name] = tensor
        mark = len(self.nodes)
        self.nodes.append(node.name)
        self.nodes.extend(chain)
        for order in orders:
            yield from self._all(pattern.inputs, order, 0, depth + 1)
        del self.nodes[mark:]
        if captured:
            del self.tensors[pattern.name]

    def _all(self, patterns: tuple[Pattern, ...], tensors: tuple[str, ...], i: int,
             depth: int) -> Iterator[None]:
        if i == len(patterns):
            yield
            return
        for _ in self.match(patterns[i], tensors[i], depth):
            yield from self._all(patterns, tensors, i + 1, depth)

    def _same(self, a: str, b: str) -> bool:
        return a == b or _through(self.index, a, frozenset())[0] == _through(self.index, b, frozenset())[0]

    def _var(self, name: str, tensor: str, depth: int) -> Iterator[None]:
        known = self.tensors.get(name)
        if known is None:
            self.tensors[name] = tensor
            yield
            del self.tensors[name]
        elif self._same(known, tensor):
            yield
        else:
            self.fail(depth, lambda: f"{tensor}: is not '{name}' ({known})")

    def _value(self, pattern: Const | Param, tensor: str, depth: int) -> Iterator[None]:
        const = self.index.const_value(tensor)
        if const is None and type(pattern) is Const:
            self.fail(depth, lambda: f"{tensor}: not a constant ('{pattern.name}')")
            return
        if type(pattern) is Const and pattern.scalar and const.value.size != 1:
            self.fail(depth, lambda: f"{tensor}: not a scalar ('{pattern.name}')")
            return
        value = None if const is None else const.value
        if pattern.name in self.values:
            if not self._same_value(pattern.name, tensor, value):
                self.fail(depth, lambda: f"{tensor}: differs from '{pattern.name}'")
                return
            yield
            return
        shadowed = self.tensors.get(pattern.name)
        self.tensors[pattern.name], self.values[pattern.name] = tensor, value
        mark = len(self.param_nodes)
        self.param_nodes.extend(const.chain if const else ())
        yield
        del self.param_nodes[mark:], self.values[pattern.name]
        if shadowed is None:
            del self.tensors[pattern.name]
        else:
            self.tensors[pattern.name] = shadowed

    def _same_value(self, name: str, tensor: str, value: np.ndarray | None) -> bool:
        known = self.values[name]
        if known is None or value is None:
            return self._same(self.tensors[name], tensor)
        return known.shape == value.shape and bool(np.array_equal(known, value))
