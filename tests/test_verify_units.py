"""Verification's TensorFlow-free parts: the calibrated comparison, the one-ulp
perturbation, the channels-last layout change, TensorFlow's error reasons, and the
default input shapes."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

import bnrewrite
from bnrewrite import layout, tfrun
from bnrewrite.feeds import conv_stack, make_feeds
from bnrewrite.index import GraphIndex
from bnrewrite.tensors import to_numpy
from bnrewrite.verify import FLOOR_ULPS, NOISE_MULTIPLE, Options, compare, perturbed
from conftest import fixture_path

F32 = types_pb2.DT_FLOAT
EPS32 = float(np.finfo(np.float32).eps)


def test_calibrated_bound_is_a_multiple_of_the_noise_plus_a_floor():
    a = np.array([1.0, -4.0, 2.0], np.float32)
    noisy = a + np.float32(1e-5)
    check = compare("y", a, a + np.float32(3e-5), noisy=noisy)
    assert check.noise == pytest.approx(1e-5, rel=1e-2)
    assert check.bound == pytest.approx(NOISE_MULTIPLE * check.noise + FLOOR_ULPS * EPS32 * 4.0)
    assert check.passed and check.rule == "8 x noise + 16 ulp x scale"
    assert not compare("y", a, a + np.float32(1e-3), noisy=noisy).passed


def test_equal_outputs_pass_and_noiseless_outputs_keep_a_floor():
    a = np.array([1.0, 2.0], np.float32)
    assert compare("y", a, a.copy(), noisy=a.copy()).passed  # noise 0, difference 0
    assert compare("y", a, np.nextafter(a, np.float32(3)), noisy=a.copy()).passed  # one ulp: within the floor
    assert not compare("y", a, a * np.float32(1.0001), noisy=a.copy()).passed


def test_the_floor_never_exceeds_the_fixed_tolerance():
    """16 ulps of fp16 are 1.6 % of the scale: there the fixed 1e-3 + 5e-3 x scale is the floor."""
    a = np.array([1.0, -2.0], np.float16)
    check = compare("y", a, a, noisy=a.copy())
    assert check.rule == "8 x noise + 0.001 + 0.005 x scale" and check.bound == pytest.approx(0.011)


def test_rtol_and_atol_replace_the_calibration():
    a = np.array([1.0, 2.0], np.float32)
    check = compare("y", a, a * np.float32(1.001), rtol=1e-2, noisy=a)
    assert check.passed and check.noise is None and check.bound == pytest.approx(1e-6 + 2e-2)


def test_unusable_noise_falls_back_to_fixed_tolerances():
    a = np.array([1.0, 2.0], np.float32)
    check = compare("y", a, a, noisy=np.array([np.nan, 2.0], np.float32))
    assert check.passed and check.noise is None and check.rule == "1e-06 + 1e-05 x scale"


def test_perturbation_moves_every_float_constant_by_one_ulp_deterministically():
    graph = bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc"))
    first, second = perturbed(graph, 1), perturbed(graph, 1)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)
    moved = 0
    for before, after in zip(graph.node, first.node):
        if before.op != "Const":
            continue
        a, b = to_numpy(before.attr["value"].tensor), to_numpy(after.attr["value"].tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        if np.issubdtype(a.dtype, np.floating):
            ulps = np.abs(a.astype(np.float64) - b) / np.spacing(np.abs(a))
            assert np.all((ulps > 0.49) & (ulps <= 1.0) | (a == 0)), before.name
            moved += 1
        else:
            np.testing.assert_array_equal(a, b)
    assert moved >= 5


def _nchw_conv_pool(builder):
    builder.node("x", "Placeholder", dtype=F32)
    builder.const("w", np.ones((3, 3, 4, 5)))
    builder.node("conv", "Conv2D", "x", "w", T=F32, strides=[1, 1, 2, 1], padding="EXPLICIT",
                 explicit_paddings=[0, 0, 0, 0, 1, 2, 3, 4], dilations=[1, 1, 1, 1], data_format="NCHW")
    builder.node("pool", "MaxPool", "conv", T=F32, ksize=[1, 1, 2, 3], strides=[1, 1, 2, 3], padding="SAME",
                 data_format="NCHW")
    builder.const("b", np.arange(5.0))
    builder.node("bias", "BiasAdd", "pool", "b", T=F32, data_format="NCHW")
    return builder.graph


def test_channels_last_layout_permutes_attributes_and_keeps_names(builder):
    graph = _nchw_conv_pool(builder)
    before = graph.SerializeToString(deterministic=True)
    assert layout.channels_first_ops(graph) == ["conv", "pool"]  # BiasAdd runs NCHW everywhere
    converted = layout.to_channels_last(graph)
    assert graph.SerializeToString(deterministic=True) == before
    nodes = {n.name: n for n in converted.node}
    inner = nodes["conv/channels_last"]
    assert inner.attr["data_format"].s == b"NHWC" and list(inner.attr["strides"].list.i) == [1, 2, 1, 1]
    assert list(inner.attr["explicit_paddings"].list.i) == [0, 0, 1, 2, 3, 4, 0, 0]
    assert list(nodes["pool/channels_last"].attr["ksize"].list.i) == [1, 2, 3, 1]
    assert nodes["conv"].op == nodes["pool"].op == "Transpose"
    assert nodes["pool/channels_last"].input[0] == "pool/channels_last/input0"
    assert nodes["pool/channels_last/input0"].input[0] == "conv"
    assert nodes["bias"] == graph.node[-1] and layout.channels_first_ops(converted) == []
    perm = {n: to_numpy(nodes[f"conv/channels_last/{n}"].attr["value"].tensor).tolist() for n in ("perm_in", "perm_out")}
    assert perm == {"perm_in": [0, 2, 3, 1], "perm_out": [0, 3, 1, 2]}
    del graph.node[2].input[:]  # a conv without inputs is left for TensorFlow to refuse
    assert layout.channels_first_ops(graph) == ["pool"]


@pytest.mark.parametrize("kind,message,expected", [
    ("UnimplementedError", "Graph execution error:\n\nDetected at node 'conv' defined at (most recent call last):\n"
     '    File "x.py", line 3\nNode: \'conv\'\nThe Conv2D op currently only supports the NHWC tensor format on the '
     "CPU. The op was given the format: NCHW\n\t [[{{node conv}}]]",
     "UNIMPLEMENTED: The Conv2D op currently only supports the NHWC tensor format on the CPU. The op was given "
     "the format: NCHW [[node conv]]"),
    ("InvalidArgumentError", "Graph execution error:\n\nConcatOp : Dimension 1 in both shapes must be equal: "
     "shape[0] = [1,2,2,3] vs. shape[1] = [1,3,3,3]\n\t [[{{node concat}}]]",
     "INVALID_ARGUMENT: ConcatOp : Dimension 1 in both shapes must be equal: shape[0] = [1,2,2,3] vs. "
     "shape[1] = [1,3,3,3] [[node concat]]"),
    ("InvalidArgumentError", "Graph execution error:\n\n\n\t [[SpaceToDepth]]", "INVALID_ARGUMENT [[node SpaceToDepth]]"),
    ("", "Node 'y' has an input 'x:3' that does not exist", "Node 'y' has an input 'x:3' that does not exist"),
])
def test_tensorflow_reasons_keep_status_why_and_node(kind, message, expected):
    assert tfrun.reason(kind, message) == expected


@pytest.mark.parametrize("value,off", [(None, False), ("1", False), ("0", True), ("false", True), ("True", False)])
def test_onednn_is_off_only_where_the_user_says_so(monkeypatch, value, off):
    if value is None:
        monkeypatch.delenv(tfrun.ONEDNN, raising=False)
    else:
        monkeypatch.setenv(tfrun.ONEDNN, value)
    assert tfrun.onednn_off() is off


def _image_net(builder, shape):
    builder.node("image", "Placeholder", dtype=F32)
    for d in shape:
        builder.graph.node[-1].attr["shape"].shape.dim.add(size=d)
    previous = "image"
    for i, (k, stride) in enumerate([(7, 2), (3, 2), (3, 1), (3, 2)]):
        builder.const(f"w{i}", np.ones((k, k, 3, 3)))
        builder.node(f"conv{i}", "Conv2D", previous, f"w{i}", T=F32, strides=[1, stride, stride, 1], padding="SAME",
                     data_format="NHWC")
        previous = f"conv{i}"
    return builder.graph


def test_unknown_image_sides_cover_the_receptive_field(builder):
    graph = _image_net(builder, [-1, -1, -1, 3])
    stack = conv_stack(GraphIndex(graph), "image")
    # 7 + 2*2 + 2*4 + 2*4 = 27 px seen by the last conv, total stride 8
    assert (stack.receptive_field, stack.stride) == (27, 8)
    assert stack.windows == ((1, 7), (2, 3), (4, 3), (4, 3))
    feeds = make_feeds(graph, Options())
    assert feeds["image"].shape == (2, 32, 32, 3)  # at least 32, a multiple of the stride
    assert "receptive field (27 px), stride 8" in feeds.sources["image"] and feeds.warnings == []


def test_tiny_images_are_warned_about(builder):
    graph = _image_net(builder, [-1, -1, -1, 3])
    feeds = make_feeds(graph, Options(shapes={"image": [1, 2, 2, 3]}))
    (warning,) = feeds.warnings
    assert "'image' is 2 px wide: 4 of its 4 convolutions" in warning and "most of the graph sees padding" in warning
    assert make_feeds(graph, Options(shapes={"image": [1, 16, 16, 3]})).warnings == []


def test_recorded_shapes_and_downstream_reshapes_fill_unknown_dims(builder):
    builder.node("flat", "Placeholder", dtype=F32)
    for d in (-1, -1):
        builder.graph.node[-1].attr["shape"].shape.dim.add(size=d)
    builder.node("id", "Identity", "flat", T=F32)
    builder.node("shape", "Const", value=np.array([-1, 28, 28, 1], np.int32), dtype=types_pb2.DT_INT32)
    builder.node("img", "Reshape", "id", "shape", T=F32)
    builder.node("seq", "Placeholder", dtype=F32)
    builder.graph.node[-1].attr["shape"].shape.dim.add(size=-1)
    builder.graph.node[-1].attr["shape"].shape.dim.add(size=-1)
    recorded = builder.graph.node[-1].attr["_output_shapes"].list.shape.add()
    for d in (-1, 49):
        recorded.dim.add(size=d)
    feeds = make_feeds(builder.graph, Options(batch=3))
    assert feeds["flat"].shape == (3, 784) and "a Reshape downstream wants 784" in feeds.sources["flat"]
    assert feeds["seq"].shape == (3, 49)
