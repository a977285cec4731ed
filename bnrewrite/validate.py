"""Structural checks a GraphDef must pass before we reason about it.

Returns problems as sentences instead of raising, so callers can report all of
them or just the first; `check` raises InvalidGraphError for the first.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from . import names
from .errors import InvalidGraphError
from .index import GraphIndex


def problems(index: GraphIndex, outputs: Iterable[str] = ()) -> list[str]:
    """structural's findings, from the index's one pass, and a cycle."""
    found = []
    if len(index.order) != len(index.nodes):
        counts = Counter(index.order)
        found += [f"duplicate node name '{name}' ({count} nodes)" for name, count in sorted(counts.items())
                  if count > 1]
    if "" in index.nodes:
        found.append("a node has an empty name")
    found += [f"node '{node.name}' has no op" for node in index.nodes.values() if not node.op]
    for source in index.missing():
        for reader in dict.fromkeys(index.readers(source)):
            found += [f"node '{reader}' reads '{ref}', which is not in the graph"
                      for ref in index.nodes[reader].input if names.node_of(ref) == source]
    found += [f"output '{output}' is not in the graph" for output in outputs
              if names.node_of(output) not in index.nodes]
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


def edited(present: Callable[[str], bool], touched: Iterable[Any]) -> list[str]:
    """The check of a rewrite's result, where it changed: the nodes it made or changed
    have an op and read only nodes `present` in the result. (Every other node reads what it
    read before, and pruning removes only what nothing reads.)"""
    found = [f"node '{node.name}' has no op" for node in touched if not node.op]
    return found + [f"node '{node.name}' reads '{ref}', which is not in the graph"
                    for node in touched for ref in node.input if not present(names.node_of(ref))]


def check(graph_def: Any, path: str | None = None, outputs: Iterable[str] = ()) -> GraphIndex:
    """Index a graph, raising InvalidGraphError for the first problem found."""
    index = GraphIndex(graph_def)
    found = problems(index, outputs)
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise InvalidGraphError(found[0] + more, path)
    return index
