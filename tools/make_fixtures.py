"""Generate bnrewrite's test fixtures: small frozen TF1-style graphs, one per batch-norm form.

For each case this writes ``fixtures/NAME.pb`` (binary GraphDef; a few cases use ``.pbtxt`` to
exercise text loading) and ``fixtures/NAME.expected.json``, the sidecar that says which batch
norms the audit must find and what the plan must do with them (schema: fixtures/README.md).

Run from the repository root with the dev virtualenv (needs TensorFlow)::

    .venv/bin/python tools/make_fixtures.py [--out fixtures] [--only NAME ...] [--check]

Output is seeded and byte-stable: running it twice gives identical files. ``--check`` also
imports and runs every graph marked ``runs_in_tf`` on random inputs and fails if it does not run
or gives non-finite outputs.

Cases are declared below as small builder functions registered with ``@case``; the helpers that
name nodes the way TF 1.x did live in tools/fixturelib.py.
"""

import argparse
import functools
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixturelib import (FORM_OPS, binary, bnwgn, build, control_flow_v1, conv2d,  # noqa: E402
                        conv_setup, decomposed_bn, dense, fake_quant, finish, fused_bn, fused_tail,
                        moments_tf10, run_graph)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

CASES = []
ONEDNN_NOTE = (" (NCHW Conv2D runs on CPU only through oneDNN, TF's x86 default; it fails with "
               "TF_ENABLE_ONEDNN_OPTS=0.)")


def case(name, description, fmt="pb", runs_in_tf=True, group=None):
    """Register a builder ``build(fx)`` that fills the Fixture ``fx`` inside its graph."""
    def register(builder):
        CASES.append((name, description, fmt, runs_in_tf, group, builder))
        return builder
    return register


# ----- 1. legacy BatchNormWithGlobalNormalization --------------------------------------------
@case("bnwgn_conv_scale", "Conv2D -> legacy BatchNormWithGlobalNormalization "
      "(scale_after_normalization=true, producer 8): folds into the Conv2D.")
def _(fx):
    y, p, t = conv_setup(fx, [None, 7, 5, 3], 6)
    bn = bnwgn(fx, "bn/BatchNormWithGlobalNormalization", y, t, 1e-3)
    fx.output(fx.node("out", "Relu", [bn], T=tf.float32))
    fx.producer = 8
    fx.expect("BatchNormWithGlobalNormalization", bn, y, p, 1e-3, "Conv2D")


@case("bnwgn_conv_noscale", "Conv2D -> BatchNormWithGlobalNormalization with "
      "scale_after_normalization=false (gamma present but ignored), no versions field, text "
      "format: canonical gamma is ones.", fmt="pbtxt")
def _(fx):
    y, p, t = conv_setup(fx, [None, 6, 4, 3], 9)
    bn = bnwgn(fx, "bn/BatchNormWithGlobalNormalization", y, t, 2e-3,
               scale_after_normalization=False)
    fx.output(fx.node("out", "Relu", [bn], T=tf.float32))
    fx.producer = "absent"
    fx.expect("BatchNormWithGlobalNormalization", bn, y, p, 2e-3, "Conv2D", gamma_ignored=True)


# ----- 2. FusedBatchNorm / V2 / V3 ----------------------------------------------------------
def fused_after_conv(fx, version, data_format, shape, channels, eps):
    y = conv2d(fx, "conv1", fx.placeholder("x", shape), channels, data_format=data_format)
    fused_tail(fx, y, channels, eps, "Conv2D", version, data_format)


for _v, _df, _shape, _c, _eps in [(1, "NHWC", [None, 7, 5, 3], 8, 1.1e-5),
                                  (2, "NHWC", [None, 6, 7, 2], 5, 3e-3),
                                  (3, "NHWC", [None, 5, 6, 3], 12, 1e-4),
                                  (1, "NCHW", [None, 3, 7, 5], 10, 4e-3),
                                  (2, "NCHW", [None, 2, 6, 5], 7, 2.5e-5),
                                  (3, "NCHW", [None, 4, 7, 6], 9, 5e-4)]:
    case("fbn_v%d_conv_%s" % (_v, _df.lower()),
         "Conv2D (%s) -> %s inference with moving statistics: folds into the Conv2D.%s"
         % (_df, FORM_OPS[_v], ONEDNN_NOTE if _df == "NCHW" else ""))(
        functools.partial(fused_after_conv, version=_v, data_format=_df, shape=_shape,
                          channels=_c, eps=_eps))


@case("fbn_v3_depthwise_mult2", "DepthwiseConv2dNative with channel multiplier 2 (4 -> 8 "
      "channels) -> FusedBatchNormV3: folds into the depthwise filter [kh, kw, in, mult].")
def _(fx):
    x = fx.placeholder("x", [None, 7, 5, 4])
    with tf.name_scope("dwconv"):
        w = fx.weights("dwconv/depthwise_weights", [3, 3, 4, 2])
        y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", name="depthwise")
    fused_tail(fx, y, 8, 6e-3, "DepthwiseConv2dNative")


@case("fbn_v3_half", "float16 Conv2D -> FusedBatchNormV3 with T=half, U=float (float32 "
      "scale/offset/mean/variance): folds; weights stay half.")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 6, 5, 3], tf.float16), 7, dtype=tf.float16)
    fused_tail(fx, y, 7, 1.5e-3, "Conv2D")


def fused_training(fx, version, shape, channels, eps, stats):
    """is_training=true: ``stats`` "empty" (shape [0], as tf.nn.fused_batch_norm and Keras
    passed) or "moving" (moving statistics wired into inputs 3 and 4, ignored by the op)."""
    y, p, t = conv_setup(fx, shape, channels)
    with tf.name_scope("bn"):
        if stats == "empty":
            t = dict(t, mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32))
        bn = fused_bn(y, t, eps, version, is_training=True)
    finish(fx, bn.y)
    fx.expect(FORM_OPS[version], bn.y, y, p.without("mean", "variance"), eps, "Conv2D",
              action="skip", reason="training-mode", statistics="fused")


for _name, _v, _shape, _c, _eps, _stats in [
        ("fbn_v1_training", 1, [None, 5, 7, 3], 11, 7e-3, "empty"),
        ("fbn_v3_training_moving", 3, [None, 6, 5, 2], 13, 1.2e-5, "moving"),
        ("fbn_v3_training_empty", 3, [None, 7, 6, 3], 14, 8e-3, "empty")]:
    case(_name, "Conv2D -> %s is_training=true (%s mean/variance inputs): already fused "
         "training mode, skip." % (FORM_OPS[_v], _stats))(
        functools.partial(fused_training, version=_v, shape=_shape, channels=_c, eps=_eps,
                          stats=_stats))


# ----- 3. decomposed tf.nn.batch_normalization -----------------------------------------------
def decomposed(fx, channels, eps, host="Conv2D", add="AddV2", drop=(), swap=False,
               neg_after=False, wrap=None, half=False):
    dtype = tf.float16 if half else tf.float32
    if host == "MatMul":
        x = fx.placeholder("x", [None, channels + 3], dtype)
        y = dense(fx, "fc1", x, channels, bias=add)
    else:
        y = conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 8, 3], dtype), channels,
                   dtype=dtype)
    p = fx.bn_params(channels).without(*drop)
    with tf.name_scope("bn"):
        t = fx.param_tensors("bn", p, wrap=wrap)
        z = decomposed_bn(y, t, eps, add=add, swap=swap, neg_after=neg_after)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, eps, host)


def _identity_chain(t):
    return tf.identity(t, name="ReadVariableOp")


def _cast_half(t):
    return tf.cast(t, tf.float16, name="Cast")


