"""The audit on the eight real frozen graphs in ../shared/realgraphs (MANIFEST.md)."""
from __future__ import annotations

from collections import Counter

import pytest

import bnrewrite

# file -> (forms found, training-mode count, actions) as MANIFEST.md describes them.
CASES = {
    "kws_ds_cnn_s.pb": ({"FusedBatchNorm": 9}, 0, {"fold": 9}),
    "kws_cnn_s.pb": ({"FusedBatchNorm": 2, "batch_normalization": 1}, 0, {"fold": 3}),
    "pose_hourglass_frozen.pb": ({"FusedBatchNorm": 65}, 0, {"fold": 65}),
    "tfpose_mnv2_small_opt.pb": ({"FusedBatchNorm": 99}, 39, {"fold": 60, "skip": 39}),
    "sbd_model_v3.pb": ({"FusedBatchNormV3": 10}, 0, {"fold": 10}),  # forward, 3 through a MaxPool
    "tf_graphconstructor_test_bnwgn.pbtxt": ({"BatchNormWithGlobalNormalization": 1}, 0, {"skip": 1}),
    "dl4j_fbn_v3_fp16.pb": ({"FusedBatchNormV3": 1}, 1, {"skip": 1}),
    "dl4j_bn_nhwc_nofused.pb": ({"batch_normalization": 1}, 0, {"fuse": 1}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_graph_audit(realgraphs, name):
    forms, training, actions = CASES[name]
    report = bnrewrite.audit(bnrewrite.load_graph(realgraphs / name), name)
    entries = report.batch_norms
    assert Counter(e.form for e in entries) == forms
    assert sum(e.training for e in entries) == training
    assert Counter(e.action for e in entries) == actions
    assert report.side_effects == []  # nothing for verification to refuse (DecodeWav is pure)
    for e in entries:
        assert (e.reason is None) == (e.action == "fold")
        if e.training:
            assert e.reason == "training-mode" and e.mean is None


def test_hosts_found_in_kws_ds_cnn(realgraphs):
    report = bnrewrite.audit(bnrewrite.load_graph(realgraphs / "kws_ds_cnn_s.pb"))
    hosts = Counter(e.host for e in report.batch_norms)
    assert hosts == {"Conv2D": 5, "DepthwiseConv2dNative": 4}
    assert report.graph.inputs == ["wav_data"] and report.graph.outputs == ["labels_softmax"]


def test_bnwgn_scale_after_normalization_false_ignores_gamma(realgraphs):
    report = bnrewrite.audit(bnrewrite.load_graph(realgraphs / "tf_graphconstructor_test_bnwgn.pbtxt"))
    (bn,) = report.batch_norms
    assert bn.gamma == [1.0] * 32
    assert bn.channels == 32 and bn.epsilon == pytest.approx(0.001)
    assert (bn.action, bn.reason) == ("skip", "degenerate-parameters")  # negative variances


def test_decomposed_parameters_read_from_real_graph(realgraphs):
    graph = bnrewrite.load_graph(realgraphs / "dl4j_bn_nhwc_nofused.pb")
    (bn,) = bnrewrite.audit(graph).batch_norms
    consts = {n.name: n for n in graph.node}
    from bnrewrite.tensors import to_numpy
    for role, node in (("gamma", "batch_normalization/gamma"), ("beta", "batch_normalization/beta"),
                       ("mean", "batch_normalization/moving_mean"),
                       ("variance", "batch_normalization/moving_variance")):
        assert getattr(bn, role) == pytest.approx(list(to_numpy(consts[node].attr["value"].tensor)))
    assert len(bn.nodes) == 7 and bn.output == "batch_normalization/batchnorm/add_1"
