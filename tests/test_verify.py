"""The verifier against known-equal and known-different pairs (no graphs needed for most)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

import bnrewrite
from bnrewrite import layout
from bnrewrite.verify import Options, compare, make_feeds, run, runnable
from conftest import fixture_path

nan, inf = float("nan"), float("inf")


@pytest.mark.parametrize("a,b,passed", [
    ([1.0, 2.0, -3.0], [1.0, 2.0, -3.0], True),
    ([1.0, 2.0, -3.0], [1.0, 2.0, -3.00001], True),     # 3.3e-6 of the scale
    ([1.0, 2.0, -3.0], [1.0, 2.0, -3.0001], False),     # 3.3e-5 of the scale
    ([nan, 1.0], [nan, 1.0], True),                     # NaN at the same place is equal
    ([nan, 1.0], [1.0, nan], False),
    ([inf, -inf, 1.0], [inf, -inf, 1.0], True),
    ([inf, 1.0], [-inf, 1.0], False),
    ([inf, 1.0], [1e30, 1.0], False),
])
def test_float32_pairs(a, b, passed):
    check = compare("y", np.array(a, np.float32), np.array(b, np.float32))
    assert check.passed is passed, check


def test_float16_has_its_own_tolerance():
    a = np.array([1.0, 10.0, -20.0], np.float16)
    assert compare("y", a, a + np.float16(0.05)).passed         # 0.25 % of the scale
    assert not compare("y", a, a + np.float16(1.0)).passed      # 5 % of the scale
    assert not compare("y", a.astype(np.float32), (a + np.float16(0.05)).astype(np.float32)).passed


def test_shape_and_exact_types():
    assert compare("y", np.zeros((2, 3)), np.zeros((3, 2))).problem.startswith("shape")
    assert compare("y", np.array([1, 2], np.int32), np.array([1, 2], np.int32)).passed
    assert not compare("y", np.array([1, 2], np.int32), np.array([1, 3], np.int32)).passed
    assert compare("y", np.ones(3, np.float32), np.ones(3, np.float32) * 1.5, rtol=0.6).passed


def test_feeds_are_seeded_and_shaped():
    graph = bnrewrite.load_graph(fixture_path("fbn_v1_conv_nhwc"))
    a, b = make_feeds(graph, Options(seed=1)), make_feeds(graph, Options(seed=1))
    assert a["x"].shape[0] == 2 and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert make_feeds(graph, Options(batch=5))["x"].shape[0] == 5
    assert make_feeds(graph, Options(shapes={"x": [1, 7, 5, 3]}))["x"].shape == (1, 7, 5, 3)


def test_identical_graphs_verify_and_a_changed_constant_does_not():
    graph = bnrewrite.load_graph(fixture_path("fbn_v3_half"))
    assert bnrewrite.verify(graph, graph).passed
    changed = type(graph)()
    changed.CopyFrom(graph)
    node = next(n for n in changed.node if n.op == "FusedBatchNormV3")
    node.attr["epsilon"].f *= 1000
    result = bnrewrite.verify(graph, changed)
    assert not result.passed and result.outputs[0].dtype == "float16"
    assert result.first_difference.name == node.name


def test_legacy_op_with_a_modern_producer_still_verifies():
    graph = bnrewrite.load_graph(fixture_path("bnwgn_conv_scale"))
    graph.versions.producer = 27  # TensorFlow refuses BatchNormWithGlobalNormalization here
    assert runnable(graph)[1] and graph.versions.producer == 27
    rewritten, _ = bnrewrite.rewrite(graph)
    result = bnrewrite.verify(graph, rewritten)
    assert result.passed and result.lowered_producer


def test_nan_producing_legacy_graph_verifies(realgraphs):
    """The real BNWGN test graph has negative variances: NaN channels. The rewrite leaves
    it alone (degenerate-parameters); a hand-made FusedBatchNormV3 over the same tensors
    puts NaN at the same places, and the verifier must call that equal."""
    from bnrewrite import nodes
    graph = bnrewrite.load_graph(realgraphs / "tf_graphconstructor_test_bnwgn.pbtxt")
    rewritten, report = bnrewrite.rewrite(graph)
    assert report.batch_norms[0].reason == "degenerate-parameters"
    assert bnrewrite.verify(graph, rewritten).passed
    fused = type(graph)()
    fused.CopyFrom(graph)
    old = fused.node[-1]  # batchnorm(t=zeros, m,v,beta,gamma = m_v_beta_gamma); gamma ignored
    fused.node.append(nodes.const("ones", np.ones(32, np.float32)))
    replacement = nodes.fused_batch_norm("batchnorm", [old.input[0], "ones", old.input[3], old.input[1],
                                                       old.input[2]], 1, 0.001, "NHWC", False)
    del fused.node[2]
    fused.node.append(replacement)
    assert np.isnan(run(graph, {}, ["batchnorm"])[0]).any()
    assert bnrewrite.verify(graph, fused).passed


def test_audit_and_unverified_rewrite_never_import_tensorflow(tmp_path):
    code = ("import sys, bnrewrite.cli as c; "
            f"c.main(['audit', {str(fixture_path('trap_mixed_forms'))!r}]); "
            f"c.main(['rewrite', {str(fixture_path('trap_mixed_forms'))!r}, '-o', "
            f"{str(tmp_path / 'o.pb')!r}, '--no-verify']); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_options_reach_the_feeds():
    graph = bnrewrite.load_graph(fixture_path("cond_keras_placeholder"))
    both = bnrewrite.verify(graph, graph)  # a bool input not fed runs with each value
    assert both.combinations == [{"keras_learning_phase": False}, {"keras_learning_phase": True}]
    options = Options(values={"keras_learning_phase": np.array(True)}, batch=3)
    assert bnrewrite.verify(graph, graph, options).inputs["x"][0] == 3


def test_probe_tells_batch_dependent_graphs_apart(capsys):
    from bnrewrite import cli
    from bnrewrite.probe import probe
    (independent,) = probe(bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc")))
    assert independent.batch == 2 and independent.max_rel < 1e-6
    code = cli.main(["audit", "--probe", "--format", "json", "--batch", "3",
                     str(fixture_path("fbn_v3_training_empty"))])
    report = __import__("json").loads(capsys.readouterr().out)
    assert code == 0
    (dependent,) = report["probe"]
    assert dependent["batch"] == 3 and dependent["max_rel"] > 0.01


def test_probe_needs_a_batch():
    from bnrewrite.probe import probe
    graph = bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc"))
    with pytest.raises(bnrewrite.BnRewriteError, match="batch dimension of 2"):
        probe(graph, Options(shapes={"x": [1, 7, 5, 3]}))


def test_a_subtle_corruption_is_caught():
    """One folded weight off by 1e-3 of its value: far inside the old fixed tolerance's
    reach for deep graphs, still far outside this graph's own rounding noise."""
    from test_cli_rewrite import _corrupt
    original = bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc"))
    good, _ = bnrewrite.rewrite(original)

    def nudge(w):
        w = w.copy()
        w.flat[7] *= np.float32(1 + 1e-3)
        return w
    bad = _corrupt(type(good).FromString(good.SerializeToString()), "conv1/Conv2D/bn_folded/weights", nudge)
    result = bnrewrite.verify(original, bad)
    (check,) = result.outputs
    assert not result.passed and check.max_abs > check.bound > check.noise > 0
    assert bnrewrite.verify(original, good).passed


