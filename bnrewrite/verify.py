"""Run two graphs on the same seeded inputs and compare every output.

The only module that imports TensorFlow, and only when a check runs (DESIGN §6).
Tolerances (DESIGN §5): an output matches when max|a - b| <= atol + rtol * scale,
scale being the largest finite magnitude of the original output; NaN must sit at
the same positions and infinities must be equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from . import graphio, names, tensors
from .errors import InvalidGraphError
from .index import GraphIndex

# dtype -> (rtol, atol): float16 holds ~3 significant digits and every op rounds.
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-9, 1e-12),
              np.dtype(np.float16): (2e-2, 1e-3)}
DEFAULT_BATCH = 2


@dataclass(frozen=True)
class OutputCheck:
    name: str
    dtype: str
    max_abs: float
    max_rel: float  # max_abs relative to the original output's scale
    rtol: float
    atol: float
    passed: bool
    problem: str | None = None  # shape, NaN or Inf disagreement


@dataclass
class Verification:
    inputs: dict[str, list[int]]
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.outputs)


def make_feeds(graph_def: Any, inputs: Sequence[str] = (), batch: int = DEFAULT_BATCH,
               shapes: Mapping[str, Sequence[int]] | None = None,
               values: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every placeholder: random normal floats, small ints;
    unknown dimensions become `batch`. Bools and strings must come from `values`."""
    index = GraphIndex(graphio.to_internal(graph_def))
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    wanted = list(inputs) or [n for n in index.inferred_inputs() if index.nodes[n].op != "PlaceholderWithDefault"]
    for name in wanted:
        node = index.node(name)
        if node is None:
            raise InvalidGraphError(f"input '{name}' is not in the graph")
        if values and name in values:
            feeds[name] = np.asarray(values[name])
            continue
        dtype = tensors.numpy_dtype(node.attr["dtype"].type)
        shape = (shapes or {}).get(name)
        if shape is None:
            dims = tensors.shape_of(node.attr["shape"].shape) if "shape" in node.attr else None
            if dims is None:
                raise InvalidGraphError(f"input '{name}' has no known rank: give its shape")
            shape = [d if d >= 0 else batch for d in dims]
        if dtype is None or dtype == np.bool_:
            raise InvalidGraphError(f"input '{name}' ({'bool' if dtype == np.bool_ else 'non-numeric'}) "
                                    "cannot be filled automatically: feed it a value")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def run(graph_def: Any, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
    """Import into a fresh TensorFlow graph and run it on the CPU."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(graphio.to_internal(graph_def).SerializeToString())
    with tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(graph, name="")
        with tf.compat.v1.Session(graph=tf_graph) as session:
            fetch = [tf_graph.get_tensor_by_name(_tensor(name)) for name in fetches]
            feed = {tf_graph.get_tensor_by_name(_tensor(k)): v for k, v in feeds.items()}
            return session.run(fetch, feed)


def compare(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float | None = None,
            atol: float | None = None) -> OutputCheck:
    expected, actual = np.asarray(expected), np.asarray(actual)
    default_rtol, default_atol = TOLERANCES.get(expected.dtype, (0.0, 0.0))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    label = str(expected.dtype)

    def fail(problem: str) -> OutputCheck:
        return OutputCheck(name, label, float("inf"), float("inf"), rtol, atol, False, problem)

    if expected.shape != actual.shape:
        return fail(f"shape {actual.shape} != {expected.shape}")
    if not np.issubdtype(expected.dtype, np.number) or not np.issubdtype(expected.dtype, np.inexact):
        equal = bool(np.array_equal(expected, actual))
        return OutputCheck(name, label, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"),
                           rtol, atol, equal, None if equal else "values differ")
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return fail("NaN at different positions")
    if not np.array_equal(np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0)):
        return fail("infinities differ")
    finite = np.isfinite(a)
    diff = np.abs(a - b)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputCheck(name, label, max_abs, max_rel, rtol, atol, max_abs <= atol + rtol * scale)


def verify(original: Any, rewritten: Any, outputs: Sequence[str] = (), inputs: Sequence[str] = (),
           feeds: Mapping[str, np.ndarray] | None = None, rtol: float | None = None,
           atol: float | None = None, **feed_options: Any) -> Verification:
    """Run both graphs on the same inputs and compare each output."""
    index = GraphIndex(graphio.to_internal(original))
    fetches = list(outputs) or index.inferred_outputs()
    feeds = dict(feeds) if feeds is not None else make_feeds(original, inputs, **feed_options)
    expected = run(original, feeds, fetches)
    actual = run(rewritten, feeds, fetches)
    result = Verification({k: list(v.shape) for k, v in feeds.items()})
    result.outputs = [compare(name, e, a, rtol, atol) for name, e, a in zip(fetches, expected, actual)]
    return result


def _tensor(name: str) -> str:
    ref = names.parse(name)
    return f"{ref.node}:{ref.index}"
