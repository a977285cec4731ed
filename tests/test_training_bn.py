"""--training-bn keep|error|moving-stats: training-mode batch norms kept with a warning,
refused, or run with their moving statistics and folded (rescue.py)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import bnrewrite
from bnrewrite import TrainingModeError, cli
from bnrewrite.tensors import to_numpy, to_proto
from bnrewrite.verify import Options, make_feeds, run
from conftest import fixture_path

MOVING = "fbn_v3_training_moving"
BN = "bn/FusedBatchNormV3"
TFPOSE = "tfpose_mnv2_small_opt.pb"
TFPOSE_FIRST = "MobilenetV2/Conv/BatchNorm/FusedBatchNorm"


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def in_inference_mode(graph, name: str):
    """The original with one batch norm's is_training flipped, built here independently
    of rescue.py: what "the original run in inference mode" means."""
    copy = type(graph)()
    copy.CopyFrom(graph)
    (node,) = [n for n in copy.node if n.name == name]
    assert node.attr["is_training"].b
    node.attr["is_training"].b = False
    return copy


def test_moving_stats_folds_and_equals_the_original_in_inference_mode():
    original = bnrewrite.load_graph(fixture_path(MOVING))
    before = original.SerializeToString()
    rewritten, report = bnrewrite.rewrite(original, training_bn="moving-stats", verify=Options())
    assert original.SerializeToString() == before  # the caller's graph is untouched
    (bn,) = report.batch_norms
    assert (bn.action, bn.training, bn.host_node) == ("fold", False, "conv1/Conv2D")
    assert report.training_bn == {"policy": "moving-stats", "kept": [],
                                  "rescuable": [],
                                  "rescued": {BN: {"mean": "bn/moving_mean", "variance": "bn/moving_variance"}}}
    ops = Counter(n.op for n in rewritten.node)
    assert ops["FusedBatchNormV3"] == 0 and ops["BiasAdd"] == 1
    assert report.verification["outputs"][0]["passed"]
    text = report.to_text()
    assert f"{BN}: inference mode with its moving statistics bn/moving_mean, bn/moving_variance" in text
    assert "compared with the original in inference mode for the 1 batch norms" in text

    feeds = make_feeds(original, Options(seed=7))
    reference = run(in_inference_mode(original, BN), feeds, ["out"])[0]
    training = run(original, feeds, ["out"])[0]
    got = run(rewritten, feeds, ["out"])[0]
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() <= 1e-5 * scale
    assert np.abs(training - reference).max() > 0.1 * scale  # the batch's statistics differ from the moving ones


def test_keep_is_the_default_and_warns():
    original = bnrewrite.load_graph(fixture_path(MOVING))
    default, _ = bnrewrite.rewrite(original)
    kept, report = bnrewrite.rewrite(original, training_bn="keep")
    assert kept.SerializeToString() == default.SerializeToString()
    assert [n for n in kept.node if n.name == BN] == [n for n in original.node if n.name == BN]
    assert report.training_bn == {"policy": "keep", "rescued": {}, "kept": [BN], "rescuable": [BN]}
    assert (f"warning: 1 training-mode batch norms kept in training mode (first {BN}): their outputs depend "
            "on the batch; 1 of them have moving statistics wired in, which --training-bn moving-stats would use"
            in report.to_text())


def test_error_names_the_training_mode_batch_norm_and_audit_says_so(capsys):
    original = bnrewrite.load_graph(fixture_path(MOVING))
    with pytest.raises(TrainingModeError, match=f"1 batch norms would stay in training mode, the first '{BN}'"):
        bnrewrite.rewrite(original, training_bn="error")
    audit = bnrewrite.audit(original, training_bn="error")
    assert f"warning: 1 training-mode batch norms would make rewrite fail (first {BN})" in audit.to_text()
    code, out, err = cli_run(capsys, "audit", fixture_path(MOVING), "--training-bn", "moving-stats")
    assert code == 0 and err == ""
    assert f"{BN}: inference mode with its moving statistics bn/moving_mean" in out
    assert "fold" in out.splitlines()[6] and "--training-bn moving-stats" in out


def test_a_fused_op_whose_batch_statistics_are_read_is_not_rescued():
    """Outputs 1-4 of a training-mode fused op are the batch's statistics: in inference
    mode they would be something else, so the op stays in training mode."""
    original = bnrewrite.load_graph(fixture_path(MOVING))
    graph = type(original)()
    graph.CopyFrom(original)
    reader = graph.node.add(name="batch_mean", op="Identity", input=[f"{BN}:1"])
    reader.attr["T"].type = 1
    _, report = bnrewrite.rewrite(graph, training_bn="moving-stats")
    assert report.training_bn["rescued"] == {} and report.training_bn["kept"] == [BN]
    assert report.batch_norms[0].action == "skip"


def test_statistics_that_are_not_one_per_channel_are_not_used():
    original = bnrewrite.load_graph(fixture_path(MOVING))
    graph = type(original)()
    graph.CopyFrom(original)
    (mean,) = [n for n in graph.node if n.name == "bn/moving_mean"]
    mean.attr["value"].tensor.CopyFrom(to_proto(np.zeros(3, np.float32)))
    _, report = bnrewrite.rewrite(graph, training_bn="moving-stats")
    assert report.training_bn["rescued"] == {} and report.training_bn["kept"] == [BN]


def test_tfpose_error_exits_2_naming_the_first_of_the_39(realgraphs, tmp_path, capsys):
    out = tmp_path / "out.pb"
    code, stdout, err = cli_run(capsys, "rewrite", realgraphs / TFPOSE, "-o", out, "--training-bn", "error")
    assert code == 2 and stdout == "" and not out.exists()
    assert err.count("\n") == 1
    assert f"39 batch norms would stay in training mode, the first '{TFPOSE_FIRST}'" in err


@pytest.mark.parametrize("policy", ["keep", "moving-stats"])
def test_tfpose_keep_and_moving_stats_leave_the_39_unchanged_and_warn(realgraphs, policy):
    """tfpose's 39 have empty mean/variance inputs: nothing to rescue, so both policies
    give today's result byte for byte, the 39 NodeDefs as they were, and a warning."""
    original = bnrewrite.load_graph(realgraphs / TFPOSE)
    default, _ = bnrewrite.rewrite(original)
    rewritten, report = bnrewrite.rewrite(original, training_bn=policy)
    assert rewritten.SerializeToString() == default.SerializeToString()
    kept = report.training_bn["kept"]
    assert len(kept) == 39 and kept[0] == TFPOSE_FIRST
    assert report.training_bn["rescued"] == {} and report.training_bn["rescuable"] == []  # empty mean/variance
    before = {n.name: n for n in original.node}
    after = {n.name: n for n in rewritten.node}
    assert all(after[name] == before[name] and after[name].attr["is_training"].b for name in kept)
    assert f"warning: 39 training-mode batch norms kept in training mode (first {TFPOSE_FIRST})" in report.to_text()


