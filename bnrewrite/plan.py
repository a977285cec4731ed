"""Findings -> actions. The one place that decides what happens to each batch norm:
`fold` into the host's weights, `fuse` into one FusedBatchNormV3, or `skip`.

The refusal checks are data: an ordered table of (reason, test). The first test that
holds names the reason; the action for a refused batch norm follows from the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import names, tensors
from .affine import FAKE_QUANT
from .findings import Finding, find_batch_norms
from .fold_math import as_channel_vector, folded_bias, folded_weights
from .hosts import HOSTS, HostMatch, find_host
from .index import PASSTHROUGH, GraphIndex
from .variants import FUSED_DTYPES

FOLD, FUSE, SKIP = "fold", "fuse", "skip"
MODES = ("fold", "fuse")

# The stable reason strings (the audit's JSON promises these) and what they mean.
REASONS = {
    "learning-phase-cond": "inside a learning-phase tf.cond: which branch runs is decided at run time",
    "training-mode": "statistics come from the batch: folding would change the results",
    "side-output-used": "the batch mean/variance or reserve outputs are read by other nodes",
    "channel-mismatch": "the parameters' channel axis or count does not line up with the host's output",
    "not-constant": "a parameter is not a constant",
    "no-linear-host": "the input does not come from a linear op it could fold into",
    "host-has-other-consumers": "the host's output (or its bias) is also read outside the batch norm",
    "fuse-mode": "--mode fuse: weights are left alone",
    "fold-precision": "the folded weights or bias would overflow or underflow in the weights' dtype",
    "non-finite-parameters": "a parameter or the host's weights hold NaN or infinity",
    "degenerate-parameters": "variance + epsilon is not positive in float32: NaN or Inf channels",
    "fake-quant": "a FakeQuant op sits inside it, between it and its host, or on the host's weights: "
                  "folding would change what the graph was trained to quantize",
}


@dataclass(frozen=True)
class Decision:
    finding: Finding
    action: str
    reason: str | None
    detail: str  # a sentence for people: what exactly blocked it, or what will happen
    host: HostMatch | None
    shared_weights: bool = False  # the rewrite must clone the weights before scaling them
    fuse_as: str | None = None  # with action fuse: which replacement the rewrite builds (FUSED_AS)


@dataclass(frozen=True)
class _Context:
    finding: Finding
    host: HostMatch | None
    index: GraphIndex
    fetched: frozenset[str]  # nodes the caller fetches: their values must not change


def _side_outputs(c: _Context) -> str | None:
    if not c.finding.variant.side_outputs:
        return None
    used = sorted(c.index.used_outputs(c.finding.output) - {0})
    return f"outputs {used} of {c.finding.output} are read" if used else None


def _not_constant(c: _Context) -> str | None:
    if c.finding.chain is not None:
        return None  # the affine analysis takes constants only
    missing = [role for role, value in c.finding.values.items() if value is None]
    if missing:
        return f"{', '.join(missing)} of {c.finding.output} not constant"
    if c.finding.epsilon is None:
        return "epsilon is not known"
    return None


def _non_finite(c: _Context) -> str | None:
    """NaN or Inf in the parameters or weights spread differently through any other
    arrangement of the arithmetic (TensorFlow's kernels do not even agree on Relu(NaN)):
    such a batch norm is left exactly as it is."""
    bad = _non_finite_count(c.finding)
    if c.host is not None:
        bad += sum(np.count_nonzero(~np.isfinite(np.asarray(v, np.float64)))
                   for v in (c.host.weights, c.host.bias) if v is not None)
    return f"{bad} parameter or weight values are NaN or infinite" if bad else None


def _non_finite_count(finding: Finding) -> int:
    values = [v for v in finding.values.values() if v is not None] + [[finding.epsilon or 0.0]]
    if finding.chain is not None:
        values += [v for segment in finding.segments() for v in segment]
    return sum(np.count_nonzero(~np.isfinite(np.asarray(v, np.float64))) for v in values)


def _degenerate(c: _Context) -> str | None:
    """variance + epsilon <= 0 makes whole channels NaN, and where that NaN ends up after a
    following Relu depends on which op produced it (TensorFlow fuses FusedBatchNormV3 with
    Relu; fuzzer case): such a batch norm is left exactly as it is."""
    variance, epsilon = c.finding.vector("variance"), c.finding.epsilon
    if variance is None or epsilon is None:
        return None
    # TensorFlow adds them in float32 and may flush subnormals to zero
    bad = int(np.count_nonzero(variance + epsilon < np.finfo(np.float32).tiny))
    return f"variance + epsilon is not positive (in float32) in {bad} channels" if bad else None


def _mismatch(c: _Context) -> str | None:
    f, h = c.finding, c.host
    if h is None or h.weights is None:
        return None
    if not f.uniform and (h.channel_axis != f.channel_axis or h.channels != f.channels):
        return (f"{h.node} gives {h.channels} channels on axis {h.channel_axis}, the batch norm "
                f"normalises {f.channels} on axis {f.channel_axis}")
    if h.bias_axis not in (None, h.channel_axis) or (
            h.bias is not None and as_channel_vector(h.bias, h.channels) is None):
        return f"the bias of {h.node} is not one value per output channel"
    if f.chain is not None and f.chain.rank > h.weights.ndim:
        return f"rank-{f.chain.rank} constants would broadcast the output of {h.node} to a higher rank"
    return None


def _fake_quant(c: _Context) -> str | None:
    """Quantization-aware graphs quantize what they were trained on: a FakeQuant inside the
    batch norm, between it and its host, or on the host's weights pins the values it sees."""
    f = c.finding
    if f.chain is not None and f.chain.fake_quants:
        return f"{', '.join(f.chain.fake_quants)} sits inside the batch norm"
    source = c.index.node(c.index.skip_passthrough(f.x, PASSTHROUGH)[0])
    if source is not None and source.op in FAKE_QUANT:
        return f"{source.name} sits between {f.output} and the op before it"
    if c.host is not None:
        weights = c.index.data_inputs(c.host.node)[HOSTS[c.host.op].weights_input]
        source = c.index.node(c.index.skip_passthrough(weights, PASSTHROUGH)[0])
        if source is not None and source.op in FAKE_QUANT:
            return f"the weights of {c.host.node} are quantized by {source.name}"
    return None


def _host_weights(c: _Context) -> str | None:
    return f"weights of {c.host.node} are not constant" if c.host and c.host.weights is None else None


def _other_consumers(c: _Context) -> str | None:
    """Folding changes the host's output: nothing but the batch norm may read it, nor any
    intermediate of the batch norm computed from it (x * inv read elsewhere, say)."""
    for node in _reading_x(c):
        outside = c.index.node_consumers(node) - set(c.finding.nodes)
        if node != c.finding.output and (outside or node in c.fetched):
            readers = ", ".join(sorted(outside)) or "the caller"
            return f"{node}, computed from the host's output, is also read by {readers}"
    chain = list(c.host.chain)
    for node, next_nodes in zip(chain, [{n} for n in chain[1:]] + [set(c.finding.nodes)]):
        outside = c.index.node_consumers(node) - next_nodes
        if outside:
            return f"{node} is also read by {', '.join(sorted(outside))}"
        if node in c.fetched:
            return f"{node} is a fetched output"
    return None


# A folded output channel fed inputs of this magnitude must stay inside the dtype.
INPUT_HEADROOM = 64.0


def _precision(c: _Context) -> str | None:
    """Folding multiplies weights by gamma / sqrt(var + eps): with a tiny variance in fp16
    the weights, the bias or the conv's own output can leave the dtype's range (the fused
    op computes the batch norm in float32), or weights can sink below its smallest normal."""
    mapping = c.finding.scale_offset(c.host.channels)
    weights = c.host.weights
    if mapping is None or not np.issubdtype(weights.dtype, np.floating):
        return None
    scale, offset = mapping
    info = np.finfo(weights.dtype)
    axes = c.host.weight_axes
    folded = np.abs(folded_weights(weights, scale, axes))
    bias = np.abs(folded_bias(c.host.bias, scale, offset))
    gain = folded.sum(axis=tuple(a for a in range(weights.ndim) if a not in axes)).max(initial=0)
    worst = gain * INPUT_HEADROOM + bias.max(initial=0)
    if not np.isfinite(worst) or worst > info.max:
        return (f"a folded output channel reaches {worst:.3g} for inputs of {INPUT_HEADROOM:g}, "
                f"over the {info.max:.3g} its dtype holds")
    lost = (folded < info.tiny) & (np.abs(weights) >= info.tiny)  # newly subnormal or zero
    if lost.any():
        return f"{int(lost.sum())} folded weights fall below {info.tiny:.3g}"
    return None


def _reading_x(c: _Context) -> set[str]:
    """The batch norm's nodes whose value depends on its input x."""
    x_node = names.node_of(c.finding.x)
    found: set[str] = set()
    frontier = [x_node]
    while frontier:
        node = frontier.pop()
        for user in c.index.node_consumers(node) & set(c.finding.nodes) - found:
            found.add(user)
            frontier.append(user)
    return found


def _when(test: Callable[[_Context], bool], detail: str) -> Callable[[_Context], str | None]:
    return lambda c: detail if test(c) else None


# Ordered: the first that applies is the reason reported.
CHECKS: tuple[tuple[str, Callable[[_Context], str | None]], ...] = (
    ("learning-phase-cond", _when(lambda c: bool(c.finding.branches), "training and inference branches")),
    ("training-mode", _when(lambda c: c.finding.training, "batch statistics")),
    ("side-output-used", _side_outputs),
    ("channel-mismatch", lambda c: c.finding.problem),
    ("not-constant", _not_constant),
    ("non-finite-parameters", _non_finite),
    ("degenerate-parameters", _degenerate),
    ("fake-quant", _fake_quant),
    ("no-linear-host", _when(lambda c: c.host is None, "input is not produced by a foldable op")),
    ("not-constant", _host_weights),
    ("channel-mismatch", _mismatch),
    ("host-has-other-consumers", _other_consumers),
    ("fold-precision", _precision),
)
FUSE_MODE = ("fuse-mode", _when(lambda c: True, "weights are left alone"))


# Reasons after which a batch norm is left exactly as it is.
KEEP = frozenset({"learning-phase-cond", "side-output-used", "non-finite-parameters",
                  "degenerate-parameters"})
# What a fused batch norm becomes, and what makes that replacement possible.
FUSED_AS = {
    # one FusedBatchNormV3 over the same tensors (ones for an ignored gamma)
    "fused-op": lambda f, dtype: dtype in f.variant.fused_dtypes and ("gamma" in f.inputs or f.channels is not None),
    # one FusedBatchNormV3(is_training=true) computing the statistics itself
    "fused-training": lambda f, dtype: dtype in FUSED_DTYPES and _fusable_statistics(f),
    # x * scale + offset, constant vectors on the channel axis, in x's dtype (around each
    # FakeQuant op of the chain, which stays where it was)
    "scale-shift": lambda f, dtype: _fits(f, dtype),
}


def _fuse_as(finding: Finding, reason: str) -> str | None:
    """The replacement fusing would build, or None where the batch norm must stay."""
    kind = finding.variant.fuses_to
    if reason in KEEP or kind is None:
        return None
    if reason == "training-mode":
        return "fused-training" if finding.statistics != "fused" else None
    return None if kind == "scale-shift" and reason == "not-constant" else kind


def _refused(index: GraphIndex, finding: Finding, reason: str, detail: str, host: HostMatch | None
             ) -> Decision:
    kind = _fuse_as(finding, reason)
    dtype = index.attr(finding.output, "T", kind=int)
    if kind is None or finding.problem or finding.epsilon is None or dtype is None \
            or not FUSED_AS[kind](finding, dtype):
        return Decision(finding, SKIP, reason, detail, host)
    return Decision(finding, FUSE, reason, detail, host, fuse_as=kind)


def _fits(finding: Finding, dtype: int) -> bool:
    """Do the scale and offset of an unfolded arithmetic batch norm fit x's dtype?"""
    segments, np_dtype = finding.segments(), tensors.numpy_dtype(dtype)
    if None in segments or np_dtype is None or not np.issubdtype(np_dtype, np.floating):
        return None not in segments
    return all(np.abs(v).max(initial=0) <= np.finfo(np_dtype).max for segment in segments for v in segment)


def _fusable_statistics(finding: Finding) -> bool:
    """Batch statistics over every axis but the last one: FusedBatchNormV3 training."""
    rank = len(finding.axes) + 1
    return (finding.axes == tuple(range(rank - 1)) and 2 <= rank <= 5 and finding.channel_axis == -1
            and finding.vector("gamma") is not None and finding.vector("beta") is not None
            and _non_finite_count(finding) == 0)


def decide(index: GraphIndex, finding: Finding, mode: str = "fold",
           fetched: frozenset[str] = frozenset()) -> Decision:
    host = find_host(index, finding.x)
    context = _Context(finding, host, index, fetched)
    for reason, check in CHECKS + ((FUSE_MODE,) if mode == "fuse" else ()):
        detail = check(context)
        if detail:
            return _refused(index, finding, reason, detail, host)
    shared = host is not None and _weights_shared(index, host)
    return Decision(finding, FOLD, None, f"fold into {host.node}", host, shared)


def _weights_shared(index: GraphIndex, host: HostMatch) -> bool:
    weights = index.data_inputs(host.node)[HOSTS[host.op].weights_input]
    source, chain = index.skip_passthrough(weights)
    for node in (source.split(":")[0], *chain):
        if index.node_consumers(node) - {host.node, *chain}:
            return True
    return False


def make_plan(index: GraphIndex, mode: str = "fold", fetched: frozenset[str] = frozenset()
              ) -> list[Decision]:
    """One decision per batch norm; `fetched` names nodes whose values must not change."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    decisions = [decide(index, finding, mode, fetched) for finding in find_batch_norms(index)]
    # A plain scale or shift is worth a line only where it has something to fold into.
    return [d for d in decisions if d.finding.variant.batch_norm or d.host is not None]
