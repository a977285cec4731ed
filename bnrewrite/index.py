"""GraphIndex: a read-only view of a GraphDef that the matcher and planner query.

It answers: which node has this name, who reads a node's outputs, what constant value
does this tensor carry (looking through the Identity/Snapshot/Switch/Cast chains that
freezing and control flow leave between a Const and its use), and in which order do
nodes run.
"""
from __future__ import annotations

import sys
from collections import defaultdict, deque
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from . import names, tensors
from .errors import InvalidGraphError

# Ops that forward input 0 unchanged: the one set the matcher, the affine analysis, the
# plan and the rewrite look through. Where the meaning allows, users extend it: a Switch
# forwards a value on whichever port is taken (so a constant reaches both branches),
# and the matcher also takes a Cast between two ops of a pattern.
PASSTHROUGH = frozenset({"Identity", "Snapshot", "StopGradient", "PreventGradient"})
THROUGH_SWITCH = PASSTHROUGH | {"Switch"}
# Ops that consume nothing of the value and are never a fetched output.
NOT_OUTPUTS = frozenset(
    {"NoOp", "Assert", "Const", "Placeholder", "PlaceholderWithDefault", "SaveV2", "Save",
     "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints", "Print", "PrintV2"}
)
BACK_EDGES = frozenset({"NextIteration", "RefNextIteration"})  # while loops: not an ordering
INPUT_OPS = frozenset({"Placeholder", "PlaceholderWithDefault", "PlaceholderV2"})


def colocated_with(node: Any) -> list[str]:
    """Nodes `node` asks to be placed with ("loc:@name" in its _class attribute)."""
    if "_class" not in node.attr:
        return []
    return [s.decode()[5:] for s in node.attr["_class"].list.s if s.startswith(b"loc:@")]


class ConstValue(NamedTuple):
    value: np.ndarray
    chain: tuple[str, ...]  # nodes from the use back to the Const, Const last