def _nchw_and_nhwc_twins(builder):
    from test_verify_units import _nchw_conv_pool
    nchw = _nchw_conv_pool(builder)
    nhwc = type(nchw)()
    nhwc.CopyFrom(nchw)
    for node in nhwc.node:
        if "data_format" in node.attr:
            node.attr["data_format"].s = b"NHWC"
            for key in ("strides", "ksize", "dilations"):
                if key in node.attr:
                    values = list(node.attr[key].list.i)
                    node.attr[key].list.i[:] = [values[i] for i in (0, 2, 3, 1)]
    node = next(n for n in nhwc.node if n.name == "conv")
    node.attr["explicit_paddings"].list.i[:] = [0, 0, 1, 2, 3, 4, 0, 0]
    return nchw, nhwc


def test_channels_last_runs_compute_what_channels_first_ops_do(builder):
    """layout.py on a strided, explicitly padded NCHW conv and pool equals the same graph
    written NHWC: on any CPU, whatever oneDNN does."""
    nchw, nhwc = _nchw_and_nhwc_twins(builder)
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 11)).astype(np.float32)
    (got,) = run(layout.to_channels_last(nchw), {"x": x}, ["bias"])
    (want,) = run(nhwc, {"x": x.transpose(0, 2, 3, 1)}, ["bias"])
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-5)


