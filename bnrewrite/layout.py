"""Channels-first convolutions and pools run as channels-last between transposes.

TensorFlow's CPU kernels for Conv2D, depthwise and transposed convolutions, pools and
Conv3D take only NHWC/NDHWC unless oneDNN runs them (DESIGN §7), and some have no
NCHW kernel even then (fp16 Conv2D, MaxPoolV2). Verification then runs BOTH graphs
through this same change, so the comparison stays like for like; it changes only what
runs for the comparison, never what is written. BiasAdd and FusedBatchNorm* take NCHW
on every CPU, so they stay as they are. No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorboard.compat.proto import node_def_pb2, types_pb2

from . import nodes


@dataclass(frozen=True)
class Layout:
    channels_last: str
    to_last: tuple[int, ...]  # the permutation taking a channels-first tensor channels-last

    @property
    def to_first(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.to_last))


LAYOUTS = {"NCHW": Layout("NHWC", (0, 2, 3, 1)), "NCDHW": Layout("NDHWC", (0, 2, 3, 4, 1))}


@dataclass(frozen=True)
class OpLayout:
    """Which inputs carry the image, and which inputs and attributes list one value per
    dimension (and so are permuted too). Every such op has one output: the image."""
    images: tuple[int, ...] = (0,)
    per_dimension_inputs: tuple[int, ...] = ()
    per_dimension_attrs: tuple[str, ...] = ("strides", "dilations", "ksize")
    paired_attrs: tuple[str, ...] = ("explicit_paddings",)  # (before, after) per dimension


CONV = OpLayout()
OPS = {
    "Conv2D": CONV, "DepthwiseConv2dNative": CONV, "Conv3D": CONV,
    "MaxPool": CONV, "AvgPool": CONV, "MaxPool3D": CONV, "AvgPool3D": CONV,
    "Conv2DBackpropInput": OpLayout(images=(2,), per_dimension_inputs=(0,)),  # input_sizes
    "MaxPoolV2": OpLayout(per_dimension_inputs=(1, 2)),  # ksize, strides as tensors
    "SpaceToDepth": CONV, "DepthToSpace": CONV,
}
SUFFIX = "/channels_last"


def channels_first_ops(graph: Any) -> list[str]:
    """Nodes this module would change: ops above in a channels-first data_format (with
    the inputs they need: a malformed node is left for TensorFlow to refuse)."""
    return [node.name for node in graph.node
            if node.op in OPS and node.attr["data_format"].s.decode(errors="replace") in LAYOUTS
            and sum(not ref.startswith("^") for ref in node.input) > max(OPS[node.op].images
                                                                          + OPS[node.op].per_dimension_inputs)]


def to_channels_last(graph: Any) -> Any:
    """A copy of `graph` in which every op of channels_first_ops() runs channels-last:
    its image inputs transposed in, its data_format and per-dimension arguments
    permuted, its output transposed back under the op's own name (so consumers and
    fetches are unchanged); the op itself is renamed NAME/channels_last."""
    result = type(graph)()
    result.CopyFrom(graph)
    changed = set(channels_first_ops(graph))
    taken = {node.name for node in graph.node}
    added = []
    for node in result.node:
        if node.name in changed:
            added.extend(_convert(node, taken))
    result.node.extend(added)
    return result


def _convert(node: Any, taken: set[str]) -> list[Any]:
    layout = LAYOUTS[node.attr["data_format"].s.decode()]
    spec = OPS[node.op]
    name, dtype = node.name, node.attr["T"].type or types_pb2.DT_FLOAT
    inner = _unique(name + SUFFIX, taken)
    added = []

    def helper(suffix: str, op: str, inputs: list[str], **attrs: Any) -> str:
        helper_node = node_def_pb2.NodeDef(name=_unique(f"{inner}/{suffix}", taken), op=op, input=inputs,
                                           device=node.device)
        added.append(nodes.set_attrs(helper_node, **attrs))
        return helper_node.name

    perm_in = helper("perm_in", "Const", [], dtype=types_pb2.DT_INT32,
                     value=np.array(layout.to_last, np.int32))
    for i in spec.images:
        node.input[i] = helper(f"input{i}", "Transpose", [node.input[i], perm_in], T=dtype,
                               Tperm=types_pb2.DT_INT32)
    for i in spec.per_dimension_inputs:
        node.input[i] = helper(f"dims{i}", "Gather", [node.input[i], perm_in], Tparams=types_pb2.DT_INT32,
                               Tindices=types_pb2.DT_INT32)
    for key in spec.per_dimension_attrs:
        values = list(node.attr[key].list.i) if key in node.attr else []
        if len(values) == len(layout.to_last):
            node.attr[key].list.i[:] = [values[i] for i in layout.to_last]
    for key in spec.paired_attrs:
        values = list(node.attr[key].list.i) if key in node.attr else []
        if len(values) == 2 * len(layout.to_last):
            node.attr[key].list.i[:] = [v for i in layout.to_last for v in values[2 * i:2 * i + 2]]
    node.attr["data_format"].s = layout.channels_last.encode()
    node.attr.pop("_output_shapes", None)  # they described the channels-first outputs
    perm_out = helper("perm_out", "Const", [], dtype=types_pb2.DT_INT32,
                      value=np.array(layout.to_first, np.int32))
    back = node_def_pb2.NodeDef(name=name, op="Transpose", input=[inner, perm_out], device=node.device)
    node.name = inner
    added.append(nodes.set_attrs(back, T=dtype, Tperm=types_pb2.DT_INT32))
    return added


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate
