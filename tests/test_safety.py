"""safety.py: which ops verification may run, decided without TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest

from bnrewrite import safety
from bnrewrite.errors import UnsafeGraphError
from bnrewrite.verify import run


@pytest.mark.parametrize("op, expected", [
    ("Conv2D", None), ("DecodeWav", None), ("Switch", None), ("Placeholder", None),
    # stateless in TensorFlow's registry, yet they touch files or call Python
    ("ReadFile", "refused"), ("MatchingFiles", "refused"), ("ImmutableConst", "refused"),
    ("PyFuncStateless", "refused"), ("ScalarSummary", "refused"), ("DebugIdentity", "refused"),
    ("TFRecordDataset", "refused"), ("PrintV2", "refused"), ("RestoreV2", "refused"),
    ("WriteFile", "refused"), ("VarHandleOp", "refused"), ("Timestamp", "refused"),
    ("RandomUniform", "allowed"), ("Assert", "allowed"), ("Print", "allowed"), ("TensorArrayV3", "allowed"),
    ("StatefulPartitionedCall", "allowed"), ("NoSuchOp", "unknown"),
])
def test_verdicts(op, expected) -> None:
    found = safety.verdict(op)
    assert (found and found[0]) == expected


def test_the_op_registry_file_is_tensorflows() -> None:
    registry = safety._registry()
    assert len(registry) > 1500 and registry["WriteFile"] and not registry["Conv2D"]


def test_refused_and_harmless_lists_do_not_overlap() -> None:
    harmless = [op for op in safety._registry() if any(safety.matches(op, p) for p in safety.HARMLESS.values())]
    assert "RandomUniform" in harmless and "TensorArrayWriteV3" in harmless
    assert not [op for op in harmless if any(safety.matches(op, p) for p in safety.REFUSED.values())]


def test_control_edges_and_unreached_nodes(builder) -> None:
    g = (builder.node("x", "Placeholder", dtype=1)
         .node("name", "Const", dtype=7).node("write", "WriteFile", "name", "name")
         .node("out", "Identity", "x", "^write", T=1)
         .node("read", "ReadFile", "name").node("side", "StringLength", "read").graph)
    effects = {e.op: e for e in safety.side_effects(g, ["out"])}
    assert effects["WriteFile"].runs and effects["WriteFile"].nodes == ("write",)
    assert not effects["ReadFile"].runs  # only `side` depends on it
    with pytest.raises(UnsafeGraphError, match=r"WriteFile \(write: reads or writes files\)"):
        safety.check(g, ["out"])
    with pytest.raises(UnsafeGraphError) as error:
        safety.check(g, ["out", "side"])
    assert "ReadFile (read" in str(error.value) and "WriteFile (write" in str(error.value)


def test_function_bodies_are_checked(builder) -> None:
    """A side effect hidden in a branch of an If, two functions deep, is found."""
    g = builder.node("x", "Placeholder", dtype=1).node("cond", "Placeholder", dtype=10).graph
    inner, outer = g.library.function.add(), g.library.function.add()
    inner.signature.name, outer.signature.name = "inner", "outer"
    inner.node_def.add(name="save", op="SaveV2")
    outer.node_def.add(name="call", op="inner")
    node = g.node.add(name="if", op="If", input=["cond", "x"])
    node.attr["then_branch"].func.name = "outer"
    node.attr["else_branch"].func.name = "outer"
    g.node.add(name="out", op="Identity", input=["if"])
    effects = {e.op: e for e in safety.side_effects(g, ["out"])}
    assert effects["SaveV2"].nodes == ("inner/save",) and effects["SaveV2"].runs
    assert effects["If"].verdict == "allowed" and "inner" not in effects and "outer" not in effects
    with pytest.raises(UnsafeGraphError, match="SaveV2"):
        safety.check(g, ["out"])


def test_unknown_ops_are_asked_of_tensorflows_live_registry(builder, monkeypatch) -> None:
    """An op the registry file does not know runs only if TensorFlow says it is stateless."""
    registry = {op: stateful for op, stateful in safety._registry().items() if op not in ("Timestamp", "Neg")}
    monkeypatch.setattr(safety, "_registry", lambda: registry)
    safety.verdict.cache_clear()
    try:
        g = (builder.node("x", "Placeholder", dtype=1).node("neg", "Neg", "x", T=1)
             .node("now", "Timestamp").node("out", "Identity", "neg", "^now", T=1).graph)
        assert safety.verdict("Timestamp")[0] == safety.verdict("Neg")[0] == "unknown"
        with pytest.raises(UnsafeGraphError, match=r"Timestamp \(now: "):
            run(g, {"x": np.ones(3, np.float32)}, ["out"])
        (negated,) = run(g, {"x": np.ones(3, np.float32)}, ["neg"])
        assert negated.tolist() == [-1.0, -1.0, -1.0]
    finally:
        safety.verdict.cache_clear()
