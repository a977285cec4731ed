"""Run two graphs on the same seeded inputs and compare every output.

TensorFlow runs in tfrun's worker process, started only when a check runs (DESIGN §6).
The tolerance is calibrated on the graph (DESIGN §5): the original runs a second time
with every floating-point constant moved by one unit in the last place (seeded, up or
down at random), and how far each output moves is its noise: the rounding noise of its
own arithmetic, deep or shallow, fp32 or fp16. An output matches when
max|a - b| <= NOISE_MULTIPLE x noise + floor, scale being the largest finite magnitude of
the original output and the floor FLOOR_ULPS x eps(dtype) x scale, or the fixed tolerance
atol + rtol x scale (TOLERANCES) where that is smaller (fp16). The noise is one sample:
for a small output it can be 0 by chance, and the floor covers the few ulps by which
reordered arithmetic rounds differently. --rtol/--atol replace all this with
max|a - b| <= atol + rtol x scale. NaN must sit at the same positions and infinities
must be equal. Where a CPU kernel lacks a channels-first layout, both graphs run
through the same layout change (layout.py).

Running a graph runs untrusted code (DESIGN §5): graphs run only once safety.py finds no
side effects behind what is fetched (unless the caller trusts the graph), and each run
within a time and memory limit (tfrun.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from . import graphio, layout, safety, tensors, tfrun
from .errors import GraphRunError, UnsafeGraphError
from .feeds import bool_inputs, make_feeds
from .index import GraphIndex

# dtype -> (rtol, atol) when calibration is off (--rtol/--atol) or cannot be used.
# float16 folds measured here stay within 1.4e-3 of the output's scale.
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-9, 1e-12),
              np.dtype(np.float16): (5e-3, 1e-3)}
NOISE_MULTIPLE = 8.0
FLOOR_ULPS = 16.0  # reordered arithmetic measured here: up to 4 ulps of the scale
DEFAULT_BATCH = 2
MAX_BOOL_INPUTS = 4  # every combination of their values: 16 verifications at most
SEED = 0x5EED  # of the perturbation: the same graph gets the same noise
# Default time limit per run of a graph: generous, since a run here takes seconds; graphs
# with more nodes may run longer.
BASE_TIMEOUT, TIMEOUT_PER_NODE = 60.0, 0.1


@dataclass(frozen=True)
class OutputCheck:
    name: str
    dtype: str
    max_abs: float  # observed: the largest difference
    max_rel: float  # max_abs relative to the original output's scale
    scale: float  # the largest finite magnitude of the original output
    bound: float  # the largest max_abs accepted
    noise: float | None  # how far the output moves under one-ulp constants; None: not calibrated
    rule: str  # how `bound` was set
    passed: bool
    problem: str | None = None  # shape, NaN or Inf disagreement

    def describe(self) -> str:
        if self.problem:
            return self.problem
        noise = "" if self.noise is None else f", noise {self.noise:.3g}"
        return f"max abs error {self.max_abs:.3g} (bound {self.bound:.3g} = {self.rule}{noise})"


@dataclass
class Verification:
    inputs: dict[str, list[int]]
    outputs: list[OutputCheck] = field(default_factory=list)
    shape_sources: dict[str, str] = field(default_factory=dict)  # input -> where its shape came from
    warnings: list[str] = field(default_factory=list)
    lowered_producer: bool = False  # the original ran from a copy with producer 8 (legacy op)
    channels_last: int = 0  # channels-first ops that ran channels-last (layout.py), in both graphs
    trusted: list[str] | None = None  # --trust-graph: the side-effect ops that ran unchecked
    first_difference: OutputCheck | None = None  # earliest batch norm whose output differs
    combinations: list[dict[str, bool]] = field(default_factory=list)  # bool inputs' values, one per run

    def extend(self, other: "Verification") -> "Verification":
        """This verification and another one of the same graphs fed other bool values."""
        self.outputs += other.outputs
        self.combinations += other.combinations
        self.first_difference = self.first_difference or other.first_difference
        self.warnings += [w for w in other.warnings if w not in self.warnings]
        return self

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.outputs)

    def describe(self) -> str:
        """One line: what differs, by how much, and where it starts."""
        failed = [c for c in self.outputs if not c.passed]
        if not failed:
            return f"{len(self.outputs)} outputs match"
        where = f"; first differing batch norm: {self.first_difference.name}" if self.first_difference else ""
        return f"output '{failed[0].name}' differs: {failed[0].describe()}{where}"


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

    @property
    def calibrated(self) -> bool:
        return self.rtol is None and self.atol is None


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
        options: Options = Options(), label: str = "the graph") -> list[np.ndarray]:
    """Run a graph in TensorFlow on the CPU (in tfrun's worker process), channels-first
    ops channels-last where TensorFlow lacks their kernel; CannotVerifyError with
    TensorFlow's reason when it refuses the graph, fails or crashes, and its subclasses
    when the graph is unsafe or exceeds a limit."""
    return _Runs({label: graph_def}, fetches, options, feeds).run(label, fetches)


def check_safe(graph_def: Any, fetches: Sequence[str], options: Options = Options()) -> None:
    """UnsafeGraphError unless safety.py (and, for ops it does not know, TensorFlow's live
    registry) finds no side effects behind `fetches`; nothing with --trust-graph."""
    if options.trust_graph:
        return
    graph = graphio.as_internal(graph_def)
    unknown = safety.check(graph, fetches)
    stateful = tfrun.stateful(unknown, limits(graph, options)) if unknown else set()
    if stateful:
        raise UnsafeGraphError(safety.describe(
            [e for e in safety.side_effects(graph, fetches) if e.op in stateful and e.runs]))


def unchecked(graphs: Sequence[Any], fetches: Sequence[str], options: Options) -> list[str] | None:
    """With --trust-graph, the side-effect ops that run unchecked in `graphs`; None without it."""
    if not options.trust_graph:
        return None
    return sorted({e.op for graph in graphs for e in safety.side_effects(graphio.as_internal(graph), fetches)
                   if e.runs and e.verdict != safety.ALLOWED})


def limits(graph_def: Any, options: Options) -> tfrun.Limits:
    """The limits of one run: as given, or BASE_TIMEOUT + TIMEOUT_PER_NODE x nodes and
    tfrun's share of the machine's memory."""
    timeout = options.timeout
    if timeout is None:
        timeout = BASE_TIMEOUT + TIMEOUT_PER_NODE * len(graphio.as_internal(graph_def).node)
    return tfrun.Limits(timeout, tfrun.default_max_memory() if options.max_memory is None else options.max_memory)


_CHUNK = 1 << 20  # elements perturbed at a time


def perturbed(graph_def: Any, seed: int = SEED) -> Any:
    """A copy in which every nonzero finite floating-point constant is moved by one unit
    in the last place of its dtype, up or down at random (seeded)."""
    graph = graphio.to_internal(graph_def)
    rng = np.random.default_rng(seed)
    for node in graph.node:
        value = tensors.to_numpy(node.attr["value"].tensor) if node.op == "Const" else None
        if value is None or value.dtype.kind != "f" or not value.any():
            continue
        # Moved in place (to_numpy's array is a copy of its own), a slice at a time: whole-array
        # temporaries took 385 MB for a 64 MB constant (136 MB now), 6 GB for 2^28 floats.
        flat = value.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            part = flat[start:start + _CHUNK]
            up = rng.integers(0, 2, part.size, dtype=np.int8) > 0
            movable = np.isfinite(part) & (part != 0)
            toward = np.where(up, part.dtype.type(np.inf), part.dtype.type(-np.inf))
            part[movable] = np.nextafter(part[movable], toward[movable])
        node.attr["value"].tensor.CopyFrom(tensors.to_proto(value))
    return graph


def compare(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float | None = None,
            atol: float | None = None, noisy: np.ndarray | None = None) -> OutputCheck:
    """Compare `actual` with `expected`; `noisy` is the original's output under perturbed
    constants (calibrates the bound unless rtol or atol is given)."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    label = str(expected.dtype)

    def check(max_abs: float, max_rel: float, bound: float, passed: bool, problem: str | None = None,
              noise: float | None = None, rule: str = "exact", scale: float = 0.0) -> OutputCheck:
        return OutputCheck(name, label, max_abs, max_rel, scale, bound, noise, rule, passed, problem)

    if expected.shape != actual.shape:
        return check(float("inf"), float("inf"), 0.0, False, f"shape {actual.shape} != {expected.shape}")
    if not np.issubdtype(expected.dtype, np.inexact):
        equal = bool(np.array_equal(expected, actual))
        far = 0.0 if equal else float("inf")
        return check(far, far, 0.0, equal, None if equal else "values differ")
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    problem = _special_values(a, b)
    if problem:
        return check(float("inf"), float("inf"), 0.0, False, problem)
    finite = np.isfinite(a)
    max_abs = float(np.abs(a[finite] - b[finite]).max(initial=0.0))
    scale = float(np.abs(a[finite]).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    noise = _noise(a, noisy) if rtol is None and atol is None else None
    default_rtol, default_atol = TOLERANCES.get(expected.dtype, (0.0, 0.0))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    bound, rule = atol + rtol * scale, f"{atol:g} + {rtol:g} x scale"
    if noise is not None:
        ulps = FLOOR_ULPS * float(np.finfo(expected.dtype).eps) * scale
        if ulps < bound:
            bound, rule = ulps, f"{FLOOR_ULPS:g} ulp x scale"
        bound += NOISE_MULTIPLE * noise
        rule = f"{NOISE_MULTIPLE:g} x noise + {rule}"
    return check(max_abs, max_rel, bound, max_abs <= bound, noise=noise, rule=rule, scale=scale)


def _special_values(a: np.ndarray, b: np.ndarray) -> str | None:
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return "NaN at different positions"
    if not np.array_equal(np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0)):
        return "infinities differ"
    return None


def _noise(a: np.ndarray, noisy: np.ndarray | None) -> float | None:
    """How far the output moved under perturbed constants; None when that cannot
    calibrate anything (no run, or NaN, Inf or shapes that moved too)."""
    if noisy is None or np.shape(noisy) != a.shape:
        return None
    n = np.asarray(noisy, np.float64)
    if _special_values(a, n):
        return None
    finite = np.isfinite(a)
    return float(np.abs(a[finite] - n[finite]).max(initial=0.0))


class _Runs:
    """Runs a set of graphs on one set of feeds, all in the same layout: channels-first
    ops run channels-last when the user turned oneDNN off, or when a graph holding them
    fails natively (fp16 Conv2D, MaxPoolV2 and others have no NCHW CPU kernel even
    with oneDNN). `switched` counts such switches, so callers can rerun what ran before."""

    def __init__(self, graphs: Mapping[str, Any], fetches: Sequence[str], options: Options,
                 feeds: Mapping[str, np.ndarray] | None = None) -> None:
        """`fetches`: everything the graphs may be asked for, checked before anything else
        (feeds included: a refusal must not wait on an input nobody can fill)."""
        self.graphs = {label: runnable(graph)[0] for label, graph in graphs.items()}
        for graph in self.graphs.values():
            check_safe(graph, fetches, options)
        self.limits = {label: limits(graph, options) for label, graph in self.graphs.items()}
        self.feeds = feeds
        self.channels_first = len(set().union(*map(layout.channels_first_ops, self.graphs.values())))
        self.channels_last = bool(self.channels_first) and tfrun.onednn_off()

    def run(self, label: str, fetches: Sequence[str]) -> list[np.ndarray]:
        try:
            return self._run(label, fetches)
        except GraphRunError:  # not a crash: that would only crash again
            if self.channels_last or not self.channels_first:
                raise
            self.channels_last = True
            return self._run(label, fetches)

    def _run(self, label: str, fetches: Sequence[str]) -> list[np.ndarray]:
        graph = self.graphs[label]
        if self.channels_last:
            graph = layout.to_channels_last(graph)
        # A placeholder that --set made a constant is fed to the original only.
        present = {node.name for node in graph.node}
        feeds = {k: v for k, v in self.feeds.items() if k in present}
        return tfrun.run(graph.SerializeToString(deterministic=True), feeds, fetches, self.limits[label], label)

    def run_all(self, labels: Sequence[str], fetches: Sequence[str]) -> list[list[np.ndarray]]:
        """Each graph's outputs, all from the same layout."""
        was = self.channels_last
        results = [self.run(label, fetches) for label in labels]
        if self.channels_last != was:  # switched midway: what ran first ran natively
            results = [self._run(label, fetches) for label in labels]
        return results


ORIGINAL, REWRITTEN, PERTURBED = "the original graph", "the rewritten graph", "the original with perturbed constants"


def verify(original: Any, rewritten: Any, options: Options = Options(),
           feeds: Mapping[str, np.ndarray] | None = None, trace: Sequence[str] = ()) -> Verification:
    """Run both graphs on the same inputs and compare each output, within a bound
    calibrated on the original's own rounding noise (module docstring). When one
    differs, the tensors named in `trace` (batch-norm outputs, in topological order)
    are compared too, to say where the difference starts. Bool inputs not fed a value
    (a learning phase) run with every combination of values, up to MAX_BOOL_INPUTS of them."""
    defaults = {} if feeds is not None else bool_inputs(original, options)
    flags = list(defaults)
    tried, beyond = flags[:MAX_BOOL_INPUTS], flags[MAX_BOOL_INPUTS:]
    combined: Verification | None = None
    for combination in itertools.product((False, True), repeat=len(tried)):
        chosen = {**dict(zip(tried, combination)), **{n: bool(defaults[n]) for n in beyond}}
        # A PlaceholderWithDefault's own value is left unfed: the rewrite must run without it too.
        fed = {n: v for n, v in chosen.items() if v != defaults[n]}
        result = _verify_once(original, rewritten, replace(options, values={**fed, **options.values}), feeds, trace)
        if flags:
            result.shape_sources.update({n: "each value in turn (a bool input)" for n in tried if n in fed})
            label = " [" + ", ".join(f"{n}={str(v).lower()}" for n, v in chosen.items()) + "]"
            result.outputs = [replace(check, name=check.name + label) for check in result.outputs]
            result.combinations = [chosen]
        if beyond:
            result.warnings.append(f"{len(flags)} bool inputs: every combination of the first {MAX_BOOL_INPUTS} "
                                   f"was run, {', '.join(beyond)} only with its default (false without one)")
        combined = result if combined is None else combined.extend(result)
        if not combined.passed:
            break
    assert combined is not None
    return combined


def _verify_once(original: Any, rewritten: Any, options: Options,
                 feeds: Mapping[str, np.ndarray] | None, trace: Sequence[str]) -> Verification:
    index = GraphIndex(graphio.to_internal(original))
    fetches = list(options.outputs) or index.inferred_outputs()
    graphs = {ORIGINAL: original, REWRITTEN: rewritten}
    if options.calibrated:
        graphs[PERTURBED] = perturbed(original, SEED + options.seed)
    present = {node.name for node in graphio.as_internal(rewritten).node}
    traced = [name for name in trace if name in present]
    runs = _Runs(graphs, fetches + traced, options)
    runs.feeds = feeds = make_feeds(original, options) if feeds is None else feeds
    expected, actual = runs.run_all([ORIGINAL, REWRITTEN], fetches)
    noisy = _calibration(runs, fetches) if options.calibrated else [None] * len(fetches)
    result = Verification({k: list(np.shape(v)) for k, v in feeds.items()},
                          shape_sources=dict(getattr(feeds, "sources", {})),
                          warnings=list(getattr(feeds, "warnings", [])),
                          lowered_producer=runnable(original)[1],
                          trusted=unchecked([original, rewritten], fetches, options))
    result.outputs = [compare(name, e, a, options.rtol, options.atol, n)
                      for name, e, a, n in zip(fetches, expected, actual, noisy)]
    if not result.passed and traced:
        expected, actual = runs.run_all([ORIGINAL, REWRITTEN], traced)
        noisy = _calibration(runs, traced) if options.calibrated else [None] * len(traced)
        checks = (compare(*args, options.rtol, options.atol, n)
                  for args, n in zip(zip(traced, expected, actual), noisy))
        result.first_difference = next((check for check in checks if not check.passed), None)
    result.channels_last = runs.channels_first if runs.channels_last else 0
    return result


def _calibration(runs: _Runs, fetches: Sequence[str]) -> list[np.ndarray | None]:
    """The perturbed original's outputs; where it cannot run (a constant that decides a
    shape, say), the outputs fall back to the fixed tolerances."""
    try:
        return runs.run(PERTURBED, fetches)
    except GraphRunError:  # TensorFlow refused it; a timeout or crash is not the graph's shape
        return [None] * len(fetches)
