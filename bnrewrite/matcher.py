"""match(pattern, index, tensor) -> Match | NoMatch: backtracking over pattern.py trees."""
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
    reason: str

    def __bool__(self) -> bool:
        return False


def match(pattern: Pattern, index: GraphIndex, tensor: str,
          bound: Mapping[str, str] | None = None) -> Match | NoMatch:
    """First way `pattern` explains `tensor`; `bound` pre-binds Vars (e.g. "x")."""
    run = _Run(index)
    start = Match(dict(bound or {}), {}, frozenset())
    for found in run.match(pattern, names.canonical(tensor), start):
        return found
    return NoMatch(run.deepest[1] or "no match")


class _Run:
    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.deepest: tuple[int, str] = (-1, "")

    def fail(self, depth: int, why: Callable[[], str]) -> None:
        """Remember the deepest failure's reason; built only when it is the deepest, since
        almost every attempt fails and most of them at the root."""
        if depth > self.deepest[0]:
            self.deepest = (depth, why())

    def match(self, pattern: Pattern, tensor: str, state: Match, depth: int = 0) -> Iterator[Match]:
        if isinstance(pattern, Op):
            yield from self._op(pattern, tensor, state, depth)
        elif isinstance(pattern, Var):
            yield from self._var(pattern.name, tensor, state, depth)
        elif isinstance(pattern, (Const, Param)):
            yield from self._value(pattern, tensor, state, depth)
        elif isinstance(pattern, Alt):
            for option in pattern.options:
                yield from self.match(option, tensor, state, depth)
        else:
            raise TypeError(f"not a pattern: {pattern!r}")

    def _through(self, tensor: str, wanted: frozenset[str]) -> tuple[str, tuple[str, ...]]:
        chain: list[str] = []
        node = self.index.node(tensor)
        while node is not None and node.op not in wanted and node.op in EDGE_PASSTHROUGH \
                and node.input and node.name not in chain:
            chain.append(node.name)
            tensor = names.canonical(node.input[0])
            node = self.index.node(tensor)
        return tensor, tuple(chain)

    def _op(self, pattern: Op, tensor: str, state: Match, depth: int) -> Iterator[Match]:
        tensor, chain = self._through(tensor, pattern.types)
        node = self.index.node(tensor)
        if node is None or node.op not in pattern.types or names.parse(tensor).index != 0:
            self.fail(depth, lambda: f"{tensor}: want {'|'.join(sorted(pattern.types))}, "
                                     f"found {node.op if node is not None else 'nothing'}")
            return
        if pattern.name is not None:
            known = state.tensors.get(pattern.name)
            if known is not None and not self._same(known, tensor):
                self.fail(depth, lambda: f"{tensor}: is not '{pattern.name}' ({known})")
                return
            state = Match({**state.tensors, pattern.name: tensor}, state.values, state.nodes, state.param_nodes)
        inputs = self.index.data_inputs(node.name)
        if len(inputs) != len(pattern.inputs):
            self.fail(depth, lambda: f"{node.name}: {len(inputs)} inputs, want {len(pattern.inputs)}")
            return
        state = Match(state.tensors, state.values, state.nodes | {node.name, *chain}, state.param_nodes)
        orders = [inputs]
        if node.op in COMMUTATIVE and len(inputs) == 2 and inputs[0] != inputs[1]:
            orders.append(inputs[::-1])
        for order in orders:
            yield from self._all(pattern.inputs, order, state, depth + 1)

    def _all(self, patterns: tuple[Pattern, ...], tensors: list[str], state: Match,
             depth: int) -> Iterator[Match]:
        if not patterns:
            yield state
            return
        for partial in self.match(patterns[0], tensors[0], state, depth):
            yield from self._all(patterns[1:], tensors[1:], partial, depth)

    def _same(self, a: str, b: str) -> bool:
        return self._through(a, frozenset())[0] == self._through(b, frozenset())[0]

    def _var(self, name: str, tensor: str, state: Match, depth: int) -> Iterator[Match]:
        known = state.tensors.get(name)
        if known is None:
            yield Match({**state.tensors, name: tensor}, state.values, state.nodes, state.param_nodes)
        elif self._same(known, tensor):
            yield state
        else:
            self.fail(depth, lambda: f"{tensor}: is not '{name}' ({known})")

    def _value(self, pattern: Const | Param, tensor: str, state: Match, depth: int) -> Iterator[Match]:
        const = self.index.const_value(tensor)
        if const is None and isinstance(pattern, Const):
            self.fail(depth, lambda: f"{tensor}: not a constant ('{pattern.name}')")
            return
        if isinstance(pattern, Const) and pattern.scalar and const.value.size != 1:
            self.fail(depth, lambda: f"{tensor}: not a scalar ('{pattern.name}')")
            return
        value = None if const is None else const.value
        if pattern.name in state.values:
            if not self._same_value(state, pattern.name, tensor, value):
                self.fail(depth, lambda: f"{tensor}: differs from '{pattern.name}'")
                return
            yield state
            return
        yield Match({**state.tensors, pattern.name: tensor}, {**state.values, pattern.name: value},
                    state.nodes, state.param_nodes | set(const.chain if const else ()))

    def _same_value(self, state: Match, name: str, tensor: str, value: np.ndarray | None) -> bool:
        known = state.values[name]
        if known is None or value is None:
            return self._same(state.tensors[name], tensor)
        return known.shape == value.shape and bool(np.array_equal(known, value))
