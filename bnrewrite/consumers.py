"""What a batch norm can fold forward into: the linear ops that read it.

Folding forward, a batch norm's consumers are linear ops whose input channel c meets
weights[..., c, ...] only (`Host.input_axis`): the scale goes into those weights, the
shift into a bias after them, exact only where they see no padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .hosts import HOSTS, Host, is_host, layout_channel_axis, weight_axes, weights_value
from .index import GraphIndex

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
            elif is_host(index, reader) and spec.input_axis is not None and _only_data_input(index, reader, source):
                consumers.append(_consumer(index, reader, spec))
            else:
                others.append(reader)
    return Readers(tuple(consumers), tuple(others), tuple(chain))


def _only_data_input(index: GraphIndex, reader: str, source: str) -> bool:
    return [names.node_of(t) == source for t in index.data_inputs(reader)][:2] == [True, False]


def _consumer(index: GraphIndex, name: str, spec: Host) -> Consumer:
    found = weights_value(index, index.data_inputs(name)[spec.weights_input])
    weights = None if found is None else found.value
    transposed = spec.transposed_by and index.attr(name, spec.transposed_by, False, bool)
    axes = weight_axes(spec, index, name)
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
