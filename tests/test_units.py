"""Fast, TensorFlow-free unit tests of the arithmetic (fold_math), the host finder (hosts)
and each of the plan's refusal checks, on hand-built graphs."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

from bnrewrite import fold_math, tensors
from bnrewrite.hosts import find_host, layout_channel_axis
from bnrewrite.index import GraphIndex
from bnrewrite.plan import make_plan

F32 = types_pb2.DT_FLOAT


def test_scale_offset_is_the_batch_norm_formula():
    params = fold_math.BNParams(gamma=np.array([2.0, -1.0]), beta=np.array([0.5, 0.0]), mean=np.array([1.0, 3.0]),
                                variance=np.array([3.0, 0.25]), epsilon=1.0)
    scale, offset = params.scale_offset()
    np.testing.assert_allclose(scale, [1.0, -1 / np.sqrt(1.25)])
    np.testing.assert_allclose(offset, [0.5 - 1.0, 3 / np.sqrt(1.25)])
    x = np.array([[0.3, -2.0], [4.0, 1.5]])
    reference = (x - params.mean) / np.sqrt(params.variance + params.epsilon) * params.gamma + params.beta
    np.testing.assert_allclose(x * scale + offset, reference)


def test_folded_weights_scale_the_output_channel_axes():
    conv = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    scale = np.array([1.0, 2.0, -1.0, 0.5])
    folded = fold_math.folded_weights(conv, scale, (3,))
    assert folded.dtype == np.float64
    np.testing.assert_array_equal(folded[..., 1], conv[..., 1] * 2.0)
    # depthwise [kh, kw, in=2, mult=2]: output channel = in * mult + m
    depthwise = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(fold_math.folded_weights(depthwise, scale, (2, 3))[0, 0], [[1.0, 2.0], [-1.0, 0.5]])


def test_folded_bias_merges_an_existing_bias():
    scale, offset = np.array([2.0, 3.0]), np.array([1.0, -1.0])
    np.testing.assert_array_equal(fold_math.folded_bias(None, scale, offset), offset)
    np.testing.assert_array_equal(fold_math.folded_bias(np.array([1.0, 1.0]), scale, offset), [3.0, 2.0])
    np.testing.assert_array_equal(fold_math.folded_bias(np.array(0.5), scale, offset), [2.0, 0.5])


@pytest.mark.parametrize("value,channels,expected", [
    (np.array(2.0), 3, [2.0, 2.0, 2.0]),
    (np.array([[1.0], [2.0]]), 2, [1.0, 2.0]),
    (np.array([1.0, 2.0]), 3, None),
    (np.ones((2, 2)), 4, None),  # two wide axes: not one value per channel
])
def test_as_channel_vector(value, channels, expected):
    got = fold_math.as_channel_vector(value, channels)
    assert (got is None) if expected is None else got.tolist() == expected


@pytest.mark.parametrize("shapes,expected", [
    ([(4,), (4,), ()], (4, -1)),
    ([(4, 1, 1), (1,)], (4, -3)),
    ([(4,), (4, 1, 1)], None),  # NHWC and NCHW parameters disagree
    ([(2, 2)], None),
    ([()], (1, -1)),
])
def test_channel_layout(shapes, expected):
    assert fold_math.channel_layout([np.ones(s) for s in shapes]) == expected


def _conv_graph(builder, op="Conv2D", data_format="NHWC", bias=None, weights=(3, 3, 2, 4), **attrs):
    builder.node("x", "Placeholder", dtype=F32)
    builder.const("w", np.ones(weights))
    builder.node("w/read", "Identity", "w", T=F32)
    builder.node("conv", op, "x", "w/read", T=F32, data_format=data_format, **attrs)
    if bias is not None:
        builder.const("b", bias)
        builder.node("conv/bias", "BiasAdd", "conv", "b", T=F32, data_format=data_format)
    return builder


@pytest.mark.parametrize("op,weights,channels,axes", [
    ("Conv2D", (3, 3, 2, 4), 4, (3,)),
    ("DepthwiseConv2dNative", (3, 3, 2, 3), 6, (2, 3)),
])
def test_find_host_reads_channels_from_the_weights(builder, op, weights, channels, axes):
    found = find_host(GraphIndex(_conv_graph(builder, op, weights=weights).graph), "conv")
    (part,) = found.parts
    assert (found.node, found.op, found.channels, part.weight_axes) == ("conv", op, channels, axes)
    assert found.param_nodes == {"w", "w/read"} and found.bias is None


def test_find_host_through_a_bias_and_on_nchw(builder):
    found = find_host(GraphIndex(_conv_graph(builder, data_format="NCHW", bias=[1.0] * 4).graph), "conv/bias")
    assert found.links == (("conv", "conv/bias"), ("conv/bias", None)) and found.output == "conv"
    assert found.channel_axis == found.bias_axis == -3
    assert find_host(GraphIndex(builder.graph), "x") is None


def test_matmul_transpose_b_moves_the_channel_axis(builder):
    builder.node("x", "Placeholder", dtype=F32).const("w", np.ones((5, 3)))
    builder.node("mm", "MatMul", "x", "w", T=F32, transpose_b=True)
    found = find_host(GraphIndex(builder.graph), "mm")
    assert found.parts[0].weight_axes == (0,) and found.channels == 5


def test_layout_channel_axis():
    assert [layout_channel_axis(f) for f in (None, "NHWC", "NCHW", "NCDHW")] == [-1, -1, -3, -4]


def _bn(builder, x="conv", channels=4, variance=1.0, **attrs):
    for role, value in (("gamma", 1.5), ("beta", 0.1), ("mean", 0.2), ("var", variance)):
        builder.const(f"bn/{role}", [value] * channels)
    builder.node("bn", "FusedBatchNorm", x, "bn/gamma", "bn/beta", "bn/mean", "bn/var", T=F32, epsilon=0.001,
                 is_training=attrs.pop("is_training", False), data_format="NHWC", **attrs)
    return builder


def _decision(builder, fetched=()):
    (decision,) = make_plan(GraphIndex(builder.graph), "fold", frozenset(fetched))
    return decision.action, decision.reason


def test_plan_folds_the_plain_case(builder):
    _bn(_conv_graph(builder)).node("out", "Relu", "bn", T=F32)
    assert _decision(builder) == ("fold", None)


@pytest.mark.parametrize("change,expected", [
    (lambda b: b.node("other", "Relu", "conv", T=F32), ("fuse", "host-has-other-consumers")),
    (lambda b: b.node("mean_out", "Identity", "bn:1", T=F32), ("skip", "side-output-used")),
    (lambda b: b.graph.node[1].attr["value"].tensor.CopyFrom(tensors.to_proto(np.full((3, 3, 2, 4), np.nan,
                                                                                       np.float32))),
     ("skip", "non-finite-parameters")),
])
def test_plan_refuses_with_the_first_check_that_holds(builder, change, expected):
    _bn(_conv_graph(builder)).node("out", "Relu", "bn", T=F32)
    change(builder)
    assert _decision(builder) == expected


def test_plan_checks_on_the_batch_norm_itself(builder):
    _conv_graph(builder)
    assert _decision(_bn(builder, variance=-1.0)) == ("skip", "degenerate-parameters")
    builder.graph.node[-1].attr["is_training"].b = True
    assert _decision(builder)[1] == "training-mode"


def test_plan_needs_a_host_matching_channels(builder):
    _bn(builder, x="x").node("x", "Placeholder", dtype=F32)
    assert _decision(builder) == ("fuse", "no-linear-host")
    builder.graph.Clear()
    _bn(_conv_graph(builder), channels=3)
    assert _decision(builder) == ("fuse", "channel-mismatch")


def test_plan_keeps_fetched_hosts(builder):
    _bn(_conv_graph(builder))
    assert _decision(builder, fetched={"conv"}) == ("fuse", "host-has-other-consumers")
