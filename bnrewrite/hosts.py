"""What a batch norm can fold into, declared as data, and how its weights are laid out.

A host is a linear op whose output channel c depends on weights[..., c] only, so a
per-channel scale can be multiplied into the weights. Between the host and the batch
norm there may be links, each with its own rule for where the channel axis goes: a
constant bias (BiasAdd, Add, AddV2; it folds into the new bias), Squeeze, ExpandDims
and Reshape that provably keep the channels (Conv1D, a dense layer reshaped to 4-D),
BatchToSpaceND (atrous convolutions). A ConcatV2 of hosts on the channel axis (a
grouped convolution) is a host made of parts, each scaled by its slice of the scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Mapping
from typing import Callable, NamedTuple

import numpy as np

from . import names, registry
from .errors import InvalidGraphError
from .fold_math import channel_layout
from .index import PASSTHROUGH, ConstValue, GraphIndex


@dataclass(frozen=True)
class Host:
    op: str
    weights_input: int
    arity: int
    channel_axes: tuple[int, ...]  # weight axes whose (row-major) product is the output channel
    rank: int  # of its output
    layout_attr: str | None = "data_format"
    transposed_by: str | None = None  # bool attribute that swaps a 2-D weight's axes
    input_axis: int | None = None  # weight axis of the input channel; None: not folded forward
    spatial_axes: tuple[int, ...] = ()  # kernel axes: a window wider than 1 can see padding


# The core's hosts, registered like a plugin's (registry.py, pyproject.toml).
CORE_HOSTS = (
    Host("Conv2D", 1, 2, (3,), 4, input_axis=2, spatial_axes=(0, 1)),
    # channel = in * multiplier + m; input channel c meets weights[:, :, c, :]
    Host("DepthwiseConv2dNative", 1, 2, (2, 3), 4, input_axis=2, spatial_axes=(0, 1)),
    Host("MatMul", 1, 2, (1,), 2, layout_attr=None, transposed_by="transpose_b", input_axis=0),
    Host("Conv2DBackpropInput", 1, 3, (2,), 4),  # inputs: sizes, filter, out_backprop
    Host("Conv3D", 1, 2, (4,), 5, input_axis=3, spatial_axes=(0, 1, 2)),
)


class _Registered(Mapping[str, Host]):
    """The registered hosts by op (registry.hosts()), read on first use: importing this
    module must not load plugins, which may import it."""

    def __getitem__(self, op: str) -> Host:
        return registry.hosts()[op]

    def __iter__(self) -> Iterator[str]:
        return iter(registry.hosts())

    def __len__(self) -> int:
        return len(registry.hosts())


HOSTS: Mapping[str, Host] = _Registered()


@dataclass(frozen=True)
class Part:
    node: str  # a linear op whose output channels the batch norm scales
    op: str
    weights: np.ndarray | None  # None: not constant
    weight_axes: tuple[int, ...]  # the weight axes that make an output channel (see Host)
    channels: int | None


@dataclass(frozen=True)
class HostMatch:
    node: str  # the linear op (the first part of a grouped convolution)
    op: str
    parts: tuple[Part, ...]  # in channel order
    links: tuple[tuple[str, str | None], ...]  # (node, the one node it feeds; None: the batch norm)
    output: str  # the tensor the folded bias is added to
    bypass: tuple[str, str] | None  # a bias inside the chain drops out: (its reader, what it reads now)
    bias_node: str | None
    bias: np.ndarray | None
    bias_axis: int | None  # axis the bias is added along, as seen by the batch norm; 0: lines up with none
    channels: int | None
    channel_axis: int  # negative axis of the batch norm's input that carries channels
    param_nodes: frozenset[str]  # weights and bias constants with their read chains


BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})


def find_host(index: GraphIndex, tensor: str) -> HostMatch | None:
    """The linear op(s) producing `tensor` through links that keep the channels, or None."""
    chain: list[str] = []  # from the batch norm back to the host
    bias = None
    tensor = names.canonical(tensor)
    while True:
        node = index.node(tensor)
        if node is None or names.parse(tensor).index != 0:
            return None
        if is_host(index, node.name) or node.op == "ConcatV2":
            break
        inputs = index.data_inputs(node.name)
        if node.op in BIAS_OPS:
            found = _bias_operand(index, node.name)
            if found is None or bias is not None:
                return None
            bias, tensor = found, found.data
        elif (node.op in PASSTHROUGH or node.op in LINKS) and inputs:
            tensor = inputs[0]
        else:
            return None
        chain.append(node.name)
    parts = _parts(index, node.name)
    if not parts:
        return None
    first = HOSTS[index.nodes[parts[0].node].op]
    channels = None if None in [p.channels for p in parts] else sum(p.channels for p in parts)
    rank, axis = first.rank, _layout_axis(index, parts[0].node, first)
    lines_up = True
    for name in reversed(chain):
        if bias is not None and name == bias.node:
            lines_up = _bias_lines_up(index, name, bias.value, rank, axis)
        elif index.nodes[name].op in LINKS:
            moved = LINKS[index.nodes[name].op](index, name, rank, axis, channels)
            if moved is None:
                return None
            rank, axis = moved
    if axis != -1 and rank + axis != 1:
        return None  # a BiasAdd adds along the last axis or axis 1 only
    bias_axis = None if bias is None or bias.value.size <= 1 else (axis if lines_up else 0)
    return _match(index, node.name, parts, chain, bias, bias_axis, channels, axis)


def _match(index: GraphIndex, top: str, parts: list[Part], chain: list[str], bias: "_Bias | None",
           bias_axis: int | None, channels: int | None, axis: int) -> HostMatch:
    """`chain` runs from the batch norm back to `top`: the host, or a grouped host's ConcatV2."""
    nodes = [p.node for p in parts] + ([top] if top != parts[0].node else []) + chain[::-1]
    feeds = {p.node: top for p in parts if p.node != top}
    links = tuple((n, feeds.get(n, nodes[i + 1] if i + 1 < len(nodes) else None)) for i, n in enumerate(nodes))
    bias_node = bias.node if bias else None
    output, bypass = names.canonical(chain[0] if chain else top), None
    if bias_node is not None and chain[0] == bias_node:
        output = bias.data
    elif bias_node is not None:
        bypass = (chain[chain.index(bias_node) - 1], bias.data)
    consts = [weights_value(index, index.data_inputs(p.node)[HOSTS[p.op].weights_input]) for p in parts]
    param_nodes = {n for c in consts if c for n in c.chain}
    if bias:
        param_nodes |= set(bias.chain)
    return HostMatch(node=parts[0].node, op=parts[0].op, parts=tuple(parts), links=links, output=output,
                     bypass=bypass, bias_node=bias_node, bias=bias.value if bias else None, bias_axis=bias_axis,
                     channels=channels, channel_axis=axis, param_nodes=frozenset(param_nodes))


