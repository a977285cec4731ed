"""Apply a plan to a graph, building a new one: the one place that edits.

Each batch norm's output keeps its node name (the new BiasAdd, Add or
fused op takes it), so consumers and fetched names stay valid. New nodes
are named after the host or the batch norm, deterministically. Only the nodes the
rewrite made dead are pruned, and with them the control edges that only kept a dead
constant read alive. The input graph is never changed: a node that must change is copied
first, so the nodes are copied once, into the result.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from . import names, nodes, tensors, validate
from .errors import InvalidGraphError
from .findings import Finding
from .folds import BACKWARD, Fold
from .hosts import HOSTS
from .index import GraphIndex
from .plan import FOLD, Decision, Fuse, make_plan
from .prune import prune


class _Editor:
    def __init__(self, graph: Any, index: GraphIndex) -> None:
        self.graph, self.index = graph, index
        self.by_name = index.nodes
        self.taken: set[str] = set()  # names given to new nodes (the old ones are in by_name)
        self.before: dict[str, list[Any]] = defaultdict(list)
        self.replacements: dict[str, Any] = {}
        # New and changed nodes go straight into the result, which is put in order at the
        # end: a NodeDef of its own carries its own protobuf arena (about 1.4 KB against
        # 0.55 KB in a graph), and a scratch graph would be copied once more.
        self.out = type(graph)()

    def own(self, node: Any) -> Any:
        kept = self.out.node.add()
        kept.CopyFrom(node)
        return kept

    def put(self, name: str, node: Any) -> None:
        """`node` takes the place of node `name` (of any copy made of it before)."""
        if name in self.replacements:
            self.replacements[name].name = ""  # superseded: dropped when the result is ordered
        self.replacements[name] = self.own(node)

    def fresh(self, base: str) -> str:
        name, n = base, 0
        while name in self.taken or name in self.by_name:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def add(self, node: Any, before: str) -> str:
        self.before[before].append(self.own(node))
        return node.name

    def const(self, base: str, value: np.ndarray, before: str) -> str:
        return self.add(nodes.const(self.fresh(base), value, self.by_name[before].device), before)

    def replace(self, finding: Finding, node: Any) -> None:
        """`node` takes the batch norm's name; control inputs of what it replaces move to it."""
        old = self.by_name[finding.output]
        node.device = old.device
        controls = []
        for name in sorted(finding.nodes, key=self.index.topo_position.__getitem__):
            for ref in self.by_name[name].input:
                if ref.startswith("^") and names.node_of(ref) not in finding.nodes and ref not in controls:
                    controls.append(ref)
        node.input.extend(controls)
        self.put(finding.output, node)

    def edit(self, name: str) -> Any:
        """A copy of node `name` to change, which takes its place in the result."""
        if name not in self.replacements:
            self.replacements[name] = self.own(self.by_name[name])
        return self.replacements[name]

    def result(self, candidates: set[str]) -> tuple[Any, list[str]]:
        """The new graph: every field of the old one, its nodes with additions and
        replacements in place, and the candidates nothing reads any more pruned; and the
        control edges dropped with them. Checked where it changed (validate.edited)."""
        added = {node.name: node for nodes_before in self.before.values() for node in nodes_before}
        dead, strip = prune(self.index, self.replacements, added.values(), candidates)
        dropped = []
        for name, gone in strip.items():
            node = added[name] if name in added else self.edit(name)
            node.input[:] = [ref for ref in node.input if ref not in gone]
            dropped += [f"{ref} -> {name}" for ref in gone]
        problems = validate.edited(lambda name: name in added or (name in self.by_name and name not in dead),
                                   [*self.replacements.values(), *added.values()])
        if problems:
            raise RuntimeError(f"internal error: the rewrite produced an invalid graph: {problems[0]}")
        out = self.out
        for descriptor, value in self.graph.ListFields():
            if descriptor.name == "node":
                continue
            if descriptor.message_type is None:
                setattr(out, descriptor.name, value)
            else:
                getattr(out, descriptor.name).CopyFrom(value)
        # A node's place: its old one, with the additions before the node they serve, in
        # the order they were made (an int: 25k tuples would cost megabytes at the peak).
        untouched, position, step = [], {}, 1 + max(map(len, self.before.values()), default=0)
        for i, (name, node) in enumerate(zip(self.index.order, self.graph.node)):
            for j, new in enumerate(self.before.get(name, ())):
                position[new.name] = i * step + j
            if name not in dead:
                position[name] = i * step + step - 1
                if name not in self.replacements:
                    untouched.append(node)
        out.node.extend(untouched)
        superseded = len(self.graph.node) * step
        out.node.sort(key=lambda node: position.get(node.name, superseded))
        del out.node[len(position):]
        return out, sorted(dropped)


