"""The verifier against known-equal and known-different pairs (no graphs needed for most)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import bnrewrite
from bnrewrite.verify import Options, compare, make_feeds, runnable
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
    from bnrewrite.verify import run
    graph = bnrewrite.load_graph(realgraphs / "tf_graphconstructor_test_bnwgn.pbtxt")
    rewritten, report = bnrewrite.rewrite(graph)
    assert report.batch_norms[0].reason == "degenerate-parameters"
    assert bnrewrite.verify(graph, rewritten).passed
    fused = type(graph)()
    fused.CopyFrom(graph)
    old = fused.node[-1]  # batchnorm(t=zeros, m,v,beta,gamma = m_v_beta_gamma); gamma ignored
    fused.node.append(nodes.const("ones", np.ones(32, np.float32)))
    replacement = nodes.fused_batch_norm_v3("batchnorm", [old.input[0], "ones", old.input[3], old.input[1],
                                                          old.input[2]], 1, 0.001, "NHWC", training=False)
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
    with pytest.raises(bnrewrite.BnRewriteError, match="keras_learning_phase"):
        bnrewrite.verify(graph, graph)
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