for _name, _desc, _kw in [
        ("bn_conv_addv2", "Conv2D -> tf.nn.batch_normalization as TF >= 1.15 emits it (AddV2)",
         dict(channels=10, eps=9e-4)),
        ("bn_conv_add", "Conv2D -> tf.nn.batch_normalization as TF < 1.15 emitted it (Add)",
         dict(channels=6, eps=1.3e-5, add="Add")),
        ("bn_matmul_add", "MatMul + Add bias -> tf.nn.batch_normalization (Add, TF < 1.15)",
         dict(channels=12, eps=2e-4, host="MatMul", add="Add")),
        ("bn_matmul_addv2", "MatMul + AddV2 bias -> tf.nn.batch_normalization (AddV2)",
         dict(channels=7, eps=3.3e-4, host="MatMul")),
        ("bn_no_gamma", "Conv2D -> tf.nn.batch_normalization without scale (Rsqrt used "
         "directly; canonical gamma ones)", dict(channels=5, eps=1.4e-5, drop=("gamma",))),
        ("bn_no_beta", "Conv2D -> tf.nn.batch_normalization without offset, as TF emits it: "
         "add_1(mul_1, Neg(mean) * inv) (canonical beta zeros)",
         dict(channels=11, eps=9e-3, drop=("beta",))),
        ("bn_no_beta_neg_after", "Conv2D -> decomposed BN without offset written as "
         "add_1(mul_1, Neg(mean * inv)) (canonical beta zeros)",
         dict(channels=4, eps=1.6e-5, drop=("beta",), neg_after=True)),
        ("bn_swapped", "Conv2D -> decomposed BN with every Add/Mul operand order swapped "
         "(eps + var, gamma * rsqrt, inv * x, sub + mul_1)", dict(channels=15, eps=4.4e-4,
                                                                  swap=True)),
        ("bn_identity_chain", "Conv2D -> decomposed BN whose params sit behind two Identities "
         "(name/read, then a ReadVariableOp turned Identity)",
         dict(channels=9, eps=2.2e-3, wrap=_identity_chain)),
        ("bn_half_cast", "float16 Conv2D -> decomposed BN in half, float32 params Cast to half "
         "before use (epsilon is a half Const)", dict(channels=6, eps=2.0 ** -10,
                                                       wrap=_cast_half, half=True))]:
    case(_name, _desc + ": folds into the %s." % _kw.get("host", "Conv2D"))(
        functools.partial(decomposed, **_kw))


# ----- 4. hand-written formulas ---------------------------------------------------------------
def formula(fx, shape, channels, eps, expr, action="fold", reason=None):
    y, p, t = conv_setup(fx, shape, channels)
    with tf.name_scope("bn"):
        z = expr(y, t["mean"], t["variance"], t["gamma"], t["beta"], eps)
    finish(fx, z)
    fx.expect("formula", z, y, p, eps, "Conv2D", action=action, reason=reason)


for _name, _desc, _shape, _c, _eps, _expr in [
        ("formula_realdiv", "(x - mean) / sqrt(var + eps) * gamma + beta (RealDiv)",
         [None, 7, 6, 3], 8, 1.7e-5, lambda x, m, v, g, b, e: (x - m) / tf.sqrt(v + e) * g + b),
        ("formula_rsqrt", "(x - mean) * rsqrt(var + eps) * gamma + beta",
         [None, 6, 5, 3], 10, 5.5e-3,
         lambda x, m, v, g, b, e: (x - m) * tf.math.rsqrt(v + e) * g + b),
        ("formula_div", "gamma * (x - mean) / sqrt(var + eps) + beta with the old Div op",
         [None, 5, 7, 2], 13, 6.6e-4,
         lambda x, m, v, g, b, e: binary("Div", g * (x - m), tf.sqrt(v + e), "div") + b),
        ("formula_swapped", "beta + gamma * (rsqrt(eps + var) * (x - mean)): every "
         "commutative operand swapped", [None, 7, 5, 3], 4, 7.7e-4,
         lambda x, m, v, g, b, e: b + g * (tf.math.rsqrt(e + v) * (x - m)))]:
    case(_name, "Conv2D -> hand-written " + _desc + ": folds into the Conv2D.")(
        functools.partial(formula, shape=_shape, channels=_c, eps=_eps, expr=_expr))


# ----- 5. training mode: statistics from the batch -------------------------------------------
def moments_bn(fx, channels, eps, host="Conv2D", axes=None):
    """Conv2D (or MatMul, rank 2) -> tf.nn.moments over ``axes`` (default: every axis but the
    last) -> decomposed."""
    if host == "MatMul":
        y = dense(fx, "fc1", fx.placeholder("x", [None, 6]), channels, bias="AddV2")
    else:
        y = conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 6, 3]), channels)
    p = fx.bn_params(channels).without("mean", "variance")
    t = fx.param_tensors("bn", p)
    with tf.name_scope("bn"):
        mean, var = tf.compat.v1.nn.moments(y, axes or list(range(len(y.shape) - 1)))
        z = decomposed_bn(y, dict(t, mean=mean, variance=var), eps)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, eps, host, action="fuse", reason="training-mode",
              statistics="moments")


case("train_moments_conv_bn", "Conv2D -> tf.nn.moments over [0,1,2] (Mean, StopGradient, "
     "SquaredDifference, Mean, Squeeze) -> tf.nn.batch_normalization: training mode, fuse "
     "into FusedBatchNormV3(is_training=true).")(
    functools.partial(moments_bn, channels=12, eps=1.8e-3))
case("train_moments_matmul_bn", "MatMul (rank 2) -> tf.nn.moments over [0] -> "
     "tf.nn.batch_normalization: training mode, fuse via reshape to [N,1,1,C].")(
    functools.partial(moments_bn, channels=9, eps=2.7e-3, host="MatMul"))


@case("train_moments_ema", "Conv2D -> tf.nn.moments over [0,1,2] -> tf.nn.batch_normalization, "
      "with the ExponentialMovingAverage shadows of the batch mean and variance frozen as "
      "Consts in the scope and read by nothing (the classic ConvolutionalBatchNormalizer "
      "helper): training mode, fuse; --training-bn moving-stats folds it with the shadows.")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 6, 7, 3]), 10)
    p = fx.bn_params(10)
    t = fx.param_tensors("bn", p.without("mean", "variance"))
    with tf.name_scope("bn"):
        mean, var = tf.compat.v1.nn.moments(y, [0, 1, 2])
        z = decomposed_bn(y, dict(t, mean=mean, variance=var), 3.65e-3)
    for stat, value in ((mean, p.mean), (var, p.variance)):
        fx.keep(fx.const(stat.op.name + "/ExponentialMovingAverage", value, read=False))
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p.without("mean", "variance"), 3.65e-3, "Conv2D",
              action="fuse", reason="training-mode", statistics="moments")


@case("train_moments_bnwgn", "Conv2D -> tf.nn.moments over [0,1,2] -> "
      "BatchNormWithGlobalNormalization (producer 8), the classic TF1 batch_norm(x, train=True) "
      "helper: training mode, fuse.")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 5, 6, 3]), 7)
    p = fx.bn_params(7).without("mean", "variance")
    t = fx.param_tensors("bn", p)
    with tf.name_scope("bn"):
        mean, var = tf.compat.v1.nn.moments(y, [0, 1, 2])
    bn = bnwgn(fx, "bn/BatchNormWithGlobalNormalization", y, dict(t, mean=mean, variance=var),
               3.9e-3)
    fx.output(fx.node("out", "Relu", [bn], T=tf.float32))
    fx.producer = 8
    fx.expect("BatchNormWithGlobalNormalization", bn, y, p, 3.9e-3, "Conv2D", action="fuse",
              reason="training-mode", statistics="moments")


@case("train_sufficient_statistics", "Conv2D -> TF 1.0 tf.nn.moments (sufficient_statistics + "
      "normalize_moments, counts Const, fixed batch of 2) -> tf.nn.batch_normalization (Add): "
      "training mode, fuse.")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [2, 5, 6, 3]), 8)
    p = fx.bn_params(8).without("mean", "variance")
    t = fx.param_tensors("bn", p)
    with tf.name_scope("bn"):
        mean, var = moments_tf10(y, [0, 1, 2])
        z = decomposed_bn(y, dict(t, mean=mean, variance=var), 4.8e-3, add="Add")
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, 4.8e-3, "Conv2D", action="fuse",
              reason="training-mode", statistics="sufficient_statistics")


