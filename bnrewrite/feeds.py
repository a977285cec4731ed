"""Seeded inputs for verification, shaped so that they exercise the graph.

An unknown batch dimension takes `batch`. Other unknown dimensions take what the graph
tells: the placeholder's `_output_shapes`, the size a constant Reshape downstream
expects, or, for an image (rank 4 feeding convolutions or pools), a side of at least the
conv stack's receptive field (rounded up to its total stride, at most MAX_SIDE), else
IMAGE_SIDE. A 2x2 image through a detector tests almost nothing: a spatial side that
leaves most windowed ops a feature map smaller than their window is warned about.
No TensorFlow here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import graphio, names, tensors
from .errors import CannotVerifyError
from .index import PASSTHROUGH, GraphIndex

if TYPE_CHECKING:
    from .verify import Options

MAX_FEED_ELEMENTS = 1 << 27  # 512 MiB of float32: more is a broken shape, not a test input
IMAGE_SIDE = 224  # a realistic image when the graph says nothing
MIN_SIDE, MAX_SIDE = 32, 512
WINDOW_OPS = frozenset({"Conv2D", "DepthwiseConv2dNative", "MaxPool", "AvgPool"})
SPATIAL = {"NHWC": (1, 2), "NCHW": (2, 3)}


class Feeds(dict):
    """Input name -> value; also where each shape came from, and warnings about it."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, str] = {}
        self.warnings: list[str] = []


@dataclass(frozen=True)
class ConvStack:
    """What the windowed ops reachable from an input see, in input pixels."""
    receptive_field: int
    stride: int  # total stride to the deepest feature map
    windows: tuple[tuple[int, int], ...]  # per op wider than 1 px: (stride before it, window extent)
    spatial: tuple[int, int]  # the image axes, from the first op's data_format

    def padded(self, side: int) -> int:
        """How many of those ops see a feature map narrower than their window."""
        return sum(math.ceil(side / stride) < window for stride, window in self.windows)


def make_feeds(graph_def: Any, options: "Options") -> Feeds:
    """Random normal floats, small ints; bools and strings must come from `options.values`."""
    index = GraphIndex(graphio.to_internal(graph_def))
    rng = np.random.default_rng(options.seed)
    feeds = Feeds()
    wanted = list(options.inputs) or [n for n in index.inferred_inputs()
                                      if index.nodes[n].op != "PlaceholderWithDefault" or n in options.values]
    for name in wanted:
        node = index.node(name)
        if node is None:
            raise CannotVerifyError(f"input '{name}' is not in the graph")
        if name in options.values:
            feeds[name] = np.asarray(options.values[name])
            feeds.sources[name] = "as fed (--feed)"
            continue
        dtype = tensors.numpy_dtype(node.attr["dtype"].type)
        stack = conv_stack(index, name)
        if name in options.shapes:
            shape, feeds.sources[name] = list(options.shapes[name]), "as given (--input-shape)"
        else:
            shape, feeds.sources[name] = _default_shape(index, node, options.batch, stack)
        if np.prod(shape, dtype=np.float64) > MAX_FEED_ELEMENTS or min(shape, default=0) < 0:
            raise CannotVerifyError(f"input '{name}' would have shape {list(shape)}: "
                                    f"pass --input-shape {name}=...")
        if dtype is None or dtype == np.bool_:
            kind = "a bool" if dtype == np.bool_ else "not numeric"
            raise CannotVerifyError(f"input '{name}' is {kind} and cannot be filled automatically: "
                                    f"pass --feed {name}=VALUE")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 4, size=shape).astype(dtype)
        feeds.warnings.extend(_padding_warning(name, shape, stack))
    return feeds


def _default_shape(index: GraphIndex, node: Any, batch: int, stack: ConvStack | None
                   ) -> tuple[list[int], str]:
    dims = tensors.shape_of(node.attr["shape"].shape) if "shape" in node.attr else None
    recorded = _recorded_shape(node)
    if dims is None:
        dims = recorded
    if dims is None and _is_predicate(index, node.name):
        return [], "a scalar: it is the predicate of a Switch"
    if dims is None:
        raise CannotVerifyError(f"input '{node.name}' has no known rank: give it --input-shape {node.name}=...")
    shape, source = list(dims), "the placeholder's shape"
    if recorded is not None and len(recorded) == len(shape):
        shape = [d if d >= 0 else r for d, r in zip(shape, recorded)]
    if shape and shape[0] < 0:
        shape[0], source = batch, f"the placeholder's shape, batch {batch} (--batch)"
    if min(shape, default=0) >= 0:
        return shape, source
    unknown = [i for i, d in enumerate(shape) if d < 0]
    if len(shape) == 4 and stack is not None:
        wanted = max(MIN_SIDE, stack.receptive_field, *(s * w for s, w in stack.windows))
        side = min(MAX_SIDE, math.ceil(wanted / stack.stride) * stack.stride)
        for i in unknown:
            shape[i] = side if i in stack.spatial else 3
        capped = f", capped at {MAX_SIDE}" if side == MAX_SIDE and wanted > MAX_SIDE else ""
        return shape, f"covers the conv stack's receptive field ({stack.receptive_field} px{capped}), stride {stack.stride}"
    size = _reshape_size(index, node.name)
    known = math.prod(d for i, d in enumerate(shape) if i > 0 and d >= 0)
    if size is not None and len(unknown) == 1 and size % known == 0:
        shape[unknown[0]] = size // known
        return shape, f"a Reshape downstream wants {size} values per sample"
    fill = IMAGE_SIDE if len(shape) == 4 else batch
    return [d if d >= 0 else fill for d in shape], f"unknown dimensions set to {fill}: nothing in the graph says more"


