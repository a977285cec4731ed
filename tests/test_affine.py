"""The affine-chain analysis on graphs built to probe its edges: where a chain starts and
stops, what it computes (checked against numpy), and what it reads back as a batch norm."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

import bnrewrite
from bnrewrite.affine import Analysis, recover
from bnrewrite.index import GraphIndex
from bnrewrite.verify import Options
from test_rewrite_safety import base, conv

F32 = types_pb2.DT_FLOAT
RNG = np.random.default_rng(3)
# float32 values (what the graph's constants hold), compared in float64
GAMMA, BETA, MEAN, VARIANCE = (v.astype(np.float32).astype(np.float64) for v in (
    RNG.uniform(0.5, 2, 4), RNG.normal(size=4), RNG.normal(size=4), RNG.uniform(0.2, 5, 4)))
EPS = float(np.float32(1e-3))


def chains(graph):
    return Analysis(GraphIndex(graph), lambda node: False).chains()


def binary(builder, name, op, a, b):
    builder.node(name, op, a, b, T=F32)


def params(builder):
    for role, value in (("gamma", GAMMA), ("beta", BETA), ("mean", MEAN), ("var", VARIANCE), ("eps", EPS)):
        builder.const(role, value)


def conv_and_rsqrt(builder):
    """x -> conv, and rsqrt(var + eps) of the constant parameters, for a formula to join."""
    base(builder)
    params(builder)
    conv(builder, "conv", "x", "w/read")
    binary(builder, "var_eps", "AddV2", "var", "eps")
    builder.node("rsqrt", "Rsqrt", "var_eps", T=F32)


def test_recover_reads_back_what_made_the_map():
    scale = GAMMA / np.sqrt(VARIANCE + EPS)
    found = recover(scale, BETA - MEAN * scale, VARIANCE, EPS, [VARIANCE, MEAN, GAMMA, BETA])
    for role, want in (("gamma", GAMMA), ("beta", BETA), ("mean", MEAN), ("variance", VARIANCE)):
        np.testing.assert_allclose(found[role], want, rtol=1e-12)


def test_recover_does_not_invent_a_mean():
    """Only the constants the chain reads can be its mean and beta."""
    scale = GAMMA / np.sqrt(VARIANCE + EPS)
    found = recover(scale, BETA - MEAN * scale, VARIANCE, EPS, [VARIANCE, GAMMA])
    assert found["mean"] is None and found["beta"] is None
    np.testing.assert_allclose(found["gamma"], GAMMA, rtol=1e-12)


def test_any_spelling_is_one_map(builder):
    """gamma * (x / (max(var, 0) + eps)^0.5) - (mean * gamma / (...)^0.5 - beta),
    as constant subexpressions the analysis evaluates: one chain, its map in float64."""
    base(builder)
    params(builder)
    conv(builder, "conv", "x", "w/read")
    builder.const("zero", 0.0).const("half", 0.5)
    binary(builder, "floor", "Maximum", "var", "zero")
    binary(builder, "var_eps", "AddV2", "floor", "eps")
    binary(builder, "std", "Pow", "var_eps", "half")
    binary(builder, "x_std", "RealDiv", "conv", "std")
    binary(builder, "scaled", "Mul", "gamma", "x_std")
    binary(builder, "m_g", "Mul", "mean", "gamma")
    binary(builder, "m_g_std", "RealDiv", "m_g", "std")
    binary(builder, "offset", "Sub", "m_g_std", "beta")
    binary(builder, "y", "Sub", "scaled", "offset")
    builder.node("out", "Relu", "y", T=F32)
    (chain,) = chains(builder.graph)
    assert (chain.root, chain.x, sorted(chain.nodes)) == ("y", "conv", ["scaled", "x_std", "y"])
    scale = GAMMA / np.sqrt(VARIANCE + EPS)
    np.testing.assert_allclose(chain.affine.scale, scale, rtol=1e-12)
    np.testing.assert_allclose(chain.affine.shift, BETA - MEAN * scale, rtol=1e-12)
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert (entry.form, entry.host, entry.action) == ("formula", "Conv2D", "fold")
    assert entry.epsilon == pytest.approx(EPS, rel=1e-6)
    np.testing.assert_allclose(entry.mean, MEAN, rtol=1e-6)


def test_a_chain_stops_where_an_intermediate_is_read_elsewhere(builder):
    """(x + neg(mean)) * rsqrt(var + eps) is also read by 'side': it stays, so the chain
    above it (gamma, beta) starts from it and has no host; the part below folds into the
    conv. (No pattern lists this spelling: the algebra alone decides.)"""
    conv_and_rsqrt(builder)
    builder.node("neg_mean", "Neg", "mean", T=F32)
    binary(builder, "centered", "AddV2", "conv", "neg_mean")
    binary(builder, "normalized", "Mul", "centered", "rsqrt")
    builder.node("side", "Relu", "normalized", T=F32)
    binary(builder, "scaled", "Mul", "normalized", "gamma")
    binary(builder, "y", "AddV2", "scaled", "beta")
    builder.node("out", "Relu", "y", T=F32)
    assert sorted((c.root, c.x) for c in chains(builder.graph)) == [("normalized", "conv"), ("y", "normalized")]
    rewritten, report = bnrewrite.rewrite(builder.graph)
    assert [(e.form, e.output, e.action) for e in report.batch_norms] == [("formula", "normalized", "fold")]
    assert {"scaled", "y", "side"} <= {n.name for n in rewritten.node}
    assert bnrewrite.verify(builder.graph, rewritten, Options(outputs=["out", "side"])).passed


def test_a_hosts_own_bias_is_not_taken_into_a_chain(builder):
    """Conv2D + BiasAdd is hosts.py's to fold: the chain after it is the Mul alone."""
    base(builder)
    conv(builder, "conv", "x", "w/read")
    builder.const("bias", RNG.normal(size=4)).const("scale", GAMMA)
    builder.node("biased", "BiasAdd", "conv", "bias", T=F32, data_format="NHWC")
    binary(builder, "y", "Mul", "biased", "scale")
    builder.node("out", "Relu", "y", T=F32)
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert (entry.form, entry.nodes, entry.host, entry.action) == ("affine", ["y"], "Conv2D", "fold")
    np.testing.assert_allclose(entry.scale, GAMMA, rtol=1e-6)
    rewritten, _ = bnrewrite.rewrite(builder.graph)
    assert [n.op for n in rewritten.node if n.name == "y"] == ["BiasAdd"]
    assert bnrewrite.audit(rewritten).batch_norms == []
    assert bnrewrite.verify(builder.graph, rewritten, Options(outputs=["out"])).passed