# ----- 6. Keras learning-phase cond -----------------------------------------------------------
def keras_cond(fx, channels, eps, phase_kind, training_branch, after_relu):
    """conv2d_1 [-> Relu] -> batch_normalization_1/cond (v1 Switch/Merge) on the learning phase."""
    y = conv2d(fx, "conv2d_1", fx.placeholder("x", [None, 6, 7, 3]), channels)
    if after_relu:
        y = tf.nn.relu(y, name="activation_1/Relu")
    if phase_kind == "placeholder":
        phase = fx.placeholder("keras_learning_phase", [], tf.bool)
    else:
        phase = tf.compat.v1.placeholder_with_default(False, [], name="keras_learning_phase")
        fx.inputs.append("keras_learning_phase")  # an input, if an optional one
    p = fx.bn_params(channels)
    t = fx.param_tensors("batch_normalization_1", p)
    made = {}

    def training():
        if training_branch == "moments":
            mean, var = tf.compat.v1.nn.moments(y, [0, 1, 2])
            made["training"] = decomposed_bn(y, dict(t, mean=mean, variance=var), eps)
        else:
            empty = tf.constant([], tf.float32)
            made["training"] = fused_bn(y, dict(t, mean=empty, variance=empty), eps,
                                        is_training=True).y
        return made["training"]

    def inference():
        made["inference"] = fused_bn(y, t, eps).y
        return made["inference"]

    with tf.name_scope("batch_normalization_1"), control_flow_v1():
        merged = tf.compat.v1.cond(phase, training, inference, name="cond")
    finish(fx, merged)
    train_form, train_stats = {"moments": ("batch_normalization", "moments"),
                               "fused": ("FusedBatchNormV3", "fused")}[training_branch]
    branches = {"training": {"form": train_form, "output": made["training"].op.name,
                             "statistics": train_stats},
                "inference": {"form": "FusedBatchNormV3", "output": made["inference"].op.name,
                              "statistics": "moving"}}
    entry = fx.expect("cond", merged, y, p, eps, None if after_relu else "Conv2D", action="skip",
                      reason="learning-phase-cond", statistics=train_stats, training=True,
                      branches=branches, check=False)
    fx.probe(merged, y, entry, feed={"keras_learning_phase:0": False}, batch_stats=False)
    fx.probe(merged, y, entry, feed={"keras_learning_phase:0": True}, batch_stats=True)


case("cond_keras_placeholder", "Keras learning phase from a bool Placeholder: v1 tf.cond "
     "(Switch/Merge) between moments + batch_normalization (training) and FusedBatchNormV3 "
     "(inference), after a Relu: one cond entry, skip.")(
    functools.partial(keras_cond, channels=10, eps=1.9e-3, phase_kind="placeholder",
                      training_branch="moments", after_relu=True))
case("cond_keras_default", "Keras learning phase from PlaceholderWithDefault(False): v1 "
     "tf.cond between FusedBatchNormV3 is_training=true and is_training=false, right after a "
     "Conv2D: one cond entry, skip.")(
    functools.partial(keras_cond, channels=5, eps=2.9e-3, phase_kind="default",
                      training_branch="fused", after_relu=False))


def keras2_bn(fx, scope, y, phase, channels, eps, host):
    """A Keras 2.0 BatchNormalization layer: the training output computed outside any cond
    (tf.nn.moments + tf.nn.batch_normalization), the inference batch norm inside the cond's
    false branch, K.in_train_phase's v1 tf.cond choosing between them."""
    p = fx.bn_params(channels)
    t = fx.param_tensors(scope, p)
    made = {}
    with tf.name_scope(scope):
        mean, var = tf.compat.v1.nn.moments(y, [0, 1, 2])
        with tf.name_scope("training"):
            made["training"] = decomposed_bn(y, dict(t, mean=mean, variance=var), eps)

        def inference():
            made["inference"] = decomposed_bn(y, t, eps)
            return made["inference"]

        with control_flow_v1():
            merged = tf.compat.v1.cond(phase, lambda: made["training"], inference, name="cond")
    branches = {"training": {"form": "batch_normalization", "output": made["training"].op.name,
                             "statistics": "moments"},
                "inference": {"form": "batch_normalization", "output": made["inference"].op.name,
                              "statistics": "moving"}}
    entry = fx.expect("cond", merged, y, p, eps, host, action="skip", reason="learning-phase-cond",
                      statistics="moments", training=True, branches=branches, check=False)
    fx.probe(merged, y, entry, feed={"keras_learning_phase:0": False}, batch_stats=False)
    fx.probe(merged, y, entry, feed={"keras_learning_phase:0": True}, batch_stats=True)
    return merged


def keras2_phase(fx, phase_kind, eps, loop=False):
    """x -> conv2d_1 -> BN -> Relu -> conv2d_2 -> BN [-> a cond on the data -> a while loop
    whose body holds a cond on the learning phase] -> out."""
    if phase_kind == "placeholder":
        phase = fx.placeholder("keras_learning_phase", None, tf.bool)  # Keras 2.0 gave it no shape
    else:
        phase = tf.compat.v1.placeholder_with_default(False, [], name="keras_learning_phase")
        fx.inputs.append("keras_learning_phase")
    y = conv2d(fx, "conv2d_1", fx.placeholder("x", [None, 6, 7, 3]), 5)
    y = keras2_bn(fx, "batch_normalization_1", y, phase, 5, eps[0], "Conv2D")
    y = conv2d(fx, "conv2d_2", tf.nn.relu(y, name="activation_1/Relu"), 4)
    y = keras2_bn(fx, "batch_normalization_2", y, phase, 4, eps[1], "Conv2D")
    if loop:
        with control_flow_v1():
            y = tf.compat.v1.cond(tf.reduce_sum(y) > 0.0, lambda: y * 2.0, lambda: y - 1.0, name="data_cond")
            _, y = tf.compat.v1.while_loop(
                lambda i, v: i < 3,
                lambda i, v: (i + 1, tf.compat.v1.cond(phase, lambda: v * 0.5, lambda: v + 0.25, name="dropout")),
                [tf.constant(0), y], name="rnn")
    finish(fx, y)


case("keras2_phase_placeholder", "Keras 2.0 learning phase from a bool Placeholder of unknown "
     "shape, two BatchNormalization layers: training output outside the cond from moments, "
     "inference batch norm in the cond's false branch; --set keras_learning_phase=0 folds both.",
     group="phase")(functools.partial(keras2_phase, phase_kind="placeholder", eps=(1.13e-3, 2.37e-3)))
case("keras2_phase_default", "As keras2_phase_placeholder, the learning phase a "
     "PlaceholderWithDefault(False): --set-defaults folds both.",
     group="phase")(functools.partial(keras2_phase, phase_kind="default", eps=(1.17e-3, 2.41e-3)))
case("keras2_phase_loop", "As keras2_phase_placeholder, then a cond on the data and a while "
     "loop whose body holds a cond on the learning phase (through Enter): --set resolves the "
     "two batch-norm conds and leaves the data cond and the loop as they are.",
     group="phase")(functools.partial(keras2_phase, phase_kind="placeholder", eps=(1.19e-3, 2.43e-3), loop=True))


# ----- 7. hosts ------------------------------------------------------------------------------
@case("host_conv2d_backprop_input", "Conv2DBackpropInput (conv2d_transpose, stride 2, output "
      "shape stacked from the batch size as tf.layers did) -> FusedBatchNormV3: folds into the "
      "filter's output-channel dim (axis 2).")
def _(fx):
    x = fx.placeholder("x", [None, 4, 3, 5])
    with tf.name_scope("deconv"):
        w = fx.weights("deconv/kernel", [3, 3, 9, 5])
        shape = tf.stack([tf.shape(x)[0], 8, 6, 9])
        y = tf.nn.conv2d_transpose(x, w, shape, [1, 2, 2, 1], "SAME", name="conv2d_transpose")
    fused_tail(fx, y, 9, 3.1e-3, "Conv2DBackpropInput")


@case("host_conv3d", "Conv3D (NDHWC, 5-D) -> FusedBatchNormV3 data_format NDHWC: folds into "
      "the Conv3D.")
