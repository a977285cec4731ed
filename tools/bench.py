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

scale: seeded generated graphs of about 1k, 10k and 50k nodes (tools/workload.py: every
form and host, incl. forward-fold and plain scale-and-shift blocks): rewrite --no-verify
as a library call and as a CLI process (with its peak RSS), and cold audit, against
optimize_for_inference's fuse_decomposed_batch_norm + fold_batch_norms in-process and
the parse+serialize floor; growth time(50k)/time(10k); cold audit of the 1k graph against
a process that only imports numpy and the protos and parses the file; and verification's
cost against one TensorFlow start plus three graph runs (original, rewrite, calibration).

zoo: a folder of 200 small generated graphs, `rewrite DIR -o OUT` (verified) and
`audit DIR` with --jobs 1 and 2.
"""
from __future__ import annotations

import argparse
import compileall
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
sys.path.insert(0, str(ROOT / "tools"))

from bnrewrite import save_graph  # noqa: E402
from bnrewrite.nodes import set_attrs  # noqa: E402
from tensorboard.compat.proto import graph_pb2, types_pb2  # noqa: E402

import workload  # noqa: E402

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
    return timed_rss(argv, repeat)[0]


# Run a command from a small process, so its peak RSS is its own and not that of a fork
# of this one (which holds TensorFlow by the time the scale benchmark runs).
MEASURE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
           "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, code)")


def timed_rss(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall time (s) and largest peak RSS (MB) of a command run `repeat` times."""
    samples, peak = [], 0.0
    for _ in range(repeat):
        result = subprocess.run([sys.executable, "-c", MEASURE, *argv], check=True, capture_output=True, text=True)
        seconds, rss, code = result.stdout.split()
        if int(code) not in (0, 1):
            raise RuntimeError(f"{' '.join(argv)} exited {code}: {result.stderr[-500:]}")
        samples.append(float(seconds))
        peak = max(peak, float(rss))
    return statistics.median(samples), peak


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


PARSE_ONLY = ("import sys, numpy; from tensorboard.compat.proto import graph_pb2; "
              "graph_pb2.GraphDef().ParseFromString(open(sys.argv[1], 'rb').read())")
RUN_GRAPH = """
import os, sys, time, statistics, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
data, times = open(sys.argv[1], "rb").read(), []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    with tf.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(data), name="")
        with tf.compat.v1.Session(graph=g) as session:
            session.run("out:0", {"x:0": np.random.default_rng(0).standard_normal((2, 16, 16, 8), np.float32)})
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def bench_scale(repeat: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.tools import optimize_for_inference_lib as ofi

    import bnrewrite
    tf.get_logger().setLevel("ERROR")
    py, cli = sys.executable, [sys.executable, "-m", "bnrewrite"]
    print(f"\n{'graph':12} {'nodes':>6} {'floor s':>8} {'OFI s':>7} {'lib s':>7} {'CLI s':>7} {'lib/OFI':>7} "
          f"{'CLI/OFI':>7} {'CLI/floor':>9} {'CLI MB':>6} {'audit s':>7}")
    cli_times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in (1000, 10000, 50000):
            graph = workload.chain(workload.blocks_for(target))
            path, out = Path(tmp) / f"chain{target}.pb", Path(tmp) / "out.pb"
            save_graph(graph, path)
            data = path.read_bytes()
            tf_graph = tf.compat.v1.GraphDef.FromString(data)
            runs = max(1, repeat if target < 50000 else repeat // 2)
            floor = in_process(lambda: graph_pb2.GraphDef.FromString(data).SerializeToString(deterministic=True), runs)
            with contextlib.redirect_stdout(io.StringIO()):
                theirs = in_process(lambda: ofi.fold_batch_norms(ofi.fuse_decomposed_batch_norm(tf_graph)), runs)
            lib = in_process(lambda: bnrewrite.rewrite(graph), runs)
            run_cli, rss = timed_rss([*cli, "rewrite", str(path), "-o", str(out), "--no-verify"], runs)
            audit = timed([*cli, "audit", str(path)], runs)
            cli_times[target] = (lib, run_cli)
            print(f"{'chain':12} {len(graph.node):6} {floor:8.3f} {theirs:7.3f} {lib:7.3f} {run_cli:7.3f} "
                  f"{lib / theirs:7.2f} {run_cli / theirs:7.2f} {run_cli / floor:9.1f} {rss:6.0f} {audit:7.3f}")
            if target == 1000:
                parse_only = timed([py, "-c", PARSE_ONLY, str(path)], repeat)
                cold_audit = timed([*cli, "audit", str(path)], repeat)
                verified = timed([*cli, "rewrite", str(path), "-o", str(out)], max(1, repeat // 2))
                no_verify = timed([*cli, "rewrite", str(path), "-o", str(out), "--no-verify"], repeat)
                tf_start = timed([py, "-c", "import tensorflow"], max(1, repeat // 2))
                one_run = float(subprocess.run([py, "-c", RUN_GRAPH, str(path), str(repeat)], check=True,
                                               capture_output=True, text=True).stdout)
                budget = tf_start + 3 * one_run
        print(f"growth 50k/10k: library {cli_times[50000][0] / cli_times[10000][0]:.2f}x, "
              f"CLI {cli_times[50000][1] / cli_times[10000][1]:.2f}x (nodes: 5x)")
        print(f"cold audit of the 1k graph: {cold_audit:.3f} s = {cold_audit / parse_only:.2f}x a process that "
              f"imports numpy and the protos and parses it ({parse_only:.3f} s)")
        print(f"verification of the 1k graph: {verified - no_verify:.2f} s = {(verified - no_verify) / budget:.2f}x "
              f"one TensorFlow start ({tf_start:.2f} s) + 3 graph runs ({one_run:.3f} s each)")


def bench_zoo(count: int = 200) -> None:
    cli = [sys.executable, "-m", "bnrewrite"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "zoo"
        workload.zoo(folder, count)
        print(f"\nzoo of {count} generated graphs ({sum(1 for _ in folder.rglob('*.pb'))} files):")
        for jobs in (1, 2):
            audit = timed([*cli, "audit", str(folder), "--jobs", str(jobs)], 3)
            rewrite = timed([*cli, "rewrite", str(folder), "-o", str(Path(tmp) / f"out{jobs}"), "--jobs",
                             str(jobs), "-q"], 1)
            print(f"  --jobs {jobs}: rewrite+verify {rewrite:6.1f} s ({count / rewrite:5.1f} graphs/s), "
                  f"audit {audit:5.2f} s ({count / audit:6.1f} graphs/s)")


def cache_bytecode() -> None:
    """Cold starts are timed as users have them: with bnrewrite's bytecode cached, as pip
    writes it at install. A checkout run with PYTHONDONTWRITEBYTECODE=1 (as on the
    machines here) would compile every module in every process: 40-65 ms of each cold
    audit of the 1k-node graph (0.25-0.35 s here)."""
    compileall.compile_dir(str(ROOT / "bnrewrite"), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=("audit", "rewrite", "scale", "zoo"))
    args = parser.parse_args()
    sections = {"audit": lambda: bench_audit(args.repeat),
                "rewrite": lambda: (bench_rewrite(args.repeat), compare_catalogue()),
                "scale": lambda: bench_scale(args.repeat), "zoo": bench_zoo}
    cache_bytecode()
    for name, section in sections.items():
        if args.only in (None, name):
            section()


if __name__ == "__main__":
    main()