@pytest.mark.parametrize("op", ["Mean", "Placeholder"])
def test_batch_statistics_and_fed_values_are_not_constants(builder, op):
    """(x - Mean(x)) * c: the Sub reads x twice, so the chain is the Mul alone, from it."""
    base(builder)
    conv(builder, "conv", "x", "w/read")
    builder.const("axes", np.array([0, 1, 2], np.int32)).const("c", GAMMA)
    if op == "Mean":
        builder.node("m", "Mean", "conv", "axes", T=F32, Tidx=types_pb2.DT_INT32, keep_dims=True)
    else:
        builder.node("m", "Placeholder", dtype=F32)
    binary(builder, "centered", "Sub", "conv", "m")
    binary(builder, "y", "Mul", "centered", "c")
    builder.node("out", "Relu", "y", T=F32)
    assert [(c.root, c.x) for c in chains(builder.graph)] == [("y", "centered")]
    assert bnrewrite.audit(builder.graph).batch_norms == []  # nothing to fold it into


def test_a_fake_quant_splits_the_chain(builder):
    base(builder)
    params(builder)
    conv(builder, "conv", "x", "w/read")
    builder.const("low", -6.0).const("high", 6.0)
    binary(builder, "scaled", "Mul", "conv", "gamma")
    builder.node("quant", "FakeQuantWithMinMaxVars", "scaled", "low", "high", num_bits=8, narrow_range=False)
    binary(builder, "y", "AddV2", "quant", "beta")
    builder.node("out", "Relu", "y", T=F32)
    (chain,) = chains(builder.graph)
    assert (chain.x, chain.fake_quants, sorted(chain.nodes)) == ("conv", ("quant",), ["scaled", "y"])
    lower, upper = chain.segments
    for got, want in ((lower.scale, GAMMA), (lower.shift, 0), (upper.scale, 1), (upper.shift, BETA)):
        np.testing.assert_allclose(np.broadcast_to(got, (4,)), np.broadcast_to(want, (4,)), rtol=1e-12)