def _(fx):
    x = fx.placeholder("x", [None, 4, 6, 5, 3])
    with tf.name_scope("conv3d"):
        w = fx.weights("conv3d/kernel", [3, 3, 3, 3, 10])
        y = tf.nn.conv3d(x, w, [1] * 5, "SAME", name="Conv3D")
    fused_tail(fx, y, 10, 4.2e-3, "Conv3D", data_format="NDHWC")


@case("host_atrous_conv", "Atrous conv (SpaceToBatchND -> Conv2D VALID -> BatchToSpaceND, rate "
      "2, as tf.nn.atrous_conv2d built it) -> FusedBatchNormV3: folds into the Conv2D.")
def _(fx):
    y = atrous(fx, "atrous", [None, 8, 6, 5], "weights", [3, 3, 5, 11],
               lambda inp, w, padding: tf.nn.conv2d(inp, w, 1, padding))
    fused_tail(fx, y, 11, 5.3e-3, "Conv2D")


def atrous(fx, scope, shape, weights, w_shape, conv):
    """Placeholder x -> SpaceToBatchND -> ``conv`` -> BatchToSpaceND, rate 2, as
    tf.nn.atrous_conv2d (and depthwise_conv2d with a rate) built it."""
    x = fx.placeholder("x", shape)
    with tf.name_scope(scope):
        w = fx.weights("%s/%s" % (scope, weights), w_shape)
        return tf.compat.v1.nn.with_space_to_batch(
            x, dilation_rate=[2, 2], padding="SAME", filter_shape=[3, 3],
            op=lambda inp, num_spatial_dims, padding: conv(inp, w, padding))


@case("host_matmul_transpose_b", "MatMul with transpose_b=true (weights [out, in]) -> "
      "tf.nn.batch_normalization: folds into the weights' rows.")
def _(fx):
    y = dense(fx, "fc1", fx.placeholder("x", [None, 6]), 13, bias=None, transpose_b=True)
    p = fx.bn_params(13)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, fx.param_tensors("bn", p), 6.4e-3)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, 6.4e-3, "MatMul")


for _name, _bias, _c, _eps in [("host_conv_biasadd_fbn", "BiasAdd", 12, 7.5e-3),
                               ("host_conv_add_fbn", "Add", 14, 8.6e-3)]:
    case(_name, "Conv2D + %s of a constant bias -> FusedBatchNorm: folds into the Conv2D and "
         "its bias." % _bias)(
        lambda fx, _bias=_bias, _c=_c, _eps=_eps: fused_tail(
            fx, conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 5, 3]), _c, bias=_bias), _c,
            _eps, "Conv2D", version=1))


# ----- 8. traps ------------------------------------------------------------------------------
@case("trap_host_other_consumer", "Conv2D feeds a decomposed BN and also a Relu output 'side': "
      "folding would change 'side', so fuse (host-has-other-consumers).")
def _(fx):
    y, p, t = conv_setup(fx, [None, 6, 5, 3], 7)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, t, 9.7e-3)
    finish(fx, z)
    finish(fx, y, "side")
    fx.expect("batch_normalization", z, y, p, 9.7e-3, "Conv2D", action="fuse",
              reason="host-has-other-consumers")


@case("trap_host_other_consumer_v3", "Conv2D feeds a FusedBatchNormV3 and also a Relu output "
      "'side': cannot fold, already fused, so skip (host-has-other-consumers).")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 6, 3]), 8)
    fused_tail(fx, y, 8, 1.05e-3, "Conv2D", action="skip", reason="host-has-other-consumers")
    finish(fx, y, "side")


@case("trap_biasadd_other_consumer", "Conv2D + BiasAdd whose BiasAdd also feeds a Relu output "
      "'side' -> FusedBatchNorm: fuse (host-has-other-consumers).")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 5, 6, 3]), 16, bias="BiasAdd")
    fused_tail(fx, y, 16, 2.05e-3, "Conv2D", version=1, action="fuse",
               reason="host-has-other-consumers")
    finish(fx, y, "side")


@case("trap_shared_weights", "Two Conv2D (strides 1 and 2) share one weights Const, each "
      "followed by its own FusedBatchNormV3: both fold (the weights must be cloned, not "
      "overwritten).")
def _(fx):
    x = fx.placeholder("x", [None, 7, 6, 3])
    w = fx.weights("shared/weights", [3, 3, 3, 9])
    y_a = conv2d(fx, "conv_a", x, 9, w=w)
    y_b = conv2d(fx, "conv_b", x, 9, w=w, stride=2)
    fused_tail(fx, y_a, 9, 3.05e-3, "Conv2D", scope="bn_a", out="out_a")
    fused_tail(fx, y_b, 9, 4.05e-3, "Conv2D", scope="bn_b", out="out_b")


@case("trap_mean_placeholder", "Conv2D -> FusedBatchNormV3 whose mean is fed from a "
      "Placeholder: not constant, skip (mean null in the sidecar).")
def _(fx):
    y, p, t = conv_setup(fx, [None, 6, 7, 3], 10)
    t["mean"] = fx.placeholder("moving_mean", [10])
    with tf.name_scope("bn"):
        bn = fused_bn(y, t, 5.05e-3)
    finish(fx, bn.y)
    entry = fx.expect("FusedBatchNormV3", bn.y, y, p.without("mean"), 5.05e-3, "Conv2D",
                      action="skip", reason="not-constant", statistics="fed", training=False,
                      check=False)
    mean = [float(m) for m in p.mean]
    fx.probe(bn.y, y, dict(entry, mean=mean), feed={"moving_mean:0": mean})


@case("trap_side_output_used", "Conv2D -> inference FusedBatchNormV2 whose batch_mean output "
      "(:1) is fetched through Identity 'batch_mean': skip (side-output-used).")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 5, 7, 3]), 11)
    bn = fused_tail(fx, y, 11, 6.05e-3, "Conv2D", version=2, action="skip",
                    reason="side-output-used")
    fx.output(tf.identity(bn.batch_mean, name="batch_mean"))


@case("trap_channel_mismatch_nchw", "NCHW Conv2D output [N,5,7,6] -> decomposed BN with 6 "
      "params broadcast on the last axis (W=6, not the 5 channels): fuse (channel-mismatch)."
      + ONEDNN_NOTE)
def _(fx):
    x = fx.placeholder("x", [None, 4, 7, 6])
    y = conv2d(fx, "conv1", x, 5, data_format="NCHW")
    p = fx.bn_params(6)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, fx.param_tensors("bn", p), 7.05e-3)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, 7.05e-3, "Conv2D", action="fuse",
              reason="channel-mismatch", axis_clash_ok=True)


@case("trap_bn_is_output", "Conv2D -> decomposed BN whose add_1 is itself the graph output "
      "(nothing consumes it): folds, and the output name must survive.")
def _(fx):
    y, p, t = conv_setup(fx, [None, 7, 5, 3], 12)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, t, 8.05e-3)
    fx.output(z)
    fx.expect("batch_normalization", z, y, p, 8.05e-3, "Conv2D")


@case("trap_mixed_forms", "One graph, three forms: Conv2D -> FusedBatchNorm (fold); Relu -> "
      "decomposed BN (no host; its flatten -> MatMul takes bn3 folded backward, so it folds "
      "forward into those weights in a second pass); Reshape -> MatMul + AddV2 bias -> "
      "decomposed BN (fold).")
def _(fx):
    y1 = conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 5, 3]), 8)
    bn1 = fused_tail(fx, y1, 8, 1.15e-3, "Conv2D", version=1, scope="bn1", out=None)
    y2 = tf.nn.relu(bn1.y, name="relu1")
    p2 = fx.bn_params(8)
    with tf.name_scope("bn2"):
        z2 = decomposed_bn(y2, fx.param_tensors("bn2", p2), 2.15e-3)
    fx.expect("batch_normalization", z2, y2, p2, 2.15e-3, None, direction="forward",
              consumers=["fc1/MatMul"])
    flat = tf.reshape(z2, [-1, 7 * 5 * 8], name="flatten/Reshape")
    y3 = dense(fx, "fc1", flat, 5, bias="AddV2")
    p3 = fx.bn_params(5)
    with tf.name_scope("bn3"):
        z3 = decomposed_bn(y3, fx.param_tensors("bn3", p3), 3.15e-3)
    finish(fx, z3)
    fx.expect("batch_normalization", z3, y3, p3, 3.15e-3, "MatMul")


