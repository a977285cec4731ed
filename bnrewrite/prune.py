"""What a rewrite made dead: the candidates (the nodes of what it replaced) that nothing
reads any more, by data, control or colocation, found repeatedly, since a dead node's inputs
may die with it. A control edge from a constant read orders nothing: one that is all that
keeps such a read alive goes with it (TF2 exports hang every weight read on a NoOp that way).

Only the readers of candidates (from the index of the original graph) and the nodes the
rewrite made or changed are looked at, never the whole graph: every other node reads what
it read before.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Iterable, Mapping

from . import names
from .index import PASSTHROUGH, GraphIndex, colocated_with


def prune(index: GraphIndex, replaced: Mapping[str, Any], added: Iterable[Any], candidates: set[str]
          ) -> tuple[set[str], dict[str, list[str]]]:
    """(the dead candidates, {live node: its control inputs from dead nodes, to drop}).
    `replaced`: name -> the node taking an original node's place; `added`: new nodes."""
    def current(name: str) -> Any | None:
        return replaced[name] if name in replaced else index.nodes.get(name)

    def placed_with(name: str, node: Any) -> list[str]:
        return colocated_with(node) if name in replaced else index.placed_with(name)

    readers = {reader for name in candidates
               for reader in chain(index.readers(name), index.colocated.get(name, ()))
               if reader not in replaced}
    scanned = [*(index.nodes[reader] for reader in readers), *replaced.values(), *added]
    # Plain dicts, not Counters: this loop runs once per dead node (34k on a 47k-node graph).
    uses: dict[str, int] = {}  # only candidates' uses decide anything
    controls: dict[str, int] = {}
    for node in scanned:
        for ref in node.input:
            source = names.node_of(ref)
            if source in candidates:
                uses[source] = uses.get(source, 0) + 1
                if ref.startswith("^"):
                    controls[source] = controls.get(source, 0) + 1
        for source in colocated_with(node):
            if source in candidates:
                uses[source] = uses.get(source, 0) + 1
    dead: set[str] = set()
    work = list(candidates)  # any order: what dies is whatever no live node reads, a fixpoint
    while work:
        name = work.pop()
        node = current(name)
        used = uses.get(name, 0)
        if name in dead or node is None or used > controls.get(name, 0) or (used and not _pure(current, name)):
            continue
        dead.add(name)
        for ref in node.input:
            source = names.node_of(ref)
            uses[source] = uses.get(source, 0) - 1
            if ref.startswith("^"):
                controls[source] = controls.get(source, 0) - 1
            if source in candidates:
                work.append(source)
        for source in placed_with(name, node):
            uses[source] = uses.get(source, 0) - 1
            if source in candidates:
                work.append(source)
    strip: dict[str, list[str]] = {}
    if any(controls.get(name, 0) for name in dead):
        for node in scanned:
            gone = [ref for ref in node.input if ref.startswith("^") and ref[1:] in dead]
            if gone and node.name not in dead:
                strip[node.name] = gone
    return dead, strip


def _pure(current, name: str) -> bool:
    """A Const, or Identity-like reads of one, with no control inputs of their own."""
    seen = set()
    node = current(name)
    while node is not None and node.name not in seen and not any(r.startswith("^") for r in node.input):
        seen.add(node.name)
        if node.op == "Const":
            return True
        if node.op not in PASSTHROUGH or len(node.input) != 1:
            return False
        node = current(names.node_of(node.input[0]))
    return False