class GraphIndex:
    def __init__(self, graph_def: Any) -> None:
        self.graph_def = graph_def
        self.nodes: dict[str, Any] = {}
        self.order: list[str] = []
        self.ops: list[str] = []  # op of each node in `order`: every pass over all nodes wants it
        # Most tensors have one reader and only output 0 read: lists and one set of
        # "output 0 is read" keep a 50k-node index tens of MB smaller than a set each.
        self._users: dict[str, list[str]] = defaultdict(list)
        self._reads_first: set[str] = set()
        self._other_ports: dict[str, set[int]] = defaultdict(set)
        # Names are interned: a node's name and every reference to it share one string.
        intern = sys.intern
        for node in graph_def.node:
            name = intern(node.name)
            self.nodes.setdefault(name, node)
            self.order.append(name)
            self.ops.append(intern(node.op))
            for ref in node.input:
                if ":" not in ref and not ref.startswith("^"):  # most references: output 0
                    source = intern(ref)
                    self._users[source].append(name)
                    self._reads_first.add(source)
                    continue
                parsed = names.parse(ref)
                source = intern(parsed.node)
                self._users[source].append(name)
                if parsed.control:
                    continue
                if parsed.index == 0:
                    self._reads_first.add(source)
                else:
                    self._other_ports[source].add(parsed.index)
        self._const_cache: dict[str, ConstValue | None] = {}
        self._inputs: dict[str, tuple[str, ...]] = {}

    def node(self, ref: str) -> Any | None:
        found = self.nodes.get(ref)  # a tensor name without a port is its node's name
        return found if found is not None else self.nodes.get(names.node_of(ref))

    def data_inputs(self, name: str) -> tuple[str, ...]:
        """The tensors node `name` reads, canonical; kept, since every pass asks again."""
        found = self._inputs.get(name)
        if found is None:
            found = self._inputs[name] = tuple(
                sys.intern(names.canonical(ref)) for ref in self.nodes[name].input if not ref.startswith("^"))
        return found

    def forget_values(self) -> None:
        """Drop the memoised constants and inputs (they are recomputed if asked again):
        once a plan is made, the memory is worth more to the graph being built."""
        self._const_cache.clear()
        self._inputs.clear()

    def readers(self, name: str) -> list[str]:
        """Nodes that read any output of `name`, once per reference, data or control."""
        return self._users.get(name, [])

    def missing(self) -> list[str]:
        """Names that nodes read but no node has."""
        return [source for source in self._users if source not in self.nodes]

    @cached_property
    def colocated(self) -> dict[str, list[str]]:
        """name -> the nodes asking to be placed with it (its "loc:@name" in their _class)."""
        found: dict[str, list[str]] = defaultdict(list)
        for name, targets in self._placements.items():
            for target in targets:
                found[target].append(name)
        return found

    def placed_with(self, name: str) -> list[str]:
        """The nodes node `name` asks to be placed with."""
        return self._placements.get(name, [])

    @cached_property
    def _placements(self) -> dict[str, list[str]]:
        return {name: targets for name, node in self.nodes.items() if (targets := colocated_with(node))}

    def node_consumers(self, name: str) -> set[str]:
        """Every node that reads any output of `name`, data or control."""
        return set(self.readers(name))

    def used_outputs(self, name: str) -> set[int]:
        """Output ports of `name` that some node reads as data."""
        first = {0} if name in self._reads_first else set()
        return first | self._other_ports.get(name, set())

    def attr(self, name: str, key: str, default: Any = None, kind: type | None = None) -> Any:
        """An attribute's value (strings decoded, a dtype as its enum), or `default` when
        absent; with `kind`, a value of another kind is a malformed graph (exit 2)."""
        node = self.nodes[name]
        if key not in node.attr:
            return default
        value = node.attr[key]
        which = value.WhichOneof("value")
        if which == "s":
            result = value.s.decode("utf-8", "replace")
        elif which == "list":
            result = list(value.list.i) or [s.decode("utf-8", "replace") for s in value.list.s]
        else:
            result = getattr(value, which) if which else default
        if kind is not None and result is not None and type(result) is not kind:
            raise InvalidGraphError(f"node '{name}': attribute '{key}' holds {which or 'nothing'}, "
                                    f"not a {kind.__name__}")
        return result

    def skip_passthrough(self, tensor: str, ops: frozenset[str] = THROUGH_SWITCH
                         ) -> tuple[str, tuple[str, ...]]:
        """Follow Identity-like ops back to the tensor that really produces the value."""
        chain: list[str] = []
        seen = set()
        while True:
            node = self.node(tensor)
            if node is None or node.op not in ops or not node.input or node.name in seen:
                return names.canonical(tensor), tuple(chain)
            seen.add(node.name)
            chain.append(node.name)
            tensor = names.canonical(node.input[0])

    def const_value(self, tensor: str) -> ConstValue | None:
        """The constant a tensor always carries, through pass-through ops and Casts."""
        tensor = names.canonical(tensor)
        if tensor not in self._const_cache:
            self._const_cache[tensor] = None  # guards against cycles through Cast chains
            self._const_cache[tensor] = self._resolve_const(tensor)
        return self._const_cache[tensor]

    def _resolve_const(self, tensor: str) -> ConstValue | None:
        source, chain = self.skip_passthrough(tensor)
        node = self.node(source)
        if node is None:
            return None
        if node.op == "Const" and names.parse(source).index == 0 and "value" in node.attr:
            value = tensors.to_numpy(node.attr["value"].tensor)
            return None if value is None else ConstValue(value, chain + (node.name,))
        if node.op == "Cast" and node.input:
            inner = self.const_value(node.input[0])
            target = tensors.numpy_dtype(node.attr["DstT"].type)
            if inner is None or target is None:
                return None
            return ConstValue(inner.value.astype(target), chain + (node.name,) + inner.chain)
        return None

    def _forward(self) -> dict[str, list[str]]:
        """Readers of each node that order it before them (while-loop back edges dropped)."""
        return {source: users for source, users in self._users.items()
                if source in self.nodes and self.nodes[source].op not in BACK_EDGES}

    def find_cycle(self) -> list[str] | None:
        """One cycle as producer -> consumer, first == last; None for a DAG."""
        return self._topology[1]

    @cached_property
    def topo_position(self) -> dict[str, int]:
        """A stable topological order: ready nodes in GraphDef order (Kahn)."""
        return self._topology[0]

    @cached_property
    def _topology(self) -> tuple[dict[str, int], list[str] | None]:
        """Order and cycle check in one O(nodes + edges) pass (graphlib would build its
        own graph twice; networkx alone costs 0.18 s to import)."""
        forward = self._forward()  # not kept: 47k entries at 50k nodes
        waiting = dict.fromkeys(self.nodes, 0)
        for users in forward.values():
            for user in users:
                waiting[user] += 1
        ready = deque(name for name, count in waiting.items() if not count)
        position: dict[str, int] = {}
        while ready:
            name = ready.popleft()
            position[name] = len(position)
            for user in forward.get(name, ()):
                waiting[user] -= 1
                if not waiting[user]:
                    ready.append(user)
        if len(position) == len(self.nodes):
            return position, None
        # Every node left waits on another one left: walk producers until one repeats.
        producers: dict[str, list[str]] = defaultdict(list)
        for source, users in forward.items():
            for user in users:
                producers[user].append(source)
        walk, name = [], next(n for n in self.nodes if n not in position)
        while name not in walk:
            walk.append(name)
            name = next(source for source in producers[name] if source not in position)
        loop = walk[walk.index(name):]  # consumer -> producer
        return position, [loop[0], *reversed(loop[1:]), loop[0]]

    def inferred_inputs(self) -> list[str]:
        return [name for name, op in zip(self.order, self.ops) if op in INPUT_OPS]

    def inferred_outputs(self) -> list[str]:
        """Nodes nothing consumes, minus those that cannot be a fetched result."""
        return [name for name, op in zip(self.order, self.ops) if op not in NOT_OUTPUTS and not self._users.get(name)]
