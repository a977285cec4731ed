"""Rewrite the real graphs in ../shared/realgraphs and compare outputs in TensorFlow."""
from __future__ import annotations

import io
import wave
from collections import Counter

import numpy as np
import pytest

import bnrewrite
from bnrewrite.verify import Options, compare, make_feeds, run


def wav_bytes(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> bytes:
    """A mono 16-bit WAV of a chirp plus noise: what the KWS graphs decode in-graph."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    signal = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((signal * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


# name -> (feeds or shape overrides, op counts after fold, node count after fold). The dead
# parameter constants and their read Identities go; nothing else does.
CASES = {
    "kws_ds_cnn_s.pb": ({"values": {"wav_data": np.array(wav_bytes(), dtype=object)}},
                        {"FusedBatchNorm": 0, "BiasAdd": 10, "Const": 22}, 62),
    "kws_cnn_s.pb": ({"values": {"wav_data": np.array(wav_bytes(seed=1), dtype=object)}},
                     {"FusedBatchNorm": 0, "Rsqrt": 0, "Sub": 0, "BiasAdd": 3, "Add": 2}, 38),
    "pose_hourglass_frozen.pb": ({}, {"FusedBatchNorm": 0, "BiasAdd": 65}, 528),
    "tfpose_mnv2_small_opt.pb": ({"shapes": {"image": [1, 368, 432, 3]}},
                                 {"FusedBatchNorm": 39, "BiasAdd": 60}, 736),
    "sbd_model_v3.pb": ({"batch": 1}, {"FusedBatchNormV3": 0, "Conv2D": 11, "MaxPool": 3}, 78),
    # negative variances: NaN channels, left as they are (degenerate-parameters)
    "tf_graphconstructor_test_bnwgn.pbtxt": ({}, {"BatchNormWithGlobalNormalization": 1,
                                                  "FusedBatchNormV3": 0, "Const": 2}, 3),
    "dl4j_fbn_v3_fp16.pb": ({}, {"FusedBatchNormV3": 1}, 9),
    "dl4j_bn_nhwc_nofused.pb": ({}, {"Rsqrt": 0, "Mul": 1, "Add": 1}, 6),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_graph_rewrite_keeps_outputs(realgraphs, name):
    options, ops_after, nodes_after = CASES[name]
    """Verified as `rewrite` does by default: calibrated tolerance, no --rtol/--atol."""
    original = bnrewrite.load_graph(realgraphs / name)
    rewritten, report = bnrewrite.rewrite(original, verify=Options(**options))
    counts = Counter(node.op for node in rewritten.node)
    assert {op: counts[op] for op in ops_after} == ops_after
    assert report.nodes_after == len(rewritten.node) == nodes_after
    checks = report.verification["outputs"]
    assert checks and all(c["passed"] and c["max_abs"] <= c["bound"] for c in checks), checks
    assert all(c["noise"] is not None for c in checks if c["dtype"].startswith("float"))


def test_training_mode_batch_norms_keep_batch_statistics(realgraphs):
    """tfpose has 39 training-mode FusedBatchNorms: kept as they are, so a sample's
    result still depends on the batch it is run in, exactly as before."""
    original = bnrewrite.load_graph(realgraphs / "tfpose_mnv2_small_opt.pb")
    rewritten, report = bnrewrite.rewrite(original)
    kept = {e.output for e in report.batch_norms if e.training}
    assert len(kept) == 39
    assert kept <= {n.name for n in rewritten.node if n.op == "FusedBatchNorm" and n.attr["is_training"].b}
    feeds = make_feeds(original, Options(shapes={"image": [2, 96, 96, 3]}, seed=3))
    batch = run(rewritten, feeds, ["Openpose/concat_stage7"])[0]
    alone = run(rewritten, {"image": feeds["image"][:1]}, ["Openpose/concat_stage7"])[0]
    assert np.abs(batch[:1] - alone).max() > 1e-3  # batch statistics really are in use
    reference = run(original, feeds, ["Openpose/concat_stage7"])[0]
    assert compare("out", reference, batch).passed


def test_sbd_folds_forward_into_every_convolution(realgraphs):
    """sbd's 10 FusedBatchNormV3 follow activations, so none has a host before it. Each is
    read by one Conv2D, 3 of them through a MaxPool (their scales are positive, which a
    maximum commutes with); their shifts are zero, so the convs' SAME padding does not
    matter. All 10 fold forward into the Conv2D's input channels."""
    original = bnrewrite.load_graph(realgraphs / "sbd_model_v3.pb")
    rewritten, report = bnrewrite.rewrite(original)
    assert [(e.action, e.direction, e.host) for e in report.batch_norms] == [("fold", "forward", None)] * 10
    assert sorted(c for e in report.batch_norms for c in e.consumers) == \
        sorted(f"functional_1/conv2d_{c}/Conv2D" for c in range(1, 11))
    by_name = {n.name: n for n in original.node}
    after = {n.name: n for n in rewritten.node}
    pools = [n for n in original.node if n.op == "MaxPool"]
    assert len(pools) == 3 and all(by_name[p.input[0]].op == "FusedBatchNormV3" for p in pools)
    assert all(after[p.name].input[0] in ("functional_1/add/add",) or
               after[after[p.name].input[0]].op == "Relu" for p in pools)  # now reads x itself
    # The graph's output is a thresholded mask (all zero on random inputs): also compare
    # every folded convolution's biased output, which each fold changes if it is wrong.
    convs = [f"functional_1/conv2d_{c}/BiasAdd" for c in range(1, 11)]
    result = bnrewrite.verify(original, rewritten, Options(outputs=["Identity", *convs], batch=1))
    assert result.passed and len(result.outputs) == 11, result.describe()
    assert max(c.max_abs for c in result.outputs[1:]) > 0  # the convs really were recomputed


def test_default_shapes_exercise_a_fully_dynamic_image_input(realgraphs):
    """tfpose's input is [-1, -1, -1, 3]: a batch of 2 images covering the conv stack's
    receptive field, not 2x2 pixels; and 2x2 given by hand is warned about."""
    graph = bnrewrite.load_graph(realgraphs / "tfpose_mnv2_small_opt.pb")
    feeds = make_feeds(graph, Options())
    assert feeds["image"].shape == (2, 512, 512, 3) and feeds.warnings == []
    assert "receptive field (843 px, capped at 512), stride 16" in feeds.sources["image"]
    (warning,) = make_feeds(graph, Options(shapes={"image": [1, 2, 2, 3]})).warnings
    assert "50 of its 50 convolutions and pools" in warning
