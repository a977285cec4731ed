"""Findings -> actions. The one place that decides what happens to each batch norm:
`fold` into the weights of the linear op before it (backward) or of the ones after it
(forward), `fuse` into what the destination loads (`TARGETS`), or `skip`.

The refusal checks are data: ordered tables of (reason, test). The first test that
holds names the reason; the action for a refused batch norm follows from the reason.
Backward folding is tried first; forward folding only where the host refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from tensorboard.compat.proto import types_pb2

from . import folds, names, tensors
from .affine import FAKE_QUANT
from .consumers import Readers, find_consumers
from .findings import Finding, find_batch_norms
from .fold_math import as_channel_vector
from .folds import Fold
from .forward import FORWARD_CHECKS, Forward
from .hosts import HOSTS, HostMatch, find_host, weights_shared
from .index import PASSTHROUGH, GraphIndex
from .variants import FUSED_DTYPES

FOLD, FUSE, SKIP = "fold", "fuse", "skip"
MODES = ("fold", "fuse")
# Ops that take fewer dtypes than FUSED_DTYPES: TF 1.x's FusedBatchNorm declares T: {float}
OP_DTYPES = {"FusedBatchNorm": frozenset({types_pb2.DT_FLOAT})}

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
    # folding forward, into the linear ops reading the batch norm
    "padding": "a consumer sees its input's zero padding, where a nonzero shift cannot be folded",
    "consumer-folded": "a consumer's weights already take another batch norm folded backward",
    "negative-scale": "a MaxPool before the consumers commutes only with a positive scale",
}


@dataclass(frozen=True)
class Fuse:
    kind: str  # which replacement the rewrite builds (FUSED_AS)
    op: str  # the op a fused-op or fused-training kind builds (TARGETS); "" for the others


@dataclass(frozen=True)
class Skip:
    pass


@dataclass(frozen=True)
class Decision:
    finding: Finding
    outcome: Fold | Fuse | Skip
    reason: str | None
    detail: str  # a sentence for people: what exactly blocked it, or what will happen
    host: HostMatch | None
    readers: Readers | None = None  # who reads it, where folding forward was considered

    @property
    def action(self) -> str:
        return {Fold: FOLD, Fuse: FUSE, Skip: SKIP}[type(self.outcome)]

    @property
    def direction(self) -> str | None:
        return self.outcome.direction if isinstance(self.outcome, Fold) else None

    @property
    def shared_weights(self) -> bool:
        """The old weights are read elsewhere, so the rewrite clones them."""
        return isinstance(self.outcome, Fold) and any(edit.shared for edit in self.outcome.edits)


@dataclass(frozen=True)
class _Context:
    finding: Finding
    host: HostMatch | None
    index: GraphIndex
    fetched: frozenset[str]  # nodes the caller fetches: their values must not change

    @cached_property
    def fold(self) -> Fold | str:
        """The arrays (or why the dtype cannot hold them), once every other check passed."""
        return folds.backward(self.finding, self.host, [
            weights_shared(self.index, p.node, HOSTS[p.op].weights_input) for p in self.host.parts])


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
                   for v in (*(p.weights for p in c.host.parts), c.host.bias) if v is not None)
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
    if h is None or any(p.weights is None for p in h.parts):
        return None
    if h.channels is None:
        return f"the weights of {h.node} have no output-channel axis"
    if not f.uniform and (h.channel_axis != f.channel_axis or h.channels != f.channels):
        return (f"{h.node} gives {h.channels} channels on axis {h.channel_axis}, the batch norm "
                f"normalises {f.channels} on axis {f.channel_axis}")
    if h.bias_axis not in (None, h.channel_axis) or (
            h.bias is not None and as_channel_vector(h.bias, h.channels) is None):
        return f"the bias of {h.node} is not one value per output channel"
    if f.chain is not None and f.chain.rank > _output_rank(c):
        return f"rank-{f.chain.rank} constants would broadcast the output of {h.node} to a higher rank"
    return None


SHAPE_LINKS = frozenset({"Squeeze", "ExpandDims", "Reshape"})


def _output_rank(c: _Context) -> int:
    """The rank of what the batch norm reads: the host's weights' (a conv's output has as
    many axes as its filter); through a shape link, only vectors are safe to assume."""
    if any(c.index.nodes[node].op in SHAPE_LINKS for node, _ in c.host.links):
        return 1
    return c.host.parts[0].weights.ndim


def _fake_quant(c: _Context) -> str | None:
    """Quantization-aware graphs quantize what they were trained on: a FakeQuant inside the
    batch norm, between it and its host, or on the host's weights pins the values it sees."""
    f = c.finding
    if f.chain is not None and f.chain.fake_quants:
        return f"{', '.join(f.chain.fake_quants)} sits inside the batch norm"
    source = c.index.node(c.index.skip_passthrough(f.x, PASSTHROUGH)[0])
    if source is not None and source.op in FAKE_QUANT:
        return f"{source.name} sits between {f.output} and the op before it"
    for part in c.host.parts if c.host is not None else ():
        weights = c.index.data_inputs(part.node)[HOSTS[part.op].weights_input]
        source = c.index.node(c.index.skip_passthrough(weights, PASSTHROUGH)[0])
        if source is not None and source.op in FAKE_QUANT:
            return f"the weights of {part.node} are quantized by {source.name}"
    return None


