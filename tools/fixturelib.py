"""Helpers for tools/make_fixtures.py: build frozen TF1-style graphs and their sidecars.

Everything here names nodes the way TensorFlow 1.x did (scopes, ``/read`` identities, ``add/y``
epsilon constants, ``mul``/``mul_1`` counters), so the fixtures look like real frozen graphs.
Graphs are built with TensorFlow in graph mode; ops that TF 2.x refuses to create
(``BatchNormWithGlobalNormalization``) are appended as hand-written NodeDefs.
"""

import contextlib
import json
import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow.core.framework import attr_value_pb2, node_def_pb2  # noqa: E402

FORM_OPS = {1: "FusedBatchNorm", 2: "FusedBatchNormV2", 3: "FusedBatchNormV3"}


class Params:
    """Per-channel batch-norm parameters as float32 arrays; any of them may be None."""

    KEYS = ("gamma", "beta", "mean", "variance")

    def __init__(self, gamma=None, beta=None, mean=None, variance=None):
        self.gamma, self.beta, self.mean, self.variance = gamma, beta, mean, variance

    @property
    def channels(self):
        return len(next(getattr(self, k) for k in self.KEYS if getattr(self, k) is not None))

    def without(self, *names):
        return Params(**{k: getattr(self, k) for k in self.KEYS if k not in names})


def _tensor_name(t):
    name = t.name if isinstance(t, tf.Tensor) else t
    return name if ":" in name else name + ":0"


def _node_name(t):
    return _tensor_name(t).split(":")[0]


def _floats(values):
    return None if values is None else [float(v) for v in np.asarray(values, np.float32)]


def _attr(value):
    if isinstance(value, tf.DType):
        return attr_value_pb2.AttrValue(type=value.as_datatype_enum)
    if isinstance(value, bool):
        return attr_value_pb2.AttrValue(b=value)
    if isinstance(value, float):
        return attr_value_pb2.AttrValue(f=value)
    if isinstance(value, int):
        return attr_value_pb2.AttrValue(i=value)
    if isinstance(value, str):
        return attr_value_pb2.AttrValue(s=value.encode())
    raise TypeError("unsupported attr value %r" % (value,))


