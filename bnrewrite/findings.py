"""Find every batch norm: match each catalogue variant at every node, reduce every chain
of constant arithmetic to scale * x + shift (affine.py), read parameters into one
canonical shape, tell training from inference mode, and join the two branches of a
Keras learning-phase tf.cond into one finding.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from . import names
from .affine import Analysis, Chain, layout_of, recover
from .fold_math import BNParams, as_channel_vector, channel_layout
from .hosts import BIAS_OPS, HOSTS, LINKS, layout_channel_axis
from .index import PASSTHROUGH, THROUGH_SWITCH, GraphIndex
from .matcher import EDGE_PASSTHROUGH, Match, match
from .pattern import root_types
from .variants import AFFINE, FORMULA, Variant, catalogue, statistics

ROLES = ("gamma", "beta", "mean", "variance")
ATTR_KINDS = {"epsilon": float, "training": bool, "data_format": str, "use_gamma": bool}


@dataclass(frozen=True)
class Finding:
    form: str
    output: str  # node whose output 0 is the normalised tensor
    x: str  # the tensor being normalised
    inputs: Mapping[str, str]  # role (gamma, beta, mean, variance) -> tensor feeding it
    nodes: frozenset[str]  # ops the batch norm spans (not x, not its constants)
    param_nodes: frozenset[str]  # constants (and their read chains) feeding it
    values: Mapping[str, np.ndarray | None]  # raw gamma/beta/mean/variance; None: not constant
    epsilon: float | None
    channels: int | None
    channel_axis: int
    training: bool
    statistics: str  # moving | fed | fused | moments | sufficient_statistics
    variant: Variant  # what the form may become (its flags), for the plan
    axes: tuple[int, ...] = ()  # reduction axes of batch statistics
    problem: str | None = None  # why the parameters cannot be read as per-channel vectors
    branches: Mapping[str, "Finding"] = field(default_factory=dict)
    chain: Chain | None = None  # the arithmetic, where the affine analysis found it

    @property
    def uniform(self) -> bool:
        """Every parameter is one value for all channels: it lines up with any host."""
        return self.channels == 1

    def params(self, channels: int | None = None) -> BNParams | None:
        """Canonical float64 parameters (a uniform batch norm spread over `channels`);
        None unless every one is a usable constant."""
        channels = channels if self.uniform and channels else self.channels
        if self.problem or channels is None or self.epsilon is None:
            return None
        vectors = [None if self.values.get(r) is None else as_channel_vector(self.values[r], channels)
                   for r in ROLES]
        if any(v is None for v in vectors):
            return None
        return BNParams(*vectors, epsilon=self.epsilon, channel_axis=self.channel_axis)

    def scale_offset(self, channels: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """y = x * scale + offset per channel (float64 vectors), None unless constant: the
        chain's own arithmetic where the algebra found it, else from the parameters."""
        if self.chain is None:
            params = self.params(channels)
            return None if params is None else params.scale_offset()
        n = channels if self.uniform and channels else self.channels
        return tuple(as_channel_vector(v, n) for v in (self.chain.affine.scale, self.chain.affine.shift))

    def segments(self, channels: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Like scale_offset, once per stretch between the FakeQuant ops of the chain."""
        if self.chain is None or not self.chain.fake_quants:
            return [self.scale_offset(channels)]
        n = channels if self.uniform and channels else self.channels
        return [(as_channel_vector(s.scale, n), as_channel_vector(s.shift, n)) for s in self.chain.segments]

    def vector(self, role: str) -> np.ndarray | None:
        value = self.values.get(role)
        if value is None or self.channels is None:
            return None
        return as_channel_vector(value, self.channels)


def find_batch_norms(index: GraphIndex) -> list[Finding]:
    """All batch norms in topological order of their outputs; overlaps resolved."""
    present = set(index.ops)
    by_root: dict[str, list[Variant]] = defaultdict(list)  # root op -> variants, catalogue order
    for variant in catalogue():
        if not variant.needs or variant.needs & present:
            for op in root_types(variant.pattern):
                by_root[op].append(variant)
    found: list[Finding] = []
    named: dict[str, Finding] = {}
    for name, op in zip(index.order, index.ops):
        for variant in by_root.get(op, ()):
            result = match(variant.pattern, index, name)
            if isinstance(result, Match):
                finding = _read(variant, result, index, name)
                if finding is not None:
                    found.append(finding)
                    named[name] = finding
                    break
    for chain in Analysis(index, lambda node: _host_bias(index, node)).chains():
        known = named.get(chain.root)
        if known is None or _source(index, known.x) != _source(index, chain.x):
            found.append(_from_chain(chain))
    found = _join_conds(index, _without_overlaps(index, found))
    return sorted(found, key=lambda f: index.topo_position[f.output])


def _read(variant: Variant, found: Match, index: GraphIndex, root: str) -> Finding | None:
    def attr(role: str, default: Any = None) -> Any:
        key = variant.attrs.get(role)
        default = variant.defaults.get(role, default)
        return index.attr(root, key, default, ATTR_KINDS[role]) if key else default

    values: dict[str, np.ndarray | None] = {
        role: found.values[role] if role in found.values else _DEFAULTS[role] for role in ROLES
    }
    inputs = {role: found.tensors[role] for role in ROLES if role in found.tensors}
    if not attr("use_gamma", True):
        values["gamma"] = _DEFAULTS["gamma"]  # the op ignores its gamma input
        del inputs["gamma"]
    eps = found.values.get("epsilon")
    epsilon = float(np.asarray(eps).reshape(-1)[0]) if eps is not None else attr("epsilon")
    nodes, param_nodes = set(found.nodes), set(found.param_nodes)
    training, stats, axes = bool(attr("training", False)), "moving", ()
    if training:
        stats = "fused"
    elif values["mean"] is None or values["variance"] is None:
        batch = _batch_statistics(index, found)
        if batch is None:
            stats = "fed"
        elif 0 not in batch[1]:
            return None  # statistics over non-batch axes: layer or instance norm, not ours
        else:
            (stats, axes, stat_nodes, stat_params), training = batch, True
            nodes |= stat_nodes
            param_nodes |= stat_params
    if training:
        values["mean"] = values["variance"] = None
    layout = attr("data_format")
    known = [v for v in values.values() if v is not None and v.size != 0]
    shape = channel_layout(known)
    problem = None if shape is not None else "parameter shapes disagree"
    channels, axis = shape if shape is not None else (None, -1)
    if channels == 1 and len(known) < len(ROLES):
        channels = None  # only defaults and scalars seen: the channel count is not known
    if problem is None and channels is not None and any(
            as_channel_vector(v, channels) is None for v in values.values() if v is not None):
        problem = "parameters are not per-channel vectors"
    if variant.attrs.get("data_format"):
        axis = layout_channel_axis(layout or "NHWC")
    return Finding(variant.form, root, found.tensors["x"], inputs, frozenset(nodes), frozenset(param_nodes),
                   values, epsilon, channels, axis, training, stats, variant, tuple(axes), problem)


def _from_chain(chain: Chain) -> Finding:
    """A chain is a batch norm when sqrt(variance + epsilon) (or its reciprocal) is among its
    constants: its parameters are read back from the algebra; otherwise a plain affine."""
    channels = chain.channels
    scale, shift = (as_channel_vector(v, channels) for v in (chain.affine.scale, chain.affine.shift))
    values: dict[str, np.ndarray | None] = dict.fromkeys(ROLES)
    variant, epsilon = AFFINE, None
    norms = {(v.tobytes(), v.shape, float(e.reshape(-1)[0])): (v, e) for v, e in chain.norms()}
    if len(norms) == 1:
        ((variance, eps),) = norms.values()
        layout = layout_of(variance.shape)
        if layout is not None and (layout[1] is None or layout == (channels, chain.channel_axis)):
            leaves = [as_channel_vector(v, channels) for v in chain.leaves().values()]
            variance = as_channel_vector(variance, channels)
            epsilon = float(eps.reshape(-1)[0])
            values = recover(scale, shift, variance, epsilon, [v for v in leaves if v is not None])
            variant = FORMULA
    return Finding(variant.form, chain.root, chain.x, {}, frozenset(chain.nodes) | chain.const_ops,
                   chain.leaf_nodes, values, epsilon, channels, chain.channel_axis, False, "moving",
                   variant, chain=chain)


def _biased(node_op: str | None) -> bool:
    """Ops a host's bias add can read: hosts.py takes one constant bias anywhere between the
    host (or a grouped host's ConcatV2) and the batch norm, through its links."""
    return node_op is not None and (node_op in HOSTS or node_op in LINKS or node_op == "ConcatV2")


def _host_bias(index: GraphIndex, node: str) -> bool:
    """A constant added right after an op that hosts.py folds into is that op's bias, which
    hosts.py folds with it: no chain may take it. (By op types alone: stopping a chain early
    is never wrong, and walking to the host for every add is slow.)"""
    if index.nodes[node].op not in BIAS_OPS:
        return False
    inputs = index.data_inputs(node)
    return any(_biased(getattr(index.node(index.skip_passthrough(t, EDGE_PASSTHROUGH)[0]), "op", None))
               for t in inputs) and any(index.const_value(t) is not None for t in inputs)  # a Const("bias")


def _source(index: GraphIndex, tensor: str) -> str:
    return index.skip_passthrough(tensor, PASSTHROUGH)[0]


_DEFAULTS: dict[str, Any] = {"gamma": np.ones(1), "beta": np.zeros(1), "mean": None, "variance": None}


def _batch_statistics(index: GraphIndex, found: Match):
    """(name, axes, nodes, constant nodes) when mean and variance come from the batch."""
    bound = {"x": found.tensors["x"]}
    for stats in statistics():
        mean = match(stats.mean, index, found.tensors["mean"], bound)
        if not isinstance(mean, Match):
            continue
        variance = match(stats.variance, index, found.tensors["variance"], mean.tensors)
        if not isinstance(variance, Match) or not _plausible_count(mean.values):
            continue
        axes = _normalised_axes(index, found.tensors["x"], np.asarray(mean.values["axes"]).reshape(-1))
        if axes is None:
            continue
        return (stats.name, axes, mean.nodes | variance.nodes,
                mean.param_nodes | variance.param_nodes)
    return None


def _normalised_axes(index: GraphIndex, x: str, axes: np.ndarray) -> tuple[int, ...] | None:
    """Reduction axes counted from the front; negative ones need x's rank (None: unknown)."""
    if not np.all(axes >= 0):
        rank = _rank(index, x)
        if rank is None or np.any(axes < -rank):
            return None
        axes = np.where(axes < 0, axes + rank, axes)
    return tuple(sorted({int(a) for a in axes}))


# Ops whose output rank is fixed, and ops whose output has their input 0's rank.
_RANKS = {"Conv2D": 4, "DepthwiseConv2dNative": 4, "Conv2DBackpropInput": 4, "MaxPool": 4, "AvgPool": 4,
          "FusedBatchNorm": 4, "FusedBatchNormV2": 4, "FusedBatchNormV3": 4, "Conv3D": 5, "MatMul": 2}
_SAME_RANK = PASSTHROUGH | {"Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "BiasAdd", "Cast", "Neg"}


def _rank(index: GraphIndex, tensor: str) -> int | None:
    """x's rank from the op that produces it (through rank-keeping ops), or a static shape."""
    for _ in range(64):
        node = index.node(tensor)
        if node is None:
            return None
        if node.op in _RANKS:
            return _RANKS[node.op]
        if "shape" in node.attr and node.op.startswith("Placeholder"):
            shape = node.attr["shape"].shape
            return None if shape.unknown_rank else len(shape.dim)
        if node.op not in _SAME_RANK or not node.input:
            return None
        tensor = node.input[0]
    return None


def _plausible_count(values: Mapping[str, np.ndarray | None]) -> bool:
    """TF 1.0 moments divide by a constant element count: one that is not a whole number
    between 1 and 2^31 (TensorFlow's element limit) is not the batch's, so these are not
    the batch's statistics. (A plausible but wrong count is left for verification.)"""
    counts, divisor = values.get("counts"), values.get("divisor")
    if counts is None and divisor is not None:
        counts = 1 / np.asarray(divisor, np.float64)
    if counts is None:
        return True
    counts = np.asarray(counts, np.float64)
    return bool(np.all(np.isfinite(counts) & (counts >= 1) & (counts <= 2**31)
                       & (np.abs(counts - np.round(counts)) <= 1e-6 * counts + 1e-3)))


def _without_overlaps(index: GraphIndex, found: list[Finding]) -> list[Finding]:
    """Where matches share nodes, keep the one spanning more (a formula with beta
    also contains its beta-less subexpression). On a tie, the named form, unless it
    reads a parameter as not constant where a chain of constants explains the same ops
    (c - x matches x - mean with the roles swapped)."""
    def tie(finding: Finding) -> int:
        return 1 if finding.chain is not None else 0 if finding.scale_offset() is not None else 2

    kept, claimed = [], set()
    for finding in sorted(found, key=lambda f: (-len(f.nodes), tie(f), index.topo_position[f.output])):
        if finding.nodes & claimed:
            continue
        kept.append(finding)
        claimed |= finding.nodes
    return kept


def _join_conds(index: GraphIndex, found: list[Finding]) -> list[Finding]:
    """A Merge choosing between a training and an inference batch norm of the same
    Switch'ed input is one Keras batch-norm layer, reported once."""
    by_output = {f.output: f for f in found}
    joined: dict[str, Finding] = {}
    for name in index.order:
        if index.nodes[name].op != "Merge":
            continue
        # Keras 2.0 computes the training output outside the cond and passes it in through a Switch.
        inputs = [index.skip_passthrough(t, THROUGH_SWITCH) for t in index.data_inputs(name)]
        branches = [by_output.get(t) for t, _ in inputs if names.parse(t).index == 0]
        if len(branches) != 2 or None in branches or branches[0].training == branches[1].training:
            continue
        train, infer = sorted(branches, key=lambda f: not f.training)
        if index.skip_passthrough(train.x)[0] != index.skip_passthrough(infer.x)[0]:
            continue
        chains = {node for _, chain in inputs for node in chain}
        joined[name] = replace(
            infer, form="cond", output=name, x=index.skip_passthrough(infer.x)[0], training=True, statistics=train.statistics,
            axes=train.axes, nodes=train.nodes | infer.nodes | chains | {name},
            param_nodes=train.param_nodes | infer.param_nodes,
            branches={"training": train, "inference": infer},
        )
    merged = {b.output for j in joined.values() for b in j.branches.values()}
    return [f for f in found if f.output not in merged] + list(joined.values())
