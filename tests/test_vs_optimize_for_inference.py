"""TensorFlow's optimize_for_inference_lib is what bnrewrite replaces (DESIGN §2): wherever
it folds a batch norm and the result still computes the same outputs, bnrewrite folds that
batch norm too; wherever it fails (raises, changes outputs, writes a graph that will not
run), bnrewrite's result still verifies (checked for every fixture in test_rewrite.py)."""
from __future__ import annotations

import contextlib
import io

import numpy as np

import bnrewrite
from bnrewrite.verify import Options
from conftest import expected, fixture_cases, fixture_path

CASES = [name for name in fixture_cases() if expected(name)["batch_norms"]]


def optimize_for_inference(graph, want):
    import tensorflow as tf
    from tensorflow.python.tools import optimize_for_inference_lib

    tf.get_logger().setLevel("ERROR")
    tf_graph = tf.compat.v1.GraphDef.FromString(graph.SerializeToString())
    dtypes = [n.attr["dtype"].type for n in graph.node if n.name in want["inputs"]] or [1]
    with contextlib.redirect_stdout(io.StringIO()):
        return optimize_for_inference_lib.optimize_for_inference(
            tf_graph, want["inputs"], want["outputs"], dtypes if len(dtypes) > 1 else dtypes[0])


def _compare(name: str) -> tuple[str, set[str], set[str]]:
    """(what happened to TF's attempt, batch norms it folded correctly, batch norms we
    fold that it also folded)."""
    want = expected(name)
    graph = bnrewrite.load_graph(fixture_path(name))
    try:
        theirs = optimize_for_inference(graph, want)
    except Exception:  # noqa: BLE001 - the baseline failing is a result, not an error here
        return "raises", set(), set()
    values = {n.name: np.array(False) for n in graph.node
              if n.op == "Placeholder" and n.attr["dtype"].type == 10}
    try:
        correct = bnrewrite.verify(graph, theirs, Options(outputs=want["outputs"], values=values)).passed
    except bnrewrite.BnRewriteError:
        return "will not run", set(), set()
    if not correct:
        return "changes outputs", set(), set()
    still_there = {entry.output for entry in bnrewrite.audit(theirs).batch_norms}
    training = {bn["output"] for bn in want["batch_norms"] if bn["training"]}
    # A moments subgraph TF leaves as arithmetic is not folded; ours fuses it instead.
    folded_by_them = {bn["output"] for bn in want["batch_norms"]} - still_there - training
    _, ours = bnrewrite.rewrite(graph)
    return "correct", folded_by_them, {e.output for e in ours.batch_norms if e.action == "fold"} & folded_by_them


# Measured (TF 2.21): of the fixtures with batch norms, TF's result runs and keeps the
# outputs on these many, and on them folds these many batch norms.
CORRECT_GRAPHS, FOLDED_BY_TF = 78, 13


def test_where_tensorflow_folds_we_fold():
    results = {name: _compare(name) for name in CASES}
    correct = [name for name, (outcome, _, _) in results.items() if outcome == "correct"]
    folded = sum(len(theirs) for _, theirs, _ in results.values())
    assert (len(correct), folded) == (CORRECT_GRAPHS, FOLDED_BY_TF), \
        {name: outcome for name, (outcome, _, _) in results.items()}
    missed = {name: theirs - ours for name, (_, theirs, ours) in results.items() if theirs - ours}
    assert not missed, missed