class Fixture:
    """One fixture under construction: a tf.Graph plus what its sidecar will say.

    ``probes`` is not written anywhere: it tells the checker which tensors to fetch to
    compare a batch norm's output with the formula on its input.
    """

    def __init__(self, name, description, fmt="pb", runs_in_tf=True, group=None):
        self.name, self.description, self.fmt, self.runs_in_tf = name, description, fmt, runs_in_tf
        self.group = group          # a subfolder of the fixtures (``hostile``), or None
        self.hostile = None         # hostile/: what verification must do with the graph
        self.graph = tf.Graph()
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.inputs, self.outputs, self.batch_norms, self.probes = [], [], [], []
        self.extra_nodes = []       # hand-written NodeDefs appended after the TF-built ones
        self.kept = []              # nodes read by nothing that freezing kept all the same
        self.producer = None        # int to override versions.producer, "absent" to drop versions

    # ----- leaves -------------------------------------------------------------------------
    def placeholder(self, name, shape, dtype=tf.float32):
        self.inputs.append(name)
        return tf.compat.v1.placeholder(dtype, shape, name=name)

    def const(self, name, value, dtype=tf.float32, read=True):
        """A frozen variable: Const ``name``, and by default Identity ``name/read`` after it.

        ``name`` is absolute (a trailing "/" makes TF use a name verbatim, whatever the scope).
        """
        c = tf.constant(np.asarray(value, dtype.as_numpy_dtype), dtype=dtype, name=name + "/")
        return tf.identity(c, name=name + "/read/") if read else c

    def weights(self, name, shape, dtype=tf.float32):
        return self.const(name, self.rng.normal(0.0, 0.4, shape), dtype)

    def bn_params(self, channels):
        """Parameters that make a wrong binding show: negative gammas, variance far from 1."""
        r = self.rng
        signs = r.choice([-1.0, 1.0], channels)
        signs[0], signs[-1] = -1.0, 1.0
        return Params(gamma=(r.uniform(0.3, 1.7, channels) * signs).astype(np.float32),
                      beta=r.uniform(-1.0, 1.0, channels).astype(np.float32),
                      mean=r.uniform(-1.5, 1.5, channels).astype(np.float32),
                      variance=r.uniform(0.2, 5.0, channels).astype(np.float32))

    def param_tensors(self, scope, p, read=True, wrap=None):
        """Const(+read) nodes named like tf.layers: scope/gamma, beta, moving_mean, moving_variance.

        Returns a dict keyed like Params; ``wrap`` is applied to each tensor (Identity, Cast...).
        """
        names = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean",
                 "variance": "moving_variance"}
        out = {}
        for key, suffix in names.items():
            value = getattr(p, key)
            if value is None:
                out[key] = None
                continue
            t = self.const("%s/%s" % (scope, suffix), value, read=read)
            out[key] = wrap(t) if wrap else t
        return out

    # ----- hand-written nodes -------------------------------------------------------------
    def node(self, name, op, inputs, **attrs):
        refs = [_tensor_name(i) for i in inputs]
        nd = node_def_pb2.NodeDef(name=name, op=op, input=[r[:-2] if r.endswith(":0") else r
                                                           for r in refs])
        for key, value in attrs.items():
            nd.attr[key].CopyFrom(_attr(value))
        self.extra_nodes.append(nd)
        return name

    def keep(self, *tensors):
        """Keep ``tensors`` though no output reads them (as EMA shadows survive freezing)."""
        self.kept.extend(_node_name(t) for t in tensors)

    # ----- sidecar ------------------------------------------------------------------------
    def output(self, *tensors):
        self.outputs.extend(_node_name(t) for t in tensors)

    def expect(self, form, y, x, p, eps, host, action="fold", reason=None, axis=-1,
               statistics="moving", training=None, gamma_ignored=False, check=True,
               axis_clash_ok=False, **extra):
        """Record one batch norm the audit must find (and a probe to check it numerically).

        ``p`` holds the canonical constants; leave mean/variance out of it (Params.without)
        where the graph has none, so the sidecar says null.
        """
        if training is None:
            training = statistics != "moving"
        if isinstance(x, tf.Tensor) and not axis_clash_ok:
            dims = x.shape.as_list()
            clash = [d for i, d in enumerate(dims[1:], 1) if i != len(dims) + axis]
            assert p.channels not in clash, \
                "%s: %d channels also a spatial size %s" % (self.name, p.channels, dims)
        gamma = np.ones(p.channels, np.float32) if (p.gamma is None or gamma_ignored) else p.gamma
        beta = np.zeros(p.channels, np.float32) if p.beta is None else p.beta
        entry = {"form": form, "output": _node_name(y), "training": training,
                 "statistics": statistics, "host": host, "action": action, "reason": reason,
                 "channels": int(p.channels), "channel_axis": axis,
                 "epsilon": None if eps is None else float(np.float32(eps)),
                 "gamma": _floats(gamma), "beta": _floats(beta),
                 "mean": _floats(p.mean), "variance": _floats(p.variance)}
        entry.update(extra)
        self.batch_norms.append(entry)
        if check:
            self.probe(y, x, entry)
        return entry

    def expect_affine(self, y, scale, shift, host, action="fold", reason=None, axis=-1):
        """Record a plain per-channel y = x * scale + shift the audit must find (form "affine":
        no batch-norm parameters, no epsilon)."""
        scale, shift = (np.asarray(v, np.float64).reshape(-1) for v in (scale, shift))
        entry = {"form": "affine", "output": _node_name(y), "training": False,
                 "statistics": "moving", "host": host, "action": action, "reason": reason,
                 "channels": int(max(scale.size, shift.size)), "channel_axis": axis, "epsilon": None,
                 "gamma": None, "beta": None, "mean": None, "variance": None,
                 "scale": _floats(scale), "shift": _floats(shift)}
        self.batch_norms.append(entry)
        return entry

    def probe(self, y, x, entry, feed=None, batch_stats=None):
        """Checker hint: fetch y and x; y must equal the BN formula of x with entry's params."""
        if batch_stats is None:
            batch_stats = entry["mean"] is None
        self.probes.append({"y": _tensor_name(y), "x": _tensor_name(x), "feed": feed or {},
                            "batch_stats": batch_stats, "axis": entry["channel_axis"],
                            "epsilon": entry["epsilon"], "gamma": entry["gamma"],
                            "beta": entry["beta"], "mean": entry["mean"],
                            "variance": entry["variance"]})

    # ----- output -------------------------------------------------------------------------
    def graph_def(self):
        gd = self.graph.as_graph_def()
        gd.node.extend(self.extra_nodes)
        gd = prune(gd, self.outputs + self.kept)
        if self.producer == "absent":
            gd.ClearField("versions")
        elif self.producer is not None:
            gd.versions.Clear()
            gd.versions.producer = self.producer
        return gd

    def sidecar(self):
        data = {"description": self.description, "inputs": self.inputs, "outputs": self.outputs,
                "runs_in_tf": self.runs_in_tf, "batch_norms": self.batch_norms}
        if self.hostile is not None:
            data["hostile"] = self.hostile
        return data

    def write(self, out_dir):
        if self.group:
            out_dir = os.path.join(out_dir, self.group)
            os.makedirs(out_dir, exist_ok=True)
        gd = self.graph_def()
        consumed = {i.lstrip("^").split(":")[0] for n in gd.node for i in n.input}
        bad = [o for o in self.outputs if o in consumed]
        assert not bad, "%s: outputs %s are consumed" % (self.name, bad)
        if self.fmt == "pbtxt":
            path = os.path.join(out_dir, self.name + ".pbtxt")
            data = text_format.MessageToString(gd).encode()
        else:
            path = os.path.join(out_dir, self.name + ".pb")
            data = gd.SerializeToString(deterministic=True)
        with open(path, "wb") as f:
            f.write(data)
        with open(os.path.join(out_dir, self.name + ".expected.json"), "w") as f:
            f.write(json.dumps(self.sidecar(), sort_keys=True, indent=1) + "\n")
        return path


