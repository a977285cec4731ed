"""bnrewrite: audit and rewrite batch normalization in TensorFlow 1 frozen graphs.

Public API (never mutates the GraphDef it is given, never prints, raises
BnRewriteError subclasses for problems the caller can fix):

    graph = bnrewrite.load_graph("model.pb")
    report = bnrewrite.audit(graph)          # AuditReport: one entry per batch norm
    new_graph, report = bnrewrite.rewrite(graph)   # fold what folds, fuse the rest
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, replace
from typing import Any, Iterator, Sequence

import numpy as np

from . import graphio, names, safety, validate
from . import rewrite as _rewrite
from . import verify as _verify
from .errors import (BnRewriteError, CannotVerifyError, GraphLoadError, GraphRunError, InvalidGraphError,
                     UnsafeGraphError, VerificationError, VerifyMemoryLimit, VerifyTimeout)
from .graphio import load_graph, save_graph
from .plan import make_plan
from .index import GraphIndex
from .verify import Options as VerifyOptions
from .verify import Verification
from .report import AuditReport, BatchNormEntry, GraphInfo, RewriteReport, entry

__all__ = [
    "AuditReport", "BatchNormEntry", "BnRewriteError", "CannotVerifyError", "GraphInfo", "GraphLoadError",
    "GraphRunError",
    "InvalidGraphError", "RewriteReport", "UnsafeGraphError", "Verification", "VerificationError",
    "VerifyMemoryLimit", "VerifyOptions", "VerifyTimeout", "audit", "load_graph", "rewrite", "save_graph", "verify",
]
__version__ = "0.1.0"


def audit(graph_def: Any, path: str | None = None, outputs: Sequence[str] = ()) -> AuditReport:
    """Every batch norm in `graph_def`, its form and parameters, and what the rewrite
    (given the same `outputs`) will do with it and why; and the ops with side effects
    that verification would refuse to run. `path` only labels the report and error messages."""
    with _boundary(path):
        graph = graphio.as_internal(graph_def)
        index = validate.check(graph, path, outputs)
        info = _info(graph, index, path)
        decisions = make_plan(index, "fold", _fetched(info, outputs))
        return AuditReport(info, [entry(decision) for decision in decisions],
                           side_effects=safety.side_effects(graph, list(outputs) or info.outputs))


def rewrite(graph_def: Any, mode: str = "fold", outputs: Sequence[str] = (),
            path: str | None = None, verify: "VerifyOptions | None" = None,
            target: str = "tf2") -> tuple[Any, RewriteReport]:
    """Fold every foldable inference batch norm into its host (`mode="fold"`) or only
    replace each (`mode="fuse"`) by what `target` loads: `tf2` FusedBatchNormV3, `tf1`
    FusedBatchNorm, `tflite` and `onnx` what their converters map (plan.TARGETS).
    Returns a new GraphDef of the caller's class and a report; `outputs` names nodes that
    must survive (by default the nodes nothing consumes). With `verify` (needs TensorFlow)
    both graphs are run and VerificationError is raised unless every output matches."""
    with _boundary(path):
        return _rewrite_graph(graph_def, mode, outputs, path, verify, target)


def _rewrite_graph(graph_def: Any, mode: str, outputs: Sequence[str], path: str | None,
                   verify: VerifyOptions | None, target: str) -> tuple[Any, RewriteReport]:
    graph = graphio.as_internal(graph_def)  # read only: the rewrite builds a new graph
    index = validate.check(graph, path, outputs)
    info = _info(graph, index, path)
    ops_before = Counter(node.op for node in graph.node)
    protected = _fetched(info, outputs)
    decisions = make_plan(index, mode, protected, target)
    result = _rewrite.apply(graph, index, decisions, protected)
    problems = validate.structural(result, outputs)
    if problems:
        raise RuntimeError(f"internal error: the rewrite produced an invalid graph: {problems[0]}")
    report = RewriteReport(info, mode, [entry(d) for d in decisions], len(result.node),
                           dict(sorted(ops_before.items())),
                           dict(sorted(Counter(node.op for node in result.node).items())), target=target)
    if verify is not None:
        options = replace(verify, outputs=tuple(verify.outputs) or tuple(outputs))
        trace = [d.finding.output for d in decisions]
        checked = _verify.verify(graph_def, result, options, trace=trace)
        report.verification = asdict(checked)
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
    try:
        with np.errstate(all="ignore"):
            yield
    except BnRewriteError as error:
        if error.path or not path:
            raise
        raise type(error)(error.problem, path) from None


def _fetched(info: GraphInfo, outputs: Sequence[str]) -> frozenset[str]:
    """Nodes whose values callers read: the graph's outputs and any they name."""
    return frozenset(info.outputs) | {names.node_of(output) for output in outputs}


def _info(graph: Any, index: GraphIndex, path: str | None) -> GraphInfo:
    return GraphInfo(path=path, nodes=len(graph.node), producer=int(graph.versions.producer),
                     inputs=index.inferred_inputs(), outputs=index.inferred_outputs())
