"""The open catalogue (bnrewrite/registry.py): a plugin distribution registers its own
variant and host through entry points, the audit lists it, the rewrite folds with it, and
a broken plugin is one line and exit 2. The plugin is tests/plugin_example, "installed" by
putting a dist-info made from its pyproject.toml on sys.path for one test only."""
from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2

import bnrewrite
from bnrewrite import registry
from bnrewrite.errors import BnRewriteError
from bnrewrite.graphio import save_graph
from bnrewrite.cli import main
from conftest import ROOT

PLUGIN = Path(__file__).parent / "plugin_example"
W = np.arange(12, dtype=np.float32).reshape(3, 4) / 7 - 0.5
GAMMA, BETA = np.float32([0.5, 2, -1, 1.5]), np.float32([0.1, -0.2, 0.3, 0])
MEAN, VARIANCE, EPS = np.float32([0.2, -1, 0.4, 3]), np.float32([0.9, 2, 0.25, 4]), 1e-3


def _install(site: Path, entry_points: dict[str, dict[str, str]], name: str = "toy-bn-plugin") -> None:
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) for group, entries in entry_points.items()))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Installs tests/plugin_example (or, through the returned function, any entry points)
    for this test; afterwards the registry, sys.path and sys.modules are as before."""
    def install(entry_points: dict[str, dict[str, str]] | None = None, name: str = "toy-bn-plugin") -> None:
        declared = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["entry-points"]
        _install(tmp_path / "site", entry_points or declared, name)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.syspath_prepend(str(PLUGIN))
        registry.forget()
    yield install
    sys.modules.pop("toy_bn_plugin", None)
    registry.forget()


def _toy_graph(builder, bn_op: str = "ToyBatchNorm", host: str = "MatMul"):
    """x @ W, then a batch norm; `host` BatchMatMulV2 is the plugin's host."""
    builder.node("x", "Placeholder", dtype=types_pb2.DT_FLOAT)
    builder.graph.node[-1].attr["shape"].shape.dim.add(size=-1)
    builder.graph.node[-1].attr["shape"].shape.dim.add(size=3)
    builder.const("w", W).node("mm", host, "x", "w", T=types_pb2.DT_FLOAT)
    for name, value in (("gamma", GAMMA), ("beta", BETA), ("mean", MEAN), ("variance", VARIANCE)):
        builder.const(name, value)
    if bn_op == "ToyBatchNorm":
        builder.node("bn", bn_op, "mm", "gamma", "beta", "mean", "variance", T=types_pb2.DT_FLOAT, epsilon=EPS)
    else:  # the form affine.py reads: (mm - mean) * rsqrt(variance + eps) * gamma + beta, as constants
        scale = GAMMA / np.sqrt(VARIANCE + np.float32(EPS))
        builder.const("scale", scale).const("shift", BETA - MEAN * scale)
        builder.node("scaled", "Mul", "mm", "scale", T=types_pb2.DT_FLOAT)
        builder.node("bn", "AddV2", "scaled", "shift", T=types_pb2.DT_FLOAT)
    return builder.node("out", "Identity", "bn", T=types_pb2.DT_FLOAT).graph


def _expected(x: np.ndarray) -> np.ndarray:
    return (x @ W - MEAN) / np.sqrt(VARIANCE + np.float32(EPS)) * GAMMA + BETA


