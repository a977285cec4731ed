"""What a batch norm can fold into, declared as data, and how its weights are laid out.

A host is a linear op whose output channel c depends on weights[..., c] only, so a
per-channel scale can be multiplied into the weights. Between the host and the batch
norm there may be a constant bias (BiasAdd, Add, AddV2), which folds into the new bias.

Folding forward, a batch norm's consumers are linear ops whose input channel c meets
weights[..., c, ...] only (`input_axis`): the scale goes into those weights, the shift
into a bias after them, exact only where they see no padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .errors import InvalidGraphError
from .fold_math import channel_layout
from .index import GraphIndex
from .matcher import Match, match
from .pattern import Const, Param, Var, alt, op


@dataclass(frozen=True)
class Host:
    op: str
    weights_input: int
    arity: int
    channel_axes: tuple[int, ...]  # weight axes whose (row-major) product is the output channel
    layout_attr: str | None = "data_format"
    transposed_by: str | None = None  # bool attribute that swaps a 2-D weight's axes
    input_axis: int | None = None  # weight axis of the input channel; None: not folded forward
    spatial_axes: tuple[int, ...] = ()  # kernel axes: a window wider than 1 can see padding

    def pattern(self):
        inputs = [Param("weights") if i == self.weights_input else Var(f"host_input{i}")
                  for i in range(self.arity)]
        return op(self.op, *inputs, name="host")


HOSTS = {
    host.op: host
    for host in (
        Host("Conv2D", 1, 2, (3,), input_axis=2, spatial_axes=(0, 1)),
        # channel = in * multiplier + m; input channel c meets weights[:, :, c, :]
        Host("DepthwiseConv2dNative", 1, 2, (2, 3), input_axis=2, spatial_axes=(0, 1)),
        Host("MatMul", 1, 2, (1,), layout_attr=None, transposed_by="transpose_b", input_axis=0),
        Host("Conv2DBackpropInput", 1, 3, (2,)),  # inputs: sizes, filter, out_backprop
        Host("Conv3D", 1, 2, (4,), input_axis=3, spatial_axes=(0, 1, 2)),
    )
}

# SpaceToBatchND -> Conv2D -> BatchToSpaceND: how TF1 wrote dilated (atrous) convs.
_ATROUS = op("BatchToSpaceND",
             op("Conv2D", op("SpaceToBatchND", Var("atrous_input"), Const("block"), Const("pads")),
                Param("weights"), name="host"),
             Const("block"), Const("crops"), name="atrous")
_CORE = alt(_ATROUS, *(host.pattern() for host in HOSTS.values()))
HOST_PATTERN = alt(
    op("BiasAdd", _CORE, Const("bias"), name="bias_add"),
    op("Add|AddV2", _CORE, Const("bias"), name="bias_add"),
    _CORE,
)


@dataclass(frozen=True)
class HostMatch:
    node: str  # the linear op
    op: str
    chain: tuple[str, ...]  # host, [BatchToSpaceND], [bias]: each feeds the next, last feeds the BN
    output: str  # the node giving the linear result: the host, or the BatchToSpaceND after it
    bias_node: str | None
    weights: np.ndarray | None  # None: not constant
    weight_axes: tuple[int, ...]  # the weight axes that make an output channel (see Host)
    bias: np.ndarray | None
    bias_axis: int | None  # negative output axis the bias is added along; None: no bias or scalar
    channels: int | None
    channel_axis: int  # negative axis of the output that carries channels
    param_nodes: frozenset[str]  # weights and bias constants with their read chains


def find_host(index: GraphIndex, tensor: str) -> HostMatch | None:
    """The linear op (and bias) producing `tensor`, or None."""
    found = match(HOST_PATTERN, index, tensor)
    if not isinstance(found, Match):
        return None
    node = index.nodes[names.node_of(found.tensors["host"])]
    spec = HOSTS[node.op]
    axes = _weight_axes(spec, index, node.name)
    chain = tuple(names.node_of(found.tensors[key]) for key in ("host", "atrous", "bias_add") if key in found.tensors)
    bias_node = chain[-1] if "bias_add" in found.tensors else None
    weights = found.values.get("weights")
    bias = found.values.get("bias")
    return HostMatch(
        node=node.name,
        op=node.op,
        chain=chain,
        output=chain[-2] if bias_node else chain[-1],
        bias_node=bias_node,
        weights=weights,
        weight_axes=axes,
        bias=bias,
        bias_axis=_bias_axis(index, found, bias),
        channels=_channels(weights, axes),
        param_nodes=found.param_nodes,
        channel_axis=layout_channel_axis(index.attr(node.name, spec.layout_attr, kind=str)
                                         if spec.layout_attr else None),
    )


def _weight_axes(spec: Host, index: GraphIndex, name: str) -> tuple[int, ...]:
    if spec.transposed_by and index.attr(name, spec.transposed_by, False, bool):
        return (0,)
    return spec.channel_axes


def _channels(weights: np.ndarray | None, axes: tuple[int, ...]) -> int | None:
    if weights is None or max(axes) >= weights.ndim:
        return None
    return int(np.prod([weights.shape[a] for a in axes]))


def _bias_axis(index: GraphIndex, found: Match, bias: np.ndarray | None) -> int | None:
    if bias is None or bias.size <= 1:
        return None
    node = names.node_of(found.tensors["bias_add"])
    if index.nodes[node].op == "BiasAdd":
        return layout_channel_axis(index.attr(node, "data_format", kind=str))
    layout = channel_layout([bias])
    return layout[1] if layout else 0  # 0: no single channel axis, never lines up


LAYOUTS = {"NHWC": -1, "NDHWC": -1, "NCHW": -3, "NCDHW": -4, "NWC": -1, "NCW": -2}


def layout_channel_axis(layout: str | None) -> int:
    """NHWC-like layouts keep channels last; NCHW-like ones second (counted from the end)."""
    if not layout:
        return -1
    if layout not in LAYOUTS:
        raise InvalidGraphError(f"unknown data_format '{layout}'")
    return LAYOUTS[layout]


# Ops that hand on their input unchanged: a batch norm reaches its consumers through them.
FORWARD_PASSTHROUGH = frozenset({"Identity", "Snapshot", "StopGradient", "PreventGradient"})


@dataclass(frozen=True)
class Consumer:
    node: str  # a linear op reading the batch norm as its data input
    op: str
    weights: np.ndarray | None  # None: not constant
    input_axis: int  # the weight axis its input channel meets
    weight_axes: tuple[int, ...]  # the weight axes that make an output channel (see Host)
    channels: int | None  # input channels its weights take
    channel_axis: int | None  # negative axis of its input holding channels; None: none does
    padding: str | None  # how it can see padding (then a shift cannot fold); None: it cannot
    bias_node: str | None  # its only reader, a constant BiasAdd a new bias can merge into
    bias: np.ndarray | None
    param_nodes: frozenset[str]  # its weights constant with the read chain


@dataclass(frozen=True)
class Readers:
    consumers: tuple[Consumer, ...]
    others: tuple[str, ...]  # readers it cannot fold into (control edges included)
    chain: tuple[str, ...]  # pass-through nodes between the batch norm and its consumers


def find_consumers(index: GraphIndex, node: str) -> Readers:
    """Who reads output 0 of `node`, through pass-through ops: linear ops it could fold
    forward into, and everything else."""
    consumers, others, chain = [], [], []
    frontier = [node]
    while frontier:
        source = frontier.pop()
        for reader in sorted(index.node_consumers(source)):
            refs = [names.parse(ref) for ref in index.nodes[reader].input if names.node_of(ref) == source]
            reader_op = index.nodes[reader].op
            spec = HOSTS.get(reader_op)
            if any(ref.control or ref.index != 0 for ref in refs):
                others.append(reader)
            elif reader_op in FORWARD_PASSTHROUGH:
                chain.append(reader)
                frontier.append(reader)
            elif spec is not None and spec.input_axis is not None and _only_data_input(index, reader, source):
                consumers.append(_consumer(index, reader, spec))
            else:
                others.append(reader)
    return Readers(tuple(consumers), tuple(others), tuple(chain))


def _only_data_input(index: GraphIndex, reader: str, source: str) -> bool:
    return [names.node_of(t) == source for t in index.data_inputs(reader)][:2] == [True, False]


def _consumer(index: GraphIndex, name: str, spec: Host) -> Consumer:
    found = index.const_value(index.data_inputs(name)[spec.weights_input])
    weights = None if found is None else found.value
    transposed = spec.transposed_by and index.attr(name, spec.transposed_by, False, bool)
    axes = _weight_axes(spec, index, name)
    input_axis = 1 - spec.input_axis if transposed else spec.input_axis
    channel_axis = (None if index.attr(name, "transpose_a", False, bool) else
                    layout_channel_axis(index.attr(name, spec.layout_attr, kind=str) if spec.layout_attr else None))
    usable = weights is not None and weights.ndim > max(*axes, input_axis)
    bias_node, bias, bias_chain = _bias_after(index, name, spec)
    return Consumer(
        node=name, op=spec.op, weights=weights, input_axis=input_axis, weight_axes=axes,
        channels=int(weights.shape[input_axis]) if usable else None, channel_axis=channel_axis,
        padding=_padding(index, name, spec, weights), bias_node=bias_node, bias=bias,
        param_nodes=frozenset((found.chain if found else ()) + bias_chain))


def _padding(index: GraphIndex, name: str, spec: Host, weights: np.ndarray | None) -> str | None:
    """A window of one element sees no padding whatever the attribute says: SAME pads
    (k - 1) * dilation in total, zero for k = 1."""
    padding = index.attr(name, "padding", "VALID", str) if spec.spatial_axes else "VALID"
    if padding == "VALID" or (padding == "EXPLICIT" and not any(index.attr(name, "explicit_paddings", [], list))):
        return None
    if weights is not None and weights.ndim > max(spec.spatial_axes) \
            and all(weights.shape[a] == 1 for a in spec.spatial_axes):
        return None
    return f"{padding} padding"


def _bias_after(index: GraphIndex, name: str, spec: Host):
    """(node, value, constant chain) of the constant BiasAdd that is the only reader of
    `name`, in `name`'s layout; Nones when there is none."""
    none = (None, None, ())
    readers = index.node_consumers(name)
    if len(readers) != 1:
        return none
    (reader,) = readers
    inputs = index.data_inputs(reader)
    layout = index.attr(name, spec.layout_attr, "NHWC", str) if spec.layout_attr else "NHWC"
    if index.nodes[reader].op != "BiasAdd" or inputs[0] != names.canonical(name) \
            or index.attr(reader, "data_format", "NHWC", str) != layout:
        return none
    found = index.const_value(inputs[1])
    return (reader, found.value, found.chain) if found is not None and found.value.ndim == 1 else none


def weights_shared(index: GraphIndex, node: str, weights_input: int) -> bool:
    """Does anything but `node` read its weights (through their read chain)?"""
    weights = index.data_inputs(node)[weights_input]
    source, chain = index.skip_passthrough(weights)
    for name in (source.split(":")[0], *chain):
        if index.node_consumers(name) - {node, *chain}:
            return True
    return False
