"""bnrewrite: audit and rewrite batch normalization in TensorFlow 1 frozen graphs.

Public API (never mutates the GraphDef it is given, never prints, raises
BnRewriteError subclasses for problems the caller can fix):

    graph = bnrewrite.load_graph("model.pb")
    report = bnrewrite.audit(graph)          # AuditReport: one entry per batch norm
    new_graph, report = bnrewrite.rewrite(graph)   # fold what folds, fuse the rest
"""
from __future__ import annotations

import contextlib
import gc
from collections import Counter
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from . import graphio, names, registry, rescue, safety, tensors, validate
from . import rewrite as _rewrite
# Imported here although only verification needs it: the public `verify` below shares its
# name, and a submodule imported after this file ran would replace that function.
from . import verify as _verify
from .errors import (BnRewriteError, CannotVerifyError, GraphLoadError, GraphRunError, InvalidGraphError,
                     UnsafeGraphError, VerificationError, VerifyMemoryLimit, VerifyTimeout)
from .graphio import load_graph, save_graph
from .index import GraphIndex
from .verify import Options as VerifyOptions
from .verify import Verification
from .report import AuditReport, BatchNormEntry, GraphInfo, RewriteReport, entry
from .rescue import TrainingModeError

if TYPE_CHECKING:
    from . import phase

__all__ = [
    "AuditReport", "BatchNormEntry", "BnRewriteError", "CannotVerifyError", "GraphInfo", "GraphLoadError",
    "GraphRunError",
    "InvalidGraphError", "RewriteReport", "TrainingModeError", "UnsafeGraphError", "Verification", "VerificationError",
    "VerifyMemoryLimit", "VerifyOptions", "VerifyTimeout", "audit", "load_graph", "rewrite", "save_graph", "verify",
]
__version__ = "0.1.0"


def audit(graph_def: Any, path: str | None = None, outputs: Sequence[str] = (),
          set_values: Mapping[str, Any] | None = None, set_defaults: bool = False,
          training_bn: str = "keep", target: str = "tf2") -> AuditReport:
    """Every batch norm in `graph_def`, its form and parameters, and what the rewrite
    (given the same `outputs`, `set_values`, `set_defaults`, `training_bn` and `target`)
    will do with it and why; and the ops with side effects that verification would refuse to run.
    `path` only labels the report and error messages."""
    with _boundary(path):
        graph = graphio.as_internal(graph_def)
        index = validate.check(graph, path, outputs)
        graph, rescued = rescue.rescue(graph, training_bn)
        graph, resolution = _resolved(graph, outputs, set_values, set_defaults)
        if resolution is not None or rescued.rescued:
            index = validate.check(graph, path, outputs)
        info = _info(graph, index, path)
        _, decisions, _ = _rewrite.planned(graph, index, "fold", _fetched(info, outputs), target, decide_only=True)
        entries = [entry(decision) for decision in decisions]
        if any(e.branches for e in entries):
            _what_set_does(graph, entries, outputs)
        rescued.kept = [e.output for e in entries if e.training]
        return AuditReport(info, entries, side_effects=safety.side_effects(graph, list(outputs) or info.outputs),
                           catalogue=registry.listing(), training_bn=asdict(rescued))


def rewrite(graph_def: Any, mode: str = "fold", outputs: Sequence[str] = (),
            path: str | None = None, verify: "VerifyOptions | None" = None,
            set_values: Mapping[str, Any] | None = None, set_defaults: bool = False,
            target: str = "tf2", training_bn: str = "keep") -> tuple[Any, RewriteReport]:
    """Fold every foldable inference batch norm into its host (`mode="fold"`) or only
    replace each (`mode="fuse"`) by what `target` loads: `tf2` FusedBatchNormV3, `tf1`
    FusedBatchNorm, `tflite` and `onnx` what their converters map (plan.TARGETS).
    Returns a new GraphDef of the caller's class and a report; `outputs` names nodes that must survive (by default
    the nodes nothing consumes). `set_values` ({"keras_learning_phase": False}) makes
    placeholders constants and resolves the conds they decide, `set_defaults` every
    PlaceholderWithDefault (phase.py). With `verify` (needs TensorFlow) both graphs are
    run, the original fed the values set, and VerificationError is raised unless every
    output matches. `training_bn` (rescue.py): `keep` training-mode batch norms as they
    are (the report warns), `error` (TrainingModeError) if one would remain, or
    `moving-stats`: run those with moving statistics in inference mode, then fold them;
    verification then compares with the original in inference mode for those."""
    with _boundary(path):
        return _rewrite_graph(graph_def, mode, outputs, path, verify, set_values, set_defaults, target,
                              training_bn)


def _resolved(graph: Any, outputs: Sequence[str], set_values: Mapping[str, Any] | None,
              set_defaults: bool) -> tuple[Any, phase.Resolution | None]:
    if not set_values and not set_defaults:
        return graph, None
    from . import phase  # only --set and --set-defaults resolve conds: others skip the import

    return phase.resolve(graph, set_values or {}, set_defaults, keep=outputs)


