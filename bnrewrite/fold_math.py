"""Pure numpy batch-norm arithmetic, in float64.

Every form reduces to BNParams; y = x * scale + offset per channel with
scale = gamma / sqrt(variance + epsilon) and offset = beta - mean * scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BNParams:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float
    channel_axis: int = -1

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale = self.gamma / np.sqrt(self.variance + self.epsilon)
        return scale, self.beta - self.mean * scale


def folded_weights(weights: np.ndarray, scale: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """weights * scale in float64, scale laid along the weight axes that make the output
    channel (row-major: a depthwise [kh, kw, in, mult] filter's channel is in * mult + m)."""
    shape = [weights.shape[a] if a in axes else 1 for a in range(weights.ndim)]
    return weights.astype(np.float64) * scale.reshape(shape)


def scaled_inputs(weights: np.ndarray, scale: np.ndarray, input_axis: int) -> np.ndarray:
    """Forward: weights * scale in float64, scale laid along the input-channel axis."""
    shape = [weights.shape[a] if a == input_axis else 1 for a in range(weights.ndim)]
    return weights.astype(np.float64) * scale.reshape(shape)


def shift_bias(weights: np.ndarray, shift: np.ndarray, input_axis: int, output_axes: tuple[int, ...]
               ) -> np.ndarray:
    """Forward: what a per-input-channel shift adds to each output channel of a linear op
    that sees no padding: the sum over its kernel taps and input channels of weights * shift
    (row-major over `output_axes`, as in folded_weights)."""
    shifted = scaled_inputs(weights, shift, input_axis)
    return shifted.sum(axis=tuple(a for a in range(weights.ndim) if a not in output_axes)).reshape(-1)


def folded_bias(bias: np.ndarray | None, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The bias after the host once the batch norm is folded: bias * scale + offset."""
    if bias is None:
        return offset
    return as_channel_vector(bias, scale.size) * scale + offset


def as_channel_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A parameter as a float64 vector of `channels`; None if its shape cannot be one."""
    array = np.asarray(value, dtype=np.float64)
    if array.size == 1:
        return np.full(channels, array.reshape(-1)[0])
    if array.size != channels or array.size == 0:
        return None
    if array.ndim != 1 and array.shape.count(1) != array.ndim - 1:
        return None  # more than one wide dim
    return array.reshape(-1)


def channel_layout(values: list[np.ndarray]) -> tuple[int, int] | None:
    """(channels, negative channel axis) implied by broadcastable parameter shapes.

    A [C] vector broadcasts along the last axis, a [C, 1, 1] one along the third
    from last. All non-scalar parameters must agree; None when they do not.
    """
    layouts = set()
    for value in values:
        if value.size <= 1:
            continue
        wide = [i for i, d in enumerate(value.shape) if d > 1]
        if len(wide) != 1:
            return None
        layouts.add((int(value.shape[wide[0]]), wide[0] - value.ndim))
    if len(layouts) > 1:
        return None
    return layouts.pop() if layouts else (1, -1)