# ----- 9. negatives: no batch norm here -------------------------------------------------------
@case("neg_plain_convnet", "Plain conv net (Conv2D/BiasAdd/Relu/MaxPool/Reshape/MatMul/BiasAdd/"
      "Softmax): no batch norm.")
def _(fx):
    y = tf.nn.relu(conv2d(fx, "conv1", fx.placeholder("x", [None, 8, 8, 3]), 6, bias="BiasAdd"),
                   name="conv1/Relu")
    y = tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool1/MaxPool")
    y = dense(fx, "fc1", tf.reshape(y, [-1, 4 * 4 * 6], name="flatten/Reshape"), 10,
              bias="BiasAdd")
    fx.output(tf.nn.softmax(y, name="out"))


@case("neg_layer_norm", "Layer-norm-like: MatMul -> moments over the last axis (keep_dims) -> "
      "(x - mean) * rsqrt(var + eps) * gamma + beta: statistics per example, not a batch norm.")
def _(fx):
    y = dense(fx, "fc1", fx.placeholder("x", [None, 6]), 10, bias="AddV2")
    p = fx.bn_params(10)
    t = fx.param_tensors("ln", p.without("mean", "variance"))
    with tf.name_scope("ln"):
        mean, var = tf.compat.v1.nn.moments(y, [1], keep_dims=True)
        z = (y - mean) * tf.math.rsqrt(var + 1e-5) * t["gamma"] + t["beta"]
    finish(fx, z)


@case("neg_global_avg_pool", "Conv2D -> Relu -> Mean over [1, 2] (global average pooling, not "
      "the batch axis) -> MatMul -> Softmax: no batch norm.")
def _(fx):
    y = tf.nn.relu(conv2d(fx, "conv1", fx.placeholder("x", [None, 7, 6, 3]), 9), name="relu1")
    y = tf.reduce_mean(y, [1, 2], name="global_pool/Mean")
    fx.output(tf.nn.softmax(dense(fx, "fc1", y, 4), name="out"))


# ----- 10. folding forward: no host before the batch norm, linear ops after it ---------------
def relu_input(fx, shape, name="pre"):
    """Placeholder x -> Relu: what sits before a batch norm placed after the activation."""
    return tf.nn.relu(fx.placeholder("x", shape), name=name + "/Relu")


def conv_after(fx, scope, x, cout, k, padding, bias=None, w=None):
    """Conv2D with the given kernel and padding reading ``x`` (a batch norm's output)."""
    with tf.name_scope(scope):
        w = fx.weights(scope + "/weights", [k, k, x.shape[-1], cout]) if w is None else w
        y = tf.nn.conv2d(x, w, 1, padding, name="Conv2D")
        if bias:
            y = tf.nn.bias_add(y, fx.const(scope + "/biases", fx.rng.uniform(-0.5, 0.5, cout)),
                               name="BiasAdd")
    return y


def forward_fused(fx, x, channels, eps, version=3, zero_shift=False, positive=False, **expect):
    """FusedBatchNorm* on ``x`` (no host before it); the sidecar entry folds forward."""
    p = fx.bn_params(channels)
    if positive:  # every channel's scale above zero
        p.gamma = np.abs(p.gamma)
    if zero_shift:  # untrained statistics: beta = mean = 0, so only the scale is left
        p.beta, p.mean = np.zeros(channels, np.float32), np.zeros(channels, np.float32)
    with tf.name_scope("bn"):
        bn = fused_bn(x, fx.param_tensors("bn", p), eps, version)
    expect.setdefault("direction", "forward")
    fx.expect(FORM_OPS[version], bn.y, x, p, eps, None, **expect)
    return bn.y


def forward_decomposed(fx, x, channels, eps, **expect):
    """tf.nn.batch_normalization on ``x`` (no host before it); the entry folds forward."""
    p = fx.bn_params(channels)
    with tf.name_scope("bn"):
        z = decomposed_bn(x, fx.param_tensors("bn", p), eps)
    expect.setdefault("direction", "forward")
    fx.expect("batch_normalization", z, x, p, eps, None, **expect)
    return z


@case("fwd_matmul", "Relu -> tf.nn.batch_normalization -> MatMul + BiasAdd: no host before "
      "it, folds forward into the MatMul's input rows; the shift merges into the BiasAdd.")
def _(fx):
    z = forward_decomposed(fx, relu_input(fx, [None, 9]), 9, 1.25e-3, consumers=["fc1/MatMul"])
    finish(fx, dense(fx, "fc1", z, 5, bias="BiasAdd"))


@case("fwd_conv_valid", "Relu -> FusedBatchNormV3 -> Conv2D 3x3 VALID (no bias): the conv sees "
      "no padding, so scale and shift fold forward; a new BiasAdd takes the conv's name.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 7, 6, 5]), 5, 2.35e-3,
                      consumers=["conv1/Conv2D"])
    finish(fx, conv_after(fx, "conv1", z, 4, 3, "VALID"))


@case("fwd_conv_1x1", "Relu -> FusedBatchNorm -> Conv2D 1x1 SAME + BiasAdd: a 1x1 window "
      "sees no padding, so the shift folds too (into the conv's BiasAdd).")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 6, 5, 7]), 7, 3.45e-3, version=1,
                      consumers=["conv1/Conv2D"])
    finish(fx, conv_after(fx, "conv1", z, 9, 1, "SAME", bias=True))


@case("fwd_depthwise", "Relu -> FusedBatchNormV2 -> DepthwiseConv2dNative 3x3 VALID, channel "
      "multiplier 2: input channel c scales filter[:, :, c, :] and shifts outputs 2c, 2c+1.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 7, 6, 4]), 4, 4.55e-3, version=2,
                      consumers=["dwconv/depthwise"])
    with tf.name_scope("dwconv"):
        w = fx.weights("dwconv/depthwise_weights", [3, 3, 4, 2])
        finish(fx, tf.nn.depthwise_conv2d(z, w, [1, 1, 1, 1], "VALID", name="depthwise"))


@case("fwd_same_zero_shift", "Relu -> FusedBatchNormV3 with beta = mean = 0 -> Conv2D 3x3 SAME "
      "(sbd_model_v3's case): no shift, so the padding does not matter and the scale folds.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 6, 7, 5]), 5, 5.65e-3, zero_shift=True,
                      consumers=["conv1/Conv2D"])
    finish(fx, conv_after(fx, "conv1", z, 6, 3, "SAME", bias=True))


@case("fwd_trap_same_padding", "Relu -> FusedBatchNorm -> Conv2D 3x3 SAME: the conv pads the "
      "normalised input with zeros, which a folded shift would not reproduce: refused "
      "(padding), fused instead.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 7, 6, 3]), 3, 6.75e-3, version=1,
                      action="fuse", reason="padding", direction=None,
                      consumers=["conv1/Conv2D"])
    finish(fx, conv_after(fx, "conv1", z, 4, 3, "SAME"))


@case("fwd_two_consumers", "Relu -> FusedBatchNormV3 -> two Conv2D sharing one weights Const "
      "(VALID 3x3 directly, 1x1 SAME through an Identity): folds forward into both, each with "
      "its own scaled copy of the weights.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 7, 5, 6]), 6, 7.85e-3,
                      consumers=["conv_a/Conv2D", "conv_b/Conv2D"])
    w = fx.weights("shared/weights", [1, 1, 6, 3])
    finish(fx, conv_after(fx, "conv_a", z, 3, 1, "VALID", w=w), "out_a")
    finish(fx, conv_after(fx, "conv_b", tf.identity(z, name="bn/read_out"), 3, 1, "SAME", w=w),
           "out_b")


