"""Bad input ends in one line on stderr naming the file and the problem, exit 2,
no traceback (DESIGN §5)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import bnrewrite
from bnrewrite.errors import GraphLoadError, InvalidGraphError
from test_realgraphs_rewrite import wav_bytes


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnrewrite", *args], capture_output=True, text=True,
                          timeout=60)


def assert_clean_failure(result: subprocess.CompletedProcess, path, words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def graph_file(tmp_path, builder, name="g.pb"):
    return write(tmp_path, name, builder.graph.SerializeToString())


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pb"
    assert_clean_failure(run_cli("audit", str(path)), path, "no such file")


def test_empty_file_is_an_error_not_an_empty_graph(tmp_path):
    path = write(tmp_path, "empty.pb", b"")
    assert_clean_failure(run_cli("audit", str(path)), path, "empty file")


def test_truncated_graph(tmp_path, realgraphs):
    data = (realgraphs / "kws_cnn_s.pb").read_bytes()
    path = write(tmp_path, "cut.pb", data[: len(data) // 2 + 3])
    result = run_cli("audit", str(path))
    assert_clean_failure(result, path, "")
    assert "GraphDef" in result.stderr or "reads" in result.stderr


def test_random_bytes(tmp_path):
    path = write(tmp_path, "noise.pb", bytes(range(256)) * 7)
    assert_clean_failure(run_cli("audit", str(path)), path, "not a binary GraphDef")


def test_pbtxt_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "bad.pbtxt", b'node {\n  name: "a"\n  op: "Const"\n  attr {{ }\n}\n')
    assert_clean_failure(run_cli("audit", str(path)), path, "syntax error: 4:")


def test_duplicate_node_names(tmp_path, builder):
    builder.const("a", [1.0]).const("a", [2.0])
    path = graph_file(tmp_path, builder)
    assert_clean_failure(run_cli("audit", str(path)), path, "duplicate node name 'a'")


def test_input_naming_a_missing_node(tmp_path, builder):
    builder.const("a", [1.0]).node("b", "Identity", "ghost:0")
    path = graph_file(tmp_path, builder)
    assert_clean_failure(run_cli("audit", str(path)), path, "'ghost:0', which is not in the graph")


def test_cycle(tmp_path, builder):
    builder.node("a", "Identity", "c").node("b", "Identity", "a").node("c", "Identity", "b")
    path = graph_file(tmp_path, builder)
    assert_clean_failure(run_cli("audit", str(path)), path, "cycle: ")


def test_folder_without_graphs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_clean_failure(run_cli("audit", str(tmp_path)), tmp_path, "no .pb or .pbtxt")


def test_good_and_bad_files_together_report_both(tmp_path, realgraphs):
    bad = write(tmp_path, "empty.pb", b"")
    result = run_cli("audit", str(realgraphs / "dl4j_bn_nhwc_nofused.pb"), str(bad))
    assert result.returncode == 2
    assert "batch_normalization/batchnorm/add_1" in result.stdout
    assert str(bad) in result.stderr


def test_usage_error_exits_2():
    result = run_cli("audit", "--format", "yaml", "x.pb")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_api_raises_typed_errors(tmp_path, builder):
    with pytest.raises(GraphLoadError):
        bnrewrite.load_graph(write(tmp_path, "e.pb", b"   \n"))
    builder.const("a", [1.0]).node("b", "Identity", "ghost")
    with pytest.raises(InvalidGraphError, match="ghost"):
        bnrewrite.audit(builder.graph)


def test_text_graph_saved_as_pb_still_loads(tmp_path, realgraphs):
    text = (realgraphs / "tf_graphconstructor_test_bnwgn.pbtxt").read_bytes()
    graph = bnrewrite.load_graph(write(tmp_path, "text_inside.pb", text))
    assert [n.op for n in graph.node][-1] == "BatchNormWithGlobalNormalization"


def test_unreadable_directory_named_as_file(tmp_path):
    folder = tmp_path / "model.pb"
    os.mkdir(folder)
    result = run_cli("audit", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_graph_over_the_protobuf_limit(tmp_path):
    path = tmp_path / "huge.pb"
    with open(path, "wb") as handle:  # sparse: takes no disk space
        handle.truncate(2**31 + 10)
    assert_clean_failure(run_cli("audit", str(path)), path, "2 GiB")


def test_absurdly_nested_text_graph(tmp_path):
    inner = 'func { name: "f" attr { key: "k" value { ' * 5000 + "}}}" * 5000
    text = 'node { name: "a" op: "Const" attr { key: "value" value { list { ' + inner + " }}}}"
    path = write(tmp_path, "deep.pbtxt", text.encode())
    assert_clean_failure(run_cli("audit", str(path)), path, "nested too deeply")


def test_absurd_constant_size_is_not_decoded(tmp_path, builder):
    """A Const claiming 10^12 elements must not make the audit allocate them."""
    builder.node("x", "Placeholder", dtype=1)
    builder.const("gamma", [1.0])
    node = builder.graph.node[-1]
    node.attr["value"].tensor.tensor_shape.dim[0].size = 10**12
    node.attr["value"].tensor.ClearField("tensor_content")
    builder.const("beta", [0.0]).const("mean", [0.0]).const("var", [1.0])
    builder.node("bn", "FusedBatchNorm", "x", "gamma", "beta", "mean", "var", T=1, epsilon=0.001,
                 is_training=False, data_format="NHWC")
    (bn,) = bnrewrite.audit(builder.graph).batch_norms
    assert bn.gamma is None and bn.reason == "not-constant"


def test_mismatched_parameter_shapes_are_reported_not_rewritten(builder):
    builder.node("x", "Placeholder", dtype=1)
    builder.const("gamma", [1.0, 2.0, 3.0]).const("beta", [0.0] * 4).const("mean", [0.0] * 3)
    builder.const("var", [1.0] * 3)
    builder.node("bn", "FusedBatchNorm", "x", "gamma", "beta", "mean", "var", T=1, epsilon=0.001,
                 is_training=False, data_format="NHWC")
    (bn,) = bnrewrite.audit(builder.graph).batch_norms
    assert (bn.action, bn.reason, bn.detail) == ("skip", "channel-mismatch", "parameter shapes disagree")
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    assert rewritten.SerializeToString(deterministic=True) == \
        builder.graph.SerializeToString(deterministic=True)


def test_custom_op_audits_and_rewrites_without_verification(tmp_path, realgraphs):
    """A vendor op TensorFlow does not know: the core never needs TensorFlow."""
    graph = bnrewrite.load_graph(realgraphs / "kws_cnn_s.pb")
    next(n for n in graph.node if n.op == "Mfcc").op = "VendorMfcc"
    path = tmp_path / "vendor.pb"
    bnrewrite.save_graph(graph, path)
    assert run_cli("audit", str(path)).returncode == 0
    out = tmp_path / "out.pb"
    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes())
    result = run_cli("rewrite", str(path), "-o", str(out), "--feed", f"wav_data=@{wav}")
    assert_clean_failure(result, path, "VendorMfcc")
    assert "--no-verify" in result.stderr and not out.exists()
    assert run_cli("rewrite", str(path), "-o", str(out), "--no-verify").returncode == 0 and out.exists()


def test_interrupt_leaves_the_old_file_and_no_temporary(tmp_path, realgraphs):
    out = tmp_path / "out.pb"
    out.write_bytes(b"old")
    process = subprocess.Popen(
        [sys.executable, "-m", "bnrewrite", "rewrite", str(realgraphs / "pose_hourglass_frozen.pb"),
         "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # inside the rewrite or TensorFlow's import: long before the write
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.pb"]
