"""Apply a plan to a private copy of the graph: the one place that mutates.

Each batch norm's output keeps its node name (the new BiasAdd, Add or
FusedBatchNormV3 takes it), so consumers and fetched names stay valid. New nodes
are named after the host or the batch norm, deterministically. Afterwards, only
the nodes the rewrite made dead are pruned, and with them the control edges that
only kept a dead constant read alive.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable

import numpy as np

from . import names, nodes, tensors
from .errors import InvalidGraphError
from .findings import Finding
from .fold_math import folded_bias, folded_weights
from .hosts import HOSTS
from .index import PASSTHROUGH, GraphIndex
from .plan import FOLD, FUSE, Decision


class _Editor:
    def __init__(self, graph: Any, index: GraphIndex) -> None:
        self.graph, self.index = graph, index
        self.by_name = {node.name: node for node in graph.node}
        self.taken = set(self.by_name)
        self.before: dict[str, list[Any]] = defaultdict(list)
        self.replacements: dict[str, Any] = {}

    def fresh(self, base: str) -> str:
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    def add(self, node: Any, before: str) -> str:
        self.before[before].append(node)
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
        self.replacements[finding.output] = node

    def result(self) -> Any:
        out = type(self.graph)()
        out.CopyFrom(self.graph)
        del out.node[:]
        for node in self.graph.node:
            out.node.extend(self.before.get(node.name, ()))
            out.node.append(self.replacements.get(node.name, node))
        return out


def apply(graph: Any, index: GraphIndex, decisions: Iterable[Decision], protected: set[str]
          ) -> tuple[Any, list[str]]:
    """A new GraphDef with every fold and fuse applied and the dead pruned, and the control
    edges dropped with them ("^source -> consumer"). `graph` must be the private copy
    `index` was built on; it is changed in place."""
    editor = _Editor(graph, index)
    candidates: set[str] = set()
    for decision in decisions:
        if decision.action not in (FOLD, FUSE):
            continue
        finding = decision.finding
        candidates |= finding.nodes | finding.param_nodes
        protected = protected | {finding.output}
        if decision.action == FOLD:
            _fold(editor, decision)
            candidates |= ({decision.host.bias_node} - {None}) | decision.host.param_nodes
        else:
            _FUSERS[decision.fuse_as](editor, finding)
    return _prune(editor.result(), candidates - protected)


def _dtype(index: GraphIndex, node: str) -> int:
    dtype = index.attr(node, "T", kind=int)
    if tensors.numpy_dtype(dtype) is None:
        raise InvalidGraphError(f"node '{node}' has no numeric type attribute 'T'")
    return dtype


def _fold(ed: _Editor, decision: Decision) -> None:
    finding, host = decision.finding, decision.host
    scale, offset = finding.scale_offset(host.channels)
    folded = folded_weights(host.weights, scale, host.weight_axes).astype(host.weights.dtype)
    bias = folded_bias(host.bias, scale, offset)
    dtype = _dtype(ed.index, host.node)
    host_node = ed.by_name[host.node]
    host_node.input[HOSTS[host.op].weights_input] = ed.const(f"{host.node}/bn_folded/weights", folded, host.node)
    bias_name = ed.const(f"{host.node}/bn_folded/bias", bias.astype(tensors.numpy_dtype(dtype)), finding.output)
    layout = "NHWC" if host.channel_axis == -1 else "NCHW"
    ed.replace(finding, nodes.bias_add(finding.output, host.output, bias_name, dtype, layout))


def _fuse_op(ed: _Editor, finding: Finding) -> None:
    """FusedBatchNorm/V2 or BatchNormWithGlobalNormalization -> FusedBatchNormV3, same tensors."""
    gamma = finding.inputs.get("gamma") or ed.const(
        f"{finding.output}/bn_ones", np.ones(finding.channels, np.float32), finding.output)
    inputs = [finding.x, gamma, finding.inputs["beta"], finding.inputs["mean"], finding.inputs["variance"]]
    layout = ed.index.attr(finding.output, "data_format", "NHWC", str)
    ed.replace(finding, nodes.fused_batch_norm_v3(
        finding.output, inputs, _dtype(ed.index, finding.output), finding.epsilon, layout, training=False))


def _scale_and_shift(ed: _Editor, finding: Finding) -> None:
    """x * scale + offset with constant vectors laid out along the channel axis. A chain with
    FakeQuant ops gets that per stretch between them, each FakeQuant rewired in between,
    and a stretch's Mul or Add only where it changes something."""
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
        ed.by_name[before].input[0] = tensor
        tensor = before