def _parts(index: GraphIndex, name: str) -> list[Part]:
    """The host, or each input of a ConcatV2 along the hosts' channel axis (grouped conv)."""
    if is_host(index, name):
        return [_part(index, name)]
    *inputs, axis = index.data_inputs(name)
    hosts = [index.node(t) for t in inputs]
    if not hosts or len(set(inputs)) != len(inputs) or any(
            h is None or not is_host(index, h.name) or names.parse(t).index != 0 for h, t in zip(hosts, inputs)):
        return []
    specs = {HOSTS[h.op] for h in hosts}
    layouts = {_layout_axis(index, h.name, HOSTS[h.op]) for h in hosts}
    found = index.const_value(axis)
    if len(specs) != 1 or len(layouts) != 1 or found is None or found.value.size != 1:
        return []
    spec = specs.pop()
    if int(found.value.reshape(-1)[0]) % spec.rank != layouts.pop() % spec.rank:
        return []
    return [_part(index, h.name) for h in hosts]


def is_host(index: GraphIndex, name: str) -> bool:
    spec = HOSTS.get(index.nodes[name].op)
    return spec is not None and len(index.data_inputs(name)) == spec.arity


def weights_value(index: GraphIndex, tensor: str) -> ConstValue | None:
    """Constant weights, also where the graph adds their axis itself: Conv1D's ExpandDims
    of a 3-D kernel (the fold writes the expanded kernel in its place)."""
    node = index.node(tensor)
    if node is None or node.op != "ExpandDims":
        return index.const_value(tensor)
    inputs = index.data_inputs(node.name)
    if len(inputs) != 2:  # malformed: TensorFlow refuses it
        return None
    value, axis = (index.const_value(t) for t in inputs)
    if value is None or axis is None or axis.value.size != 1:
        return None
    try:
        expanded = np.expand_dims(value.value, int(axis.value.reshape(-1)[0]))
    except ValueError:  # an axis out of range (AxisError): TensorFlow refuses it too
        return None
    return ConstValue(expanded, (node.name, *value.chain, *axis.chain))


def _part(index: GraphIndex, name: str) -> Part:
    spec = HOSTS[index.nodes[name].op]
    found = weights_value(index, index.data_inputs(name)[spec.weights_input])
    weights = None if found is None else found.value
    axes = weight_axes(spec, index, name)
    return Part(name, spec.op, weights, axes, _channels(weights, axes))


