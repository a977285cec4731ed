"""Resolve the learning phase: placeholders set to constants (`--set NAME=VALUE`,
`--set-defaults`), and the v1 Switch/Merge conds those constants decide wired through.

The one place that decides what is dead. A Switch whose predicate is a set constant
(through Identity) forwards its data input on the taken port (0 = false, 1 = true) and
nothing on the other. As in TensorFlow's executor, deadness flows forward: a node with a
dead data or control input is dead, except a Merge, which is dead only when all its
inputs are. A Merge left with one live input becomes that input (its value_index output a
constant). What only fed the dead (the training subgraph of a Keras 2.0 batch norm,
computed outside the cond from moments) loses its last reader and is pruned. Switches the
constants do not decide, and while-loop frames (a Merge fed by NextIteration is never
resolved, and no predicate is followed through Enter), are left exactly as they are.
No TensorFlow here; the caller's GraphDef is never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from tensorboard.compat.proto import node_def_pb2

from . import graphio, names, nodes, tensors
from .errors import BnRewriteError
from .index import BACK_EDGES, GraphIndex

SWITCHES = frozenset({"Switch", "RefSwitch"})
MERGES = frozenset({"Merge", "RefMerge"})
FORWARD = frozenset({"Identity", "Snapshot"})  # a predicate keeps its value through these
SETTABLE = frozenset({"Placeholder", "PlaceholderV2", "PlaceholderWithDefault"})
BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


class SetError(BnRewriteError):
    """A --set names no placeholder, or a value its dtype cannot hold (exit 2)."""


@dataclass
class Resolution:
    values: dict[str, Any] = field(default_factory=dict)  # placeholder -> the constant's value
    switches: list[str] = field(default_factory=list)  # Switches decided and wired through
    merges: list[str] = field(default_factory=list)  # Merges left with one live input
    pruned: int = 0  # nodes removed: dead, or read only by the dead

    def describe(self) -> str:
        values = ", ".join(f"{k}={_show(v)}" for k, v in self.values.items()) or "nothing"
        return (f"set {values}: {len(self.switches)} Switch and {len(self.merges)} Merge resolved, "
                f"{self.pruned} nodes pruned")


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(graph_def: Any, values: Mapping[str, Any] = {}, defaults: bool = False,
            keep: Iterable[str] = ()) -> tuple[Any, Resolution]:
    """A new graph in which each placeholder of `values` (and, with `defaults`, every
    PlaceholderWithDefault with a constant default) is a Const, and the conds these decide
    are resolved. `keep` names nodes callers fetch: SetError if one would be pruned."""
    graph = graphio.to_internal(graph_def)
    index = GraphIndex(graph)
    resolution = Resolution(values=_constants(index, values, defaults))
    sinks = {n for n in index.order if not index.node_consumers(n)}
    for name, value in resolution.values.items():
        old = index.nodes[name]
        dtype = tensors.numpy_dtype(old.attr["dtype"].type)
        shape = tensors.shape_of(old.attr["shape"].shape) if "shape" in old.attr else None
        array = np.asarray(value, dtype)
        if shape is not None and min(shape, default=0) >= 0:
            if math.prod(shape) > tensors.MAX_ELEMENTS:
                raise SetError(f"--set {name}: its shape {list(shape)} is too large for a constant")
            array = np.full(shape, value, dtype)
        old.CopyFrom(nodes.const(name, array, old.device))
    index = GraphIndex(graph)
    dead, rewire, merges = _deadness(index, set(resolution.values), resolution)
    kept = {names.node_of(k) for k in keep}
    lost = sorted(kept & dead)
    if lost:
        raise SetError(f"--set leaves '{lost[0]}' in a branch that no longer runs, but it is fetched")
    out = _rebuild(index, dead, rewire, merges, set(resolution.switches), set(resolution.values))
    roots = (sinks - dead) | (kept & set(index.nodes))
    needed = _ancestors(out, roots)
    result = type(graph)()
    result.CopyFrom(graph)
    del result.node[:]
    result.node.extend(_colocated_within(node, needed) for node in out if node.name in needed)
    resolution.pruned = len(graph.node) - len(result.node)
    return result, resolution


def _constants(index: GraphIndex, values: Mapping[str, Any], defaults: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if defaults:
        for name in index.inferred_inputs():
            node = index.nodes[name]
            default = index.const_value(node.input[0]) if node.op == "PlaceholderWithDefault" and node.input else None
            if default is not None and (default.value.dtype == np.bool_ or np.issubdtype(default.value.dtype, np.number)):
                found[name] = default.value.tolist()  # a plain value: reports are JSON
    for name, value in values.items():
        node = index.nodes.get(name)
        if node is None or node.op not in SETTABLE:
            raise SetError(f"--set {name}: the graph has no placeholder named '{name}'")
        found[name] = _typed(name, value, tensors.numpy_dtype(node.attr["dtype"].type))
    return found


def _typed(name: str, value: Any, dtype: Any) -> Any:
    """`value` (a Python value, or its spelling on the command line) as the placeholder's
    dtype: bool, int or float; SetError for anything that does not fit exactly."""
    text = str(value).strip().lower()
    try:
        if dtype == np.bool_:
            if text not in BOOL_WORDS:
                raise ValueError
            return BOOL_WORDS[text]
        if dtype is not None and np.issubdtype(dtype, np.integer):
            return int(text)
        if dtype is not None and np.issubdtype(dtype, np.floating):
            return float(text)
    except ValueError:
        pass
    kind = "not bool, int or float" if dtype is None else np.dtype(dtype).name
    raise SetError(f"--set {name}={value}: the placeholder is {kind} and cannot hold that value")


def _predicate(index: GraphIndex, tensor: str, decided: Mapping[str, bool]) -> bool | None:
    """The value a Switch's predicate always has, when a set constant decides it."""
    source, _ = index.skip_passthrough(tensor, FORWARD)
    return decided.get(names.node_of(source)) if names.parse(source).index == 0 else None


