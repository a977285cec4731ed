"""What a batch norm can fold into, declared as data, and how its weights are laid out.

A host is a linear op whose output channel c depends on weights[..., c] only, so a
per-channel scale can be multiplied into the weights. Between the host and the batch
norm there may be a constant bias (BiasAdd, Add, AddV2), which folds into the new bias.
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

    def pattern(self):
        inputs = [Param("weights") if i == self.weights_input else Var(f"host_input{i}")
                  for i in range(self.arity)]
        return op(self.op, *inputs, name="host")


HOSTS = {
    host.op: host
    for host in (
        Host("Conv2D", 1, 2, (3,)),
        Host("DepthwiseConv2dNative", 1, 2, (2, 3)),  # channel = in * multiplier + m
        Host("MatMul", 1, 2, (1,), layout_attr=None, transposed_by="transpose_b"),
        Host("Conv2DBackpropInput", 1, 3, (2,)),  # inputs: sizes, filter, out_backprop
        Host("Conv3D", 1, 2, (4,)),
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
