"""The pattern DSL: batch-norm forms and hosts are written as data with these nodes.

    op("Add|AddV2", op("Mul", Var("x"), Var("inv")), Const("beta"), name="bn")

- `op(types, *inputs, name=)`: a node whose op is one of the "|"-separated types,
  whose data inputs match `inputs` in order (either order for Add/AddV2/Mul), and
  whose output is captured under `name`. The pass-through ops (index.PASSTHROUGH) and
  Cast between two pattern nodes are looked through (they are how freezing and fp16
  graphs differ).
- `Var(name)`: any tensor; a second use of the same name must be the same tensor,
  which is also how a pattern refers back to a captured `op`.
- `Const(name, scalar=)`: a tensor with a constant value, through Identity chains.
- `Param(name)`: a constant when it is one; otherwise any tensor, recorded as not
  constant (batch statistics, fed parameters), so the form is still recognised.
- `alt(a, b, ...)`: the first alternative that matches (with backtracking).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

COMMUTATIVE = frozenset({"Add", "AddV2", "Mul"})


@dataclass(frozen=True)
class Op:
    types: frozenset[str]
    inputs: tuple["Pattern", ...]
    name: str | None = None


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Const:
    name: str
    scalar: bool = False


@dataclass(frozen=True)
class Param:
    name: str


@dataclass(frozen=True)
class Alt:
    options: tuple["Pattern", ...]


Pattern = Union[Op, Var, Const, Param, Alt]


def op(types: str, *inputs: Pattern, name: str | None = None) -> Op:
    return Op(frozenset(types.split("|")), tuple(inputs), name)


def alt(*options: Pattern) -> Alt:
    return Alt(tuple(options))


def root_types(pattern: Pattern) -> frozenset[str]:
    """Op types a pattern's root can have: lets the matcher skip most nodes cheaply."""
    if isinstance(pattern, Op):
        return pattern.types
    if isinstance(pattern, Alt):
        return frozenset().union(*(root_types(option) for option in pattern.options))
    return frozenset()
