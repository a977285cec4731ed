"""Rewrite every catalogue fixture and check it in TensorFlow: same outputs on seeded
inputs, batch-norm ops gone where they fold, names kept, caller's graph untouched,
idempotent and byte-deterministic, and the rewrite does what the audit promised."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import bnrewrite
from bnrewrite.verify import Options
from bnrewrite.index import GraphIndex
from conftest import expected, fixture_cases, fixture_path

CASES = [name for name in fixture_cases() if expected(name)["runs_in_tf"]]
BN_OPS = {"BatchNormWithGlobalNormalization", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


def _bytes(graph) -> bytes:
    return graph.SerializeToString(deterministic=True)


def _options(name: str, graph) -> Options:
    """Training-mode fixtures are compared on one batch of 2+ samples (DESIGN §5)."""
    values = {node.name: np.array(False) for node in graph.node  # a bool learning-phase flag
              if node.op in ("Placeholder", "PlaceholderWithDefault") and node.attr["dtype"].type == 10}
    return Options(outputs=expected(name)["outputs"], batch=3, values=values, seed=7)


def assert_same_outputs(name, original, rewritten):
    result = bnrewrite.verify(original, rewritten, _options(name, original))
    assert [c.name for c in result.outputs] == expected(name)["outputs"]
    for check in result.outputs:
        assert check.passed, check


@pytest.mark.parametrize("mode", ["fold", "fuse"])
@pytest.mark.parametrize("name", CASES)
def test_rewrite_keeps_outputs(name, mode):
    original = bnrewrite.load_graph(fixture_path(name))
    before = _bytes(original)
    rewritten, report = bnrewrite.rewrite(original, mode=mode)
    assert _bytes(original) == before, "the caller's GraphDef was changed"
    assert_same_outputs(name, original, rewritten)

    ops = Counter(node.op for node in rewritten.node)
    names = {node.name for node in rewritten.node}
    index = GraphIndex(original)
    for entry in report.batch_norms:
        if entry.direction == "forward":
            # nothing reads the normalised value any more (that was a condition), so its
            # node goes; the consumers keep their names and values
            assert entry.output not in names and set(entry.consumers) <= names
            continue
        assert entry.output in names, f"{entry.output} lost its name"
        if entry.action in ("fold", "fuse"):
            # An intermediate also read outside the pattern stays; nothing else does.
            stayed = (set(entry.nodes) - {entry.output}) & names
            assert all(index.node_consumers(n) - set(entry.nodes) for n in stayed), stayed
    assert ops["BatchNormWithGlobalNormalization"] == 0 or any(
        e.action == "skip" for e in report.batch_norms)
    if mode == "fold" and report.batch_norms and all(e.action == "fold" for e in report.batch_norms):
        assert not BN_OPS & set(ops), ops
        assert bnrewrite.audit(rewritten).batch_norms == []


@pytest.mark.parametrize("name", CASES)
def test_rewrite_is_deterministic_and_idempotent(name):
    original = bnrewrite.load_graph(fixture_path(name))
    first, _ = bnrewrite.rewrite(original)
    second, _ = bnrewrite.rewrite(bnrewrite.load_graph(fixture_path(name)))
    assert _bytes(first) == _bytes(second)
    again, report = bnrewrite.rewrite(first)
    assert _bytes(again) == _bytes(first), [(e.output, e.action) for e in report.batch_norms]


@pytest.mark.parametrize("name", CASES)
def test_rewrite_does_what_the_audit_said(name):
    graph = bnrewrite.load_graph(fixture_path(name))
    audit = bnrewrite.audit(graph)
    _, report = bnrewrite.rewrite(graph)
    assert [(e.output, e.action, e.reason) for e in audit.batch_norms] == \
        [(e.output, e.action, e.reason) for e in report.batch_norms]
    assert Counter(e.action for e in report.batch_norms) == \
        Counter(bn["action"] for bn in expected(name)["batch_norms"])


def test_a_tf2_exports_control_edges_do_not_keep_the_old_weights():
    """output_control_node waits on every ReadVariableOp: after folding, those reads are
    dead but for the control edges, which order nothing and go with them."""
    graph = bnrewrite.load_graph(fixture_path("tf2_control_edges"))
    rewritten, report = bnrewrite.rewrite(graph)
    assert report.nodes_after == len(rewritten.node) < len(graph.node)
    assert "^conv2d/Conv2D/ReadVariableOp -> output_control_node" in report.control_edges_dropped
    assert len(report.control_edges_dropped) == 5
    assert sorted(n.name for n in rewritten.node if n.op == "Const") == \
        ["conv2d/Conv2D/bn_folded/bias", "conv2d/Conv2D/bn_folded/weights"]
    assert [n.input for n in rewritten.node if n.name == "Identity"][0] == ["re_lu/Relu", "^output_control_node"]


@pytest.mark.parametrize("name", [n for n in CASES if all(bn["action"] == "fold" for bn in expected(n)["batch_norms"])
                                  and expected(n)["batch_norms"]])
def test_folding_never_grows_the_graph(name):
    graph = bnrewrite.load_graph(fixture_path(name))
    _, report = bnrewrite.rewrite(graph)
    assert report.nodes_after < len(graph.node)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("qat_")])
def test_fake_quant_ops_stay_where_they_were(name):
    """Nothing is folded across a FakeQuant: each keeps its op, its range inputs, and the
    same host output (through precomputed arithmetic only) below it."""
    graph = bnrewrite.load_graph(fixture_path(name))
    rewritten, _ = bnrewrite.rewrite(graph)
    quants = lambda g: {n.name: (n.op, list(n.input[1:])) for n in g.node if n.op.startswith("FakeQuant")}
    assert quants(rewritten) == quants(graph) != {}
    weights = {n.name: n for n in graph.node if n.op == "Conv2D"}
    assert {n.name: n.input[1] for n in rewritten.node if n.op == "Conv2D"} == \
        {name: node.input[1] for name, node in weights.items()}


def test_a_batch_norm_split_by_fake_quant_becomes_one_mul_and_one_add():
    graph = bnrewrite.load_graph(fixture_path("qat_bn_fakequant_inside"))
    rewritten, _ = bnrewrite.rewrite(graph)
    by_name = {n.name: n for n in rewritten.node}
    add = by_name["bn/add_2"]
    quant = by_name[add.input[0]]
    mul = by_name[quant.input[0]]
    assert (add.op, quant.op, mul.op, mul.input[0]) == ("Add", "FakeQuantWithMinMaxVars", "Mul", "conv1/Conv2D")
    assert Counter(n.op for n in rewritten.node)["Mul"] == 1