@case("fwd_trap_other_reader", "Relu -> tf.nn.batch_normalization read by a Conv2D VALID and by "
      "a Relu output 'side': the normalised value must survive, so no forward fold "
      "(host-has-other-consumers); fused.")
def _(fx):
    z = forward_decomposed(fx, relu_input(fx, [None, 6, 7, 4]), 4, 8.95e-3, action="fuse",
                           reason="host-has-other-consumers", direction=None,
                           consumers=["conv1/Conv2D"])
    finish(fx, conv_after(fx, "conv1", z, 5, 3, "VALID"))
    finish(fx, z, "side")


@case("fwd_mirror_pad", "Relu -> FusedBatchNormV3 -> MirrorPad (REFLECT) -> Conv2D 3x3 VALID: "
      "a mirror pad copies values, so scale and shift both fold forward through it.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 7, 6, 5]), 5, 9.15e-3, consumers=["conv1/Conv2D"])
    padded = tf.pad(z, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT", name="pad")
    finish(fx, conv_after(fx, "conv1", padded, 4, 3, "VALID"))


@case("fwd_trap_zero_pad", "Relu -> FusedBatchNorm -> Pad (zeros) -> Conv2D 3x3 VALID: the conv "
      "sees the Pad's zeros, which a folded shift would not reproduce: refused (padding), fused.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 6, 7, 3]), 3, 9.25e-3, version=1, action="fuse",
                      reason="padding", direction=None, consumers=["conv1/Conv2D"])
    padded = tf.pad(z, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad")
    finish(fx, conv_after(fx, "conv1", padded, 4, 3, "VALID"))


@case("fwd_flatten_matmul", "Relu -> FusedBatchNormV3 (NHWC) -> Reshape [-1, H*W*C] -> MatMul + "
      "BiasAdd: input j of the MatMul is channel j mod C, so the scale and shift fold forward, "
      "tiled over the rows.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 3, 2, 5]), 5, 9.35e-3, consumers=["fc1/MatMul"])
    flat = tf.reshape(z, [-1, 3 * 2 * 5], name="flatten/Reshape")
    finish(fx, dense(fx, "fc1", flat, 4, bias="BiasAdd"))


@case("fwd_maxpool", "Relu -> FusedBatchNormV3 with positive gammas -> MaxPool 2x2 -> Conv2D "
      "VALID + BiasAdd: a maximum commutes with a positive scale and a shift, so it folds "
      "forward through the MaxPool (sbd_model_v3's case, with a shift).")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 8, 6, 5]), 5, 9.45e-3, positive=True,
                      consumers=["conv1/Conv2D"])
    pooled = tf.nn.max_pool2d(z, 2, 2, "SAME", name="pool/MaxPool")
    finish(fx, conv_after(fx, "conv1", pooled, 3, 3, "VALID", bias=True))


@case("fwd_trap_maxpool_negative", "Relu -> FusedBatchNorm with a negative gamma -> MaxPool -> "
      "Conv2D VALID: the maximum of a negatively scaled channel is its scaled minimum: refused "
      "(negative-scale), fused.")
def _(fx):
    z = forward_fused(fx, relu_input(fx, [None, 8, 6, 3]), 3, 9.55e-3, version=1, action="fuse",
                      reason="negative-scale", direction=None, consumers=["conv1/Conv2D"])
    pooled = tf.nn.max_pool2d(z, 2, 2, "VALID", name="pool/MaxPool")
    finish(fx, conv_after(fx, "conv1", pooled, 4, 3, "VALID"))


@case("fwd_avgpool", "Relu -> tf.nn.batch_normalization -> AvgPool 2x2 SAME -> Conv2D 1x1: an "
      "average is linear per channel (SAME pooling averages real values only), so it folds "
      "forward through it.")
def _(fx):
    z = forward_decomposed(fx, relu_input(fx, [None, 7, 6, 4]), 4, 9.65e-3,
                           consumers=["conv1/Conv2D"])
    pooled = tf.nn.avg_pool2d(z, 2, 2, "SAME", name="pool/AvgPool")
    finish(fx, conv_after(fx, "conv1", pooled, 5, 1, "SAME"))


# ----- 11. hosts through shape ops, grouped and atrous depthwise convolutions ----------------
@case("host_conv1d", "Conv1D as tf.nn.conv1d builds it (ExpandDims -> Conv2D with an ExpandDims'd "
      "kernel -> Squeeze) + BiasAdd -> tf.nn.batch_normalization on the 3-D output: the Squeeze "
      "keeps the channels last, so it folds into the Conv2D.")
def _(fx):
    x = fx.placeholder("x", [None, 9, 4])
    with tf.name_scope("conv1d_1"):
        w = fx.weights("conv1d_1/kernel", [3, 4, 7])
        y = tf.nn.conv1d(x, w, 1, "SAME", name="conv1d")
        y = tf.nn.bias_add(y, fx.const("conv1d_1/bias", fx.rng.uniform(-0.5, 0.5, 7)), name="BiasAdd")
    p = fx.bn_params(7)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, fx.param_tensors("bn", p), 1.35e-3)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, 1.35e-3, "Conv2D", direction="backward")


@case("host_dense_reshape_bnwgn", "MatMul + BiasAdd -> Reshape [-1, 1, 1, C] -> legacy "
      "BatchNormWithGlobalNormalization (producer 8) -> Reshape back: the Reshape keeps C "
      "last, so it folds into the MatMul; its bias joins the folded bias after the Reshape.")
def _(fx):
    y = dense(fx, "fc1", fx.placeholder("x", [None, 6]), 10, bias="BiasAdd")
    y4 = tf.reshape(y, [-1, 1, 1, 10], name="fc1/Reshape")
    p = fx.bn_params(10)
    t = fx.param_tensors("bn", p)
    bn = bnwgn(fx, "bn/BatchNormWithGlobalNormalization", y4, t, 2.45e-3)
    shape = tf.constant([-1, 10], tf.int32, name="bn/flat_shape")
    flat = fx.node("bn/Reshape", "Reshape", [bn, shape], T=tf.float32, Tshape=tf.int32)
    fx.output(fx.node("out", "Relu", [flat], T=tf.float32))
    fx.producer = 8
    fx.expect("BatchNormWithGlobalNormalization", bn, y4, p, 2.45e-3, "MatMul", direction="backward")


@case("host_grouped_conv", "Grouped conv: Split into 3 groups -> Conv2D x 3 -> ConcatV2 on the "
      "channel axis -> FusedBatchNormV3: each group's weights take their slice of the scale, "
      "one bias after the ConcatV2.")
def _(fx):
    x = fx.placeholder("x", [None, 7, 6, 6])
    with tf.name_scope("grouped"):
        groups = tf.split(x, 3, axis=3, name="split")
        outs = [tf.nn.conv2d(g, fx.weights("grouped/weights_%d" % i, [3, 3, 2, 3]), 1, "SAME",
                             name="Conv2D_%d" % i) for i, g in enumerate(groups)]
        y = tf.concat(outs, axis=3, name="concat")
    fused_tail(fx, y, 9, 3.55e-3, "Conv2D", direction="backward")


@case("host_atrous_depthwise", "Atrous depthwise conv (SpaceToBatchND -> DepthwiseConv2dNative "
      "VALID -> BatchToSpaceND, rate 2, multiplier 2) -> FusedBatchNormV3: folds into the "
      "depthwise filter through the BatchToSpaceND.")
def _(fx):
    y = atrous(fx, "atrous_dw", [None, 8, 10, 3], "depthwise_weights", [3, 3, 3, 2],
               lambda inp, w, padding: tf.nn.depthwise_conv2d(inp, w, [1, 1, 1, 1], padding,
                                                              name="depthwise"))
    fused_tail(fx, y, 6, 4.65e-3, "DepthwiseConv2dNative", direction="backward")


# ----- 11b. what converters refuse -----------------------------------------------------------
@case("convert_legacy", "Relu -> FusedBatchNormV2 -> Relu -> BatchNormWithGlobalNormalization -> "
      "Relu (producer 8): no linear op before or after either batch norm, so both are fused. "
      "tf2onnx writes an invalid model of it, OpenVINO and TFLite refuse it; rewritten with the "
      "converter's --target, each converter's result matches TensorFlow (tests/test_converters.py).")