def _deadness(index: GraphIndex, set_nodes: set[str], resolution: Resolution
              ) -> tuple[set[str], dict[str, str], dict[str, tuple[str, int]]]:
    """Dead nodes, tensor rewiring (resolved Switch port -> its data input, Merge -> its
    live input), and each resolved Merge's live input and its position."""
    decided = {n: bool(np.asarray(tensors.to_numpy(index.nodes[n].attr["value"].tensor)).reshape(-1)[0])
               for n in set_nodes}
    dead: set[str] = set()
    dead_ports: set[str] = set()
    rewire: dict[str, str] = {}
    merges: dict[str, tuple[str, int]] = {}
    position = index.topo_position

    def is_dead(ref: str) -> bool:
        return names.node_of(ref) in dead or names.canonical(ref) in dead_ports

    for name in sorted(index.nodes, key=position.get):
        node = index.nodes[name]
        data = index.data_inputs(name)
        controls = [names.node_of(r) for r in node.input if r.startswith("^")]
        if node.op in MERGES:
            # A loop's Merge runs its NextIteration only once its Enter ran: it lives or dies with its Enters.
            back = {t for t in data if names.node_of(t) in index.nodes and index.nodes[names.node_of(t)].op in BACK_EDGES}
            live = [(i, t) for i, t in enumerate(data) if t not in back and not is_dead(t)]
            if not live:
                dead.add(name)
            elif len(live) == 1 and len(data) > 1 and not back:
                merges[name] = (live[0][1], live[0][0])
                rewire[name] = live[0][1]
                resolution.merges.append(name)
            continue
        if any(map(is_dead, data)) or any(c in dead for c in controls):
            dead.add(name)
        elif node.op in SWITCHES and len(data) == 2:
            value = _predicate(index, data[1], decided)
            if value is not None:
                taken = int(value)
                dead_ports.add(names.tensor_name(name, 1 - taken))
                rewire[names.tensor_name(name, taken)] = data[0]
                resolution.switches.append(name)
    return dead, rewire, merges


def _rebuild(index: GraphIndex, dead: set[str], rewire: dict[str, str], merges: dict[str, tuple[str, int]],
             switches: set[str], set_nodes: set[str]) -> list[Any]:
    """Every live node, inputs rewired; a resolved Merge becomes an Identity of its live
    input (kept only if fetched), and its value_index a constant."""
    def follow(ref: str) -> str:
        seen = set()
        while ref in rewire and ref not in seen:
            seen.add(ref)
            ref = rewire[ref]
        return ref

    def control_source(name: str) -> str:
        """A control edge from a resolved Switch or Merge now waits on what it forwarded."""
        while name in switches or name in merges:
            name = names.node_of(follow(index.data_inputs(name)[0] if name in switches else name))
        return name

    # Control edges onto nodes that only carry a set constant (the cond's pivots) order nothing.
    constant = set(set_nodes)
    for name in sorted(index.nodes, key=index.topo_position.get):
        node = index.nodes[name]
        if node.op in FORWARD | SWITCHES and node.input and names.node_of(follow(names.canonical(node.input[0]))) in constant:
            constant.add(name)
    value_index = {m: m + "/value_index" for m in merges if 1 in index.used_outputs(m)}
    out = []
    for node in index.graph_def.node:
        name = node.name
        if name in dead or name in switches:
            continue
        copy = node_def_pb2.NodeDef()
        copy.CopyFrom(node)
        if name in merges:
            copy = node_def_pb2.NodeDef(name=name, op="Identity", input=[merges[name][0]], device=node.device)
            copy.attr["T"].CopyFrom(node.attr["T"])
            if name in value_index:
                out.append(nodes.const(value_index[name], np.int32(merges[name][1]), node.device))
        inputs = []
        for ref in copy.input:
            parsed = names.parse(ref)
            if parsed.control:
                source = control_source(parsed.node)
                if source in dead or source in constant:
                    continue
                ref = "^" + source
            elif parsed.node in value_index and parsed.index == 1:
                ref = value_index[parsed.node]
            elif follow(names.canonical(ref)) != names.canonical(ref):  # others keep their spelling
                ref = follow(names.canonical(ref))
            if not (ref.startswith("^") and ref in inputs):
                inputs.append(ref)
        del copy.input[:]
        copy.input.extend(inputs)
        out.append(copy)
    return out


def _colocated_within(node: Any, kept: set[str]) -> Any:
    """Colocation is a placement hint: one with a pruned node is dropped, not an error."""
    if "_class" in node.attr:
        hints = [h for h in node.attr["_class"].list.s if not h.startswith(b"loc:@") or h[5:].decode() in kept]
        del node.attr["_class"].list.s[:]
        node.attr["_class"].list.s.extend(hints)
        if not hints:
            del node.attr["_class"]
    return node


def _ancestors(graph_nodes: list[Any], roots: set[str]) -> set[str]:
    producers = {node.name: [names.node_of(ref) for ref in node.input] for node in graph_nodes}
    found, frontier = set(), [r for r in roots if r in producers]
    while frontier:
        name = frontier.pop()
        if name in found:
            continue
        found.add(name)
        frontier.extend(p for p in producers.get(name, ()) if p not in found)
    return found