EMA = "train_moments_ema"
EMA_BN = "bn/batchnorm/add_1"
SHADOWS = {"mean": "bn/moments/Squeeze/ExponentialMovingAverage",
           "variance": "bn/moments/Squeeze_1/ExponentialMovingAverage"}


def const_values(graph, name):
    (node,) = [n for n in graph.node if n.name == name]
    return to_numpy(node.attr["value"].tensor)


def test_moments_with_ema_shadows_fold_and_equal_the_original_with_them_substituted():
    original = bnrewrite.load_graph(fixture_path(EMA))
    before = original.SerializeToString()
    rewritten, report = bnrewrite.rewrite(original, training_bn="moving-stats", verify=Options())
    assert original.SerializeToString() == before
    (bn,) = report.batch_norms
    assert (bn.action, bn.training, bn.host_node) == ("fold", False, "conv1/Conv2D")
    assert report.training_bn == {"policy": "moving-stats", "kept": [], "rescuable": [],
                                  "rescued": {EMA_BN: SHADOWS}}
    assert f"{EMA_BN}: inference mode with its moving statistics {SHADOWS['mean']}, {SHADOWS['variance']}" \
        in report.to_text()
    ops = Counter(n.op for n in rewritten.node)
    assert ops["Mean"] == ops["Squeeze"] == ops["Rsqrt"] == 0 and ops["BiasAdd"] == 1  # no batch statistics left
    assert report.verification["outputs"][0]["passed"]

    # The reference by hand: the normalisation formula on TensorFlow's conv output, with
    # the shadows in place of the batch's statistics.
    expected = json.loads(fixture_path(EMA).with_suffix(".expected.json").read_text())["batch_norms"][0]
    feeds = make_feeds(original, Options(seed=11))
    conv, training = run(original, feeds, ["conv1/Conv2D", "out"])
    mean, variance = (const_values(original, SHADOWS[role]).astype(np.float64) for role in ("mean", "variance"))
    gamma, beta = np.asarray(expected["gamma"]), np.asarray(expected["beta"])
    reference = np.maximum(gamma * (conv - mean) / np.sqrt(variance + expected["epsilon"]) + beta, 0)
    (got,) = run(rewritten, feeds, ["out"])
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() <= 1e-5 * scale
    assert np.abs(training - reference).max() > 0.1 * scale  # the shadows are not the batch's statistics


