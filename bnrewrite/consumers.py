"""What a batch norm can fold forward into: the linear ops that read it.

Folding forward, a batch norm's consumers are linear ops whose input channel c meets
weights[..., c, ...] only (`Host.input_axis`): the scale goes into those weights, the
shift into a bias after them, exact only where they see no padding. Between the two may
sit Identity-like ops, and one link that the consumers then read instead of the batch
norm: a zero Pad (padding they see), a MirrorPad (which copies values, so both scale and
shift pass it), an AvgPool (linear per channel), a MaxPool (which commutes with a positive
scale only), or a Reshape to [N, K] with K a multiple of the channels (a flatten: input j
of the consumer is channel j mod C).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .hosts import HOSTS, Host, is_host, layout_channel_axis, weight_axes, weights_value
from .index import PASSTHROUGH, GraphIndex


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
    entry: str  # what reads the batch norm's value (it, or a link before it): it reads x instead
    flatten: int | None = None  # K of a Reshape to [N, K] before it
    monotone: bool = False  # a MaxPool before it: the scale must be positive


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
            op, reads = index.nodes[reader].op, _reads_input0(index, reader, source)
            link = LINKS[op](index, reader) if op in LINKS and reads else None
            behind = sorted(index.node_consumers(reader)) if link else []
            if not reads:
                others.append(reader)
            elif op in PASSTHROUGH:
                chain.append(reader)
                frontier.append(reader)
            elif _is_consumer(index, reader):
                consumers.append(_consumer(index, reader, reader))
            elif behind and all(_reads_input0(index, r, reader) and _is_consumer(index, r) for r in behind):
                consumers.extend(_consumer(index, r, reader, *link) for r in behind)
            else:
                others.append(reader)
    return Readers(tuple(consumers), tuple(others), tuple(chain))


def _reads_input0(index: GraphIndex, reader: str, source: str) -> bool:
    """`reader` takes output 0 of `source` as its first data input, and only there."""
    refs = [names.parse(ref) for ref in index.nodes[reader].input if names.node_of(ref) == source]
    reads = [names.node_of(t) == source for t in index.data_inputs(reader)]
    return not any(ref.control or ref.index for ref in refs) and reads[:1] == [True] and reads.count(True) == 1


def _is_consumer(index: GraphIndex, name: str) -> bool:
    return is_host(index, name) and HOSTS[index.nodes[name].op].input_axis is not None


def _pad(index: GraphIndex, name: str):
    """(padding seen, flatten) after a Pad; PadV2 only with zeros, MirrorPad sees none."""
    inputs = index.data_inputs(name)
    if len(inputs) < 2:
        return None
    pads = index.const_value(inputs[1])
    fill = index.const_value(inputs[2]) if len(inputs) > 2 else None
    if pads is None or (len(inputs) > 2 and (fill is None or np.any(fill.value != 0))):
        return None
    mirror = index.nodes[name].op == "MirrorPad"
    return (None if mirror or not np.any(pads.value) else f"a zero Pad ({name})"), None, False


def _flatten(index: GraphIndex, name: str):
    inputs = index.data_inputs(name)
    shape = index.const_value(inputs[1]) if len(inputs) == 2 else None
    if shape is None or shape.value.shape != (2,) or int(shape.value[1]) <= 0:
        return None
    return None, int(shape.value[1]), False


# Links a batch norm reaches its consumers through: (padding they see, flatten K, needs a
# positive scale) or None. Pools work per channel; their padding is never averaged or taken.
LINKS = {"Pad": _pad, "PadV2": _pad, "MirrorPad": _pad, "Reshape": _flatten,
         "AvgPool": lambda index, name: (None, None, False), "MaxPool": lambda index, name: (None, None, True)}


def _consumer(index: GraphIndex, name: str, entry: str, link_padding: str | None = None,
              flatten: int | None = None, monotone: bool = False) -> Consumer:
    spec = HOSTS[index.nodes[name].op]
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
        padding=link_padding or _padding(index, name, spec, weights), bias_node=bias_node, bias=bias,
        param_nodes=frozenset((found.chain if found else ()) + bias_chain), entry=entry, flatten=flatten,
        monotone=monotone)


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
