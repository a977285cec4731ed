"""Structural checks a GraphDef must pass before we reason about it.

Returns problems as sentences instead of raising, so callers can report all of
them or just the first; `check` raises InvalidGraphError for the first.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Sequence

from . import names
from .errors import InvalidGraphError
from .index import GraphIndex


# The input's checks and the result's say the same things the same way.
_NO_OP = "node '{}' has no op"
_DANGLING = "node '{}' reads '{}', which is not in the graph"


def problems(index: GraphIndex, outputs: Iterable[str] = ()) -> list[str]:
    """structural's findings, read off the index's one pass, and a cycle."""
    found = _structural(index, outputs)
    cycle = index.find_cycle()
    if cycle:
        found.append(f"cycle: {' -> '.join(cycle)}")
    return found


def structural(graph_def: Any, outputs: Iterable[str] = ()) -> list[str]:
    """Duplicate or empty names, missing ops, dangling inputs and outputs."""
    return _structural(GraphIndex(graph_def), outputs)


def _structural(index: GraphIndex, outputs: Iterable[str]) -> list[str]:
    found = []
    if len(index.order) != len(index.nodes):
        counts = Counter(index.order)
        found += [f"duplicate node name '{name}' ({count} nodes)" for name, count in sorted(counts.items())
                  if count > 1]
    if "" in index.nodes:
        found.append("a node has an empty name")
    found += [_NO_OP.format(name) for name, op in zip(index.order, index.ops) if not op]
    for source in index.missing():
        for reader in dict.fromkeys(index.readers(source)):
            found += [_DANGLING.format(reader, ref)
                      for ref in index.nodes[reader].input if names.node_of(ref) == source]
    return found + [f"output '{output}' is not in the graph" for output in outputs
                    if names.node_of(output) not in index.nodes]


def edited(present: Callable[[str], bool], touched: Sequence[Any]) -> list[str]:
    """The check of a rewrite's result, where it changed: the nodes it made or changed
    have an op and read only nodes `present` in the result. (Every other node reads what it
    read before, and pruning removes only what nothing reads.)"""
    found = [_NO_OP.format(node.name) for node in touched if not node.op]
    return found + [_DANGLING.format(node.name, ref)
                    for node in touched for ref in node.input if not present(names.node_of(ref))]


def check(graph_def: Any, path: str | None = None, outputs: Iterable[str] = ()) -> GraphIndex:
    """Index a graph, raising InvalidGraphError for the first problem found."""
    index = GraphIndex(graph_def)
    found = problems(index, outputs)
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise InvalidGraphError(found[0] + more, path)
    return index
