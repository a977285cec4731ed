"""A pipeline's batch norm spelled with its own op, and a host core bnrewrite lacks.

ToyBatchNorm(x, gamma, beta, mean, variance; epsilon) is a custom op TensorFlow cannot
run; BatchMatMulV2 is a real one, here the dense layer of a pipeline whose weights are a
constant [in, out] matrix (adj_y swaps them like MatMul's transpose_b).
"""
from bnrewrite.hosts import Host
from bnrewrite.pattern import Param, Var, op
from bnrewrite.variants import Variant

VARIANTS = (
    Variant("ToyBatchNorm",
            op("ToyBatchNorm", Var("x"), Param("gamma"), Param("beta"), Param("mean"), Param("variance")),
            attrs={"epsilon": "epsilon"}),
)

HOSTS = (Host("BatchMatMulV2", 1, 2, (1,), 2, layout_attr=None, transposed_by="adj_y", input_axis=0),)