def test_moments_with_ema_shadows_are_reported_rescuable_under_keep():
    _, report = bnrewrite.rewrite(bnrewrite.load_graph(fixture_path(EMA)))
    assert report.training_bn == {"policy": "keep", "rescued": {}, "kept": [EMA_BN], "rescuable": [EMA_BN]}


def _ambiguous_mean(graph):
    """A second mean candidate in the scope, one per channel like the shadow: which is meant is unknowable."""
    graph.node.add().CopyFrom([n for n in graph.node if n.name == SHADOWS["mean"]][0])
    graph.node[-1].name = "bn/moving_mean"


def _wrong_channel_count(graph):
    (node,) = [n for n in graph.node if n.name == SHADOWS["variance"]]
    node.attr["value"].tensor.CopyFrom(to_proto(np.ones(9, np.float32)))


def _integer_shadow(graph):
    (node,) = [n for n in graph.node if n.name == SHADOWS["variance"]]
    node.attr["dtype"].type = 3
    node.attr["value"].tensor.CopyFrom(to_proto(np.ones(10, np.int32)))


def _outside_the_scope(graph):
    (node,) = [n for n in graph.node if n.name == SHADOWS["mean"]]
    node.name = "other/moments/Squeeze/ExponentialMovingAverage"


@pytest.mark.parametrize("spoil", [_ambiguous_mean, _wrong_channel_count, _integer_shadow, _outside_the_scope])
def test_moments_without_one_clear_candidate_per_statistic_are_not_rescued(spoil):
    graph = bnrewrite.load_graph(fixture_path(EMA))
    spoil(graph)
    rewritten, report = bnrewrite.rewrite(graph, training_bn="moving-stats")
    assert report.training_bn["rescued"] == {} and report.training_bn["kept"] == [EMA_BN]
    assert report.batch_norms[0].training and report.batch_norms[0].action == "fuse"
    assert Counter(n.op for n in rewritten.node)["FusedBatchNormV3"] == 1


def test_moments_with_layer_named_moving_statistics_are_rescued_with_them():
    """tf.layers/Keras name them <scope>/moving_mean and <scope>/moving_variance."""
    graph = bnrewrite.load_graph(fixture_path(EMA))
    renamed = {"mean": "bn/moving_mean", "variance": "bn/moving_variance"}
    for role, name in renamed.items():
        (node,) = [n for n in graph.node if n.name == SHADOWS[role]]
        node.name = name
    rewritten, report = bnrewrite.rewrite(graph, training_bn="moving-stats", verify=Options())
    assert report.training_bn["rescued"] == {EMA_BN: renamed}
    assert report.batch_norms[0].action == "fold" and report.verification["outputs"][0]["passed"]
    assert Counter(n.op for n in rewritten.node)["Mean"] == 0
