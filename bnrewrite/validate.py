"""Structural checks a GraphDef must pass before we reason about it.

Returns problems as sentences instead of raising, so callers can report all of
them or just the first; `check` raises InvalidGraphError for the first.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from . import names
from .errors import InvalidGraphError
from .index import GraphIndex


def problems(index: GraphIndex, outputs: Iterable[str] = ()) -> list[str]:
    found = structural(index.graph_def, outputs)
    cycle = index.find_cycle()
    if cycle:
        found.append(f"cycle: {' -> '.join(cycle)}")
    return found


def structural(graph_def: Any, outputs: Iterable[str] = ()) -> list[str]:
    """Duplicate or empty names, missing ops, dangling inputs and outputs: one pass, no
    index. What the rewrite's result is checked for: every node it adds reads tensors
    that come before the batch norm it replaces, so it cannot close a cycle."""
    found: list[str] = []
    counts = Counter(node.name for node in graph_def.node)
    for name, count in sorted(counts.items()):
        if count > 1:
            found.append(f"duplicate node name '{name}' ({count} nodes)")
    for node in graph_def.node:
        if not node.name:
            found.append("a node has an empty name")
        if not node.op:
            found.append(f"node '{node.name}' has no op")
        for ref in node.input:
            if names.node_of(ref) not in counts:
                found.append(f"node '{node.name}' reads '{ref}', which is not in the graph")
    for output in outputs:
        if names.node_of(output) not in counts:
            found.append(f"output '{output}' is not in the graph")
    return found


def check(graph_def: Any, path: str | None = None, outputs: Iterable[str] = ()) -> GraphIndex:
    """Index a graph, raising InvalidGraphError for the first problem found."""
    index = GraphIndex(graph_def)
    found = problems(index, outputs)
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise InvalidGraphError(found[0] + more, path)
    return index