def _fuse_training(ed: _Editor, finding: Finding) -> None:
    """Batch statistics over all axes but the last: one FusedBatchNormV3(is_training=true),
    through a [1, -1, 1, C] reshape when x is not 4-D (the statistics are unchanged)."""
    gamma, beta = (finding.vector(role).astype(np.float32) for role in ("gamma", "beta"))
    out = finding.output
    dtype = _dtype(ed.index, out)
    empty = ed.const(f"{out}/bn_empty", np.zeros(0, np.float32), out)
    params = [ed.const(f"{out}/bn_gamma", gamma, out), ed.const(f"{out}/bn_beta", beta, out), empty, empty]
    if len(finding.axes) == 3:
        ed.replace(finding, nodes.fused_batch_norm_v3(out, [finding.x, *params], dtype, finding.epsilon,
                                                      "NHWC", training=True))
        return
    target = ed.const(f"{out}/bn_4d_shape", np.array([1, -1, 1, finding.channels], np.int32), out)
    as_4d = ed.add(nodes.reshape(ed.fresh(f"{out}/bn_to_4d"), finding.x, target, dtype), out)
    fused = ed.add(nodes.fused_batch_norm_v3(ed.fresh(f"{out}/bn_fused"), [as_4d, *params], dtype,
                                             finding.epsilon, "NHWC", training=True), out)
    original = ed.add(nodes.shape(ed.fresh(f"{out}/bn_shape"), finding.x, dtype), out)
    ed.replace(finding, nodes.reshape(out, fused, original, dtype))


# plan.FUSED_AS names the replacement; these build it.
_FUSERS = {"fused-op": _fuse_op, "fused-training": _fuse_training, "scale-shift": _scale_and_shift}


def _colocated_with(node: Any) -> list[str]:
    if "_class" not in node.attr:
        return []
    return [s.decode()[5:] for s in node.attr["_class"].list.s if s.startswith(b"loc:@")]


def _prune(graph: Any, candidates: set[str]) -> tuple[Any, list[str]]:
    """Remove candidates nothing reads any more (data, control or colocation), repeatedly.
    A control edge from a constant read orders nothing: one that is all that keeps such a
    read alive goes with it (TF2 exports hang every weight read on a NoOp that way)."""
    refs = [ref for node in graph.node for ref in node.input]
    uses = Counter(map(names.node_of, refs))  # data, control and colocation
    controls = Counter(ref[1:] for ref in refs if ref.startswith("^"))
    by_name = {node.name: node for node in graph.node}
    for node in graph.node:
        uses.update(_colocated_with(node))
    dead: set[str] = set()
    work = sorted(candidates)
    while work:
        name = work.pop()
        if name in dead or name not in by_name or uses[name] > controls[name] \
                or (uses[name] and not _pure(by_name, name)):
            continue
        dead.add(name)
        for source in [names.node_of(ref) for ref in by_name[name].input] + _colocated_with(by_name[name]):
            uses[source] -= 1
            if source in candidates:
                work.append(source)
        controls.subtract(ref[1:] for ref in by_name[name].input if ref.startswith("^"))
    dropped = []
    kept = [node for node in graph.node if node.name not in dead]
    for node in kept if any(controls[name] for name in dead) else ():
        gone = [ref for ref in node.input if ref.startswith("^") and ref[1:] in dead]
        if gone:
            dropped += [f"{ref} -> {node.name}" for ref in gone]
            node.input[:] = [ref for ref in node.input if ref not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    return graph, sorted(dropped)


def _pure(by_name: dict[str, Any], name: str) -> bool:
    """A Const, or Identity-like reads of one, with no control inputs of their own."""
    seen = set()
    node = by_name.get(name)
    while node is not None and node.name not in seen and not any(r.startswith("^") for r in node.input):
        seen.add(node.name)
        if node.op == "Const":
            return True
        if node.op not in PASSTHROUGH or len(node.input) != 1:
            return False
        node = by_name.get(names.node_of(node.input[0]))
    return False
