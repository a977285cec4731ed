"""Benchmarks, reported as ratios against baselines measured in the same run.

    python tools/bench.py [--repeat 7]

audit: cold `bnrewrite audit` (a new process each time, as a user runs it) on a
generated 1,000-node graph and on the real graphs in ../shared/realgraphs, against
the floor of a new Python process that only parses and re-serializes the same file
with the same protobuf classes, and against a process that only imports TensorFlow
(what any TF-based tool pays before it starts). Medians of --repeat runs; no
assertions: these machines are shared and noisy.
"""
from __future__ import annotations

import argparse
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
from bnrewrite.tensors import to_proto  # noqa: E402
from tensorboard.compat.proto import graph_pb2, types_pb2  # noqa: E402

FLOOR = ("import sys; from tensorboard.compat.proto import graph_pb2; g = graph_pb2.GraphDef(); "
         "g.ParseFromString(open(sys.argv[1], 'rb').read()); g.SerializeToString(deterministic=True)")


def synthetic_graph(blocks: int = 91, channels: int = 16) -> graph_pb2.GraphDef:
    """Conv2D -> BiasAdd -> FusedBatchNorm -> Identity -> Relu, `blocks` times: 11 nodes a block."""
    rng = np.random.default_rng(0)
    graph = graph_pb2.GraphDef()

    def node(name, op, *inputs, **attrs):
        n = graph.node.add(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            if isinstance(value, np.ndarray):
                n.attr[key].tensor.CopyFrom(to_proto(value))
            elif isinstance(value, bytes):
                n.attr[key].s = value
            elif isinstance(value, float):
                n.attr[key].f = value
            elif isinstance(value, bool):
                n.attr[key].b = value
            else:
                n.attr[key].type = value

    node("input", "Placeholder", dtype=types_pb2.DT_FLOAT)
    previous = "input"
    for b in range(blocks):
        p = f"block{b}"
        node(f"{p}/w", "Const", value=rng.normal(size=(3, 3, channels, channels)).astype(np.float32),
             dtype=types_pb2.DT_FLOAT)
        node(f"{p}/conv", "Conv2D", previous, f"{p}/w", T=types_pb2.DT_FLOAT, padding=b"SAME",
             data_format=b"NHWC")
        node(f"{p}/b", "Const", value=rng.normal(size=channels).astype(np.float32), dtype=types_pb2.DT_FLOAT)
        node(f"{p}/biased", "BiasAdd", f"{p}/conv", f"{p}/b", T=types_pb2.DT_FLOAT, data_format=b"NHWC")
        for role in ("gamma", "beta", "mean", "variance"):
            value = rng.uniform(0.5, 2.0, channels).astype(np.float32)
            node(f"{p}/{role}", "Const", value=value, dtype=types_pb2.DT_FLOAT)
        node(f"{p}/bn", "FusedBatchNorm", f"{p}/biased", f"{p}/gamma", f"{p}/beta", f"{p}/mean",
             f"{p}/variance", T=types_pb2.DT_FLOAT, epsilon=0.001, is_training=False, data_format=b"NHWC")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synthetic_1000.pb"
        graph = synthetic_graph()
        save_graph(graph, synthetic)
        cases = [(f"synthetic ({len(graph.node)} nodes)", synthetic)]
        cases += [(p.name, p) for p in sorted(REALGRAPHS.glob("*.pb"))]
        tf_import = timed([py, "-c", "import tensorflow"], max(1, args.repeat // 3))
        print(f"import tensorflow alone: {tf_import:.3f} s")
        print(f"{'graph':34} {'audit s':>8} {'floor s':>8} {'audit/floor':>11} {'audit/import tf':>15}")
        for label, path in cases:
            audit = timed([py, "-m", "bnrewrite", "audit", str(path)], args.repeat)
            floor = timed([py, "-c", FLOOR, str(path)], args.repeat)
            print(f"{label:34} {audit:8.3f} {floor:8.3f} {audit / floor:11.2f} {audit / tf_import:15.3f}")


if __name__ == "__main__":
    main()