def test_pyproject_registers_what_builtin_says():
    """The core's catalogue goes through entry points too; BUILTIN (for a checkout whose
    metadata is stale) must be the same list, in the catalogue's order."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {group: list(entries.items()) for group, entries in declared.items()} == \
        {group: list(entries) for group, entries in registry.BUILTIN.items()}


def test_installed_core_entries_keep_the_catalogue_order(plugin):
    """Core metadata listing its families in another order changes nothing: larger patterns
    first, as BUILTIN says."""
    plugin({group: dict(reversed(entries)) for group, entries in registry.BUILTIN.items()}, "bnrewrite")
    used = [(r.entry.name, r.entry.distribution) for r in registry.registered(registry.VARIANTS)]
    assert used == [(name, "bnrewrite 0.1") for name, _ in registry.BUILTIN[registry.VARIANTS]]


def test_entry_points_are_read_as_importlib_metadata_reads_them(plugin, tmp_path, monkeypatch):
    """registry.py reads the metadata folders itself (importing importlib.metadata costs a
    tenth of a cold audit): it must find what importlib.metadata finds; a second copy of a
    distribution later on sys.path changes nothing."""
    plugin()
    _install(tmp_path / "later", {registry.VARIANTS: {"shadowed": "toy_bn_plugin:VARIANTS"}})
    monkeypatch.setattr(sys, "path", [*sys.path, tmp_path / "later"])  # a Path, as sys.path may hold
    registry.forget()
    scanned = registry._scanned()
    # the same entries; their order is the file system's (registry._entries sorts them)
    assert sorted(map(repr, scanned)) == sorted(map(repr, registry._from_importlib()))
    assert {(e.group, e.name, e.distribution) for e in scanned if e.distribution.startswith("toy")} == {
        (registry.VARIANTS, "toy", "toy-bn-plugin 0.1"), (registry.HOSTS, "batch_matmul", "toy-bn-plugin 0.1")}


def test_a_plugin_in_a_zip_on_sys_path_is_found(plugin, tmp_path, monkeypatch):
    """A zip on sys.path is left to importlib.metadata, which reads inside it."""
    plugin({registry.VARIANTS: {}})  # the plugin's module on sys.path, its metadata only in the zip
    _install(tmp_path / "zipped", {registry.VARIANTS: {"toy": "toy_bn_plugin:VARIANTS"}}, "zipped-plugin")
    monkeypatch.syspath_prepend(shutil.make_archive(str(tmp_path / "site"), "zip", tmp_path / "zipped"))
    registry.forget()
    [toy] = [reg for reg in registry.registered(registry.VARIANTS) if reg.entry.name == "toy"]
    assert toy.entry.distribution == "zipped-plugin 0.1" and toy.items[0].form == "ToyBatchNorm"


def test_a_plugin_cannot_take_a_core_host(plugin):
    plugin({registry.HOSTS: {"mine": "bnrewrite.hosts:CORE_HOSTS"}})
    with pytest.raises(BnRewriteError, match="plugin 'core' .* host op 'Conv2D' is already registered by "
                                             "plugin 'mine' .*toy-bn-plugin 0.1"):
        registry.hosts()


def test_plugin_variant_is_audited_and_folded(plugin, builder, tmp_path):
    graph = _toy_graph(builder)
    before = bnrewrite.audit(graph, "toy.pb")
    assert before.batch_norms == []  # without the plugin the custom op is nothing we know
    plugin()
    report = bnrewrite.audit(graph, "toy.pb")
    [entry] = report.batch_norms
    assert (entry.form, entry.host, entry.action, entry.channels) == ("ToyBatchNorm", "MatMul", "fold", 4)
    assert entry.epsilon == pytest.approx(EPS)
    listed = {(e["name"], e["distribution"]): e["registers"] for e in report.to_dict()["catalogue"]}
    assert listed[("toy", "toy-bn-plugin 0.1")] == ["ToyBatchNorm"]
    assert listed[("batch_matmul", "toy-bn-plugin 0.1")] == ["BatchMatMulV2"]
    assert "toy-bn-plugin 0.1: variants ToyBatchNorm, hosts BatchMatMulV2; bnrewrite" in report.to_text()

    # TensorFlow cannot run ToyBatchNorm, so no verification: the numbers are checked here
    folded, rewritten = bnrewrite.rewrite(graph, "fold", verify=None)
    ops = [node.op for node in folded.node]
    assert "ToyBatchNorm" not in ops and ops.count("MatMul") == 1
    assert rewritten.batch_norms[0].action == "fold"
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with tf.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(folded.SerializeToString()), name="")
        with tf.compat.v1.Session(graph=g) as sess:
            y = sess.run("out:0", {"x:0": x})
    np.testing.assert_allclose(y, _expected(x), rtol=1e-5, atol=1e-5)


def test_plugin_host_folds_verified_in_tensorflow(plugin, builder, tmp_path):
    pytest.importorskip("tensorflow")
    source = tmp_path / "bmm.pb"
    graph = _toy_graph(builder, "formula", host="BatchMatMulV2")
    save_graph(graph, source)
    assert bnrewrite.audit(graph).batch_norms == []  # a plain scale and shift, with no host to fold into
    plugin()
    assert [(e.host, e.action) for e in bnrewrite.audit(graph).batch_norms] == [("BatchMatMulV2", "fold")]
    target = tmp_path / "bmm.bn.pb"
    assert main(["rewrite", str(source), "-o", str(target)]) == 0  # verified (the default)
    folded = bnrewrite.load_graph(target)
    ops = sorted(node.op for node in folded.node)
    assert ops.count("Mul") == 0 and ops.count("BatchMatMulV2") == 1


@pytest.mark.parametrize("value, problem", [
    ("toy_bn_missing:VARIANTS", "cannot load 'toy_bn_missing:VARIANTS': ModuleNotFoundError"),
    ("toy_bn_plugin:__doc__", "'toy_bn_plugin:__doc__' must be a tuple of Variant, holds str"),
])
def test_a_broken_plugin_is_one_line_and_exit_2(plugin, capsys, value, problem):
    plugin({registry.VARIANTS: {"broken": value}})
    assert main(["audit", str(ROOT / "fixtures" / "fbn_v3_conv_nchw.pb")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"bnrewrite: plugin 'broken' (bnrewrite.variants, from toy-bn-plugin 0.1): "
                                 f"{problem}" + err.split(problem, 1)[1])
    assert err.count("\n") == 1