def _host_weights(c: _Context) -> str | None:
    unknown = [p.node for p in c.host.parts if p.weights is None] if c.host else []
    return f"weights of {', '.join(unknown)} are not constant" if unknown else None


def _other_consumers(c: _Context) -> str | None:
    """Folding changes the host's output: nothing but the batch norm may read it, nor any
    intermediate of the batch norm computed from it (x * inv read elsewhere, say)."""
    for node in _reading_x(c):
        outside = c.index.node_consumers(node) - set(c.finding.nodes)
        if node != c.finding.output and (outside or node in c.fetched):
            readers = ", ".join(sorted(outside)) or "the caller"
            return f"{node}, computed from the host's output, is also read by {readers}"
    for node, feeds in c.host.links:
        outside = c.index.node_consumers(node) - ({feeds} if feeds else set(c.finding.nodes))
        if outside:
            return f"{node} is also read by {', '.join(sorted(outside))}"
        if node in c.fetched:
            return f"{node} is a fetched output"
    return None


def _precision(c: _Context) -> str | None:
    return c.fold if isinstance(c.fold, str) else None


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


# Ordered: the first that applies is the reason reported. The batch norm's own checks...
PARAM_CHECKS: tuple[tuple[str, Callable[[_Context], str | None]], ...] = (
    ("learning-phase-cond", _when(lambda c: bool(c.finding.branches), "training and inference branches")),
    ("training-mode", _when(lambda c: c.finding.training, "batch statistics")),
    ("side-output-used", _side_outputs),
    ("channel-mismatch", lambda c: c.finding.problem),
    ("not-constant", _not_constant),
    ("non-finite-parameters", _non_finite),
    ("degenerate-parameters", _degenerate),
    ("fake-quant", _fake_quant),
)
# ...then the host's, folding backward; where one refuses, folding forward is tried.
HOST_CHECKS: tuple[tuple[str, Callable[[_Context], str | None]], ...] = (
    ("no-linear-host", _when(lambda c: c.host is None, "input is not produced by a foldable op")),
    ("not-constant", _host_weights),
    ("channel-mismatch", _mismatch),
    ("host-has-other-consumers", _other_consumers),
    ("fold-precision", _precision),
)
CHECKS = PARAM_CHECKS + HOST_CHECKS
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


# What each kind of fuse becomes where the result is going: replacements in order of
# preference, each a FUSED_AS kind and the fused op it builds; the first one possible is
# built, none possible leaves the batch norm as it is (a kind missing here builds itself).
# Measured (tools/converters.py; tf2onnx 1.17, TF 2.21's TFLite converter, OpenVINO 2026.4):
# TFLite refuses FusedBatchNormV2 and maps V1 and V3; tf2onnx maps V1-V3 (training too) to
# BatchNormalization and writes an invalid model of BatchNormWithGlobalNormalization, which
# OpenVINO refuses; TF 1.x runtimes know no FusedBatchNormV3 (nor its U attribute).
V3, V1, SCALE_SHIFT = ("fused-op", "FusedBatchNormV3"), ("fused-op", "FusedBatchNorm"), ("scale-shift", "")
TRAINING_V3 = ("fused-training", "FusedBatchNormV3")
TARGETS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "tf2": {"fused-op": (V3,), "fused-training": (TRAINING_V3,)},
    # FusedBatchNorm is float32 only: fp16 becomes Mul+Add, or stays (TF 1.x runs every old form)
    "tf1": {"fused-op": (V1, SCALE_SHIFT), "fused-training": (("fused-training", "FusedBatchNorm"),)},
    "tflite": {"fused-op": (V3, SCALE_SHIFT), "fused-training": (TRAINING_V3,)},
    "onnx": {"fused-op": (V3, SCALE_SHIFT), "fused-training": (TRAINING_V3,)},
}


