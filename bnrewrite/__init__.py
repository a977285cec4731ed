"""bnrewrite: audit and rewrite batch normalization in TensorFlow 1 frozen graphs.

Public API (never mutates the GraphDef it is given, never prints, raises
BnRewriteError subclasses for problems the caller can fix):

    graph = bnrewrite.load_graph("model.pb")
    report = bnrewrite.audit(graph)          # AuditReport: one entry per batch norm
"""
from __future__ import annotations

from typing import Any

from . import graphio, validate
from .errors import BnRewriteError, GraphLoadError, InvalidGraphError, VerificationError
from .graphio import load_graph, save_graph
from .plan import make_plan
from .report import AuditReport, BatchNormEntry, GraphInfo, entry

__all__ = [
    "AuditReport", "BatchNormEntry", "BnRewriteError", "GraphInfo", "GraphLoadError",
    "InvalidGraphError", "VerificationError", "audit", "load_graph", "save_graph",
]
__version__ = "0.1.0"


def audit(graph_def: Any, path: str | None = None) -> AuditReport:
    """Every batch norm in `graph_def`, its form and parameters, and what the rewrite
    will do with it and why. `path` only labels the report and error messages."""
    graph = graphio.to_internal(graph_def)
    index = validate.check(graph, path)
    info = GraphInfo(path=path, nodes=len(graph.node), producer=int(graph.versions.producer),
                     inputs=index.inferred_inputs(), outputs=index.inferred_outputs())
    return AuditReport(info, [entry(decision) for decision in make_plan(index)])
