"""Training-mode rescue (`--training-bn keep|error|moving-stats`): what becomes of a batch
norm frozen in training mode, whose statistics come from the batch.

`moving-stats` turns a `FusedBatchNorm*(is_training=true)` whose mean and variance inputs
are non-empty constants (Keras 2 wires the moving statistics in) into the same op with
is_training=false: the graph then computes what the original does in inference mode, and
the plan folds it like any other inference batch norm. Only output 0 may be read: the
training outputs 1-4 (the batch's statistics) mean something else in inference mode.
A batch norm whose statistics come from a `tf.nn.moments` (or TF 1.0 sufficient_statistics)
subgraph is rescued when its scope (the longest name-scope prefix its nodes share) holds
exactly one float Const per statistic, one value per channel, named as the
ExponentialMovingAverage shadow of that statistic (`<scope>/moments/Squeeze/
ExponentialMovingAverage`) or `<scope>/moving_mean|moving_variance`: its formula is rewired to
read them in place of the batch's statistics. Anything less certain is not rescued.
`keep` leaves every training-mode batch norm as it is, with a warning; `error` fails if
one would remain. The rescued graph is also the reference that verification runs in
place of the original. No TensorFlow here; the caller's GraphDef is never changed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from . import graphio, names
from .errors import BnRewriteError
from .findings import Finding, find_batch_norms
from .index import GraphIndex
from .variants import catalogue

POLICIES = ("keep", "error", "moving-stats")
STATISTICS = ("mean", "variance")
BATCH_STATISTICS = frozenset({"moments", "sufficient_statistics"})
MOVING_NAMES = {"mean": "moving_mean", "variance": "moving_variance"}  # tf.layers / Keras names
EMA_SUFFIX = "/ExponentialMovingAverage"  # ExponentialMovingAverage.apply names a shadow <op>/ExponentialMovingAverage


class TrainingModeError(BnRewriteError):
    """`--training-bn error` and a training-mode batch norm would remain (exit 2)."""


@dataclass
class Rescue:
    policy: str
    rescued: dict[str, dict[str, str]] = field(default_factory=dict)  # output -> role -> Const used
    kept: list[str] = field(default_factory=list)  # left in training mode, topological order
    rescuable: list[str] = field(default_factory=list)  # kept, but moving-stats would rescue them


def rescue(graph: Any, policy: str) -> tuple[Any, Rescue]:
    """With `moving-stats`, a copy of `graph` in which every training-mode batch norm that
    has moving statistics runs in inference mode with them; else `graph` itself."""
    if policy not in POLICIES:
        raise TrainingModeError(f"--training-bn wants one of {', '.join(POLICIES)}, got '{policy}'")
    outcome = Rescue(policy)
    if not _worth_looking(graph):
        return graph, outcome  # skip finding every batch norm again
    index = GraphIndex(graph)
    consts = [name for name, op in zip(index.order, index.ops) if op == "Const"]
    found = {finding.output: (finding, used) for finding in find_batch_norms(index)
             if finding.training and (used := _moving_statistics(index, finding, consts)) is not None}
    if policy != "moving-stats" or not found:
        outcome.rescuable = list(found)
        return graph, outcome
    outcome.rescued = {output: used for output, (_, used) in found.items()}
    result = graphio.to_internal(graph)
    nodes = {node.name: node for node in result.node}
    unread: set[str] = set()
    for finding, used in found.values():
        if finding.statistics == "fused":  # the op computes them: its training attribute goes off
            nodes[finding.output].attr[finding.variant.attrs["training"]].b = False
        else:
            unread |= _rewire(index, nodes, finding, used)
    if unread:
        kept = [node for node in result.node if node.name not in unread]
        del result.node[:]
        result.node.extend(kept)
    return result, outcome


def _worth_looking(graph: Any) -> bool:
    """A fused op in training mode, or a Mean (tf.nn.moments and TF 1.0's
    sufficient_statistics both reduce with one) next to a Const named like a moving
    statistic: else there is nothing to rescue or to report as rescuable."""
    fused = {v.form: v for v in catalogue() if "training" in v.attrs}

    def training(node: Any) -> bool:
        variant = fused[node.op]
        key = variant.attrs["training"]
        return node.attr[key].b if key in node.attr else variant.defaults.get("training", False)

    if any(training(node) for node in graph.node if node.op in fused):
        return True
    return any(node.op == "Mean" for node in graph.node) and any(
        node.op == "Const" and (node.name.endswith(EMA_SUFFIX) or _last(node.name) in MOVING_NAMES.values())
        for node in graph.node)


def _last(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _moving_statistics(index: GraphIndex, finding: Finding, consts: Sequence[str]) -> dict[str, str] | None:
    if finding.statistics in BATCH_STATISTICS:
        return _shadow_statistics(index, finding, consts)
    return _fused_statistics(index, finding)


def _fused_statistics(index: GraphIndex, finding: Finding) -> dict[str, str] | None:
    """The Const nodes holding a fused op's mean and variance, when both hold one value per
    channel and only its output 0 is read."""
    if finding.statistics != "fused" or index.used_outputs(finding.output) - {0}:
        return None
    used = {}
    for role in STATISTICS:
        value = index.const_value(finding.inputs[role]) if role in finding.inputs else None
        if value is None or value.value.size != finding.channels:
            return None  # absent, empty (tfpose's), or not one per channel: no moving statistics
        used[role] = value.chain[-1]
    return used


def _shadow_statistics(index: GraphIndex, finding: Finding, consts: Sequence[str]) -> dict[str, str] | None:
    """The one Const per statistic in the batch norm's scope that is its EMA shadow or its
    moving_mean/moving_variance, when it is float and holds one value per channel."""
    scope = _scope(finding.nodes)
    if finding.branches or finding.channels is None or not scope:
        return None  # a learning-phase cond is resolved by --set, not here
    used = {}
    for role in STATISTICS:
        shadow = names.node_of(finding.inputs[role]) + EMA_SUFFIX
        candidates = [name for name in consts if name.startswith(scope) and
                      (name == shadow or _last(name) == MOVING_NAMES[role])]
        value = index.const_value(candidates[0]) if len(candidates) == 1 else None
        if value is None or value.value.dtype.kind != "f" or value.value.shape != (finding.channels,):
            return None  # none, ambiguous, or not one float per channel: leave it in training mode
        used[role] = candidates[0]
    return used


def _scope(nodes: Iterable[str]) -> str:
    """The longest name scope (with its trailing '/') that every node lies in; '' if none."""
    common = os.path.commonprefix([name.split("/")[:-1] for name in nodes])  # element-wise on lists
    return "".join(part + "/" for part in common)


def _rewire(index: GraphIndex, nodes: dict[str, Any], finding: Finding, used: dict[str, str]) -> set[str]:
    """Point the formula's reads of the batch's mean and variance at `used` (in the copy
    `nodes`). Returns the statistics subgraph (their ancestors in the batch norm) when
    nothing else reads it, so it is dropped rather than left dangling as a new output."""
    sources = {names.canonical(finding.inputs[role]): used[role] for role in STATISTICS}
    statistics, todo = set(), [names.node_of(t) for t in sources]
    while todo:
        name = todo.pop()
        if name in finding.nodes and name not in statistics:
            statistics.add(name)
            todo.extend(names.node_of(t) for t in index.data_inputs(name))
    for name in finding.nodes - statistics:
        node = nodes[name]
        for i, ref in enumerate(node.input):
            if not ref.startswith("^") and names.canonical(ref) in sources:
                node.input[i] = sources[names.canonical(ref)]
    readers = {reader for name in statistics for reader in index.node_consumers(name)}
    return statistics if readers <= finding.nodes else set()


def settle(outcome: Rescue, training: Sequence[str], path: str | None = None) -> None:
    """Record the batch norms still in training mode (`training`, topological order of
    the graph that is rewritten); with `error`, TrainingModeError naming the first."""
    outcome.kept = list(training)
    if outcome.policy == "error" and outcome.kept:
        raise TrainingModeError(
            f"--training-bn error: {len(outcome.kept)} batch norms would stay in training mode, the first "
            f"'{names.node_of(outcome.kept[0])}' (its statistics come from the batch)", path)