def test_with_onednn_off_nchw_graphs_verify_channels_last(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    graph = bnrewrite.load_graph(fixture_path("fbn_v1_conv_nchw"))
    rewritten, _ = bnrewrite.rewrite(graph)
    result = bnrewrite.verify(graph, rewritten)
    assert result.passed and result.channels_last == 1


def test_without_tensorflow_the_api_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # what find_spec sees when it is not installed
    graph = bnrewrite.load_graph(fixture_path("bnwgn_conv_scale"))
    with pytest.raises(bnrewrite.CannotVerifyError, match=r"not installed.*bnrewrite\[tensorflow\].*verify=None"):
        bnrewrite.rewrite(graph, verify=Options())
    assert bnrewrite.rewrite(graph)[1].summary()["fold"] == 1


def test_without_tensorflow_the_cli_exits_2_and_audit_still_works(tmp_path):
    """The CLI in a process where `tensorflow` cannot be found (sys.modules[name] = None
    is Python's documented way to make an import fail)."""
    shim = ("import sys; sys.modules['tensorflow'] = None; from bnrewrite.cli import main; "
            "sys.argv[0] = 'bnrewrite'; sys.exit(main())")
    cli = lambda *args: subprocess.run([sys.executable, "-c", shim, *map(str, args)], capture_output=True,
                                       text=True, timeout=60)
    graph, out = fixture_path("bnwgn_conv_scale"), tmp_path / "x.pb"
    for result in (cli("rewrite", graph, "-o", out), cli("verify", graph, graph)):
        assert result.returncode == 2 and not out.exists()
        line, = result.stderr.strip().splitlines()
        assert "TensorFlow is not installed" in line and "pip install 'bnrewrite[tensorflow]'" in line
        assert "--no-verify" in line
    assert cli("audit", graph).returncode == 0
    result = cli("audit", "--probe", graph)
    assert result.returncode == 2 and "--probe runs each graph in it" in result.stderr
    result = cli("rewrite", graph, "-o", out, "--no-verify")
    assert result.returncode == 0 and out.exists(), result.stderr


def test_fp16_nchw_convolution_verifies_on_any_cpu(builder):
    """fp16 NCHW Conv2D has no CPU kernel even through oneDNN (except with AVX-512): a
    failed native run switches both graphs to channels-last."""
    from test_rewrite_safety import fused_bn
    half = types_pb2.DT_HALF
    builder.node("x", "Placeholder", dtype=half)
    for d in (-1, 3, 6, 5):
        builder.graph.node[-1].attr["shape"].shape.dim.add(size=d)
    builder.node("w", "Const", value=np.random.default_rng(2).normal(0, 0.5, (3, 3, 3, 4)).astype(np.float16),
                 dtype=half)
    builder.node("conv", "Conv2D", "x", "w", T=half, strides=[1, 1, 1, 1], padding="SAME", data_format="NCHW")
    fused_bn(builder, "bn", "conv", 4)
    bn = builder.graph.node[-1]
    bn.op, bn.attr["T"].type, bn.attr["data_format"].s = "FusedBatchNormV3", half, b"NCHW"
    bn.attr["U"].type = types_pb2.DT_FLOAT
    builder.node("out", "Relu", "bn", T=half)
    rewritten, report = bnrewrite.rewrite(builder.graph, verify=Options())
    assert report.batch_norms[0].action == "fold" and report.verification["outputs"][0]["passed"]
    assert report.verification["outputs"][0]["dtype"] == "float16"


def test_channels_last_transposed_convolution_permutes_its_output_size(builder):
    """Conv2DBackpropInput takes its output size as a tensor in the op's layout."""
    weights = np.random.default_rng(3).normal(size=(3, 3, 4, 5))
    for name, layout_name, sizes, strides in (("nchw", "NCHW", [2, 4, 10, 12], [1, 1, 2, 2]),
                                              ("nhwc", "NHWC", [2, 10, 12, 4], [1, 2, 2, 1])):
        builder.node(f"{name}/dy", "Placeholder", dtype=types_pb2.DT_FLOAT)
        builder.node(f"{name}/sizes", "Const", value=np.array(sizes, np.int32), dtype=types_pb2.DT_INT32)
        builder.const(f"{name}/w", weights)
        builder.node(f"{name}/deconv", "Conv2DBackpropInput", f"{name}/sizes", f"{name}/w", f"{name}/dy",
                     T=types_pb2.DT_FLOAT, strides=strides, padding="SAME", data_format=layout_name)
    dy = np.random.default_rng(4).standard_normal((2, 5, 5, 6)).astype(np.float32)
    (got,) = run(layout.to_channels_last(builder.graph), {"nchw/dy": dy}, ["nchw/deconv"])
    (want,) = run(builder.graph, {"nhwc/dy": dy.transpose(0, 2, 3, 1)}, ["nhwc/deconv"])
    assert got.shape == (2, 4, 10, 12)
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_channels_last_3d_convolution_and_pool(builder):
    """NCDHW Conv3D and MaxPool3D run as NDHWC between transposes."""
    weights = np.random.default_rng(5).normal(size=(2, 3, 3, 4, 5))
    for name, fmt, conv_strides, pool in (("first", "NCDHW", [1, 1, 1, 2, 1], [1, 1, 1, 2, 2]),
                                          ("last", "NDHWC", [1, 1, 2, 1, 1], [1, 1, 2, 2, 1])):
        builder.node(f"{name}/x", "Placeholder", dtype=types_pb2.DT_FLOAT)
        builder.const(f"{name}/w", weights)
        builder.node(f"{name}/conv", "Conv3D", f"{name}/x", f"{name}/w", T=types_pb2.DT_FLOAT, strides=conv_strides,
                     padding="SAME", data_format=fmt)
        builder.node(f"{name}/pool", "MaxPool3D", f"{name}/conv", T=types_pb2.DT_FLOAT, ksize=pool, strides=pool,
                     padding="VALID", data_format=fmt)
    x = np.random.default_rng(6).standard_normal((2, 4, 3, 8, 6)).astype(np.float32)
    (got,) = run(layout.to_channels_last(builder.graph), {"first/x": x}, ["first/pool"])
    (want,) = run(builder.graph, {"last/x": x.transpose(0, 2, 3, 4, 1)}, ["last/pool"])
    np.testing.assert_allclose(got, want.transpose(0, 4, 1, 2, 3), rtol=1e-5, atol=1e-5)


def test_a_graph_that_grappler_would_fuse_into_a_missing_kernel_still_verifies(builder):
    """Conv2D -> FusedBatchNorm -> Tanh: with oneDNN on, grappler's remapper makes it one
    fused op that TF 2.21 has no kernel for ("Fusion is not implemented"), so TensorFlow
    cannot run the original at all; the worker runs graphs without that remapping."""
    rng = np.random.default_rng(0)
    graph = builder.graph
    x = graph.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = 1
    for d in (2, 6, 6, 3):
        x.attr["shape"].shape.dim.add(size=d)
    builder.const("w", rng.normal(size=(3, 3, 3, 4)))
    builder.node("conv", "Conv2D", "x", "w", T=1, strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC")
    for role in ("gamma", "beta", "mean", "variance"):
        builder.const(role, rng.uniform(0.5, 1.5, 4))
    builder.node("bn", "FusedBatchNorm", "conv", "gamma", "beta", "mean", "variance", T=1, epsilon=0.001,
                 is_training=False, data_format="NHWC")
    builder.node("out", "Tanh", "bn", T=1)
    rewritten, report = bnrewrite.rewrite(graph, verify=bnrewrite.VerifyOptions())
    assert [e.action for e in report.batch_norms] == ["fold"] and report.verification["outputs"][0]["passed"]
    assert "FusedBatchNorm" not in {n.op for n in rewritten.node}