def _(fx):
    x = relu_input(fx, [None, 6, 5, 4])
    bn1 = fused_tail(fx, x, 4, 1.37e-3, None, version=2, scope="bn1", out=None, action="fuse",
                     reason="no-linear-host")
    y = tf.nn.relu(bn1.y, name="relu1")
    p = fx.bn_params(4)
    bn2 = bnwgn(fx, "bn2/BatchNormWithGlobalNormalization", y, fx.param_tensors("bn2", p), 2.65e-3)
    fx.output(fx.node("out", "Relu", [bn2], T=tf.float32))
    fx.producer = 8
    fx.expect("BatchNormWithGlobalNormalization", bn2, y, p, 2.65e-3, None, action="fuse",
              reason="no-linear-host")


# ----- 12. hostile: graphs verification must never run (fixtures/hostile/) -------------------
# Each folds a batch norm like any model would; "hostile" in the sidecar says what
# verification must do: refuse (naming "ops"), stop at the time or memory limit, or verify.
# runs_in_tf is false for all but the control: --check must not run them either.
def hostile(name, description, expect, ops=(), runs_in_tf=False):
    def register(builder):
        def build_hostile(fx):
            y = conv2d(fx, "conv1", fx.placeholder("x", [None, 6, 5, 3]), 4)
            bn = fused_tail(fx, y, 4, EPSILONS[name], "Conv2D", out=None)
            fx.hostile = {"expect": expect, "ops": list(ops)}
            finish(fx, builder(fx, tf.nn.relu(bn.y, name="relu")), "out")
        return case(name, description, runs_in_tf=runs_in_tf, group="hostile")(build_hostile)
    return register


EPSILONS = {"hostile_write_file": 1.01e-4, "hostile_read_file": 1.02e-4, "hostile_py_func": 1.03e-4,
            "hostile_endless_loop": 1.04e-4, "hostile_memory_bomb": 1.05e-4,
            "control_harmless_stateful": 1.06e-4}
WRITTEN = "bnrewrite_hostile_write.txt"


@hostile("hostile_write_file", "The output has a control dependency on WriteFile, whose file name "
         "is a PlaceholderWithDefault 'target' (default: %s in the working directory; tests feed "
         "a path of their own): refused." % WRITTEN, "refused", ["WriteFile"])
def _(fx, z):
    target = tf.compat.v1.placeholder_with_default(WRITTEN, [], name="target")
    write = tf.io.write_file(target, tf.constant("written by a graph", name="contents"), name="write")
    with tf.control_dependencies([write]):
        return tf.identity(z, name="after_write")


@hostile("hostile_read_file", "The output adds min(0, length of ReadFile('source')), 'source' a "
         "PlaceholderWithDefault naming /etc/hostname: refused.", "refused", ["ReadFile"])
def _(fx, z):
    source = tf.compat.v1.placeholder_with_default("/etc/hostname", [], name="source")
    length = tf.strings.length(tf.io.read_file(source, name="read"), name="length")
    return z + tf.minimum(tf.cast(length, tf.float32), 0.0, name="nothing")


@hostile("hostile_py_func", "The output has a control dependency on a PyFunc (a Python callback "
         "by token, as tf.py_func froze it): refused.", "refused", ["PyFunc"])
def _(fx, z):
    call = tf.numpy_function(lambda v: v, [z], tf.float32, name="callback")
    with tf.control_dependencies([call]):
        return tf.identity(z, name="after_callback")


@hostile("hostile_endless_loop", "The output adds min(0, i) of a v1 while_loop whose condition "
         "(i >= 0, i += 1) never turns false: stopped at the time limit.", "timeout")
def _(fx, z):
    with control_flow_v1():
        i = tf.compat.v1.while_loop(lambda i: i >= 0.0, lambda i: i + 1.0, [tf.constant(0.0)],
                                    name="forever")
    return z + tf.minimum(i, 0.0, name="nothing")


@hostile("hostile_memory_bomb", "The output adds min(0, sum of Fill(dims, 1.0)), dims a constant "
         "[2^17, 2^17] plus a zero PlaceholderWithDefault: 64 GiB at run time, stopped at the "
         "memory limit.", "memory")
def _(fx, z):
    extra = tf.compat.v1.placeholder_with_default(tf.constant([0, 0], name="no_extra"), [2], name="extra")
    dims = tf.add(tf.constant([1 << 17, 1 << 17], name="huge"), extra, name="dims")
    total = tf.reduce_sum(tf.fill(dims, 1.0, name="bomb"), name="total")
    return z + tf.minimum(total, 0.0, name="nothing")


@hostile("control_harmless_stateful", "The control case: the output adds min(0, RandomUniform) and "
         "has a control dependency on an Assert that x is finite: stateful, harmless, verifies.",
         "verifies", runs_in_tf=True)
def _(fx, z):
    # the raw op: tf.debugging.Assert wraps it in an If whose function names count up per process
    check = tf.raw_ops.Assert(condition=tf.reduce_all(tf.math.is_finite(z)), data=[z], name="finite")
    with tf.control_dependencies([check]):
        noise = tf.random.uniform([], name="noise")
        return z + tf.minimum(noise, 0.0, name="nothing")


# ----- 13. the affine-chain analysis: spellings no pattern lists, plain affines -------------
for _name, _desc, _shape, _c, _eps, _expr in [
        ("formula_scale_first", "x * gamma / sqrt(var + eps) - mean * gamma / sqrt(var + eps) + "
         "beta: scaled before the mean is subtracted", [None, 6, 7, 3], 9, 2.3e-4,
         lambda x, m, v, g, b, e: x * g / tf.sqrt(v + e) - m * g / tf.sqrt(v + e) + b),
        ("formula_gamma_last", "((x - mean) * rsqrt(var + eps) + beta / gamma) * gamma: gamma "
         "applied last", [None, 5, 6, 3], 11, 3.4e-4,
         lambda x, m, v, g, b, e: ((x - m) * tf.math.rsqrt(v + e) + b / g) * g),
        ("formula_pow", "(x - mean) * pow(var + eps, -0.5) * gamma + beta", [None, 7, 5, 2], 6,
         4.5e-4, lambda x, m, v, g, b, e: (x - m) * tf.pow(v + e, -0.5) * g + b),
        ("formula_reciprocal", "(x - mean) * reciprocal(sqrt(var + eps)) * gamma + beta",
         [None, 6, 5, 3], 8, 5.6e-4,
         lambda x, m, v, g, b, e: (x - m) * tf.math.reciprocal(tf.sqrt(v + e)) * g + b),
        ("formula_add_neg_mean", "(x + neg(mean)) * rsqrt(var + eps) * gamma + beta",
         [None, 5, 7, 3], 12, 6.7e-4,
         lambda x, m, v, g, b, e: (x + tf.negative(m)) * tf.math.rsqrt(v + e) * g + b),
        ("formula_split_inv", "x * rsqrt(var + eps) * gamma + (beta - mean * rsqrt(var + eps) * "
         "gamma): the inverse not shared", [None, 7, 6, 2], 10, 7.8e-4,
         lambda x, m, v, g, b, e: x * tf.math.rsqrt(v + e) * g + (b - m * tf.math.rsqrt(v + e) * g)),
        ("formula_sub_neg_beta", "gamma * (x - mean) / sqrt(var + eps) - neg(beta)",
         [None, 6, 6, 3], 5, 8.9e-4,
         lambda x, m, v, g, b, e: g * (x - m) / tf.sqrt(v + e) - tf.negative(b))]:
    case(_name, "Conv2D -> hand-written " + _desc + ": no pattern lists this spelling; the "
         "affine-chain analysis finds it, reads its parameters back and folds it.")(
        functools.partial(formula, shape=_shape, channels=_c, eps=_eps, expr=_expr))


