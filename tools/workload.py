"""Seeded benchmark workloads written as NodeDefs (no TensorFlow needed to build them).

`chain(blocks)`: one NHWC stream of blocks, round-robin over every form and host the
rewrite handles (fused V1/V3, BatchNormWithGlobalNormalization, decomposed with AddV2,
a hand-written formula, a plain scale-and-shift, a batch norm after an activation that
only a following 1x1 conv can take, a training-mode moments block) and the hosts Conv2D,
Conv2D+BiasAdd, DepthwiseConv2dNative and a MatMul head. About 15 nodes a block.

`zoo(folder, count)`: `count` small graphs of a few blocks each, in sub-folders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.compat.proto import graph_pb2, types_pb2

from bnrewrite import save_graph
from bnrewrite.nodes import set_attrs

F32, I32 = types_pb2.DT_FLOAT, types_pb2.DT_INT32
# BatchNormWithGlobalNormalization needs a producer below 9; every other op here exists there.
PRODUCER = 8


class _Graph:
    def __init__(self, seed: int, channels: int) -> None:
        self.graph = graph_pb2.GraphDef()
        self.graph.versions.producer = PRODUCER
        self.rng = np.random.default_rng(seed)
        self.c = channels

    def node(self, name: str, op: str, *inputs: str, **attrs) -> str:
        set_attrs(self.graph.node.add(name=name, op=op, input=list(inputs)), **attrs)
        return name

    def const(self, name: str, value) -> str:
        value = np.asarray(value)
        dtype = I32 if value.dtype == np.int32 else F32
        return self.node(name, "Const", value=value.astype(np.int32 if dtype == I32 else np.float32),
                         dtype=dtype)

    def vector(self, name: str, low: float = 0.5, high: float = 1.5) -> str:
        return self.const(name, self.rng.uniform(low, high, self.c))

    def conv(self, p: str, x: str, k: int = 3, depthwise: bool = False) -> str:
        shape = (k, k, self.c, 1) if depthwise else (k, k, self.c, self.c)
        w = self.const(f"{p}/weights", self.rng.normal(0, 0.3, shape))
        return self.node(f"{p}/{'depthwise' if depthwise else 'Conv2D'}",
                         "DepthwiseConv2dNative" if depthwise else "Conv2D", x, w, T=F32,
                         strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC")

    def fused(self, p: str, x: str, op: str = "FusedBatchNormV3") -> str:
        params = [self.vector(f"{p}/{r}") for r in ("gamma", "beta", "mean", "variance")]
        extra = {"U": F32} if op == "FusedBatchNormV3" else {}
        return self.node(f"{p}/{op}", op, x, *params, T=F32, epsilon=0.001, is_training=False,
                         data_format="NHWC", **extra)

    def decomposed(self, p: str, x: str) -> str:
        v, g, m, b = (self.vector(f"{p}/{r}") for r in ("variance", "gamma", "mean", "beta"))
        eps = self.const(f"{p}/add/y", np.float32(0.001))
        r = self.node(f"{p}/Rsqrt", "Rsqrt", self.node(f"{p}/add", "AddV2", v, eps, T=F32), T=F32)
        inv = self.node(f"{p}/mul", "Mul", r, g, T=F32)
        shift = self.node(f"{p}/sub", "Sub", b, self.node(f"{p}/mul_2", "Mul", m, inv, T=F32), T=F32)
        return self.node(f"{p}/add_1", "AddV2", self.node(f"{p}/mul_1", "Mul", x, inv, T=F32), shift, T=F32)

    def formula(self, p: str, x: str) -> str:
        m, v, g, b = (self.vector(f"{p}/{r}") for r in ("mean", "variance", "gamma", "beta"))
        eps = self.const(f"{p}/eps", np.float32(0.001))
        std = self.node(f"{p}/Sqrt", "Sqrt", self.node(f"{p}/add", "AddV2", v, eps, T=F32), T=F32)
        norm = self.node(f"{p}/truediv", "RealDiv", self.node(f"{p}/sub", "Sub", x, m, T=F32), std, T=F32)
        return self.node(f"{p}/add_1", "AddV2", self.node(f"{p}/mul", "Mul", norm, g, T=F32), b, T=F32)

    def moments(self, p: str, x: str) -> str:
        axes = self.const(f"{p}/axes", np.array([0, 1, 2], np.int32))
        mean = self.node(f"{p}/mean", "Mean", x, axes, T=F32, Tidx=I32, keep_dims=True)
        stop = self.node(f"{p}/StopGradient", "StopGradient", mean, T=F32)
        sq = self.node(f"{p}/SquaredDifference", "SquaredDifference", x, stop, T=F32)
        var = self.node(f"{p}/variance", "Mean", sq, axes, T=F32, Tidx=I32, keep_dims=True)
        mean, var = (self.node(f"{t}/Squeeze", "Squeeze", t, T=F32, squeeze_dims=[0, 1, 2]) for t in (mean, var))
        g, b = self.vector(f"{p}/gamma"), self.vector(f"{p}/beta")
        return self.node(f"{p}/bn", "FusedBatchNorm", x, g, b, mean, var, T=F32, epsilon=0.001,
                         is_training=False, data_format="NHWC")  # statistics from the batch


def _block(g: _Graph, kind: int, p: str, x: str) -> str:
    """One block of kind `kind` reading `x`; returns its output tensor."""
    if kind == 0:
        y = g.fused(p, g.conv(p, x))
    elif kind == 1:
        bias = g.node(f"{p}/BiasAdd", "BiasAdd", g.conv(p, x, k=1), g.vector(f"{p}/bias", -0.1, 0.1),
                      T=F32, data_format="NHWC")
        y = g.decomposed(p, bias)
    elif kind == 2:
        y = g.node(f"{p}/bn", "BatchNormWithGlobalNormalization", g.conv(p, x, depthwise=True),
                   *(g.vector(f"{p}/{r}") for r in ("mean", "variance", "beta", "gamma")),
                   T=F32, variance_epsilon=0.001, scale_after_normalization=True)
    elif kind == 3:
        y = g.formula(p, g.conv(p, x))
    elif kind == 4:  # scale and shift after a conv: not a batch norm, still folds
        scaled = g.node(f"{p}/mul", "Mul", g.conv(p, x), g.vector(f"{p}/scale"), T=F32)
        y = g.node(f"{p}/add", "AddV2", scaled, g.vector(f"{p}/shift", -0.1, 0.1), T=F32)
    elif kind == 5:  # after an activation: only the 1x1 VALID conv after it can take it
        act = g.node(f"{p}/Relu_in", "Relu", x, T=F32)
        bn = g.fused(p, act, op="FusedBatchNorm")
        w = g.const(f"{p}/next/weights", g.rng.normal(0, 0.3, (1, 1, g.c, g.c)))
        return g.node(f"{p}/next/Conv2D", "Conv2D", bn, w, T=F32, strides=[1, 1, 1, 1], padding="VALID",
                      data_format="NHWC")
    else:
        y = g.moments(p, g.conv(p, x))
    return g.node(f"{p}/Relu", "Relu", y, T=F32)


KINDS = 7


def chain(blocks: int, channels: int = 8, seed: int = 0, size: int = 16) -> graph_pb2.GraphDef:
    """`blocks` blocks in one stream, then global average pooling and a MatMul head with a
    decomposed batch norm. Input `x` is [batch, size, size, channels]."""
    g = _Graph(seed, channels)
    x = g.node("x", "Placeholder", dtype=F32)
    for d in (-1, size, size, channels):
        g.graph.node[-1].attr["shape"].shape.dim.add(size=d)
    for b in range(blocks):
        x = _block(g, b % KINDS, f"block{b}", x)
    pooled = g.node("pool", "Mean", x, g.const("pool/axes", np.array([1, 2], np.int32)), T=F32, Tidx=I32,
                    keep_dims=False)
    w = g.const("head/weights", g.rng.normal(0, 0.3, (channels, channels)))
    dense = g.node("head/MatMul", "MatMul", pooled, w, T=F32, transpose_a=False, transpose_b=False)
    g.node("out", "Identity", g.decomposed("head/bn", dense), T=F32)
    return g.graph


def blocks_for(nodes: int) -> int:
    """Blocks giving about `nodes` nodes."""
    per_block = len(chain(KINDS * 4).node) / (KINDS * 4)
    return max(1, round(nodes / per_block))


def zoo(folder: Path, count: int) -> list[Path]:
    """`count` small graphs (2 to 8 blocks, seeded by their number) in ten sub-folders."""
    paths = []
    for i in range(count):
        path = folder / f"group{i % 10}" / f"model{i:03d}.pb"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_graph(chain(2 + i % 7, seed=i, size=8), path)
        paths.append(path)
    return paths

