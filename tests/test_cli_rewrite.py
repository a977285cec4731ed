"""`bnrewrite rewrite` and `bnrewrite verify` as users run them (in-process main())."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bnrewrite
from bnrewrite import cli, fold_math
from bnrewrite.tensors import to_numpy, to_proto
from conftest import fixture_path
from test_realgraphs_rewrite import wav_bytes


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rewrite_writes_a_verified_graph(tmp_path, capsys):
    out = tmp_path / "out.pb"
    code, stdout, err = run(capsys, "rewrite", fixture_path("trap_mixed_forms"), "-o", out)
    assert code == 0, err
    assert "verified in TensorFlow: 1 outputs match" in stdout and "3 folded, 0 fused" in stdout
    assert err == ""
    rewritten = bnrewrite.load_graph(out)
    assert {n.op for n in rewritten.node}.isdisjoint({"FusedBatchNorm", "Rsqrt"})
    code, stdout, _ = run(capsys, "verify", fixture_path("trap_mixed_forms"), out, "--format", "json")
    report = json.loads(stdout)
    assert code == 0 and report["passed"] and report["outputs"][0]["name"] == "out"


def test_rewrite_refuses_a_wrong_result_and_writes_nothing(tmp_path, capsys, monkeypatch):
    real = fold_math.BNParams.scale_offset
    monkeypatch.setattr(fold_math.BNParams, "scale_offset",
                        lambda self: (real(self)[0] * 1.05, real(self)[1]))  # an injected bug
    out = tmp_path / "out.pb"
    out.write_bytes(b"previous result")
    code, stdout, err = run(capsys, "rewrite", fixture_path("trap_mixed_forms"), "-o", out)
    assert code == 1 and stdout == ""
    line, = err.strip().splitlines()
    assert "output 'out' differs" in line and "first differing batch norm: bn1/FusedBatchNorm" in line
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pb"]


def _corrupt(graph, node_name, change):
    node = next(n for n in graph.node if n.name == node_name)
    node.attr["value"].tensor.CopyFrom(to_proto(change(to_numpy(node.attr["value"].tensor))))
    return graph


@pytest.mark.parametrize("name,change", [
    ("conv1/Conv2D/bn_folded/weights", lambda w: (w * np.float32(1.05)).astype(np.float32)),
    ("conv1/Conv2D/bn_folded/bias", lambda b: np.zeros_like(b)),  # a dropped bias
])
def test_verify_catches_a_corrupted_rewrite_and_names_the_batch_norm(tmp_path, capsys, name, change):
    original = bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc"))
    good, _ = bnrewrite.rewrite(original)
    bnrewrite.save_graph(_corrupt(good, name, change), tmp_path / "bad.pb")
    code, stdout, _ = run(capsys, "verify", fixture_path("fbn_v3_conv_nhwc"), tmp_path / "bad.pb")
    assert code == 1
    assert "DIFFERS" in stdout and "first differing batch norm: bn/FusedBatchNormV3" in stdout


def test_verify_catches_a_wrong_epsilon(tmp_path, capsys):
    graph = bnrewrite.load_graph(fixture_path("fbn_v3_conv_nhwc"))
    wrong = type(graph)()
    wrong.CopyFrom(graph)
    next(n for n in wrong.node if n.op == "FusedBatchNormV3").attr["epsilon"].f = 0.5
    bnrewrite.save_graph(wrong, tmp_path / "eps.pb")
    code, stdout, _ = run(capsys, "verify", fixture_path("fbn_v3_conv_nhwc"), tmp_path / "eps.pb")
    assert code == 1 and "bn/FusedBatchNormV3" in stdout


def test_output_naming_the_input_is_refused_unless_in_place(tmp_path, capsys):
    path = tmp_path / "model.pb"
    path.write_bytes(fixture_path("fbn_v1_conv_nhwc").read_bytes())
    before = path.read_bytes()
    code, _, err = run(capsys, "rewrite", path, "-o", path)
    assert code == 2 and "--in-place" in err and path.read_bytes() == before
    code, _, err = run(capsys, "rewrite", path, "-o", path, "--in-place")
    assert code == 0, err
    assert path.read_bytes() != before


def test_bool_placeholder_runs_with_both_values_unless_fed(tmp_path, capsys):
    out = tmp_path / "out.pb"
    code, stdout, err = run(capsys, "rewrite", fixture_path("cond_keras_placeholder"), "-o", out, "--format", "json")
    assert code == 0, err
    checks = json.loads(stdout)["verification"]["outputs"]
    assert [c["name"] for c in checks] == ["out [keras_learning_phase=false]", "out [keras_learning_phase=true]"]
    assert all(c["passed"] for c in checks)
    code, stdout, err = run(capsys, "rewrite", fixture_path("cond_keras_placeholder"), "-o", out,
                            "--feed", "keras_learning_phase=true", "--format", "json")
    assert code == 0, err
    assert [c["name"] for c in json.loads(stdout)["verification"]["outputs"]] == ["out"]


def test_wav_fed_as_bytes_and_shape_override(tmp_path, capsys, realgraphs):
    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes())
    code, stdout, err = run(capsys, "rewrite", realgraphs / "kws_cnn_s.pb", "-o", tmp_path / "k.pb",
                            "--feed", f"wav_data=@{wav}", "--format", "json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["summary"]["fold"] == 3 and report["verification"]["outputs"][0]["passed"]
    code, _, err = run(capsys, "rewrite", realgraphs / "tfpose_mnv2_small_opt.pb", "-o",
                       tmp_path / "t.pb", "--no-verify")
    assert code == 0, err
    code, out, err = run(capsys, "verify", realgraphs / "tfpose_mnv2_small_opt.pb", tmp_path / "t.pb",
                         "--input-shape", "image=1,64,80,3", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["inputs"] == {"image": [1, 64, 80, 3]}


def test_no_verify_says_so_and_needs_no_tensorflow_run(tmp_path, capsys):
    code, stdout, _ = run(capsys, "rewrite", fixture_path("bnwgn_conv_noscale"), "-o",
                          tmp_path / "o.pbtxt", "--no-verify")
    assert code == 0 and "not verified" in stdout
    ops = {node.op for node in bnrewrite.load_graph(tmp_path / "o.pbtxt").node}
    assert "BatchNormWithGlobalNormalization" not in ops and "BiasAdd" in ops


def test_graph_tensorflow_cannot_run_exits_2(tmp_path, capsys, builder):
    builder.node("x", "Placeholder", dtype=1).node("y", "VendorCustomOp", "x")
    bnrewrite.save_graph(builder.graph, tmp_path / "custom.pb")
    code, _, err = run(capsys, "verify", tmp_path / "custom.pb", tmp_path / "custom.pb",
                       "--input-shape", "x=2")
    line, = err.strip().splitlines()
    assert code == 2 and "TensorFlow cannot run the original graph: NOT_FOUND: Op type not registered " \
        "'VendorCustomOp'" in line and "--no-verify" not in line and "--input-shape" in line
    assert "Make sure" not in line  # TensorFlow's advice about tf.contrib is not ours to give


@pytest.mark.parametrize("flag", ["--input-shape=image", "--feed=novalue", "--input-shape=a=1,x"])
def test_malformed_flags_exit_2(tmp_path, capsys, flag):
    code, _, err = run(capsys, "verify", fixture_path("fbn_v1_conv_nhwc"), fixture_path("fbn_v1_conv_nhwc"),
                       flag)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_errors_name_the_graph_that_could_not_run(tmp_path, capsys):
    good = fixture_path("fbn_v3_conv_nhwc")
    broken = bnrewrite.load_graph(good)
    next(n for n in broken.node if n.op == "Relu").op = "VendorRelu"
    bnrewrite.save_graph(broken, tmp_path / "broken.pb")
    code, _, err = run(capsys, "verify", good, tmp_path / "broken.pb")
    line, = err.strip().splitlines()
    assert code == 2 and "TensorFlow cannot run the rewritten graph: NOT_FOUND: Op type not registered " \
        "'VendorRelu'" in line
