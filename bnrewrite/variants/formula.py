"""Hand-written batch norm: (x - mean) / sqrt(variance + eps) * gamma + beta, and the
Rsqrt, Div and reordered spellings people typed instead of calling the library.
"""
from __future__ import annotations

from ..pattern import Const, Param, Var, alt, op
from . import Variant

ADD = "Add|AddV2"
DIV = "RealDiv|Div"

_CENTERED = op("Sub", Var("x"), Param("mean"))
_VAR_EPS = op(ADD, Param("variance"), Const("epsilon", scalar=True))
_STD = op("Sqrt", _VAR_EPS)
_RSTD = op("Rsqrt", _VAR_EPS)
_NORMALIZED = alt(op(DIV, _CENTERED, _STD), op("Mul", _CENTERED, _RSTD))
_GAMMA = Const("gamma")
_SCALED = alt(
    op("Mul", _NORMALIZED, _GAMMA),                    # (x - m) / s * g
    op(DIV, op("Mul", _GAMMA, _CENTERED), _STD),       # g * (x - m) / s
    op("Mul", _CENTERED, op("Mul", _RSTD, _GAMMA)),    # (x - m) * (rsqrt(.) * g)
    op("Mul", _CENTERED, op(DIV, _GAMMA, _STD)),       # (x - m) * (g / s)
)

# With and without beta and gamma; the finder keeps the largest match per node set.
VARIANTS = tuple(Variant("formula", pattern, needs=frozenset({"Sqrt", "Rsqrt"})) for pattern in (
    op(ADD, _SCALED, Const("beta")),
    op(ADD, _NORMALIZED, Const("beta")),
    _SCALED,
    _NORMALIZED,
))
