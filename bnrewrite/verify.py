"""Run two graphs on the same seeded inputs and compare every output.

TensorFlow runs in tfrun's worker process, started only when a check runs (DESIGN §6),
and only on graphs safety.py finds free of side effects, within a time and memory limit
(DESIGN §5), unless the caller trusts the graph.
Tolerances (DESIGN §5): an output matches when max|a - b| <= atol + rtol * scale,
scale being the largest finite magnitude of the original output; NaN must sit at
the same positions and infinities must be equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import graphio, safety, tensors, tfrun
from .errors import CannotVerifyError, UnsafeGraphError
from .index import GraphIndex

# dtype -> (rtol, atol): float16 holds ~3 significant digits and every op rounds.
# float16 folds measured here stay within 1.4e-3 of the output's scale.
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-9, 1e-12),
              np.dtype(np.float16): (5e-3, 1e-3)}
DEFAULT_BATCH = 2
MAX_FEED_ELEMENTS = 1 << 27  # 512 MiB of float32: more is a broken shape, not a test input
# Default time limit per run of a graph: generous, since a run here takes seconds; graphs
# with more nodes may run longer.
BASE_TIMEOUT, TIMEOUT_PER_NODE = 60.0, 0.1


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
    lowered_producer: bool = False  # the original ran from a copy with producer 8 (legacy op)
    trusted: list[str] | None = None  # --trust-graph: the side-effect ops that ran unchecked
    first_difference: OutputCheck | None = None  # earliest batch norm whose output differs

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.outputs)

    def describe(self) -> str:
        """One line: what differs, by how much, and where it starts."""
        failed = [c for c in self.outputs if not c.passed]
        if not failed:
            return f"{len(self.outputs)} outputs match"
        c = failed[0]
        what = c.problem or (f"max abs error {c.max_abs:.3g}, max rel error {c.max_rel:.3g} "
                             f"(allowed {c.atol:g} + {c.rtol:g} x scale)")
        where = f"; first differing batch norm: {self.first_difference.name}" if self.first_difference else ""
        return f"output '{c.name}' differs: {what}{where}"


@dataclass(frozen=True)
class Options:
    """What to feed and how strictly to compare (CLI: --inputs, --batch, ...)."""
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    batch: int = DEFAULT_BATCH
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    rtol: float | None = None
    atol: float | None = None
    seed: int = 0
    trust_graph: bool = False  # run side-effect ops too (--trust-graph)
    timeout: float | None = None  # seconds per run of a graph; None: by graph size
    max_memory: int | None = None  # bytes for the TensorFlow worker; None: half the machine's


def make_feeds(graph_def: Any, options: Options = Options()) -> dict[str, np.ndarray]:
    """Seeded inputs for every placeholder: random normal floats, small ints; unknown
    dimensions become `options.batch`. Bools and strings must come from `options.values`."""
    index = GraphIndex(graphio.to_internal(graph_def))
    rng = np.random.default_rng(options.seed)
    feeds: dict[str, np.ndarray] = {}
    wanted = list(options.inputs) or [n for n in index.inferred_inputs() if index.nodes[n].op != "PlaceholderWithDefault"]
    for name in wanted:
        node = index.node(name)
        if node is None:
            raise CannotVerifyError(f"input '{name}' is not in the graph")
        if name in options.values:
            feeds[name] = np.asarray(options.values[name])
            continue
        dtype = tensors.numpy_dtype(node.attr["dtype"].type)
        shape = options.shapes.get(name)
        if shape is None:
            dims = tensors.shape_of(node.attr["shape"].shape) if "shape" in node.attr else None
            if dims is None:
                raise CannotVerifyError(f"input '{name}' has no known rank: give it --input-shape {name}=...")
            shape = [d if d >= 0 else options.batch for d in dims]
        if np.prod(shape, dtype=np.float64) > MAX_FEED_ELEMENTS or min(shape, default=0) < 0:
            raise CannotVerifyError(f"input '{name}' would have shape {list(shape)}: "
                                    f"pass --input-shape {name}=...")
        if dtype is None or dtype == np.bool_:
            kind = "a bool" if dtype == np.bool_ else "not numeric"
            raise CannotVerifyError(f"input '{name}' is {kind} and cannot be filled automatically: "
                                    f"pass --feed {name}=VALUE")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


LEGACY_OPS = frozenset({"BatchNormWithGlobalNormalization"})
LAST_LEGACY_PRODUCER = 8  # GraphDef version 9 removed BatchNormWithGlobalNormalization


def runnable(graph_def: Any) -> tuple[Any, bool]:
    """TensorFlow refuses BatchNormWithGlobalNormalization in graphs that claim producer
    >= 9, though it still runs the op: run such graphs from a copy with the producer
    lowered. Returns the graph to run and whether it was lowered."""
    graph = graphio.to_internal(graph_def)
    if graph.versions.producer > LAST_LEGACY_PRODUCER and any(n.op in LEGACY_OPS for n in graph.node):
        graph.versions.producer = LAST_LEGACY_PRODUCER
        graph.versions.min_consumer = min(graph.versions.min_consumer, LAST_LEGACY_PRODUCER)
        return graph, True
    return graph, False


def run(graph_def: Any, feeds: Mapping[str, np.ndarray], fetches: Sequence[str],
        options: Options = Options()) -> list[np.ndarray]:
    """Run a graph in TensorFlow on the CPU (in tfrun's worker process); CannotVerifyError
    with TensorFlow's first line when it refuses the graph, fails or crashes, and its
    subclasses when the graph is unsafe or exceeds a limit."""
    return runner(graph_def, fetches, options)(feeds, fetches)


def runner(graph_def: Any, fetches: Sequence[str], options: Options = Options()) -> Callable[..., list[np.ndarray]]:
    """Check the graph once for everything it may be asked for (`fetches`), before anything
    runs; then `runner(...)(feeds, wanted)` runs it within the limits."""
    graph, bounds = checked(graph_def, fetches, options), limits(graph_def, options)
    return lambda feeds, wanted: tfrun.run(graph, feeds, wanted, bounds)


def checked(graph_def: Any, fetches: Sequence[str], options: Options = Options()) -> bytes:
    """The graph to run, serialized, once safety.py (and, for ops it does not know,
    TensorFlow's live registry) finds no side effects behind `fetches`."""
    graph, _ = runnable(graph_def)
    if not options.trust_graph:
        unknown = safety.check(graph, fetches)
        stateful = tfrun.stateful(unknown, limits(graph, options)) if unknown else set()
        if stateful:
            raise UnsafeGraphError(safety.describe(
                [e for e in safety.side_effects(graph, fetches) if e.op in stateful and e.runs]))
    return graph.SerializeToString(deterministic=True)


def unchecked(graphs: Sequence[Any], fetches: Sequence[str], options: Options) -> list[str] | None:
    """With --trust-graph, the side-effect ops that run unchecked in `graphs`; None without it."""
    if not options.trust_graph:
        return None
    return sorted({e.op for graph in graphs for e in safety.side_effects(graphio.to_internal(graph), fetches)
                   if e.runs and e.verdict != safety.ALLOWED})


def limits(graph_def: Any, options: Options) -> tfrun.Limits:
    """The limits of one run: as given, or BASE_TIMEOUT + TIMEOUT_PER_NODE x nodes and
    tfrun's share of the machine's memory."""
    timeout = options.timeout
    if timeout is None:
        timeout = BASE_TIMEOUT + TIMEOUT_PER_NODE * len(graphio.to_internal(graph_def).node)
    return tfrun.Limits(timeout, tfrun.default_max_memory() if options.max_memory is None else options.max_memory)


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
    diff = np.abs(a[finite] - b[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputCheck(name, label, max_abs, max_rel, rtol, atol, max_abs <= atol + rtol * scale)


def verify(original: Any, rewritten: Any, options: Options = Options(),
           feeds: Mapping[str, np.ndarray] | None = None, trace: Sequence[str] = ()) -> Verification:
    """Run both graphs on the same inputs and compare each output. When one differs,
    the tensors named in `trace` (batch-norm outputs, in topological order) are compared
    too, to say where the difference starts."""
    index = GraphIndex(graphio.to_internal(original))
    fetches = list(options.outputs) or index.inferred_outputs()
    present = {node.name for node in graphio.to_internal(rewritten).node}
    traced = [name for name in trace if name in present]
    run_original, run_rewritten = (runner(graph, fetches + traced, options) for graph in (original, rewritten))
    if feeds is None:
        feeds = make_feeds(original, options)
    expected = run_original(feeds, fetches)
    actual = run_rewritten(feeds, fetches)
    result = Verification({k: list(np.shape(v)) for k, v in feeds.items()},
                          lowered_producer=runnable(original)[1],
                          trusted=unchecked([original, rewritten], fetches, options))
    result.outputs = [compare(name, e, a, options.rtol, options.atol)
                      for name, e, a in zip(fetches, expected, actual)]
    if not result.passed and traced:
        pairs = zip(traced, run_original(feeds, traced), run_rewritten(feeds, traced))
        result.first_difference = next(
            (check for check in (compare(n, e, a, options.rtol, options.atol) for n, e, a in pairs)
             if not check.passed), None)
    return result


@dataclass(frozen=True)
class Probe:
    """How much output `name` of the first sample moves when it runs alone instead of
    inside a batch: zero for a graph whose samples are independent."""
    name: str
    batch: int
    max_abs: float
    max_rel: float


def probe(graph_def: Any, options: Options = Options()) -> list[Probe]:
    """Run a batch, then its first sample alone: frozen training-mode batch norms make
    a sample's result depend on the rest of its batch."""
    index = GraphIndex(graphio.to_internal(graph_def))
    fetches = list(options.outputs) or index.inferred_outputs()
    run_graph = runner(graph_def, fetches, options)
    feeds = make_feeds(graph_def, replace(options, batch=max(options.batch, 2)))
    sizes = {v.shape[0] for v in feeds.values() if np.ndim(v)}
    if not feeds or len(sizes) != 1 or min(sizes) < 2:
        raise CannotVerifyError("probing needs inputs that share a batch dimension of 2 or more "
                                "(--batch, --input-shape)")
    batch = sizes.pop()
    batched = run_graph(feeds, fetches)
    alone = run_graph({k: v[:1] if np.ndim(v) else v for k, v in feeds.items()}, fetches)
    found = []
    for name, together, single in zip(fetches, batched, alone):
        if np.ndim(together) == 0 or together.shape[0] != batch or single.shape[0] != 1:
            continue  # not a per-sample output
        check = compare(name, together[:1], single, rtol=0.0, atol=0.0)
        found.append(Probe(name, batch, check.max_abs, check.max_rel))
    return found
