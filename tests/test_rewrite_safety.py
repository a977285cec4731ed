"""The rewrite's safety rules, each on a graph built to break it."""
from __future__ import annotations

import gc

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

import bnrewrite
from bnrewrite import nodes
from bnrewrite.verify import Options
from bnrewrite.tensors import to_numpy
from conftest import fixture_path

F32 = types_pb2.DT_FLOAT


def conv(builder, name, x, w, **extra):
    builder.node(name, "Conv2D", x, w, T=F32, strides=[1, 1, 1, 1], padding="SAME",
                 data_format="NHWC", **extra)


def fused_bn(builder, name, x, channels, seed=0, **extra):
    rng = np.random.default_rng(seed)
    for role, value in (("gamma", rng.uniform(-2, 2, channels)), ("beta", rng.normal(size=channels)),
                        ("mean", rng.normal(size=channels)), ("var", rng.uniform(0.2, 5, channels))):
        builder.const(f"{name}/{role}", value)
    builder.node(name, "FusedBatchNorm", x, *(f"{name}/{r}" for r in ("gamma", "beta", "mean", "var")),
                 T=F32, epsilon=0.001, is_training=False, data_format="NHWC", **extra)


def base(builder, channels=4):
    builder.node("x", "Placeholder", dtype=F32)
    builder.graph.node[-1].attr["shape"].shape.dim.add(size=-1)
    for size in (5, 6, 3):
        builder.graph.node[-1].attr["shape"].shape.dim.add(size=size)
    builder.const("w", np.random.default_rng(1).normal(size=(3, 3, 3, channels)))
    builder.node("w/read", "Identity", "w", T=F32)


def same_outputs(original, rewritten, outputs):
    result = bnrewrite.verify(original, rewritten, Options(outputs=outputs))
    assert result.passed, result.outputs
    return result


