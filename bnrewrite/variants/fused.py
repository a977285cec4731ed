"""FusedBatchNorm, V2 and V3: one op, outputs y and (training) batch statistics."""
from __future__ import annotations

from ..pattern import Param, Var, op
from . import Variant

_ATTRS = {"epsilon": "epsilon", "training": "is_training", "data_format": "data_format"}
# The op definitions' defaults (TF 1.x and 2.x alike): a frozen graph may leave them out.
_DEFAULTS = {"epsilon": 0.0001, "training": True, "data_format": "NHWC"}

VARIANTS = tuple(
    Variant(
        form=name,
        pattern=op(name, Var("x"), Param("gamma"), Param("beta"), Param("mean"), Param("variance")),
        attrs=_ATTRS,
        defaults=_DEFAULTS,
        # the op plan.TARGETS names for the destination, on the same tensors (a V3 kept
        # where that is V3 itself)
        fuses_to="fused-op",
        side_outputs=True,
    )
    for name in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
)
