"""BatchNormWithGlobalNormalization: the pre-2016 op (GraphDef version < 9).

Input order is t, m, v, beta, gamma; gamma is ignored unless
scale_after_normalization is true.
"""
from __future__ import annotations

from tensorboard.compat.proto import types_pb2

from ..pattern import Param, Var, op
from . import Variant

VARIANTS = (
    Variant(
        form="BatchNormWithGlobalNormalization",
        pattern=op("BatchNormWithGlobalNormalization", Var("x"), Param("mean"), Param("variance"),
                   Param("beta"), Param("gamma")),
        attrs={"epsilon": "variance_epsilon", "use_gamma": "scale_after_normalization"},
        fuses_to="fused-op",
        # FusedBatchNormV3's float32 parameters cannot hold a half or double op's
        fused_dtypes=frozenset({types_pb2.DT_FLOAT}),
    ),
)
