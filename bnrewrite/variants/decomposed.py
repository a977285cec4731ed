"""tf.nn.batch_normalization as TF 1.x emits it (batchnorm/ scope):

    inv = rsqrt(variance + epsilon) [* gamma]
    y   = x * inv + (beta - mean * inv)      # without beta: -mean * inv, i.e. Neg(mean) * inv

`Add` before TF 1.15, `AddV2` after; fp16 graphs Cast inv and the shift to x's type.
"""
from __future__ import annotations

from ..pattern import Const, Param, Var, alt, op
from . import Variant

ADD = "Add|AddV2"


def _rsqrt(name: str | None = None):
    return op("Rsqrt", op(ADD, Param("variance"), Const("epsilon", scalar=True)), name=name)


_INV = alt(op("Mul", _rsqrt(), Const("gamma"), name="inv"), _rsqrt(name="inv"))
_SCALED_X = op("Mul", Var("x"), _INV)
_MEAN_INV = op("Mul", Param("mean"), Var("inv"))

_NEEDS = frozenset({"Rsqrt"})
VARIANTS = tuple(Variant("batch_normalization", pattern, needs=_NEEDS) for pattern in (
    op(ADD, _SCALED_X, op("Sub", Const("beta"), _MEAN_INV)),
    op(ADD, _SCALED_X, op("Mul", op("Neg", Param("mean")), Var("inv"))),
    op(ADD, _SCALED_X, op("Neg", _MEAN_INV)),
    # Hand-inlined beta-free version: x * inv - mean * inv.
    op("Sub", _SCALED_X, _MEAN_INV),
))
