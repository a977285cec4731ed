"""Training-mode rescue (`--training-bn keep|error|moving-stats`): what becomes of a batch
norm frozen in training mode, whose statistics come from the batch.

`moving-stats` turns a `FusedBatchNorm*(is_training=true)` whose mean and variance inputs
are non-empty constants (Keras 2 wires the moving statistics in) into the same op with
is_training=false: the graph then computes what the original does in inference mode, and
the plan folds it like any other inference batch norm. Only output 0 may be read: the
training outputs 1-4 (the batch's statistics) mean something else in inference mode.
`keep` leaves every training-mode batch norm as it is, with a warning; `error` fails if
one would remain. The rescued graph is also the reference that verification runs in
place of the original. No TensorFlow here; the caller's GraphDef is never changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from . import graphio, names
from .errors import BnRewriteError
from .findings import Finding, find_batch_norms
from .index import GraphIndex

POLICIES = ("keep", "error", "moving-stats")
FUSED_FORMS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
STATISTICS = ("mean", "variance")


class TrainingModeError(BnRewriteError):
    """`--training-bn error` and a training-mode batch norm would remain (exit 2)."""


@dataclass
class Rescue:
    policy: str
    rescued: dict[str, dict[str, str]] = field(default_factory=dict)  # output -> role -> Const used
    kept: list[str] = field(default_factory=list)  # left in training mode, topological order
    rescuable: list[str] = field(default_factory=list)  # kept, but moving-stats would rescue them


def rescue(graph: Any, policy: str) -> tuple[Any, Rescue]:
    """With `moving-stats`, a copy of `graph` in which every training-mode fused batch norm
    that has moving statistics runs in inference mode; else `graph` itself."""
    if policy not in POLICIES:
        raise TrainingModeError(f"--training-bn wants one of {', '.join(POLICIES)}, got '{policy}'")
    outcome = Rescue(policy)
    if not any(node.op in FUSED_FORMS and "is_training" in node.attr and node.attr["is_training"].b
               for node in graph.node):
        return graph, outcome  # no fused op in training mode: skip finding every batch norm again
    index = GraphIndex(graph)
    found = {finding.output: used for finding in find_batch_norms(index)
             if finding.training and (used := _moving_statistics(index, finding)) is not None}
    if policy != "moving-stats" or not found:
        outcome.rescuable = list(found)
        return graph, outcome
    outcome.rescued = found
    result = graphio.to_internal(graph)
    for node in result.node:
        if node.name in outcome.rescued:
            node.attr["is_training"].b = False
    return result, outcome


def _moving_statistics(index: GraphIndex, finding: Finding) -> dict[str, str] | None:
    """The Const nodes holding a fused op's mean and variance, when both hold one value per
    channel and only its output 0 is read."""
    if finding.form not in FUSED_FORMS or finding.statistics != "fused" or index.used_outputs(finding.output) - {0}:
        return None
    used = {}
    for role in STATISTICS:
        value = index.const_value(finding.inputs[role]) if role in finding.inputs else None
        if value is None or value.value.size != finding.channels:
            return None  # absent, empty (tfpose's), or not one per channel: no moving statistics
        used[role] = value.chain[-1]
    return used


def settle(outcome: Rescue, training: Sequence[str], path: str | None = None) -> None:
    """Record the batch norms still in training mode (`training`, topological order of
    the graph that is rewritten); with `error`, TrainingModeError naming the first."""
    outcome.kept = list(training)
    if outcome.policy == "error" and outcome.kept:
        raise TrainingModeError(
            f"--training-bn error: {len(outcome.kept)} batch norms would stay in training mode, the first "
            f"'{names.node_of(outcome.kept[0])}' (its statistics come from the batch)", path)
