"""Do tf2onnx, the TFLite converter and OpenVINO accept a frozen graph, and does what they
make compute what TensorFlow computes? Before and after `bnrewrite rewrite --target`.

    python tools/converters.py [--timeout 120] [GRAPH ...]

prints one row per graph (default: the real graphs of ../shared/realgraphs), a cell per
converter, `before -> after`: `ok` (converted, ran, every output within TOLERANCE of
TensorFlow's; the number is the largest difference, of the output's scale), `wrong`
(converted, ran, an output differs), `refused` (the converter raised), `invalid` (it wrote a
model its own runtime cannot load or run), `converted` (not run: an input that cannot be
filled at random), `unsafe` (not run: side-effect ops, bnrewrite's safety check), `timeout`;
numbered notes say why. Each conversion runs in a child
process, time-boxed. `after` is the graph rewritten (fold mode, unverified) for the
converter's target: onnx for tf2onnx, tflite for TFLite, tf2 (the default) for OpenVINO,
whose reader takes FusedBatchNormV3. tests/test_converters.py imports `check` and `TARGET`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bnrewrite import CannotVerifyError, UnsafeGraphError, load_graph, rewrite, save_graph  # noqa: E402
from bnrewrite.feeds import make_feeds  # noqa: E402
from bnrewrite.index import GraphIndex  # noqa: E402
from bnrewrite.verify import Options, check_safe  # noqa: E402

REALGRAPHS = Path(__file__).resolve().parent.parent.parent / "shared" / "realgraphs"
# Converters reorder the arithmetic (and fuse ops differently): an error within this fraction
# of the output's scale (its largest finite magnitude, at least 1) is rounding (float32; 8
# ulps of the output's dtype where that is coarser, for float16); a mistranslation is far above.
TOLERANCE = 1e-4
# What each converter's `after` graph is rewritten for (bnrewrite's --target).
TARGET = {"tf2onnx": "onnx", "tflite": "tflite", "openvino": "tf2"}
Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
Feeds = Mapping[str, np.ndarray]
# Words of the line of a converter's error that names the problem
TELLING = ("No conversion rule", "neither a custom op", "INVALID_GRAPH", "not supported")


class InvalidModel(Exception):
    """The converter wrote a model that its own runtime refuses."""


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    return tf


def _tf2onnx(pb: Path, inputs: Sequence[str], outputs: Sequence[str], feeds: Feeds) -> Runner:
    import onnxruntime
    import tf2onnx
    graph = _tf().compat.v1.GraphDef.FromString(pb.read_bytes())
    model, _ = tf2onnx.convert.from_graph_def(graph, input_names=[f"{n}:0" for n in inputs],
                                              output_names=[f"{n}:0" for n in outputs])
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # the model tf2onnx wrote does not load
        raise InvalidModel(str(error)) from None
    return lambda values: session.run([f"{n}:0" for n in outputs], {f"{n}:0": v for n, v in values.items()})


def _tflite(pb: Path, inputs: Sequence[str], outputs: Sequence[str], feeds: Feeds) -> Runner:
    tf = _tf()
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        str(pb), list(inputs), list(outputs), {n: list(feeds[n].shape) for n in inputs if n in feeds} or None)
    interpreter = tf.lite.Interpreter(model_content=converter.convert())

    def run(values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        interpreter.allocate_tensors()
        by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        for name, value in values.items():
            interpreter.set_tensor(by_name[name], value)
        interpreter.invoke()
        found = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        return [interpreter.get_tensor(found[name]) for name in outputs]
    return run


def _openvino(pb: Path, inputs: Sequence[str], outputs: Sequence[str], feeds: Feeds) -> Runner:
    import openvino
    model = openvino.convert_model(str(pb))
    if inputs:
        model.reshape({f"{n}:0": list(feeds[n].shape) for n in inputs})
    # f32: on a CPU with bf16 units the plugin would otherwise compute in bf16 (~1e-3 off)
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ports = [next(p for p in compiled.outputs if _names(p) & {n, f"{n}:0"}) for n in outputs]

    def run(values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = compiled({f"{n}:0": v for n, v in values.items()})
        return [np.asarray(result[port]) for port in ports]
    return run


def _names(port: Any) -> set[str]:
    return set(port.get_names())


CONVERTERS: dict[str, Callable[..., Runner]] = {"tf2onnx": _tf2onnx, "tflite": _tflite, "openvino": _openvino}


def reference(pb: Path, outputs: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs in TensorFlow, in this process (a tool: no worker needed)."""
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(pb.read_bytes()), name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run([f"{n}:0" for n in outputs], {f"{n}:0": v for n, v in feeds.items()})