def prune(gd, outputs):
    """Keep only the ancestors of ``outputs``, in their original order, as freeze_graph did."""
    by_name = {n.name: n for n in gd.node}
    keep, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(i.lstrip("^").split(":")[0] for i in by_name[name].input)
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(gd)
    del out.node[:]
    out.node.extend(n for n in gd.node if n.name in keep)
    return out


# ----- ops, named as TF 1.x named them ------------------------------------------------------
def binary(op_type, x, y, name):
    """Like TF's operator overloads: a Python scalar operand becomes Const ``name/x``/``name/y``."""
    with tf.name_scope(name) as scope:
        if not isinstance(x, tf.Tensor):
            x = tf.constant(x, dtype=y.dtype, name="x")
        if not isinstance(y, tf.Tensor):
            y = tf.constant(y, dtype=x.dtype, name="y")
        return getattr(tf.raw_ops, op_type)(x=x, y=y, name=scope)


def conv2d(fx, scope, x, cout, k=3, stride=1, data_format="NHWC", dtype=tf.float32, bias=None,
           w=None):
    """Conv2D with frozen weights ``scope/weights`` (or the given ``w``); bias "BiasAdd", "Add"
    or "AddV2" adds ``scope/biases``."""
    cin = x.shape[1] if data_format == "NCHW" else x.shape[-1]
    with tf.name_scope(scope):
        if w is None:
            w = fx.weights(scope + "/weights", [k, k, cin, cout], dtype)
        strides = [1, 1, stride, stride] if data_format == "NCHW" else [1, stride, stride, 1]
        y = tf.nn.conv2d(x, w, strides, "SAME", data_format=data_format, name="Conv2D")
        if bias:
            b = fx.const(scope + "/biases", fx.rng.uniform(-0.5, 0.5, cout), dtype)
            if bias == "BiasAdd":
                y = tf.nn.bias_add(y, b, data_format=data_format, name="BiasAdd")
            else:
                y = binary(bias, y, b, "add")
    return y