def test_constants_of_a_higher_rank_than_the_hosts_output_do_not_fold(builder):
    """x[N, C] * c[1, 1, C] is [1, N, C]: folding c into the MatMul would drop that axis."""
    builder.node("x", "Placeholder", dtype=F32)
    builder.const("w", RNG.normal(size=(3, 4))).const("c", GAMMA.reshape(1, 1, 4))
    builder.node("mm", "MatMul", "x", "w", T=F32, transpose_a=False, transpose_b=False)
    binary(builder, "y", "Mul", "mm", "c")
    builder.node("out", "Relu", "y", T=F32)
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert (entry.form, entry.host, entry.action, entry.reason) == ("affine", "MatMul", "skip", "channel-mismatch")


def test_c_minus_x_is_not_a_mean_subtracted_from_a_constant(builder):
    """(c - x) * rsqrt(var + eps) matches the named (x - mean) * rsqrt(...) with x bound to c
    and a non-constant 'mean': the chain of constants explains the same ops, and folds."""
    conv_and_rsqrt(builder)
    binary(builder, "flipped", "Sub", "mean", "conv")
    binary(builder, "y", "Mul", "flipped", "rsqrt")
    builder.node("out", "Relu", "y", T=F32)
    (entry,) = bnrewrite.audit(builder.graph).batch_norms
    assert (entry.form, entry.input, entry.host, entry.action) == ("formula", "conv", "Conv2D", "fold")
    np.testing.assert_allclose([entry.gamma, entry.mean, entry.beta], [-np.ones(4), MEAN, np.zeros(4)],
                               rtol=1e-6, atol=1e-7)


def test_a_binary_op_with_one_input_is_not_a_chain_step(builder):
    """Fuzzer case (an op type changed to Mul on a one-input node): no IndexError, no chain."""
    builder.node("x", "Placeholder", dtype=1).const("c", [2.0, 3.0])
    builder.node("half", "Mul", "x", T=1)  # one input: TensorFlow would refuse it, we must not crash
    builder.node("out", "Add", "half", "c", T=1)
    assert [e.form for e in bnrewrite.audit(builder.graph).batch_norms] == []


def test_a_reshape_that_does_not_fit_is_not_a_constant(builder):
    """numpy 2 has no np.AxisError: naming it in an except clause turned a failed reshape of
    a constant into an AttributeError."""
    from bnrewrite.constants import Evaluator
    builder.const("v", np.arange(6, dtype=np.float32))
    builder.node("s", "Const", value=np.array([4, 4], np.int32), dtype=types_pb2.DT_INT32)
    builder.node("r", "Reshape", "v", "s", T=types_pb2.DT_FLOAT, Tshape=types_pb2.DT_INT32)
    builder.node("fits", "Const", value=np.array([2, 3], np.int32), dtype=types_pb2.DT_INT32)
    builder.node("r2", "Reshape", "v", "fits", T=types_pb2.DT_FLOAT, Tshape=types_pb2.DT_INT32)
    evaluator = Evaluator(GraphIndex(builder.graph))
    assert evaluator.constant("r") is None
    np.testing.assert_array_equal(evaluator.constant("r2").value, np.arange(6).reshape(2, 3))