class _Bias(NamedTuple):
    data: str  # the operand the bias is added to
    node: str
    value: np.ndarray
    chain: tuple[str, ...]  # the constant and its read chain


def _bias_operand(index: GraphIndex, name: str) -> _Bias | None:
    """The bias op `name` where one operand is constant and the other is not."""
    inputs = index.data_inputs(name)
    if len(inputs) != 2:
        return None
    order = (0, 1) if index.nodes[name].op == "BiasAdd" else (0, 1, 1, 0)
    for data, const in zip(order[::2], order[1::2]):
        found = index.const_value(inputs[const])
        if found is not None and index.const_value(inputs[data]) is None:
            return _Bias(inputs[data], name, found.value, found.chain)
    return None


def _bias_lines_up(index: GraphIndex, name: str, bias: np.ndarray, rank: int, axis: int) -> bool:
    """Is the bias added along the channel axis as it is at the bias?"""
    if bias.size <= 1:
        return True
    if index.nodes[name].op == "BiasAdd":
        along = -1 if index.attr(name, "data_format", "NHWC", str).endswith("C") else 1 - rank
    else:
        layout = channel_layout([bias])
        along = layout[1] if layout and bias.ndim <= rank else 0
    return along == axis


# Channel-axis rules of the links: (rank, negative channel axis) before -> after, or None
# when the link may move or split the channels.
def _squeeze(index: GraphIndex, name: str, rank: int, axis: int, channels: int | None):
    dims = {d % rank for d in index.attr(name, "squeeze_dims", [], list)}
    position = rank + axis
    if not dims or position in dims:
        return None  # squeezing every size-1 dim depends on shapes not known here
    rank -= len(dims)
    return rank, position - sum(d < position for d in dims) - rank


def _second_input(index: GraphIndex, name: str):
    inputs = index.data_inputs(name)
    return index.const_value(inputs[1]) if len(inputs) == 2 else None


def _expand_dims(index: GraphIndex, name: str, rank: int, axis: int, channels: int | None):
    found = _second_input(index, name)
    if found is None or found.value.size != 1:
        return None
    at = int(found.value.reshape(-1)[0]) % (rank + 1)
    position = rank + axis
    return rank + 1, position + (at <= position) - rank - 1


def _reshape(index: GraphIndex, name: str, rank: int, axis: int, channels: int | None):
    """Last axis of C in, last axis of C out: each element keeps its channel (flat index mod C)."""
    found = _second_input(index, name)
    if found is None or axis != -1 or channels is None or found.value.ndim != 1 or not found.value.size \
            or int(found.value[-1]) != channels:
        return None
    return found.value.size, -1


def _batch_to_space(index: GraphIndex, name: str, rank: int, axis: int, channels: int | None):
    """Moves the batch into the spatial dims 1..M; the channels after them stay."""
    inputs = index.data_inputs(name)
    found = index.const_value(inputs[1]) if len(inputs) == 3 else None
    return (rank, axis) if found is not None and rank + axis > found.value.size else None


LINKS: dict[str, Callable] = {"Squeeze": _squeeze, "ExpandDims": _expand_dims, "Reshape": _reshape,
                              "BatchToSpaceND": _batch_to_space}


def weight_axes(spec: Host, index: GraphIndex, name: str) -> tuple[int, ...]:
    if spec.transposed_by and index.attr(name, spec.transposed_by, False, bool):
        return (0,)
    return spec.channel_axes


def _channels(weights: np.ndarray | None, axes: tuple[int, ...]) -> int | None:
    if weights is None or max(axes) >= weights.ndim:
        return None
    return int(np.prod([weights.shape[a] for a in axes]))


def _layout_axis(index: GraphIndex, name: str, spec: Host) -> int:
    return layout_channel_axis(index.attr(name, spec.layout_attr, kind=str) if spec.layout_attr else None)


LAYOUTS = {"NHWC": -1, "NDHWC": -1, "NCHW": -3, "NCDHW": -4, "NWC": -1, "NCW": -2}


def layout_channel_axis(layout: str | None) -> int:
    """NHWC-like layouts keep channels last; NCHW-like ones second (counted from the end)."""
    if not layout:
        return -1
    if layout not in LAYOUTS:
        raise InvalidGraphError(f"unknown data_format '{layout}'")
    return LAYOUTS[layout]


def weights_shared(index: GraphIndex, node: str, weights_input: int) -> bool:
    """Does anything but `node` read its weights (through their read chain)?"""
    weights = index.data_inputs(node)[weights_input]
    source, chain = index.skip_passthrough(weights)
    for name in (source.split(":")[0], *chain):
        if index.node_consumers(name) - {node, *chain}:
            return True
    return False