def _recorded_shape(node: Any) -> list[int] | None:
    """The shape a freeze tool recorded in `_output_shapes`, if any."""
    recorded = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else []
    return list(tensors.shape_of(recorded[0])) if recorded and tensors.shape_of(recorded[0]) is not None else None


def bool_inputs(graph_def: Any, options: "Options") -> dict[str, bool | None]:
    """The bool inputs verification must try both values of (those not fed a value),
    each with its default (a PlaceholderWithDefault's constant) or None."""
    index = GraphIndex(graphio.as_internal(graph_def))
    found: dict[str, bool | None] = {}
    for name in list(options.inputs) or index.inferred_inputs():
        node = index.nodes.get(name)
        if node is None or name in options.values or tensors.numpy_dtype(node.attr["dtype"].type) != np.bool_:
            continue
        default = index.const_value(node.input[0]) if node.op == "PlaceholderWithDefault" and node.input else None
        found[name] = bool(default.value.reshape(-1)[0]) if default is not None and default.value.size == 1 else None
    return found


def _is_predicate(index: GraphIndex, name: str) -> bool:
    """`name` (through Identity) is what a Switch switches on: a scalar."""
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for user in index.node_consumers(current):
            node = index.nodes[user]
            if node.op in ("Identity", "Snapshot"):
                frontier.append(user)
            elif node.op in ("Switch", "RefSwitch") and len(node.input) > 1 and names.node_of(node.input[1]) == current:
                return True
    return False


def _reshape_size(index: GraphIndex, name: str) -> int | None:
    """Values per sample that a constant-shape Reshape reading `name` (through
    pass-through ops) wants: e.g. [-1, 28, 28, 1] -> 784."""
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for user in sorted(index.node_consumers(current)):
            node = index.nodes[user]
            if node.op in PASSTHROUGH or node.op == "Cast":
                frontier.append(user)
            elif node.op == "Reshape":
                target = index.const_value(index.data_inputs(user)[1])
                if target is not None and target.value.ndim == 1 and (target.value[1:] > 0).all():
                    return int(np.prod(target.value[1:]))
    return None


def conv_stack(index: GraphIndex, name: str) -> ConvStack | None:
    """Receptive field and total stride of the windowed ops fed by input `name`, walking
    its consumers in topological order; None when it feeds none."""
    position = index.topo_position
    reached: dict[str, tuple[int, int]] = {name: (1, 1)}  # node -> (receptive field, stride)
    spatial, windows = None, []
    for user in sorted(_downstream(index, name), key=position.get):
        fields = [reached[names.node_of(ref)] for ref in index.data_inputs(user) if names.node_of(ref) in reached]
        if not fields:
            continue
        field_in, stride_in = max(fields)
        node = index.nodes[user]
        window = _window(index, node)
        if window is None:
            reached[user] = (field_in, max(s for _, s in fields))
            continue
        axes = SPATIAL.get(node.attr["data_format"].s.decode(errors="replace") or "NHWC", (1, 2))
        spatial = spatial or axes
        size, dilation, stride = window
        if size > 1:  # a 1x1 convolution sees no padding
            windows.append((stride_in, (size - 1) * dilation + 1))
        reached[user] = (field_in + (size - 1) * dilation * stride_in, stride_in * stride)
    if spatial is None:
        return None
    field_max = max(f for f, _ in reached.values())
    return ConvStack(field_max, max(s for _, s in reached.values()), tuple(windows), spatial)


def _downstream(index: GraphIndex, name: str) -> set[str]:
    found, frontier = set(), [name]
    while frontier:
        for user in index.node_consumers(frontier.pop()) - found:
            found.add(user)
            frontier.append(user)
    return found


def _window(index: GraphIndex, node: Any) -> tuple[int, int, int] | None:
    """(window side, dilation, stride) along the first spatial axis of a windowed op."""
    if node.op not in WINDOW_OPS:
        return None
    axis = SPATIAL.get(node.attr["data_format"].s.decode(errors="replace") or "NHWC", (1, 2))[0]
    # A malformed op (short lists, no weights input) counts as a 1-wide window: TensorFlow
    # refuses it when the graph runs, with its own message.
    strides, dilations, ksize = (_along(node.attr[key].list.i, axis) for key in ("strides", "dilations", "ksize"))
    if node.op in ("MaxPool", "AvgPool"):
        return ksize, 1, strides
    inputs = index.data_inputs(node.name)
    weights = index.const_value(inputs[1]) if len(inputs) > 1 else None
    size = weights.value.shape[0] if weights is not None and weights.value.ndim == 4 else 1
    return int(size), dilations, strides


def _along(values: Any, axis: int) -> int:
    return int(values[axis]) if len(values) > axis else 1


def _padding_warning(name: str, shape: list[int], stack: ConvStack | None) -> list[str]:
    if stack is None or len(shape) != 4:
        return []
    side = min(shape[i] for i in stack.spatial)
    padded = stack.padded(side)
    if 2 * padded <= len(stack.windows):
        return []
    return [f"input '{name}' is {side} px wide: {padded} of its {len(stack.windows)} convolutions and "
            f"pools slide over feature maps narrower than their window, so most of the graph sees "
            f"padding; --input-shape sets a larger one"]