def check(converter: str, path: Path, outputs: Sequence[str] = ()) -> dict[str, Any]:
    """Convert the frozen graph at `path`, run the result and TensorFlow on the same seeded
    feeds: {status, detail, error (max |difference| / output scale)}."""
    with tempfile.TemporaryDirectory() as folder:
        pb = Path(folder) / f"{path.stem}.pb"  # the converters read binary GraphDefs only
        save_graph(load_graph(path), pb)
        return _check(converter, pb, outputs)


def _check(converter: str, pb: Path, outputs: Sequence[str]) -> dict[str, Any]:
    graph = load_graph(pb)
    index = GraphIndex(graph)
    outputs = list(outputs) or index.inferred_outputs()
    try:  # converting a graph and running it in TensorFlow runs it: the same fence as verification
        check_safe(graph, outputs)
    except UnsafeGraphError as error:
        return {"status": "unsafe", "detail": str(error)[:200], "error": None}
    try:
        feeds = make_feeds(graph, Options())
    except CannotVerifyError as error:  # a string or bool input: nothing to compare on
        feeds = None
        why = str(error)
    try:
        run = CONVERTERS[converter](pb, list(feeds or index.inferred_inputs()), outputs, feeds or {})
    except InvalidModel as error:
        return {"status": "invalid", "detail": _line(error), "error": None}
    except Exception as error:
        return {"status": "refused", "detail": _line(error), "error": None}
    if feeds is None:
        return {"status": "converted", "detail": f"not run: {why}", "error": None}
    try:
        got = run(feeds)
    except Exception as error:
        return {"status": "invalid", "detail": _line(error), "error": None}
    expected = reference(pb, outputs, feeds)
    error = max(_relative(a, b) for a, b in zip(expected, got))
    tolerance = max([TOLERANCE] + [8 * float(np.finfo(a.dtype).eps) for a in expected
                                   if np.issubdtype(a.dtype, np.floating)])
    return {"status": "ok" if error <= tolerance else "wrong", "error": error,
            "detail": f"max difference {error:.2g} of the output's scale"}


def _relative(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |difference| over the output's scale; NaN must meet NaN, infinity the same infinity."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    finite = np.isfinite(expected)
    if expected.shape != actual.shape or np.any(np.where(finite, ~np.isfinite(actual), expected != actual)
                                                 & ~(np.isnan(expected) & np.isnan(actual))):
        return float("inf")
    diff = np.abs(expected - actual)[finite]
    return float(diff.max(initial=0) / max(np.abs(expected[finite]).max(initial=0), 1.0))


def _line(error: BaseException) -> str:
    """The line that names the problem: OpenVINO's starts with where its check failed."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip(" -")]
    named = [line for line in lines if any(word in line for word in TELLING)]
    text = (named or lines or [""])[0]
    return f"{type(error).__name__}: {text}"[:200]


def rewritten(pb: Path, target: str, folder: Path) -> Path:
    """`pb` rewritten (unverified) for `target`, written below `folder`."""
    out = folder / f"{pb.stem}.{target}.pb"
    save_graph(rewrite(load_graph(pb), target=target)[0], out)
    return out


def _child(converter: str, pb: Path, timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, __file__, "--one", converter, str(pb)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "detail": f"over {timeout:.0f} s", "error": None}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"status": "refused", "detail": f"crashed: {tail[0][:160]}", "error": None}
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="*", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per conversion")
    parser.add_argument("--one", nargs=2, metavar=("CONVERTER", "GRAPH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(check(args.one[0], Path(args.one[1]))))
        return 0
    graphs = args.graphs or sorted(p for p in REALGRAPHS.iterdir() if p.suffix in (".pb", ".pbtxt"))
    print("| graph | " + " | ".join(f"{c} (`--target {t}`)" for c, t in TARGET.items()) + " |")
    print("|---" * (len(TARGET) + 1) + "|")
    notes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for pb in graphs:
            cells = []
            for converter, target in TARGET.items():
                before = _child(converter, pb, args.timeout)
                after = _child(converter, rewritten(pb, target, Path(folder)), args.timeout)
                cells.append(" -> ".join(_cell(result, notes) for result in (before, after)))
            print(f"| `{pb.name}` | " + " | ".join(cells) + " |", flush=True)
    for detail, number in notes.items():
        print(f"\n[{number}] {detail}")
    return 0


def _cell(result: Mapping[str, Any], notes: dict[str, int]) -> str:
    """`ok 3e-07` (the largest difference, of the output's scale), else the status and a
    numbered note that says why."""
    if result["error"] is not None:
        return f"{result['status']} {result['error']:.1g}"
    number = notes.setdefault(result["detail"].replace("|", "/"), len(notes) + 1)
    return f"{result['status']} [{number}]"


if __name__ == "__main__":
    sys.exit(main())