def consts(graph):
    return {n.name: to_numpy(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}


def test_shared_weights_are_cloned_not_overwritten(builder):
    base(builder)
    conv(builder, "conv_a", "x", "w/read")
    fused_bn(builder, "bn_a", "conv_a", 4)
    builder.node("out_a", "Relu", "bn_a", T=F32)
    conv(builder, "conv_b", "x", "w/read")  # shares the weights, has no batch norm
    builder.node("out_b", "Relu", "conv_b", T=F32)
    rewritten, report = bnrewrite.rewrite(builder.graph)
    (bn,) = report.batch_norms
    assert bn.action == "fold" and bn.shared_weights
    by_name = {n.name: n for n in rewritten.node}
    assert by_name["conv_b"].input[1] == "w/read"
    np.testing.assert_array_equal(consts(rewritten)["w"], consts(builder.graph)["w"])
    assert by_name["conv_a"].input[1] == "conv_a/bn_folded/weights"
    same_outputs(builder.graph, rewritten, ["out_a", "out_b"])


def folded_conv(builder):
    """x -> conv_a -> bn_a (FusedBatchNorm) -> out (Relu): a batch norm that folds."""
    base(builder)
    conv(builder, "conv_a", "x", "w/read")
    fused_bn(builder, "bn_a", "conv_a", 4)
    builder.node("out", "Relu", "bn_a", T=F32)


def test_fetched_host_output_is_not_folded(builder):
    """A name the caller fetches must keep its value: folding would rescale conv_a."""
    folded_conv(builder)
    _, report = bnrewrite.rewrite(builder.graph)
    assert report.batch_norms[0].action == "fold"
    rewritten, report = bnrewrite.rewrite(builder.graph, outputs=["out", "conv_a"])
    assert (report.batch_norms[0].action, report.batch_norms[0].reason) == ("fuse", "host-has-other-consumers")
    (audited,) = bnrewrite.audit(builder.graph, outputs=["out", "conv_a"]).batch_norms
    assert (audited.action, audited.reason) == ("fuse", "host-has-other-consumers")
    same_outputs(builder.graph, rewritten, ["out", "conv_a"])


def test_intermediate_read_elsewhere_stays(builder):
    """tf.nn.batch_normalization whose Rsqrt is also read outside the pattern."""
    base(builder)
    conv(builder, "conv", "x", "w/read")
    for role, value in (("gamma", [1.5, -0.5, 2.0, 0.7]), ("beta", [0.1, 0.2, -0.3, 0.4]),
                        ("mean", [0.5, -1.0, 0.0, 2.0]), ("var", [0.3, 2.0, 4.0, 1.2])):
        builder.const(f"bn/{role}", value)
    builder.const("bn/eps", 0.002)
    b = lambda name, op, *ins: builder.node(f"bn/{name}", op, *ins, T=F32)
    b("add", "AddV2", "bn/var", "bn/eps")
    b("Rsqrt", "Rsqrt", "bn/add")
    b("mul", "Mul", "bn/Rsqrt", "bn/gamma")
    b("mul_1", "Mul", "conv", "bn/mul")
    b("mul_2", "Mul", "bn/mean", "bn/mul")
    b("sub", "Sub", "bn/beta", "bn/mul_2")
    b("add_1", "AddV2", "bn/mul_1", "bn/sub")
    builder.node("out", "Relu", "bn/add_1", T=F32)
    builder.node("inv_std", "Identity", "bn/Rsqrt", T=F32)
    rewritten, report = bnrewrite.rewrite(builder.graph)
    assert report.batch_norms[0].action == "fold"
    kept = {n.name for n in rewritten.node}
    assert {"bn/Rsqrt", "bn/add", "bn/var", "bn/eps", "inv_std"} <= kept
    assert not {"bn/mul_1", "bn/mul_2", "bn/sub", "bn/mean", "bn/beta"} & kept
    same_outputs(builder.graph, rewritten, ["out", "inv_std"])


def test_control_edges_devices_versions_and_library_survive(builder):
    base(builder)
    builder.node("init", "NoOp")
    conv(builder, "conv", "x", "w/read")
    fused_bn(builder, "bn", "conv", 4)
    builder.graph.node[-1].input.append("^init")
    builder.graph.node[-1].device = "/device:CPU:0"
    builder.node("out", "Relu", "bn", T=F32)
    builder.graph.node[-1].device = "/device:CPU:0"
    builder.graph.versions.producer = 27
    builder.graph.versions.min_consumer = 12
    builder.graph.library.function.add().signature.name = "unused_fn"
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    by_name = {n.name: n for n in rewritten.node}
    assert by_name["bn"].op == "BiasAdd" and "^init" in by_name["bn"].input
    assert by_name["bn"].device == "/device:CPU:0" and by_name["out"] == builder.graph.node[-1]
    assert rewritten.versions == builder.graph.versions and rewritten.library == builder.graph.library


def test_new_names_are_deterministic_on_collision(builder):
    base(builder)
    conv(builder, "conv", "x", "w/read")
    builder.const("conv/bn_folded/weights", [0.0])  # squats on the name the rewrite wants
    builder.node("squatter", "Identity", "conv/bn_folded/weights", T=F32)
    fused_bn(builder, "bn", "conv", 4)
    builder.node("out", "Relu", "bn", T=F32)
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    by_name = {n.name: n for n in rewritten.node}
    assert by_name["conv"].input[1] == "conv/bn_folded/weights_1"
    assert consts(rewritten)["conv/bn_folded/weights"].tolist() == [0.0]


def test_tensorflow_graphdef_in_tensorflow_graphdef_out(builder):
    import tensorflow as tf

    base(builder)
    conv(builder, "conv", "x", "w/read")
    fused_bn(builder, "bn", "conv", 4)
    builder.node("out", "Relu", "bn", T=F32)
    tf_graph = tf.compat.v1.GraphDef.FromString(builder.graph.SerializeToString())
    before = tf_graph.SerializeToString(deterministic=True)
    rewritten, _ = bnrewrite.rewrite(tf_graph)
    assert isinstance(rewritten, tf.compat.v1.GraphDef)
    assert tf_graph.SerializeToString(deterministic=True) == before


def test_half_precision_graph_stays_half():
    """TF's optimize_for_inference writes a float32 bias into a half graph; we must not."""
    graph = bnrewrite.load_graph(fixture_path("fbn_v3_half"))
    rewritten, report = bnrewrite.rewrite(graph)
    assert report.batch_norms[0].action == "fold"
    bias = next(n for n in rewritten.node if n.name.endswith("bn_folded/bias"))
    assert bias.attr["dtype"].type == types_pb2.DT_HALF
    assert to_numpy(bias.attr["value"].tensor).dtype == np.float16


def _half_conv_bn(builder, weight, variance, version="FusedBatchNormV3"):
    builder.node("x", "Placeholder", dtype=types_pb2.DT_HALF)
    builder.node("w", "Const", value=np.full((1, 1, 3, 2), weight, np.float16), dtype=types_pb2.DT_HALF)
    builder.node("conv", "Conv2D", "x", "w", T=types_pb2.DT_HALF, strides=[1, 1, 1, 1], padding="SAME",
                 data_format="NHWC")
    for role, value in (("gamma", 3.0), ("beta", 0.5), ("mean", 0.1), ("var", variance)):
        builder.const(f"bn/{role}", [value, value])
    builder.node("bn", version, "conv", "bn/gamma", "bn/beta", "bn/mean", "bn/var", T=types_pb2.DT_HALF,
                 U=F32, epsilon=1e-9, is_training=False, data_format="NHWC")
    builder.node("out", "Relu", "bn", T=types_pb2.DT_HALF)
    return builder.graph


def test_fold_that_would_overflow_fp16_is_refused(builder):
    # scale = 3 / sqrt(1e-8) = 3e4; 30 * 3e4 = 9e5 > 65504, the largest half
    (bn,) = bnrewrite.audit(_half_conv_bn(builder, weight=30.0, variance=1e-8)).batch_norms
    assert (bn.action, bn.reason) == ("skip", "fold-precision")
    assert "over the 6.55e+04" in bn.detail


def test_fold_that_would_underflow_fp16_is_refused(builder):
    # scale = 3 / sqrt(1e4) = 0.03; 1e-3 * 0.03 = 3e-5 < 6.1e-5, the smallest normal half
    (bn,) = bnrewrite.audit(_half_conv_bn(builder, weight=1e-3, variance=1e4)).batch_norms
    assert (bn.action, bn.reason) == ("skip", "fold-precision")


def test_ordinary_fp16_fold_is_allowed(builder):
    (bn,) = bnrewrite.audit(_half_conv_bn(builder, weight=0.5, variance=2.0)).batch_norms
    assert bn.action == "fold"


def test_collector_state_is_restored(builder):
    """The API turns the cyclic garbage collector off while it works, then back to what the
    caller had, also when it raises."""
    folded_conv(builder)
    assert gc.isenabled()
    bnrewrite.rewrite(builder.graph)
    assert gc.isenabled()
    with pytest.raises(bnrewrite.InvalidGraphError):
        bnrewrite.rewrite(builder.graph, outputs=["no_such_node"])
    assert gc.isenabled()
    gc.disable()
    try:
        bnrewrite.audit(builder.graph)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_edit_reading_a_missing_tensor_is_an_internal_error(builder, monkeypatch):
    """The result is checked where it changed: a new node reading nothing is caught there."""
    folded_conv(builder)
    original_bias_add = nodes.bias_add
    monkeypatch.setattr(nodes, "bias_add", lambda name, x, *rest, **kw: original_bias_add(name, "gone", *rest, **kw))
    with pytest.raises(RuntimeError, match="internal error.*'bn_a' reads 'gone', which is not in the graph"):
        bnrewrite.rewrite(builder.graph)


def test_attributes_a_graph_leaves_out_take_the_op_definitions_defaults(builder):
    """A NodeDef may omit attributes that have defaults: FusedBatchNormV3 without is_training
    runs in training mode, without epsilon with 0.0001 (the fuzzer's crash_exit1_verify_tolerance_4
    was folded as inference mode and differed by 3.7)."""
    folded_conv(builder)
    bn = next(n for n in builder.graph.node if n.name == "bn_a")
    del bn.attr["is_training"]
    del bn.attr["epsilon"]
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert entry.training and entry.action == "skip" and entry.reason == "training-mode"
    bn.attr["is_training"].b = False
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert not entry.training and entry.action == "fold" and abs(entry.epsilon - 1e-4) < 1e-9
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    same_outputs(builder.graph, rewritten, ["out"])
