"""Batch statistics: how training-mode graphs compute mean and variance from x.

tf.nn.moments since TF 1.1:
    mean = Mean(x, axes, keep_dims=True); var = Mean(SquaredDifference(x, StopGradient(mean)), axes)
    then Squeeze both unless keep_dims.
TF 1.0 (sufficient_statistics + normalize_moments), with shift = StopGradient(Mean(x, axes)):
    divisor = Reciprocal(counts); shifted = Sum(x - shift) * divisor
    mean = shifted + Reshape(shift); var = Sum(SquaredDifference(x, shift)) * divisor - Square(shifted)
"""
from __future__ import annotations

from ..pattern import Const, Param, Var, alt, op
from . import Statistics

ADD = "Add|AddV2"


def _squeezed(pattern):
    """keep_dims=False drops the reduced axes with Squeeze (or, in TF 1.0, a Reshape)."""
    return alt(op("Squeeze", pattern), op("Reshape", pattern, Const("shape")), pattern)


_MEAN = op("Mean", Var("x"), Const("axes"), name="batch_mean")
# Inference tools (optimize_for_inference's remove_training_nodes) strip StopGradient.
_STOPPED_MEAN = alt(op("StopGradient", Var("batch_mean")), Var("batch_mean"))
_MOMENTS = Statistics(
    name="moments",
    mean=_squeezed(_MEAN),
    variance=_squeezed(op("Mean", op("SquaredDifference", Var("x"), _STOPPED_MEAN), Const("axes"))),
)

_SHIFT = alt(op("StopGradient", op("Mean", Var("x"), Const("axes")), name="shift"),
             op("Mean", Var("x"), Const("axes"), name="shift"))
_DIVISOR = alt(op("Reciprocal|Inv", Param("counts"), name="divisor"), Const("divisor"))
_SHIFTED_MEAN = op("Mul", op("Sum", op("Sub", Var("x"), _SHIFT), Const("axes")), _DIVISOR,
                   name="shifted_mean")
_SUFFICIENT = Statistics(
    name="sufficient_statistics",
    mean=_squeezed(op(ADD, _SHIFTED_MEAN, _squeezed(Var("shift")))),
    variance=_squeezed(op("Sub",
                          op("Mul", op("Sum", op("SquaredDifference", Var("x"), Var("shift")), Const("axes")),
                             alt(Var("divisor"), _DIVISOR)),
                          op("Square", Var("shifted_mean")))),
)

STATISTICS = (_MOMENTS, _SUFFICIENT)
