"""The arrays a fold writes, computed once (the plan checks them, the rewrite writes them):
the scaled weights of every linear op it changes and the bias it adds, in float64, and
whether they still fit the weights' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .consumers import Consumer
from .findings import Finding
from .fold_math import as_channel_vector, folded_bias, folded_weights, scaled_inputs, shift_bias
from .hosts import HostMatch

BACKWARD, FORWARD = "backward", "forward"
# A folded output channel fed inputs of this magnitude must stay inside the dtype.
INPUT_HEADROOM = 64.0


@dataclass(frozen=True)
class WeightEdit:
    node: str  # the linear op whose weights input gets new weights
    weights: np.ndarray  # scaled, in the old weights' dtype
    shared: bool  # the old weights are read elsewhere too (they are never overwritten)
    bias: np.ndarray | None = None  # forward: per output channel, added after `node`
    bias_node: str | None = None  # forward: the constant BiasAdd after `node` taking the bias
    entry: str | None = None  # forward: what read the batch norm (`node` or a link before it)


@dataclass(frozen=True)
class Fold:
    direction: str  # BACKWARD into the op before it, FORWARD into the ops after it
    edits: tuple[WeightEdit, ...]
    bias: np.ndarray | None = None  # backward: one value per channel, replaces the batch norm


def backward(finding: Finding, host: HostMatch, shared: list[bool]) -> Fold | str:
    """Fold into the host's output channels, each part (group) by its slice of the scale;
    a string says why the dtype cannot hold it. `shared`: per part, whether other ops read
    its weights too."""
    scale, offset = finding.scale_offset(host.channels)
    bias = folded_bias(host.bias, scale, offset)
    edits, start = [], 0
    for part, part_shared in zip(host.parts, shared):
        end = start + part.channels
        folded = folded_weights(part.weights, scale[start:end], part.weight_axes)
        problem = _precision(part.weights, folded, bias[start:end], part.weight_axes)
        if problem:
            return problem
        edits.append(WeightEdit(part.node, folded.astype(part.weights.dtype), part_shared))
        start = end
    return Fold(BACKWARD, tuple(edits), bias)


def forward(finding: Finding, consumers: list[tuple[Consumer, bool, bool]]) -> Fold | str:
    """Fold into each consumer's input channels: (consumer, shared weights, merge the bias
    into its BiasAdd). A shift that is zero everywhere adds no bias."""
    edits = []
    for consumer, shared, merge in consumers:
        scale, shift = input_scale_shift(finding, consumer)
        folded = scaled_inputs(consumer.weights, scale, consumer.input_axis)
        bias = None
        if np.any(shift != 0):
            bias = shift_bias(consumer.weights, shift, consumer.input_axis, consumer.weight_axes)
            bias = bias + as_channel_vector(consumer.bias, bias.size) if merge else bias
        problem = _precision(consumer.weights, folded, bias, consumer.weight_axes)
        if problem:
            return f"{consumer.node}: {problem}"
        edits.append(WeightEdit(consumer.node, folded.astype(consumer.weights.dtype), shared, bias,
                                consumer.bias_node if merge and bias is not None else None, consumer.entry))
    return Fold(FORWARD, tuple(edits))


def input_scale_shift(finding: Finding, consumer: Consumer) -> tuple[np.ndarray, np.ndarray]:
    """Scale and shift per input channel of the consumer: after a flatten, input j takes
    channel j mod C."""
    flat = consumer.flatten is not None and not finding.uniform
    scale, shift = finding.scale_offset(finding.channels if flat else consumer.channels)
    reps = consumer.channels // scale.size
    return np.tile(scale, reps), np.tile(shift, reps)


def _precision(weights: np.ndarray, folded: np.ndarray, bias: np.ndarray | None,
               axes: tuple[int, ...]) -> str | None:
    """Folding multiplies weights by gamma / sqrt(var + eps): with a tiny variance in fp16
    the weights, the bias or the op's own output can leave the dtype's range (the fused
    op computes the batch norm in float32), or weights can sink below its smallest normal."""
    if not np.issubdtype(weights.dtype, np.floating):
        return None
    info = np.finfo(weights.dtype)
    folded = np.abs(folded)
    gain = folded.sum(axis=tuple(a for a in range(weights.ndim) if a not in axes)).max(initial=0)
    worst = gain * INPUT_HEADROOM + (0.0 if bias is None else np.abs(bias).max(initial=0))
    if not np.isfinite(worst) or worst > info.max:
        return (f"a folded output channel reaches {worst:.3g} for inputs of {INPUT_HEADROOM:g}, "
                f"over the {info.max:.3g} its dtype holds")
    lost = (folded < info.tiny) & (np.abs(weights) >= info.tiny)  # newly subnormal or zero
    if lost.any():
        return f"{int(lost.sum())} folded weights fall below {info.tiny:.3g}"
    return None