def apply(graph: Any, index: GraphIndex, decisions: Iterable[Decision], protected: set[str]
          ) -> tuple[Any, list[str]]:
    """A new GraphDef with every fold and fuse applied and the dead pruned, and the control
    edges dropped with them ("^source -> consumer"); `index` must have been built on
    `graph`, which is left as it was."""
    editor = _Editor(graph, index)
    candidates: set[str] = set()
    for decision in decisions:
        finding, outcome = decision.finding, decision.outcome
        if isinstance(outcome, Fuse):
            _FUSERS[outcome.kind](editor, finding, outcome.op)
        elif isinstance(outcome, Fold) and outcome.direction == BACKWARD:
            _fold(editor, decision)
            candidates |= {node for node, _ in decision.host.links} | decision.host.param_nodes
        elif isinstance(outcome, Fold):
            _fold_forward(editor, finding, outcome)
            candidates |= set(decision.readers.chain).union(
                *(c.param_nodes | {c.bias_node} - {None} for c in decision.readers.consumers))
        else:
            continue
        candidates |= finding.nodes | finding.param_nodes
        if not isinstance(outcome, Fold) or outcome.direction == BACKWARD:
            protected = protected | {finding.output}  # its name now gives the same value
    index.forget_values()
    return editor.result(candidates - protected)


def planned(graph: Any, index: GraphIndex, mode: str, protected: frozenset[str], target: str = "tf2",
            decide_only: bool = False) -> tuple[Any | None, list[Decision], list[str]]:
    """Plan and apply; then fold the batch norms that waited for a consumer whose weights
    took a backward fold in the same pass ("consumer-folded"): planned again on the
    result, where those weights are plain constants. Returns the graph, one decision per
    batch norm of the original (the second pass's outcome where it folded one), and the
    control edges dropped. The audit shows these decisions, so it says what this does;
    it asks `decide_only`, and gets no graph unless a second pass needed one."""
    decisions = make_plan(index, mode, protected, target)
    if decide_only and not any(d.reason == "consumer-folded" for d in decisions):
        return None, decisions, []
    result, dropped = apply(graph, index, decisions, protected)
    waiting = {d.finding.output: d for d in decisions if d.reason == "consumer-folded"}
    if not waiting:
        return result, decisions, dropped
    second_index = GraphIndex(result)
    second = [d for d in make_plan(second_index, mode, protected, target)
              if d.finding.output in waiting and d.action == FOLD]
    if not second:
        return result, decisions, dropped
    result, more = apply(result, second_index, second, protected)
    folded = {d.finding.output: replace(d, finding=waiting[d.finding.output].finding,
                                        detail=f"{d.detail}, after the backward folds") for d in second}
    return result, [folded.get(d.finding.output, d) for d in decisions], sorted(dropped + more)


def _dtype(index: GraphIndex, node: str) -> int:
    dtype = index.attr(node, "T", kind=int)
    if tensors.numpy_dtype(dtype) is None:
        raise InvalidGraphError(f"node '{node}' has no numeric type attribute 'T'")
    return dtype


def _new_weights(ed: _Editor, node: Any, weights: np.ndarray) -> None:
    """A new constant, never the old one overwritten: other ops may share it."""
    node.input[HOSTS[node.op].weights_input] = ed.const(f"{node.name}/bn_folded/weights", weights, node.name)


def _fold(ed: _Editor, decision: Decision) -> None:
    finding, host = decision.finding, decision.host
    for edit in decision.outcome.edits:
        _new_weights(ed, ed.edit(edit.node), edit.weights)
    if host.bypass:  # a bias inside the chain: it is now part of the folded bias
        reader, tensor = host.bypass
        ed.edit(reader).input[0] = tensor
    dtype = _dtype(ed.index, host.node)
    bias = decision.outcome.bias.astype(tensors.numpy_dtype(dtype))
    bias_name = ed.const(f"{host.node}/bn_folded/bias", bias, finding.output)
    layout = "NHWC" if host.channel_axis == -1 else "NCHW"
    ed.replace(finding, nodes.bias_add(finding.output, host.output, bias_name, dtype, layout))


