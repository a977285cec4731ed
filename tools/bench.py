"""Benchmarks, reported as ratios against baselines measured in the same run.

    python tools/bench.py [--repeat 7] [--only audit|rewrite]

audit: cold `bnrewrite audit` (a new process each time, as a user runs it) on a
generated 1,000-node graph and on the real graphs in ../shared/realgraphs, against
the floor of a new Python process that only parses and re-serializes the same file
with the same protobuf classes, and against a process that only imports TensorFlow
(what any TF-based tool pays before it starts).

rewrite: in one process, on each real graph, bnrewrite.rewrite (no verification)
against TensorFlow's optimize_for_inference_lib.optimize_for_inference and the
in-process protobuf parse+serialize floor; with the batch-norm ops each leaves and
whether each result still computes the original's outputs (checked with
bnrewrite.verify). Medians of --repeat runs; no assertions: these machines are
shared and noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALGRAPHS = ROOT.parent / "shared" / "realgraphs"
sys.path.insert(0, str(ROOT))

from bnrewrite import save_graph  # noqa: E402
from bnrewrite.nodes import set_attrs  # noqa: E402
from tensorboard.compat.proto import graph_pb2, types_pb2  # noqa: E402

FLOOR = ("import sys; from tensorboard.compat.proto import graph_pb2; g = graph_pb2.GraphDef(); "
         "g.ParseFromString(open(sys.argv[1], 'rb').read()); g.SerializeToString(deterministic=True)")


def synthetic_graph(blocks: int = 91, channels: int = 16) -> graph_pb2.GraphDef:
    """Conv2D -> BiasAdd -> FusedBatchNorm -> Identity -> Relu, `blocks` times: 11 nodes a block."""
    rng = np.random.default_rng(0)
    graph = graph_pb2.GraphDef()

    def node(name, op, *inputs, **attrs):
        set_attrs(graph.node.add(name=name, op=op, input=list(inputs)), **attrs)

    node("input", "Placeholder", dtype=types_pb2.DT_FLOAT)
    previous = "input"
    for b in range(blocks):
        p = f"block{b}"
        node(f"{p}/w", "Const", value=rng.normal(size=(3, 3, channels, channels)).astype(np.float32),
             dtype=types_pb2.DT_FLOAT)
        node(f"{p}/conv", "Conv2D", previous, f"{p}/w", T=types_pb2.DT_FLOAT, padding="SAME",
             data_format="NHWC")
        node(f"{p}/b", "Const", value=rng.normal(size=channels).astype(np.float32), dtype=types_pb2.DT_FLOAT)
        node(f"{p}/biased", "BiasAdd", f"{p}/conv", f"{p}/b", T=types_pb2.DT_FLOAT, data_format="NHWC")
        for role in ("gamma", "beta", "mean", "variance"):
            value = rng.uniform(0.5, 2.0, channels).astype(np.float32)
            node(f"{p}/{role}", "Const", value=value, dtype=types_pb2.DT_FLOAT)
        node(f"{p}/bn", "FusedBatchNorm", f"{p}/biased", f"{p}/gamma", f"{p}/beta", f"{p}/mean",
             f"{p}/variance", T=types_pb2.DT_FLOAT, epsilon=0.001, is_training=False, data_format="NHWC")
        node(f"{p}/identity", "Identity", f"{p}/bn", T=types_pb2.DT_FLOAT)
        node(f"{p}/relu", "Relu", f"{p}/identity", T=types_pb2.DT_FLOAT)
        previous = f"{p}/relu"
    return graph


def timed(argv: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def in_process(call, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_rewrite(repeat: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.tools import optimize_for_inference_lib as ofi

    import bnrewrite
    from bnrewrite.index import GraphIndex
    sys.path.insert(0, str(ROOT / "tests"))
    from test_realgraphs_rewrite import CASES  # the feeds each real graph needs

    tf.get_logger().setLevel("ERROR")
    print(f"\n{'graph':30} {'nodes':>5} {'ours s':>7} {'OFI s':>7} {'floor s':>8} {'ours/OFI':>8} "
          f"{'ours/floor':>10} {'BN left ours/OFI':>16} {'outputs ours/OFI':>16}")
    for path in sorted(REALGRAPHS.glob("*.pb")):
        data = path.read_bytes()
        graph = tf.compat.v1.GraphDef.FromString(data)
        index = GraphIndex(bnrewrite.load_graph(path))
        inputs, outputs = index.inferred_inputs(), index.inferred_outputs()
        dtypes = [index.nodes[name].attr["dtype"].type for name in inputs] or [types_pb2.DT_FLOAT]

        def theirs():
            with contextlib.redirect_stdout(io.StringIO()):  # it prints warnings per node
                return ofi.optimize_for_inference(graph, inputs, outputs, dtypes if len(dtypes) > 1 else dtypes[0])

        def floor():
            graph_pb2.GraphDef.FromString(data).SerializeToString(deterministic=True)

        ours_s = in_process(lambda: bnrewrite.rewrite(graph), repeat)
        ofi_s = in_process(theirs, repeat)
        floor_s = in_process(floor, repeat)
        options = bnrewrite.VerifyOptions(**CASES[path.name][0])
        left, ok = [], []
        for result in (bnrewrite.rewrite(graph)[0], theirs()):
            left.append(bnrewrite.audit(result).summary()["batch_norms"])
            try:
                ok.append("same" if bnrewrite.verify(graph, result, options).passed else "DIFFER")
            except bnrewrite.BnRewriteError as error:
                ok.append("cannot run: " + str(error)[:20])
        print(f"{path.name:30} {len(graph.node):5} {ours_s:7.3f} {ofi_s:7.3f} {floor_s:8.4f} "
              f"{ours_s / ofi_s:8.2f} {ours_s / floor_s:10.1f} {left[0]:>8}/{left[1]:<7} "
              f"{ok[0]:>8}/{ok[1]}")


def compare_catalogue() -> None:
    """What optimize_for_inference does with each catalogue fixture, next to bnrewrite."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.tools import optimize_for_inference_lib as ofi

    import bnrewrite
    tf.get_logger().setLevel("ERROR")
    print(f"\n{'fixture':32} {'BNs':>3}  {'bnrewrite':24} optimize_for_inference")
    for sidecar in sorted((ROOT / "fixtures").glob("*.expected.json")):
        name = sidecar.name.removesuffix(".expected.json")
        path = next(p for p in (ROOT / "fixtures").glob(name + ".pb*"))
        expected = json.loads(sidecar.read_text())
        graph = bnrewrite.load_graph(path)
        values = {n.name: np.array(False) for n in graph.node
                  if n.op == "Placeholder" and n.attr["dtype"].type == types_pb2.DT_BOOL}
        options = bnrewrite.VerifyOptions(outputs=expected["outputs"], values=values)
        tf_graph = tf.compat.v1.GraphDef.FromString(graph.SerializeToString())
        dtypes = [n.attr["dtype"].type for n in graph.node if n.name in expected["inputs"]]
        row = []
        for make in (lambda: bnrewrite.rewrite(graph)[0],
                     lambda: ofi.optimize_for_inference(tf_graph, expected["inputs"], expected["outputs"],
                                                        dtypes or types_pb2.DT_FLOAT)):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    result = make()
            except Exception as error:  # what the baseline raises is part of the finding
                row.append(f"raises {type(error).__name__}")
                continue
            left = bnrewrite.audit(result).summary()["batch_norms"]  # in any form, by our catalogue
            try:
                same = bnrewrite.verify(graph, result, options).passed
                row.append(f"{'same' if same else 'DIFFERENT'} outputs, {left} BN left")
            except bnrewrite.BnRewriteError as error:
                row.append(f"does not run ({str(error)[27:70]})")
        print(f"{name:32} {len(expected['batch_norms']):3}  {row[0]:24} {row[1]}")


def bench_audit(repeat: int) -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synthetic_1000.pb"
        graph = synthetic_graph()
        save_graph(graph, synthetic)
        cases = [(f"synthetic ({len(graph.node)} nodes)", synthetic)]
        cases += [(p.name, p) for p in sorted(REALGRAPHS.glob("*.pb"))]
        tf_import = timed([py, "-c", "import tensorflow"], max(1, repeat // 3))
        print(f"import tensorflow alone: {tf_import:.3f} s")
        print(f"{'graph':34} {'audit s':>8} {'floor s':>8} {'audit/floor':>11} {'audit/import tf':>15}")
        for label, path in cases:
            audit = timed([py, "-m", "bnrewrite", "audit", str(path)], repeat)
            floor = timed([py, "-c", FLOOR, str(path)], repeat)
            print(f"{label:34} {audit:8.3f} {floor:8.3f} {audit / floor:11.2f} {audit / tf_import:15.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=("audit", "rewrite"))
    args = parser.parse_args()
    if args.only != "rewrite":
        bench_audit(args.repeat)
    if args.only != "audit":
        bench_rewrite(args.repeat)
        compare_catalogue()


if __name__ == "__main__":
    main()
