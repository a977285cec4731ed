"""The pattern DSL and matcher on hand-built graphs: each rule has a case that fails without it."""
from __future__ import annotations

import numpy as np
from tensorboard.compat.proto import types_pb2

from bnrewrite.index import GraphIndex
from bnrewrite.matcher import Match, NoMatch, match
from bnrewrite.pattern import Const, Param, Var, alt, op, root_types


def _affine(builder, swapped=False):
    builder.node("x", "Placeholder", dtype=types_pb2.DT_FLOAT)
    builder.const("w", [2.0, 3.0]).node("w/read", "Identity", "w").const("b", [1.0, -1.0])
    builder.node("mul", "Mul", *(("w/read", "x") if swapped else ("x", "w/read")))
    builder.node("add", "AddV2", *(("b", "mul") if swapped else ("mul", "b")))
    return GraphIndex(builder.graph)


PATTERN = op("Add|AddV2", op("Mul", Var("x"), Const("scale")), Const("shift"))


def test_binds_values_through_identity_and_records_nodes(builder):
    found = match(PATTERN, _affine(builder), "add")
    assert isinstance(found, Match)
    assert found.tensors["x"] == "x"
    np.testing.assert_array_equal(found.values["scale"], [2.0, 3.0])
    np.testing.assert_array_equal(found.values["shift"], [1.0, -1.0])
    assert found.nodes == {"add", "mul"}
    assert found.param_nodes == {"w", "w/read", "b"}


def test_commutative_operands_in_either_order(builder):
    assert isinstance(match(PATTERN, _affine(builder, swapped=True), "add"), Match)


def test_non_commutative_order_matters(builder):
    builder.node("x", "Placeholder").const("b", [1.0])
    builder.node("sub", "Sub", "b", "x").node("sub2", "Sub", "x", "b")
    index = GraphIndex(builder.graph)
    pattern = op("Sub", Var("x"), Const("c"))
    assert isinstance(match(pattern, index, "sub"), NoMatch)
    assert isinstance(match(pattern, index, "sub2"), Match)


def test_no_match_says_why(builder):
    result = match(op("Sub", Var("x"), Const("c")), _affine(builder), "add")
    assert isinstance(result, NoMatch) and not result
    assert "want Sub" in result.reason and "AddV2" in result.reason


def test_var_must_be_the_same_tensor_twice(builder):
    builder.node("x", "Placeholder").node("y", "Placeholder")
    builder.node("m1", "Mul", "x", "x").node("m2", "Mul", "x", "y")
    index = GraphIndex(builder.graph)
    square = op("Mul", Var("a"), Var("a"))
    assert isinstance(match(square, index, "m1"), Match)
    assert isinstance(match(square, index, "m2"), NoMatch)


def test_const_rejects_computed_tensor_but_param_accepts_it(builder):
    index = _affine(builder)
    assert isinstance(match(op("Mul", Var("x"), Const("c")), index, "add"), NoMatch)
    found = match(op("AddV2", Param("p"), Const("c")), index, "add")
    assert isinstance(found, Match) and found.values["p"] is None and found.tensors["p"] == "mul"


def test_scalar_const(builder):
    builder.node("x", "Placeholder").const("eps", 1e-3).const("vec", [1.0, 2.0])
    builder.node("a", "Add", "x", "eps").node("b", "Add", "x", "vec")
    index = GraphIndex(builder.graph)
    pattern = op("Add", Var("x"), Const("eps", scalar=True))
    assert isinstance(match(pattern, index, "a"), Match)
    assert isinstance(match(pattern, index, "b"), NoMatch)


def test_alternatives_backtrack_and_look_through_cast(builder):
    builder.node("x", "Placeholder").const("v", [4.0])
    builder.node("r", "Rsqrt", "v").node("cast", "Cast", "r", DstT=types_pb2.DT_HALF)
    builder.node("m", "Mul", "x", "cast")
    pattern = op("Mul", Var("x"), alt(op("Sqrt", Const("v")), op("Rsqrt", Const("v"), name="inv")))
    found = match(pattern, GraphIndex(builder.graph), "m")
    assert isinstance(found, Match)
    assert found.tensors["inv"] == "r" and "cast" in found.nodes
    assert root_types(alt(pattern, op("Add|Sub"))) == {"Mul", "Add", "Sub"}


def test_prebound_variable(builder):
    index = _affine(builder)
    assert isinstance(match(PATTERN, index, "add", {"x": "x"}), Match)
    assert isinstance(match(PATTERN, index, "add", {"x": "w"}), NoMatch)