def dense(fx, scope, x, cout, bias="Add", transpose_b=False):
    """MatMul with frozen weights (``[cout, cin]`` when transpose_b), then optional bias add."""
    cin = x.shape[-1]
    with tf.name_scope(scope):
        w = fx.weights(scope + "/weights", [cout, cin] if transpose_b else [cin, cout])
        y = tf.linalg.matmul(x, w, transpose_b=transpose_b, name="MatMul")
        if bias:
            b = fx.const(scope + "/biases", fx.rng.uniform(-0.5, 0.5, cout))
            if bias == "BiasAdd":
                y = tf.nn.bias_add(y, b, name="BiasAdd")
            else:
                y = binary(bias, y, b, "add")
    return y


def fused_bn(x, t, eps, version=3, data_format="NHWC", is_training=False, name=None):
    """FusedBatchNorm{,V2,V3} over param tensors ``t`` (dict gamma/beta/mean/variance)."""
    op = FORM_OPS[version]
    return getattr(tf.raw_ops, op)(x=x, scale=t["gamma"], offset=t["beta"], mean=t["mean"],
                                   variance=t["variance"], epsilon=eps, data_format=data_format,
                                   is_training=is_training, name=name or op)


def decomposed_bn(x, t, eps, add="AddV2", swap=False, neg_after=False):
    """tf.nn.batch_normalization's subgraph, node for node, in the current name scope + batchnorm/.

    ``add="Add"`` is the pre-1.15 form; ``swap`` swaps every commutative operand; ``neg_after``
    writes the no-beta offset as Neg(mean * inv) instead of TF's Neg(mean) * inv.
    Returns the output tensor (``.../batchnorm/add_1``).
    """
    def bin_(op, a, b, name):
        return binary(op, b, a, name) if swap else binary(op, a, b, name)

    with tf.name_scope("batchnorm"):
        inv = tf.math.rsqrt(bin_(add, t["variance"], eps, "add"), name="Rsqrt")
        if t["gamma"] is not None:
            inv = bin_("Mul", inv, t["gamma"], "mul")
        scaled = bin_("Mul", x, inv, "mul")
        if t["beta"] is not None:
            offset = binary("Sub", t["beta"], bin_("Mul", t["mean"], inv, "mul"), "sub")
        elif neg_after:
            offset = tf.math.negative(bin_("Mul", t["mean"], inv, "mul"), name="Neg")
        else:
            offset = bin_("Mul", tf.math.negative(t["mean"], name="Neg"), inv, "mul")
        return bin_(add, scaled, offset, "add")


def bnwgn(fx, name, x, t, eps, scale_after_normalization=True, dtype=tf.float32):
    """Hand-written BatchNormWithGlobalNormalization NodeDef (TF 2.x refuses to build it)."""
    return fx.node(name, "BatchNormWithGlobalNormalization",
                   [x, t["mean"], t["variance"], t["beta"], t["gamma"]], T=dtype,
                   variance_epsilon=float(np.float32(eps)),
                   scale_after_normalization=scale_after_normalization)


def fake_quant(x, kind="Vars", name="act_quant", channels=None):
    """FakeQuantWithMinMax{Vars,Args,VarsPerChannel} over [-6, 6] (per channel: widening
    ranges), as TF's quantization-aware training inserts them."""
    if kind == "Args":
        return tf.quantization.fake_quant_with_min_max_args(x, -6.0, 6.0, name=name)
    if kind == "VarsPerChannel":
        low = tf.constant(-np.linspace(4.0, 8.0, channels, dtype=np.float32), name=name + "/min")
        high = tf.constant(np.linspace(4.0, 8.0, channels, dtype=np.float32), name=name + "/max")
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(x, low, high, name=name)
    low = tf.constant(-6.0, name=name + "/min")
    high = tf.constant(6.0, name=name + "/max")
    return tf.quantization.fake_quant_with_min_max_vars(x, low, high, name=name)


