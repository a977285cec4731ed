"""The converter round trip (README "Converters"): fixtures/convert_legacy holds a
FusedBatchNormV2 and a BatchNormWithGlobalNormalization that cannot fold. tf2onnx writes an
invalid model of it, the TFLite converter and OpenVINO refuse it; rewritten for each
converter's --target, the converter accepts it and its runtime (onnxruntime, the TFLite
interpreter, OpenVINO's CPU plugin) matches TensorFlow within tools/converters.TOLERANCE.
Skipped, saying which, where a converter is not installed; `.ci/run` installs them all."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import bnrewrite
from conftest import fixture_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import converters  # noqa: E402

NEEDS = {"tf2onnx": ("tf2onnx", "onnxruntime"), "tflite": ("tensorflow",), "openvino": ("openvino",)}
# What each converter does with the original, measured (tf2onnx 1.17, TF 2.21, OpenVINO 2026.4).
BEFORE = {
    "tf2onnx": ("invalid", "BatchNormWithGlobalNormalization"),  # onnxruntime: INVALID_GRAPH
    "tflite": ("refused", "'tf.FusedBatchNormV2' op is neither a custom op nor a flex op"),
    "openvino": ("refused", "No conversion rule found for operations: BatchNormWithGlobalNormalization"),
}


def _need(converter: str) -> None:
    missing = [m for m in NEEDS[converter] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[dev]' installs it)")


@pytest.mark.parametrize("converter", sorted(converters.TARGET))
def test_the_original_does_not_convert(converter):
    _need(converter)
    result = converters.check(converter, fixture_path("convert_legacy"))
    status, words = BEFORE[converter]
    assert result["status"] == status, result
    assert words in result["detail"], result


@pytest.mark.parametrize("converter", sorted(converters.TARGET))
def test_rewritten_for_its_target_converts_and_matches(converter, tmp_path):
    _need(converter)
    target = converters.TARGET[converter]
    new, report = bnrewrite.rewrite(bnrewrite.load_graph(fixture_path("convert_legacy")), target=target)
    assert report.target == target
    assert {e.action for e in report.batch_norms} == {"fuse"}
    assert not {"BatchNormWithGlobalNormalization", "FusedBatchNormV2"} & set(report.ops_after)
    path = tmp_path / "convert_legacy.pb"
    bnrewrite.save_graph(new, path)
    result = converters.check(converter, path)
    assert result["status"] == "ok", result
    assert result["error"] <= converters.TOLERANCE


@pytest.mark.parametrize("converter", sorted(converters.TARGET))
def test_the_tool_never_runs_a_graph_with_side_effects(converter, tmp_path):
    """Converting a graph and running it in TensorFlow runs it: a WriteFile graph is refused
    before any converter or TensorFlow sees it (no converter needed to prove that)."""
    graph = Path(__file__).resolve().parent.parent / "fixtures" / "hostile" / "hostile_write_file.pb"
    result = converters.check(converter, graph)
    assert result["status"] == "unsafe" and "WriteFile" in result["detail"], result
