"""Random frozen graphs with batch norms, for the property suite (hypothesis strategies).

A drawn `Spec` says which host, bias, batch-norm form, layout, dtype, channel count and
parameter values to use, whether the host's weights are shared or its output read
twice, and which linear op (if any) reads the batch norm, to fold forward into;
`build(spec)` writes it as NodeDefs the way TF 1.x graphs hold them. The chain forms are
random affine chains: elementwise ops with constant operands in any order and
association, with (chain_bn) or without (chain_affine) a sqrt(variance + epsilon) step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from tensorboard.compat.proto import graph_pb2, types_pb2

from bnrewrite.nodes import set_attrs

F32, F16, I32 = types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_INT32
HOSTS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "MatMul_tb", "Conv3D", "Conv2DBackpropInput",
         "atrous", "none")
FUSED = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization")
ARITHMETIC = ("decomposed", "decomposed_no_gamma", "decomposed_no_beta", "formula_div", "formula_rsqrt")
CHAINS = ("chain_bn", "chain_affine")
FORMS = FUSED + ARITHMETIC + ("moments",) + CHAINS
# Linear ops reading the batch norm, by the rank of its tensor: kernel, padding (Conv2D_same
# and Pad_valid see padding, so only a zero shift folds into them), and the links before them.
CONSUMERS = {2: ("none", "MatMul"), 4: ("none", "Conv2D_valid", "Conv2D_same", "Conv2D_1x1", "Depthwise_valid",
                                     "Pad_valid", "MirrorPad_valid", "Flatten_matmul", "MaxPool_valid",
                                     "AvgPool_valid"), 5: ("none",)}
PADDING_SEEN = ("Conv2D_same", "Pad_valid")
# One step of a chain: the op with a constant operand (rsub: c - x), and the constant's kind.
STEPS = ("mul", "add", "sub", "rsub", "div", "neg", "biasadd")
OPERANDS = ("vector", "scalar", "expr")
NORMS = ("rsqrt", "sqrt", "pow", "reciprocal")  # how 1 / sqrt(variance + epsilon) is spelled


@dataclass(frozen=True)
class Spec:
    host: str
    bias: str  # none | BiasAdd | Add
    form: str
    nchw: bool
    half: bool
    cin: int
    channels: int
    seed: int
    epsilon: float
    tiny_variance: bool
    shared_weights: bool
    second_consumer: bool
    swapped: bool
    consumer: str = "none"  # a linear op after the batch norm (CONSUMERS)
    zero_shift: bool = False  # beta = mean = 0: nothing for padding to see
    bn_side: bool = False  # the batch norm's output is also an output of its own
    chain: tuple[tuple[str, str, bool], ...] = ()  # (step, operand, swapped), x upward
    norm: str | None = None  # chain_bn: the spelling of its normalising step
    tap: int | None = None  # a chain step whose output is also read by an output "tap"

    @property
    def rank(self) -> int:
        return _rank(self.host, self.consumer)


def _rank(host: str, consumer: str) -> int:
    if host == "none" and consumer == "MatMul":
        return 2
    return {"MatMul": 2, "MatMul_tb": 2, "Conv3D": 5}.get(host, 4)


@st.composite
def specs(draw) -> Spec:
    # fp16 graphs: a half Conv2D and FusedBatchNormV3 (T=half, U=float), one draw in six
    half = draw(st.integers(0, 5)) == 0
    host = "Conv2D" if half else draw(st.sampled_from(HOSTS + ("none",) * 2))  # "none": fold forward
    consumer = "none" if half else draw(st.sampled_from(
        CONSUMERS[_rank(host, "none")] + (("MatMul",) if host == "none" else ())))
    rank = _rank(host, consumer)
    # Chains are drawn without a linear op after them: what a chain reports is then fixed.
    forms = [f for f in FORMS if (rank == 4 or f not in FUSED or (rank == 5 and f == "FusedBatchNormV3"))
             and (f not in CHAINS or consumer == "none")]
    form = "FusedBatchNormV3" if half else draw(st.sampled_from(forms))
    nchw = host == "Conv2D" and not half and form != "moments" and form != "BatchNormWithGlobalNormalization" \
        and not consumer.startswith(("Depthwise", "MaxPool", "AvgPool")) and draw(st.booleans())
    return Spec(
        host=host, bias=draw(st.sampled_from(("none", "BiasAdd", "Add"))) if host != "none" else "none",
        form=form, nchw=nchw, half=half, cin=draw(st.integers(1, 4)), channels=draw(st.integers(1, 7)),
        seed=draw(st.integers(0, 2**16)), epsilon=draw(st.sampled_from((1e-9, 1e-5, 1e-3, 0.1, 1.0))),
        tiny_variance=draw(st.booleans()), shared_weights=host != "none" and draw(st.booleans()),
        second_consumer=host != "none" and draw(st.booleans()), swapped=draw(st.booleans()),
        consumer=consumer, zero_shift=draw(st.integers(0, 3)) == 0,
        bn_side=consumer != "none" and draw(st.integers(0, 3)) == 0,
        **(_chain_spec(draw, form) if form in CHAINS else {}))


def _chain_spec(draw, form: str) -> dict:
    steps = draw(st.lists(st.tuples(st.sampled_from(STEPS), st.sampled_from(OPERANDS), st.booleans()),
                          min_size=2, max_size=6))
    norm = None
    if form == "chain_bn":  # the normalising step anywhere in the chain
        norm = draw(st.sampled_from(NORMS))
        steps.insert(draw(st.integers(0, len(steps))), ("norm", "vector", draw(st.booleans())))
    tap = draw(st.one_of(st.none(), st.integers(0, len(steps) - 1)))
    return {"chain": tuple(steps), "norm": norm, "tap": tap}


class _Graph:
    def __init__(self, producer: int) -> None:
        self.graph = graph_pb2.GraphDef()
        self.graph.versions.producer = producer

    def node(self, name: str, op: str, *inputs: str, **attrs) -> str:
        set_attrs(self.graph.node.add(name=name, op=op, input=list(inputs)), **attrs)
        return name

    def const(self, name: str, value, dtype=np.float32, read: bool = True) -> str:
        value = np.asarray(value, dtype=dtype)
        enum = {np.float32: F32, np.float16: F16, np.int32: I32}[np.dtype(dtype).type]
        self.node(name, "Const", value=value, dtype=enum)
        return self.node(f"{name}/read", "Identity", name, T=enum) if read else name


def build(spec: Spec) -> tuple[graph_pb2.GraphDef, list[str]]:
    """The graph and the outputs to compare."""
    rng = np.random.default_rng(spec.seed)
    g = _Graph(producer=8 if spec.form == "BatchNormWithGlobalNormalization" else 27)
    dt, np_dt = (F16, np.float16) if spec.half else (F32, np.float32)
    cin = spec.cin
    x_shape = {2: [-1, cin], 4: [-1, cin, 5, 6] if spec.nchw else [-1, 5, 6, cin],
               5: [-1, 3, 4, 5, cin]}[spec.rank]
    if spec.host == "Conv2DBackpropInput":
        x_shape = [2, 5, 6, cin]
    g.node("x", "Placeholder", dtype=dt)
    for d in x_shape:
        g.graph.node[-1].attr["shape"].shape.dim.add(size=d)
    outputs = []
    y = _host(g, spec, rng, dt, np_dt, outputs)
    bn = _chain(g, spec, rng, y, dt, outputs) if spec.form in CHAINS else _batch_norm(g, spec, rng, y, dt)
    if spec.bn_side:
        outputs.append(g.node("bn_side", "Relu", bn, T=dt))
    g.node("out", "Relu", _consumer(g, spec, rng, bn, dt), T=dt)
    return g.graph, ["out", *outputs]


def _consumer(g: _Graph, spec: Spec, rng, bn: str, dt) -> str:
    """The linear op reading the batch norm (through an Identity), or the batch norm."""
    if spec.consumer == "none":
        return bn
    c = bn_channels(spec)
    read = g.node("bn/read_out", "Identity", bn, T=dt)
    kind, padding = (spec.consumer + "_").split("_")[:2]
    if kind == "Flatten":  # every rank-4 tensor drawn here is 5 x 6 spatially
        read = g.node("flatten", "Reshape", read, g.const("flat", [-1, 30 * c], np.int32, read=False),
                      T=dt, Tshape=I32)
        c, kind = 30 * c, "MatMul"
    if kind == "MatMul":
        w = g.const("w_after", rng.normal(0, 0.5, (c, 3)))
        return g.node("after", "MatMul", read, w, T=dt, transpose_a=False, transpose_b=False)
    if kind in ("MaxPool", "AvgPool"):
        read, kind = g.node("pool", kind, read, T=dt, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                            padding="SAME", data_format="NHWC"), "Conv2D"  # NCHW pools: oneDNN only
    if kind in ("Pad", "MirrorPad"):
        pads = [[0, 0], [0, 0], [1, 1], [1, 1]] if spec.nchw else [[0, 0], [1, 1], [1, 1], [0, 0]]
        pads = g.const("pads_after", pads, np.int32, read=False)
        extra = {"mode": "REFLECT"} if kind == "MirrorPad" else {}
        read, kind = g.node("pad", kind, read, pads, T=dt, Tpaddings=I32, **extra), "Conv2D"
    k = 1 if padding == "1x1" else 3
    shape = (k, k, c, 2) if kind == "Depthwise" else (k, k, c, 3)
    op = "DepthwiseConv2dNative" if kind == "Depthwise" else "Conv2D"
    w = g.const("w_after", rng.normal(0, 0.5, shape))
    return g.node("after", op, read, w, T=dt, strides=[1, 1, 1, 1], padding="VALID" if padding == "valid" else "SAME",
                  data_format="NCHW" if spec.nchw else "NHWC")


def _host(g: _Graph, spec: Spec, rng, dt, np_dt, outputs: list[str]) -> str:
    c, cin = spec.channels, spec.cin
    layout = "NCHW" if spec.nchw else "NHWC"
    conv = dict(T=dt, strides=[1, 1, 1, 1], padding="SAME", data_format=layout)
    shapes = {"Conv2D": (3, 3, cin, c), "DepthwiseConv2dNative": (3, 3, cin, max(1, c // cin)),
              "MatMul": (cin, c), "MatMul_tb": (c, cin), "Conv3D": (2, 2, 2, cin, c),
              "Conv2DBackpropInput": (3, 3, c, cin), "atrous": (3, 3, cin, c)}
    if spec.host == "none":
        return g.node("pre", "Relu", "x", T=dt)
    w = g.const("w", rng.normal(0, 0.5, shapes[spec.host]), np_dt)
    if spec.host == "Conv2D":
        y = g.node("host", "Conv2D", "x", w, **conv)
    elif spec.host == "DepthwiseConv2dNative":
        y = g.node("host", "DepthwiseConv2dNative", "x", w, **conv)
    elif spec.host.startswith("MatMul"):
        y = g.node("host", "MatMul", "x", w, T=dt, transpose_a=False, transpose_b=spec.host == "MatMul_tb")
    elif spec.host == "Conv3D":
        y = g.node("host", "Conv3D", "x", w, T=dt, strides=[1] * 5, padding="SAME", data_format="NDHWC")
    elif spec.host == "Conv2DBackpropInput":
        sizes = g.const("sizes", [2, 5, 6, c], np.int32, read=False)
        y = g.node("host", "Conv2DBackpropInput", sizes, w, "x", **conv)
    else:  # atrous, rate 2: pad 6x6 -> 10x10, 2x2 blocks of 5x5, VALID 3x3 -> 3x3, back to 6x6
        block = g.const("block", [2, 2], np.int32, read=False)
        pads = g.const("pads", [[2, 3], [2, 2]], np.int32, read=False)
        s2b = g.node("s2b", "SpaceToBatchND", "x", block, pads, T=dt, Tblock_shape=I32, Tpaddings=I32)
        inner = g.node("host", "Conv2D", s2b, w, **dict(conv, padding="VALID"))
        crops = g.const("crops", [[0, 1], [0, 0]], np.int32, read=False)
        y = g.node("b2s", "BatchToSpaceND", inner, block, crops, T=dt, Tblock_shape=I32, Tcrops=I32)
    if spec.shared_weights and spec.host in ("Conv2D", "MatMul", "MatMul_tb", "DepthwiseConv2dNative"):
        twin = g.graph.node.add()
        twin.CopyFrom(next(n for n in g.graph.node if n.name == "host"))
        twin.name = "twin_host"  # another op reading the same weights, with no batch norm
        outputs.append(g.node("twin_out", "Relu", twin.name, T=dt))
    if spec.bias != "none":
        shape = [bn_channels(spec)] + ([1, 1] if spec.nchw and spec.bias == "Add" else [])
        b = g.const("b", rng.normal(0, 1, shape), np_dt)
        if spec.bias == "BiasAdd":
            y = g.node("biased", "BiasAdd", y, b, T=dt, data_format=layout)
        else:
            y = g.node("biased", "AddV2", *((b, y) if spec.swapped else (y, b)), T=dt)
    if spec.second_consumer:
        outputs.append(g.node("side", "Relu", y, T=dt))
    return y


def bn_channels(spec: Spec) -> int:
    """Channels of the host's output: depthwise gives in * multiplier, no host keeps x's."""
    if spec.host == "DepthwiseConv2dNative":
        return spec.cin * max(1, spec.channels // spec.cin)
    return spec.cin if spec.host == "none" else spec.channels


def _batch_norm(g: _Graph, spec: Spec, rng, y: str, dt) -> str:
    c = bn_channels(spec)
    gamma = rng.uniform(-2, 2, c)
    beta, mean = rng.normal(0, 1, c), rng.normal(0, 1, c)
    if spec.zero_shift:
        beta, mean = np.zeros(c), np.zeros(c)
    variance = 10 ** rng.uniform(-10, -4, c) if spec.tiny_variance else rng.uniform(0.2, 5, c)
    vec = [c, 1, 1] if spec.nchw else [c]
    if spec.form in FUSED:
        p = {k: g.const(f"bn/{k}", v) for k, v in
             (("gamma", gamma), ("beta", beta), ("mean", mean), ("variance", variance))}
        layout = "NCHW" if spec.nchw else ("NDHWC" if spec.rank == 5 else "NHWC")
        if spec.form == "BatchNormWithGlobalNormalization":
            return g.node("bn/bn", spec.form, y, p["mean"], p["variance"], p["beta"], p["gamma"], T=dt,
                          variance_epsilon=spec.epsilon, scale_after_normalization=True)
        extra = {"U": F32} if spec.form != "FusedBatchNorm" else {}
        return g.node("bn/bn", spec.form, y, p["gamma"], p["beta"], p["mean"], p["variance"], T=dt,
                      epsilon=spec.epsilon, is_training=False, data_format=layout, **extra)
    eps = g.const("bn/eps", spec.epsilon, read=False)
    if spec.form == "moments":
        axes = g.const("bn/axes", list(range(spec.rank - 1)), np.int32, read=False)
        m = g.node("bn/moments/mean", "Mean", y, axes, T=dt, Tidx=I32, keep_dims=True)
        sg = g.node("bn/moments/StopGradient", "StopGradient", m, T=dt)
        sd = g.node("bn/moments/SquaredDifference", "SquaredDifference", y, sg, T=dt)
        v = g.node("bn/moments/variance", "Mean", sd, axes, T=dt, Tidx=I32, keep_dims=True)
        mean_t = g.node("bn/moments/Squeeze", "Squeeze", m, T=dt, squeeze_dims=list(range(spec.rank - 1)))
        var_t = g.node("bn/moments/Squeeze_1", "Squeeze", v, T=dt, squeeze_dims=list(range(spec.rank - 1)))
    else:
        mean_t = g.const("bn/mean", mean.reshape(vec))
        var_t = g.const("bn/variance", variance.reshape(vec))
    gamma_t = g.const("bn/gamma", gamma.reshape(vec))
    beta_t = g.const("bn/beta", beta.reshape(vec))
    pair = (lambda a, b: (b, a)) if spec.swapped else (lambda a, b: (a, b))
    n = lambda name, op, *ins: g.node(f"bn/{name}", op, *ins, T=dt)
    if spec.form.startswith("formula"):
        centered = n("sub", "Sub", y, mean_t)
        var_eps = n("add", "AddV2", *pair(var_t, eps))
        if spec.form == "formula_div":
            normalized = n("truediv", "RealDiv", centered, n("Sqrt", "Sqrt", var_eps))
        else:
            normalized = n("mul", "Mul", *pair(centered, n("Rsqrt", "Rsqrt", var_eps)))
        return n("add_1", "AddV2", *pair(n("mul_1", "Mul", *pair(normalized, gamma_t)), beta_t))
    inv = n("Rsqrt", "Rsqrt", n("add", "AddV2", *pair(var_t, eps)))
    if spec.form != "decomposed_no_gamma":
        inv = n("mul", "Mul", *pair(inv, gamma_t))
    scaled = n("mul_1", "Mul", *pair(y, inv))
    mean_inv = n("mul_2", "Mul", *pair(mean_t, inv))
    shift = n("Neg", "Neg", mean_inv) if spec.form == "decomposed_no_beta" else n("sub", "Sub", beta_t, mean_inv)
    return n("add_1", "AddV2", *pair(scaled, shift))


def _chain(g: _Graph, spec: Spec, rng, y: str, dt, outputs: list[str]) -> str:
    """The steps of spec.chain on y, each with its own constant operand."""
    c = bn_channels(spec)
    shape = [c, 1, 1] if spec.nchw else [c]
    ops = {"mul": "Mul", "add": "AddV2", "sub": "Sub", "rsub": "Sub", "div": "RealDiv", "norm": "Mul"}
    t = y
    for i, (step, operand, swapped) in enumerate(spec.chain):
        name = f"chain/s{i}"
        if step == "neg":
            t = g.node(name, "Neg", t, T=dt)
        elif step == "biasadd":
            t = g.node(name, "BiasAdd", t, g.const(f"{name}/bias", rng.normal(0, 1, c)), T=dt,
                       data_format="NCHW" if spec.nchw else "NHWC")
        else:
            op = "RealDiv" if step == "norm" and spec.norm == "sqrt" else ops[step]
            const = _norm(g, spec, rng, name, shape) if step == "norm" else _operand(g, rng, name, operand, shape)
            first = step == "rsub" or (swapped and op in ("Mul", "AddV2"))
            t = g.node(name, op, *((const, t) if first else (t, const)), T=dt)
        if spec.tap == i:
            outputs.append(g.node("tap", "Relu", t, T=dt))
    return t


def _magnitudes(rng, shape) -> np.ndarray:
    """Away from zero (the chain divides by some), either sign."""
    return rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def _operand(g: _Graph, rng, name: str, kind: str, shape: list[int]) -> str:
    if kind == "scalar":
        return g.const(f"{name}/c", _magnitudes(rng, ()))
    a = g.const(f"{name}/a", _magnitudes(rng, shape))
    if kind == "vector":
        return a
    b = g.const(f"{name}/b", _magnitudes(rng, ()))
    if rng.integers(2):  # a constant subexpression, evaluated by the analysis
        return g.node(f"{name}/expr", "Mul", a, g.node(f"{name}/recip", "Reciprocal", b, T=F32), T=F32)
    return g.node(f"{name}/expr", "Maximum", a, b, T=F32)


def _norm(g: _Graph, spec: Spec, rng, name: str, shape: list[int]) -> str:
    """1 / sqrt(variance + epsilon), or sqrt for a RealDiv, spelled as spec.norm says."""
    variance = g.const(f"{name}/variance", rng.uniform(0.2, 5.0, shape))
    eps = g.const(f"{name}/epsilon", spec.epsilon, read=False)
    summed = g.node(f"{name}/add", "AddV2", *((eps, variance) if spec.swapped else (variance, eps)), T=F32)
    if spec.norm == "rsqrt":
        return g.node(f"{name}/Rsqrt", "Rsqrt", summed, T=F32)
    if spec.norm == "sqrt":
        return g.node(f"{name}/Sqrt", "Sqrt", summed, T=F32)
    if spec.norm == "pow":
        return g.node(f"{name}/Pow", "Pow", summed, g.const(f"{name}/half", -0.5, read=False), T=F32)
    return g.node(f"{name}/Reciprocal", "Reciprocal", g.node(f"{name}/Sqrt", "Sqrt", summed, T=F32), T=F32)
