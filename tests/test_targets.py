"""`--target`: what an unfolded batch norm becomes where the result is going (plan.TARGETS).
tf1 writes FusedBatchNorm with only the attributes TF 1.x declared; no target leaves a
BatchNormWithGlobalNormalization or FusedBatchNormV2 that could be replaced; every result
verifies in TensorFlow."""
from __future__ import annotations

import json

import pytest

import bnrewrite
from bnrewrite.cli import main
from bnrewrite.plan import TARGETS
from conftest import fixture_path

# FusedBatchNorm's attributes up to TF 1.15 (exponential_avg_factor came with TF 2.2, U with V2)
TF1_ATTRS = {"T", "epsilon", "data_format", "is_training"}
CONVERTED = {"tf2": "FusedBatchNormV3", "tf1": "FusedBatchNorm", "tflite": "FusedBatchNormV3",
             "onnx": "FusedBatchNormV3"}


def _rewrite(name: str, target: str, mode: str = "fold", verify: bool = True):
    options = bnrewrite.VerifyOptions() if verify else None
    return bnrewrite.rewrite(bnrewrite.load_graph(fixture_path(name)), mode, verify=options, target=target)


def _verified(report) -> bool:
    checks = report.verification["outputs"]
    return bool(checks) and all(check["passed"] for check in checks)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_legacy_forms_become_the_targets_op(target):
    new, report = _rewrite("convert_legacy", target)
    assert report.target == target and _verified(report)
    assert report.op_changes() == {"BatchNormWithGlobalNormalization": (1, 0), "FusedBatchNormV2": (1, 0),
                                   CONVERTED[target]: (0, 2)}


def test_tf1_writes_only_attributes_tf1_knew():
    new, _ = _rewrite("convert_legacy", "tf1")
    fused = [node for node in new.node if node.op == "FusedBatchNorm"]
    assert len(fused) == 2 and all(set(node.attr) == TF1_ATTRS for node in fused)


def test_tf1_turns_a_v3_into_v1_where_tf2_leaves_it():
    _, tf2 = _rewrite("fbn_v3_conv_nhwc", "tf2", "fuse", verify=False)
    assert tf2.op_changes() == {} and tf2.batch_norms[0].action == "skip"
    _, tf1 = _rewrite("fbn_v3_conv_nhwc", "tf1", "fuse")
    assert tf1.op_changes() == {"FusedBatchNorm": (0, 1), "FusedBatchNormV3": (1, 0)}
    assert _verified(tf1)


def test_tf1_half_precision_becomes_mul_add():
    """TF 1.x's FusedBatchNorm is float32 only: an fp16 batch norm is scaled and shifted."""
    new, report = _rewrite("fbn_v3_half", "tf1", "fuse")
    assert _verified(report)
    changes = report.op_changes()
    assert {op: changes[op] for op in ("Add", "Mul", "FusedBatchNormV3")} == {
        "Add": (0, 1), "Mul": (0, 1), "FusedBatchNormV3": (1, 0)}
    assert "FusedBatchNorm" not in report.ops_after


def test_tf1_training_statistics_in_one_fused_batch_norm():
    new, report = _rewrite("train_moments_conv_bn", "tf1")
    assert _verified(report)
    (fused,) = [node for node in new.node if node.op == "FusedBatchNorm"]
    assert fused.attr["is_training"].b and set(fused.attr) == TF1_ATTRS
    assert "FusedBatchNormV3" not in report.ops_after


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="target must be one of"):
        _rewrite("convert_legacy", "tf3", verify=False)


def test_cli_reports_the_target(tmp_path, capsys):
    out = tmp_path / "out.pb"
    assert main(["rewrite", str(fixture_path("convert_legacy")), "-o", str(out), "--target", "tf1",
                 "--no-verify", "--format", "json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "tf1"
    assert main(["rewrite", str(fixture_path("convert_legacy")), "-o", str(out), "--no-verify", "-q"]) == 0
    assert "target tf2" in capsys.readouterr().out


def test_cli_folder_rewrite_takes_the_target(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "convert_legacy.pb").write_bytes(fixture_path("convert_legacy").read_bytes())
    assert main(["rewrite", str(source), "-o", str(tmp_path / "out"), "--target", "tf1", "--no-verify",
                 "-q", "-j", "1"]) == 0
    ops = {node.op for node in bnrewrite.load_graph(tmp_path / "out" / "convert_legacy.pb").node}
    assert "FusedBatchNorm" in ops and not {"FusedBatchNormV2", "FusedBatchNormV3",
                                            "BatchNormWithGlobalNormalization"} & ops


# V3 kept under tf2 but made V1 under tf1, and V1 fused under tf2 but kept under tf1.
TARGET_DEPENDENT = {"trap_host_other_consumer_v3": {"tf2": "skip", "tf1": "fuse"},
                    "fwd_trap_same_padding": {"tf2": "fuse", "tf1": "skip"}}


@pytest.mark.parametrize("name", ["convert_legacy", *TARGET_DEPENDENT])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_audit_for_a_target_says_what_its_rewrite_does(name, target, capsys):
    """`audit --target T` plans for the same destination as `rewrite --target T`."""
    graph = bnrewrite.load_graph(fixture_path(name))
    said = [(e.output, e.action, e.reason) for e in bnrewrite.audit(graph, target=target).batch_norms]
    _, report = _rewrite(name, target, verify=False)
    assert said == [(e.output, e.action, e.reason) for e in report.batch_norms]
    if target in TARGET_DEPENDENT.get(name, {}):
        assert [action for _, action, _ in said] == [TARGET_DEPENDENT[name][target]]
    assert main(["audit", str(fixture_path(name)), "--target", target, "--format", "json"]) == 0
    assert [(e["output"], e["action"], e["reason"]) for e in json.loads(capsys.readouterr().out)["batch_norms"]] \
        == said
