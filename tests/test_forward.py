"""Folding forward, on graphs built to reach each rule: what reads the batch norm decides."""
from __future__ import annotations

import numpy as np
import pytest

import bnrewrite
from test_rewrite_safety import F32, base, conv, fused_bn, same_outputs


def relu_bn(builder, channels=3, seed=3):
    """x -> Relu -> FusedBatchNorm 'bn': no host before it."""
    base(builder)
    builder.node("pre", "Relu", "x", T=F32)
    fused_bn(builder, "bn", "pre", channels, seed=seed)


def plan_of(graph, outputs=()):
    (bn,) = [e for e in bnrewrite.audit(graph, outputs=outputs).batch_norms if e.output == "bn"]
    return bn.action, bn.reason, bn.direction


@pytest.mark.parametrize("padding, pads, folds", [
    ("VALID", [], True), ("EXPLICIT", [0] * 8, True), ("EXPLICIT", [0, 0, 1, 1, 1, 1, 0, 0], False),
    ("SAME", [], False)])
def test_padding_decides_whether_the_shift_folds(builder, padding, pads, folds):
    relu_bn(builder)
    conv(builder, "conv", "bn", "w/read")
    builder.graph.node[-1].attr["padding"].s = padding.encode()
    builder.graph.node[-1].attr["explicit_paddings"].list.i.extend(pads)
    builder.node("out", "Relu", "conv", T=F32)
    assert plan_of(builder.graph) == (("fold", None, "forward") if folds else ("fuse", "padding", None))
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    same_outputs(builder.graph, rewritten, ["out"])


def test_matmul_reading_it_transposed_is_refused(builder):
    """With transpose_a the batch norm's channels are the MatMul's output rows, which no
    weight scaling reaches."""
    builder.node("x", "Placeholder", dtype=F32)
    builder.node("pre", "Relu", "x", T=F32)
    fused_bn(builder, "bn", "pre", 3)
    builder.const("w", np.ones((4, 2)))
    builder.node("mm", "MatMul", "bn", "w", T=F32, transpose_a=True, transpose_b=False)
    builder.node("out", "Relu", "mm", T=F32)
    assert plan_of(builder.graph)[:2] == ("fuse", "channel-mismatch")


def test_a_fetched_batch_norm_is_not_folded_forward(builder):
    relu_bn(builder)
    conv(builder, "conv", "bn", "w/read")
    builder.graph.node[-1].attr["padding"].s = b"VALID"
    builder.node("out", "Relu", "conv", T=F32)
    assert plan_of(builder.graph)[0] == "fold"
    assert plan_of(builder.graph, outputs=["out", "bn"])[:2] == ("fuse", "host-has-other-consumers")


def test_weights_a_backward_fold_changes_take_the_forward_fold_after_it(builder):
    """Relu -> bn -> conv -> bn2: bn2 folds backward into the conv, so bn cannot fold forward
    into those weights in the same pass; it folds into the result's weights in a second
    pass, and the audit says so."""
    relu_bn(builder)
    conv(builder, "conv", "bn", "w/read")
    builder.graph.node[-1].attr["padding"].s = b"VALID"
    fused_bn(builder, "bn2", "conv", 4, seed=5)
    builder.node("out", "Relu", "bn2", T=F32)
    decisions = {e.output: (e.action, e.reason, e.direction) for e in bnrewrite.audit(builder.graph).batch_norms}
    assert decisions == {"bn": ("fold", None, "forward"), "bn2": ("fold", None, "backward")}
    rewritten, report = bnrewrite.rewrite(builder.graph)
    assert "after the backward folds" in report.batch_norms[0].detail
    assert not {"FusedBatchNorm", "FusedBatchNormV3"} & {n.op for n in rewritten.node}
    same_outputs(builder.graph, rewritten, ["out"])


def test_the_batch_norms_control_inputs_move_to_its_consumers(builder):
    relu_bn(builder)
    builder.node("barrier", "NoOp")
    next(n for n in builder.graph.node if n.name == "bn").input.append("^barrier")
    conv(builder, "conv", "bn", "w/read")
    builder.graph.node[-1].attr["padding"].s = b"VALID"
    builder.node("out", "Relu", "conv", T=F32)
    rewritten, report = bnrewrite.rewrite(builder.graph)
    assert report.batch_norms[0].direction == "forward"
    by_name = {n.name: n for n in rewritten.node}
    assert "^barrier" in by_name["conv/bn_folded/unbiased"].input
    same_outputs(builder.graph, rewritten, ["out"])


def test_a_fetched_consumer_keeps_its_value(builder):
    """The shift merges into the consumer's BiasAdd only where nobody fetches the consumer
    itself; otherwise a BiasAdd taking the consumer's name restores its value."""
    relu_bn(builder)
    conv(builder, "conv", "bn", "w/read")
    builder.graph.node[-1].attr["padding"].s = b"VALID"
    builder.const("b", np.arange(4.0))
    builder.node("biased", "BiasAdd", "conv", "b", T=F32, data_format="NHWC")
    builder.node("out", "Relu", "biased", T=F32)
    for outputs, merged in ((["out"], True), (["out", "conv"], False)):
        rewritten, report = bnrewrite.rewrite(builder.graph, outputs=outputs)
        assert report.batch_norms[0].direction == "forward"
        ops = {n.name: n.op for n in rewritten.node}
        assert ops["conv"] == ("Conv2D" if merged else "BiasAdd"), outputs
        same_outputs(builder.graph, rewritten, outputs)