def _fuse_as(finding: Finding, reason: str) -> str | None:
    """The kind of replacement fusing would build, or None where the batch norm must stay."""
    kind = finding.variant.fuses_to
    if reason in KEEP or kind is None:
        return None
    if reason == "training-mode":
        return "fused-training" if finding.statistics != "fused" else None
    return None if kind == "scale-shift" and reason == "not-constant" else kind


def _refused(index: GraphIndex, finding: Finding, reason: str, detail: str, host: HostMatch | None,
             target: str, readers: Readers | None = None) -> Decision:
    wanted = _fuse_as(finding, reason)
    dtype = index.attr(finding.output, "T", kind=int)
    if wanted is None or finding.problem or finding.epsilon is None or dtype is None:
        return Decision(finding, Skip(), reason, detail, host, readers)
    for kind, op in TARGETS[target].get(wanted, ((wanted, ""),)):
        if FUSED_AS[kind](finding, dtype) and dtype in OP_DTYPES.get(op, FUSED_DTYPES | {dtype}):
            # a batch norm that already is the op wanted stays as it is
            outcome = Skip() if finding.form == op and wanted == "fused-op" else Fuse(kind, op)
            return Decision(finding, outcome, reason, detail, host, readers)
    return Decision(finding, Skip(), reason, detail, host, readers)


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


def _first(checks, context) -> tuple[str, str] | None:
    for reason, check in checks:
        detail = check(context)
        if detail:
            return reason, detail
    return None


def _decide(c: _Context, refusal: tuple[str, str] | None, forward_ok: bool, mode: str,
            claimed: frozenset[str], target: str) -> Decision:
    """`refusal`: why it does not fold backward; `forward_ok`: that was the host's doing, so
    folding forward may still work; `claimed`: ops whose weights take backward folds."""
    readers, fold = None, None if refusal else c.fold
    if refusal is not None and forward_ok:
        readers = find_consumers(c.index, c.finding.output)
        if readers.consumers:
            forward = Forward(c.finding, readers, c.index, c.fetched, claimed)
            ahead = _first(FORWARD_CHECKS, forward)
            fold = forward.fold if ahead is None else None
            refusal = None if ahead is None else (ahead[0], f"{refusal[1]}; folding forward: {ahead[1]}")
    if refusal is None and mode == "fuse":
        refusal = FUSE_MODE[0], FUSE_MODE[1](c)
    if refusal is not None:
        return _refused(c.index, c.finding, *refusal, c.host, target, readers)
    into = ", ".join(edit.node for edit in fold.edits)
    return Decision(c.finding, fold, None, f"fold {fold.direction} into {into}", c.host, readers)


def make_plan(index: GraphIndex, mode: str = "fold", fetched: frozenset[str] = frozenset(),
              target: str = "tf2") -> list[Decision]:
    """One decision per batch norm; `fetched` names nodes whose values must not change;
    `target` (a key of TARGETS) what an unfolded batch norm becomes. Backward folds are
    decided first: a forward fold never takes weights one of them changes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, not {target!r}")
    contexts = [_Context(f, find_host(index, f.x), index, fetched) for f in find_batch_norms(index)]
    backward = []
    for context in contexts:
        refusal = _first(PARAM_CHECKS, context)
        backward.append((refusal, False) if refusal else (_first(HOST_CHECKS, context), True))
    claimed = frozenset(p.node for c, (refusal, _) in zip(contexts, backward) if refusal is None
                        for p in c.host.parts)
    decisions = [_decide(c, *b, mode, claimed, target) for c, b in zip(contexts, backward)]
    # A plain scale or shift is worth a line only where it has something to fold into.
    return [d for d in decisions
            if d.finding.variant.batch_norm or d.host is not None or isinstance(d.outcome, Fold)]
