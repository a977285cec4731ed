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
    found: list[str] = []
    for name, count in sorted(Counter(index.order).items()):
        if count > 1:
            found.append(f"duplicate node name '{name}' ({count} nodes)")
    for node in index.graph_def.node:
        if not node.name:
            found.append("a node has an empty name")
        if not node.op:
            found.append(f"node '{node.name}' has no op")
        for ref in node.input:
            if names.node_of(ref) not in index.nodes:
                found.append(f"node '{node.name}' reads '{ref}', which is not in the graph")
    for output in outputs:
        if names.node_of(output) not in index.nodes:
            found.append(f"output '{output}' is not in the graph")
    cycle = index.find_cycle()
    if cycle:
        found.append(f"cycle: {' -> '.join(cycle)}")
    return found


def check(graph_def: Any, path: str | None = None, outputs: Iterable[str] = ()) -> GraphIndex:
    """Index a graph, raising InvalidGraphError for the first problem found."""
    index = GraphIndex(graph_def)
    found = problems(index, outputs)
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise InvalidGraphError(found[0] + more, path)
    return index