def affine_after(fx, channels, bias, ops, scalar=False):
    """Conv2D [+ BiasAdd] -> each of ``ops`` ("Mul", "Add", "Sub", "RealDiv") with a constant:
    a plain scale and shift (no variance, no epsilon), folded as form "affine"."""
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 6, 5, 3]), channels, bias=bias)
    scale, shift = np.ones(channels), np.zeros(channels)
    z = y
    with tf.name_scope("affine"):
        for i, op in enumerate(ops):
            value = np.float32(fx.rng.uniform(0.5, 2.0)) if scalar else \
                fx.rng.uniform(-2.0, 2.0, channels).astype(np.float32)
            z = binary(op, z, fx.const("affine/c%d" % i, value), op.lower())
            value = np.asarray(value, np.float64)
            if op == "Mul":
                scale, shift = scale * value, shift * value
            elif op == "RealDiv":
                scale, shift = scale / value, shift / value
            else:
                shift = shift + (value if op == "Add" else -value)
    finish(fx, z)
    fx.expect_affine(z, scale[:1] if scalar else scale, shift[:1] if scalar else shift, "Conv2D")


case("affine_conv_mul_add", "Conv2D -> x * a + b with constant vectors a, b (a plain affine, no "
     "variance or epsilon): folded into the Conv2D as form affine, not counted as a batch norm.")(
    functools.partial(affine_after, channels=7, bias=None, ops=("Mul", "Add")))
case("affine_biasadd_div_sub", "Conv2D + BiasAdd -> x / a - b (constant vectors): the Mul after "
     "Conv+BiasAdd that AMCT folds; the bias stays the host's, the affine folds into both.")(
    functools.partial(affine_after, channels=9, bias="BiasAdd", ops=("RealDiv", "Sub")))
case("affine_conv_scalar", "Conv2D -> x * 1.3 + 0.4 -> Relu (scalar constants: one value for "
     "every channel): folded as form affine.")(
    functools.partial(affine_after, channels=5, bias=None, ops=("Mul", "Add"), scalar=True))


# ----- 14. quantization-aware graphs: FakeQuant ops are never folded across -----------------
for _name, _desc, _shape, _c, _eps, _expr in [
        ("qat_bn_fakequant_inside", "tf.nn.batch_normalization with a FakeQuantWithMinMaxVars "
         "between x * inv and the Add, as TF's QAT rewriter leaves an unfolded batch norm: its "
         "arithmetic becomes one Mul and one Add of constant vectors with the FakeQuant between",
         [None, 7, 6, 3], 13, 9.1e-4,
         lambda x, m, v, g, b, e: fake_quant(x * (tf.math.rsqrt(v + e) * g))
         + (b - m * (tf.math.rsqrt(v + e) * g))),
        ("qat_formula_fakequant_per_channel", "(x - mean) * rsqrt(var + eps), then "
         "FakeQuantWithMinMaxVarsPerChannel, then * gamma + beta: each side of the FakeQuant "
         "becomes its own Mul and Add", [None, 6, 7, 3], 10, 9.2e-4,
         lambda x, m, v, g, b, e: fake_quant((x - m) * tf.math.rsqrt(v + e), "VarsPerChannel",
                                             channels=10) * g + b)]:
    case(_name, "Conv2D -> " + _desc + ": found, never folded across the FakeQuant (fake-quant).")(
        functools.partial(formula, shape=_shape, channels=_c, eps=_eps, expr=_expr, action="fuse",
                          reason="fake-quant"))


@case("qat_fakequant_before_bn", "Conv2D -> FakeQuantWithMinMaxArgs -> FusedBatchNormV3: "
      "the FakeQuant sits between the batch norm and its host: skip (fake-quant).")
def _(fx):
    y = conv2d(fx, "conv1", fx.placeholder("x", [None, 5, 7, 3]), 14)
    quantized = fake_quant(y, "Args")
    fused_tail(fx, quantized, 14, 9.3e-4, None, action="skip", reason="fake-quant")


@case("qat_fakequant_weights", "Conv2D whose weights pass through FakeQuantWithMinMaxVars -> "
      "tf.nn.batch_normalization: folding into the pre-quantization weights is not exact, so "
      "fake-quant; the batch norm's arithmetic is still precomputed (fuse).")
def _(fx):
    x = fx.placeholder("x", [None, 6, 5, 3])
    w = fake_quant(fx.weights("conv1/weights", [3, 3, 3, 8]), name="conv1/weights_quant")
    y = conv2d(fx, "conv1", x, 8, w=w)
    p = fx.bn_params(8)
    with tf.name_scope("bn"):
        z = decomposed_bn(y, fx.param_tensors("bn", p), 9.4e-4)
    finish(fx, z)
    fx.expect("batch_normalization", z, y, p, 9.4e-4, "Conv2D", action="fuse", reason="fake-quant")


# ----- 15. moments over negative axes; TF2 exports' control edges ---------------------------
case("train_moments_negative_axes", "Conv2D -> tf.nn.moments over [-4, -3, -2] (the batch and "
     "spatial axes counted from the end) -> tf.nn.batch_normalization: training mode, fuse.")(
    functools.partial(moments_bn, channels=5, eps=9.5e-4, axes=[-4, -3, -2]))


@case("tf2_control_edges", "A TF2 export: weights and parameters read through "
      "ReadVariableOp-turned-Identity nodes, every read also a control input of the NoOp "
      "'output_control_node' that the output Identity waits on. Conv2D -> FusedBatchNormV3 "
      "folds; the reads' control edges go with them (the graph must not grow).")
def _(fx):
    x = fx.placeholder("x", [None, 6, 7, 3])

    def read(name, value):
        c = tf.constant(np.asarray(value, np.float32), name=name + "/resource/")
        return tf.identity(c, name=name + "/")

    w = read("conv2d/Conv2D/ReadVariableOp", fx.rng.normal(0.0, 0.4, [3, 3, 3, 11]))
    y = tf.nn.conv2d(x, w, 1, "SAME", name="conv2d/Conv2D")
    p = fx.bn_params(11)
    t = {k: read("batch_normalization/%s/ReadVariableOp" % k, getattr(p, k)) for k in p.KEYS}
    bn = fused_bn(y, t, 9.6e-4, name="batch_normalization/FusedBatchNormV3")
    relu = tf.nn.relu(bn.y, name="re_lu/Relu")
    with tf.control_dependencies([w.op] + [v.op for v in t.values()]):
        control = tf.no_op(name="output_control_node")
    with tf.control_dependencies([control]):
        out = tf.identity(relu, name="Identity")
    fx.output(out)
    fx.expect("FusedBatchNormV3", bn.y, y, p, 9.6e-4, "Conv2D")


# ----- driver --------------------------------------------------------------------------------
def check_epsilons(fixtures):
    """Every batch norm in the set has its own epsilon, so a wrong binding shows."""
    seen = {}
    for fx in fixtures:
        for entry in fx.batch_norms:
            if entry["epsilon"] is None:  # a plain affine has none
                continue
            other = seen.setdefault(entry["epsilon"], fx.name + ":" + entry["output"])
            assert other == fx.name + ":" + entry["output"], \
                "epsilon %r used twice: %s and %s" % (entry["epsilon"], other, fx.name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fixtures", help="output folder (default: fixtures)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these cases")
    parser.add_argument("--check", action="store_true",
                        help="also import and run every graph marked runs_in_tf")
    args = parser.parse_args(argv)
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error("unknown case(s): " + ", ".join(sorted(unknown)))
    os.makedirs(args.out, exist_ok=True)
    fixtures = [build(*c) for c in CASES if not args.only or c[0] in args.only]
    check_epsilons(fixtures)
    for fx in fixtures:
        path = fx.write(args.out)
        if args.check and fx.runs_in_tf:
            results = run_graph(path, fx.inputs, fx.outputs)
            assert all(np.isfinite(r).all() for r in results), "%s: non-finite output" % fx.name
        print("wrote", path)
    made = {fx.name for fx in fixtures}
    for path in sorted(glob.glob(os.path.join(args.out, "**", "*.expected.json"), recursive=True)):
        stem = os.path.basename(path)[:-len(".expected.json")]
        if not args.only and stem not in made:
            print("warning: %s is not made by any case (stale?)" % path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