def _fold_forward(ed: _Editor, finding: Finding, fold: Fold) -> None:
    """Each consumer reads the batch norm's input with scaled weights; the shift enters
    as a bias after it (merged into its BiasAdd, or a BiasAdd taking its name)."""
    controls = [ref for name in sorted(finding.nodes) for ref in ed.by_name[name].input if ref.startswith("^")
                and names.node_of(ref) not in finding.nodes]
    for edit in fold.edits:
        entry = ed.edit(edit.entry)
        entry.input[0] = finding.x
        entry.input.extend(ref for ref in controls if ref not in entry.input)
        node = ed.edit(edit.node)
        _new_weights(ed, node, edit.weights)
        if edit.bias is None:
            continue
        dtype = _dtype(ed.index, edit.node)
        bias = ed.const(f"{edit.node}/bn_folded/bias", edit.bias.astype(tensors.numpy_dtype(dtype)), edit.node)
        if edit.bias_node is not None:
            ed.edit(edit.bias_node).input[1] = bias
            continue
        moved = type(node)()
        moved.CopyFrom(node)
        moved.name = ed.fresh(f"{edit.node}/bn_folded/unbiased")
        ed.add(moved, edit.node)
        layout = "NCHW" if ed.index.attr(edit.node, "data_format", "NHWC", str).startswith("NC") else "NHWC"
        ed.put(edit.node, nodes.bias_add(edit.node, moved.name, bias, dtype, layout, node.device))


def _fuse_op(ed: _Editor, finding: Finding, op: str) -> None:
    """FusedBatchNorm* or BatchNormWithGlobalNormalization -> `op`, over the same tensors."""
    gamma = finding.inputs.get("gamma") or ed.const(
        f"{finding.output}/bn_ones", np.ones(finding.channels, np.float32), finding.output)
    inputs = [finding.x, gamma, finding.inputs["beta"], finding.inputs["mean"], finding.inputs["variance"]]
    layout = ed.index.attr(finding.output, "data_format", "NHWC", str)
    ed.replace(finding, nodes.fused_batch_norm(
        finding.output, inputs, _dtype(ed.index, finding.output), finding.epsilon, layout, False, op))


def _scale_and_shift(ed: _Editor, finding: Finding, op: str) -> None:
    """x * scale + offset with constant vectors laid out along the channel axis (`op`, the
    fused op other kinds build, does not apply: this one is always Mul and Add). A chain
    with FakeQuant ops gets that per stretch between them, each FakeQuant rewired in
    between, and a stretch's Mul or Add only where it changes something."""
    out = finding.output
    dtype = _dtype(ed.index, out)
    layout = (finding.channels,) + (1,) * (-finding.channel_axis - 1)
    as_x = tensors.numpy_dtype(dtype)
    quants = finding.chain.fake_quants if finding.chain is not None else ()
    tensor = finding.x
    for i, (scale, offset) in enumerate(finding.segments()):
        before = quants[i] if i < len(quants) else out
        if not quants or np.any(scale != 1):
            scale_name = ed.const(f"{out}/bn_scale", scale.reshape(layout).astype(as_x), before)
            tensor = ed.add(nodes.binary(ed.fresh(f"{out}/bn_mul"), "Mul", tensor, scale_name, dtype), before)
        if before == out:
            offset_name = ed.const(f"{out}/bn_offset", offset.reshape(layout).astype(as_x), out)
            ed.replace(finding, nodes.binary(out, "Add", tensor, offset_name, dtype))
            return
        if np.any(offset != 0):
            offset_name = ed.const(f"{out}/bn_offset", offset.reshape(layout).astype(as_x), before)
            tensor = ed.add(nodes.binary(ed.fresh(f"{out}/bn_add"), "Add", tensor, offset_name, dtype), before)
        ed.edit(before).input[0] = tensor
        tensor = before


def _fuse_training(ed: _Editor, finding: Finding, op: str) -> None:
    """Batch statistics over all axes but the last: one `op`(is_training=true),
    through a [1, -1, 1, C] reshape when x is not 4-D (the statistics are unchanged)."""
    gamma, beta = (finding.vector(role).astype(np.float32) for role in ("gamma", "beta"))
    out = finding.output
    dtype = _dtype(ed.index, out)
    empty = ed.const(f"{out}/bn_empty", np.zeros(0, np.float32), out)
    params = [ed.const(f"{out}/bn_gamma", gamma, out), ed.const(f"{out}/bn_beta", beta, out), empty, empty]
    if len(finding.axes) == 3:
        ed.replace(finding, nodes.fused_batch_norm(out, [finding.x, *params], dtype, finding.epsilon,
                                                   "NHWC", True, op))
        return
    target = ed.const(f"{out}/bn_4d_shape", np.array([1, -1, 1, finding.channels], np.int32), out)
    as_4d = ed.add(nodes.reshape(ed.fresh(f"{out}/bn_to_4d"), finding.x, target, dtype), out)
    fused = ed.add(nodes.fused_batch_norm(ed.fresh(f"{out}/bn_fused"), [as_4d, *params], dtype,
                                          finding.epsilon, "NHWC", True, op), out)
    original = ed.add(nodes.shape(ed.fresh(f"{out}/bn_shape"), finding.x, dtype), out)
    ed.replace(finding, nodes.reshape(out, fused, original, dtype))


# plan.FUSED_AS names the replacement; these build it.
_FUSERS = {"fused-op": _fuse_op, "fused-training": _fuse_training, "scale-shift": _scale_and_shift}