def moments_tf10(x, axes):
    """tf.nn.moments as TF 1.0 built it: sufficient_statistics + normalize_moments, keep_dims=False.

    Needs a fully defined x shape (the count is then a Const), like TF 1.0 did.
    """
    with tf.name_scope("moments"):
        shift = tf.stop_gradient(tf.reduce_mean(x, axes, keepdims=True))
        with tf.name_scope("sufficient_statistics"):
            count = int(np.prod([x.shape[a] for a in axes]))
            counts = tf.constant(float(count), dtype=x.dtype)
            m_ss = tf.reduce_sum(tf.subtract(x, shift), axes, name="mean_ss")
            v_ss = tf.reduce_sum(tf.math.squared_difference(x, shift), axes, name="var_ss")
        shift = tf.reshape(shift, tf.shape(m_ss))
        with tf.control_dependencies([counts, m_ss, v_ss]), tf.name_scope("normalize"):
            divisor = tf.math.reciprocal(counts, name="divisor")
            shifted_mean = tf.multiply(m_ss, divisor, name="shifted_mean")
            mean = tf.raw_ops.Add(x=shifted_mean, y=shift, name="mean")  # TF 1.0 had no AddV2
            variance = tf.subtract(tf.multiply(v_ss, divisor), tf.square(shifted_mean),
                                   name="variance")
    return mean, variance


# ----- pieces shared by many cases ----------------------------------------------------------
def conv_setup(fx, shape, channels, dtype=tf.float32, data_format="NHWC", bias=None, scope="bn"):
    """Placeholder x -> conv1 (Conv2D, optional bias); BN params for ``channels`` in ``scope``."""
    x = fx.placeholder("x", shape, dtype)
    y = conv2d(fx, "conv1", x, channels, data_format=data_format, dtype=dtype, bias=bias)
    p = fx.bn_params(channels)
    return y, p, fx.param_tensors(scope, p)


def finish(fx, z, name="out"):
    out = tf.nn.relu(z, name=name)
    fx.output(out)
    return out


def fused_tail(fx, y, channels, eps, host, version=3, data_format="NHWC", scope="bn",
               out="out", **expect):
    """BN params + FusedBatchNorm* after ``y``, a Relu output ``out``, and the sidecar entry."""
    p = fx.bn_params(channels)
    t = fx.param_tensors(scope, p)
    with tf.name_scope(scope):
        bn = fused_bn(y, t, eps, version, data_format)
    if out:
        finish(fx, bn.y, out)
    axis = {"NCHW": -3, "NCDHW": -4}.get(data_format, -1)
    fx.expect(FORM_OPS[version], bn.y, y, p, eps, host, axis=axis, **expect)
    return bn


def build(name, description, fmt, runs_in_tf, group, builder):
    """Run one case's builder inside a fresh graph; returns the filled Fixture."""
    fx = Fixture(name, description, fmt, runs_in_tf, group)
    with fx.graph.as_default():
        builder(fx)
    return fx


@contextlib.contextmanager
def control_flow_v1():
    """tf.cond builds Switch/Merge (as TF 1.x and Keras' learning phase did) instead of If."""
    tf.compat.v1.disable_control_flow_v2()
    try:
        yield
    finally:
        tf.compat.v1.enable_control_flow_v2()


# ----- checking -----------------------------------------------------------------------------
def load_graph_def(path):
    gd = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".pbtxt"):
        text_format.Parse(data.decode(), gd)
    else:
        gd.ParseFromString(data)
    return gd


def random_feed(graph, inputs, rng, overrides=None):
    """Random values for each placeholder (unknown dims -> 2, bools -> False)."""
    feed = {}
    for name in inputs:
        t = graph.get_tensor_by_name(name + ":0")
        shape = [2 if d is None else d for d in t.shape.as_list()]
        if t.dtype == tf.bool:
            feed[t] = np.zeros(shape, bool)
        else:
            feed[t] = rng.uniform(-1.0, 1.0, shape).astype(t.dtype.as_numpy_dtype)
    for name, value in (overrides or {}).items():
        feed[graph.get_tensor_by_name(name)] = value
    return feed


def run_graph(path, inputs, outputs, fetch_extra=(), overrides=None, seed=0):
    """Import a fixture into a fresh Graph, run it on random inputs, return fetched arrays."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(load_graph_def(path), name="")
    feed = random_feed(g, inputs, np.random.default_rng(seed), overrides)
    fetches = [o + ":0" for o in outputs] + list(fetch_extra)
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run(fetches, feed)