def _what_set_does(graph: Any, entries: list[BatchNormEntry], outputs: Sequence[str]) -> None:
    """For each learning-phase cond, what each value of its bool inputs would keep: e.g.
    "--set keras_learning_phase=0 keeps the inference branch: fold into conv1/Conv2D"."""
    from . import phase

    index = GraphIndex(graph)
    for name in index.inferred_inputs():
        if tensors.numpy_dtype(index.nodes[name].attr["dtype"].type) != np.bool_:
            continue
        for value in (False, True):
            try:
                resolved, _ = phase.resolve(graph, {name: value}, keep=outputs)
            except phase.SetError:  # what --set cannot do, the audit does not describe
                continue
            after = GraphIndex(resolved)
            _, decisions, _ = _rewrite.planned(resolved, after, "fold", _fetched(_info(resolved, after, None), outputs),
                                               decide_only=True)
            planned = {d.finding.output: entry(d) for d in decisions}
            for cond in entries:
                for role, branch in cond.branches.items():
                    kept = planned.get(branch["output"])
                    if kept is not None and all(b["output"] not in after.nodes for b in cond.branches.values()
                                                if b is not branch):
                        where = f" into {kept.host_node}" if kept.action == "fold" and kept.host_node else ""
                        why = f" ({kept.reason})" if kept.reason else ""
                        branch["with_set"] = (f"--set {name}={int(value)} keeps the {role} branch: "
                                              f"{kept.action}{where}{why}")


def _rewrite_graph(graph_def: Any, mode: str, outputs: Sequence[str], path: str | None,
                   verify: VerifyOptions | None, set_values: Mapping[str, Any] | None = None,
                   set_defaults: bool = False, target: str = "tf2",
                   training_bn: str = "keep") -> tuple[Any, RewriteReport]:
    original = graphio.as_internal(graph_def)  # read only: the rewrite builds a new graph
    index = validate.check(original, path, outputs)
    info, ops_before = _info(original, index, path), Counter(index.ops)
    reference, rescued = rescue.rescue(original, training_bn)  # the original, in inference mode where rescued
    graph, resolution = _resolved(reference, outputs, set_values, set_defaults)
    if resolution is not None or rescued.rescued:
        index = validate.check(graph, path, outputs)
    left = _info(graph, index, path) if resolution else info  # the outputs the resolved graph keeps
    protected = _fetched(left, outputs)
    result, decisions, dropped = _rewrite.planned(graph, index, mode, protected, target)
    rescue.settle(rescued, [d.finding.output for d in decisions if d.finding.training], path)
    report = RewriteReport(info, mode, [entry(d) for d in decisions], len(result.node),
                           dict(sorted(ops_before.items())),
                           dict(sorted(Counter(node.op for node in result.node).items())),
                           control_edges_dropped=dropped, target=target, training_bn=asdict(rescued))
    if resolution is not None:
        report.phase = {**asdict(resolution), "summary": resolution.describe()}
    if verify is not None:
        options = replace(verify, outputs=tuple(verify.outputs) or tuple(outputs))
        if resolution is not None:  # the original, fed the values set, computes the outputs that are left
            options = replace(options, outputs=options.outputs or tuple(left.outputs),
                              values={**resolution.values, **options.values})
        trace = [d.finding.output for d in decisions]
        checked = _verify.verify(reference if rescued.rescued else graph_def, result, options, trace=trace)
        report.verification = asdict(checked)
        for name in resolution.values if resolution else ():
            report.verification["shape_sources"][name] = "set (--set): fed to the original, a constant in the rewrite"
        if not checked.passed:
            raise VerificationError(checked.describe(), path)
    return graphio.like(result, graph_def), report


def verify(original: Any, rewritten: Any, options: VerifyOptions = VerifyOptions()) -> Verification:
    """Run both graphs in TensorFlow on the same seeded inputs and compare every output;
    where one differs, name the first batch norm of the original whose output differs."""
    trace = [entry.output for entry in audit(original).batch_norms]
    return _verify.verify(original, rewritten, options, trace=trace)


@contextlib.contextmanager
def _boundary(path: str | None) -> Iterator[None]:
    """The API's edge: numpy's overflow and NaN warnings about hostile parameters stay
    quiet (the plan reasons about those values itself), and errors raised deep inside
    (a malformed attribute, a graph TensorFlow refuses) learn which file they are about."""
    collecting = gc.isenabled()
    gc.disable()  # the passes make millions of objects and no garbage cycles: 10-18% of a rewrite
    try:
        with np.errstate(all="ignore"):
            yield
    except BnRewriteError as error:
        if error.path or not path:
            raise
        raise type(error)(error.problem, path) from None
    finally:
        if collecting:
            gc.enable()


def _fetched(info: GraphInfo, outputs: Sequence[str]) -> frozenset[str]:
    """Nodes whose values callers read: the graph's outputs and any they name."""
    return frozenset(info.outputs) | {names.node_of(output) for output in outputs}


def _info(graph: Any, index: GraphIndex, path: str | None) -> GraphInfo:
    return GraphInfo(path=path, nodes=len(graph.node), producer=int(graph.versions.producer),
                     inputs=index.inferred_inputs(), outputs=index.inferred_outputs())
