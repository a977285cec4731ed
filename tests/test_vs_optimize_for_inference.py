"""TensorFlow's optimize_for_inference_lib is what bnrewrite replaces (DESIGN §2): wherever
it folds a batch norm and the result still computes the same outputs, bnrewrite folds that
batch norm too; wherever it fails (raises, changes outputs, writes a graph that will not
run), bnrewrite's result still verifies (checked for every fixture in test_rewrite.py)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

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


@pytest.mark.parametrize("name", CASES)
def test_where_tensorflow_folds_we_fold(name):
    want = expected(name)
    graph = bnrewrite.load_graph(fixture_path(name))
    try:
        theirs = optimize_for_inference(graph, want)
    except Exception:  # noqa: BLE001 - the baseline failing is a result, not an error here
        return
    values = {n.name: np.array(False) for n in graph.node
              if n.op == "Placeholder" and n.attr["dtype"].type == 10}
    try:
        correct = bnrewrite.verify(graph, theirs, Options(outputs=want["outputs"], values=values)).passed
    except bnrewrite.BnRewriteError:
        correct = False
    still_there = {entry.output for entry in bnrewrite.audit(theirs).batch_norms}
    folded_by_them = {bn["output"] for bn in want["batch_norms"]} - still_there if correct else set()
    _, ours = bnrewrite.rewrite(graph)
    ours_folded = {entry.output for entry in ours.batch_norms if entry.action == "fold"}
    training = {bn["output"] for bn in want["batch_norms"] if bn["training"]}
    # A moments subgraph TF leaves as arithmetic is not folded; ours fuses it instead.
    assert folded_by_them - training <= ours_folded
