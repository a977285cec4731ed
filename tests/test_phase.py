"""Learning-phase resolution (phase.py, --set, --set-defaults) on the Keras 2.0 fixtures of
fixtures/phase/ (tools/make_fixtures.py), and bool inputs verified with both values."""
from __future__ import annotations

import importlib
import json
from collections import Counter

import pytest

import bnrewrite
from bnrewrite import cli, feeds, phase
from bnrewrite.index import GraphIndex
from conftest import FIXTURES

verify_module = importlib.import_module("bnrewrite.verify")  # the package's `verify` is the function

PHASE = FIXTURES / "phase"
CONTROL_FLOW = ("Switch", "Merge")
TRAINING = ("Mean", "SquaredDifference", "StopGradient", "Squeeze")  # the moments subgraph
LOOP = ("Enter", "Exit", "NextIteration", "LoopCond")


def load(name: str):
    return bnrewrite.load_graph(PHASE / f"{name}.pb")


def ops(graph) -> Counter:
    return Counter(node.op for node in graph.node)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["keras2_phase_placeholder", "keras2_phase_default", "keras2_phase_loop"])
def test_audit_matches_sidecar_and_says_what_set_does(name):
    want = json.loads((PHASE / f"{name}.expected.json").read_text())
    report = bnrewrite.audit(load(name))
    assert [(e.output, e.form, e.action, e.reason, e.host) for e in report.batch_norms] == \
        [(bn["output"], "cond", "skip", "learning-phase-cond", "Conv2D") for bn in want["batch_norms"]]
    for entry, bn in zip(report.batch_norms, want["batch_norms"]):
        assert {k: (v["form"], v["output"]) for k, v in entry.branches.items()} == \
            {k: (v["form"], v["output"]) for k, v in bn["branches"].items()}
        layer = entry.output.split("_")[-1].split("/")[0]
        assert entry.branches["inference"]["with_set"] == \
            f"--set keras_learning_phase=0 keeps the inference branch: fold into conv2d_{layer}/Conv2D"
        assert entry.branches["training"]["with_set"].startswith("--set keras_learning_phase=1 keeps the training")
    assert "--set keras_learning_phase=0 keeps the inference branch" in report.to_text()


@pytest.mark.parametrize("name, setting, pruned", [
    ("keras2_phase_placeholder", {"set_values": {"keras_learning_phase": 0}}, 53),
    ("keras2_phase_default", {"set_defaults": True}, 54),  # and the default's Const
])
def test_resolved_graph_has_no_cond_and_no_training_subgraph(name, setting, pruned):
    graph = load(name)
    before = graph.SerializeToString(deterministic=True)
    resolved, resolution = phase.resolve(graph, setting.get("set_values", {}), setting.get("set_defaults", False))
    assert graph.SerializeToString(deterministic=True) == before
    counts = ops(resolved)
    assert not any(counts[op] for op in CONTROL_FLOW + TRAINING), counts
    assert resolution.values == {"keras_learning_phase": False}
    assert (len(resolution.switches), len(resolution.merges)) == (14, 2)
    assert resolution.pruned == len(graph.node) - len(resolved.node) == pruned
    again, _ = phase.resolve(graph, setting.get("set_values", {}), setting.get("set_defaults", False))
    assert again.SerializeToString(deterministic=True) == resolved.SerializeToString(deterministic=True)
    assert [(e.action, e.host) for e in bnrewrite.audit(graph, **setting).batch_norms] == [("fold", "Conv2D")] * 2


def test_undecided_cond_and_while_loop_are_left_as_they_are():
    graph = load("keras2_phase_loop")
    resolved, _ = phase.resolve(graph, {"keras_learning_phase": "false"})
    before, after = ops(graph), ops(resolved)
    assert all(after[op] == before[op] for op in LOOP), (before, after)
    old = {n.name: n for n in graph.node}
    new = {n.name: n for n in resolved.node}
    loop = [name for name in old if name.startswith("rnn/")]
    assert loop and all(new[name] == old[name] for name in loop)  # the loop frame, byte for byte
    # the data cond keeps its Switch/Merge and its predicate; the batch-norm conds are gone
    assert {n.op for n in resolved.node if n.name.startswith("data_cond/")} >= {"Switch", "Merge"}
    assert new["data_cond/Switch"].input == old["data_cond/Switch"].input
    assert not any(n.name.startswith("batch_normalization_") and n.op in CONTROL_FLOW for n in resolved.node)


def test_set_errors_are_one_line_and_exit_2(tmp_path, capsys):
    graph = load("keras2_phase_placeholder")
    with pytest.raises(phase.SetError, match="no placeholder named 'phase'"):
        phase.resolve(graph, {"phase": 0})
    with pytest.raises(phase.SetError, match="is bool and cannot hold"):
        phase.resolve(graph, {"keras_learning_phase": 2})
    with pytest.raises(phase.SetError, match="is fetched"):
        phase.resolve(graph, {"keras_learning_phase": True}, keep=["batch_normalization_1/cond/batchnorm/add_1"])
    huge = type(graph)()
    huge.CopyFrom(graph)
    shaped = next(n for n in huge.node if n.name == "keras_learning_phase").attr["shape"].shape
    del shaped.dim[:]
    shaped.unknown_rank = False
    shaped.dim.add(size=2**31)  # a constant of that shape would take 2 GB (the fuzzer's case)
    with pytest.raises(phase.SetError, match=r"shape \[2147483648\] is too large"):
        phase.resolve(huge, {"keras_learning_phase": False})
    assert bnrewrite.audit(huge).batch_norms  # the audit describes what --set can do, and skips this
    out = tmp_path / "out.pb"
    code, _, err = run(capsys, "rewrite", PHASE / "keras2_phase_placeholder.pb", "-o", out, "--no-verify",
                       "--set", "keras_learning_phase=maybe")
    assert code == 2 and err.count("\n") == 1 and "keras_learning_phase=maybe" in err and not out.exists()


def test_predicate_without_shape_is_a_scalar():
    index = GraphIndex(load("keras2_phase_placeholder"))
    node = index.nodes["keras_learning_phase"]
    assert not node.attr["shape"].shape.dim and node.attr["shape"].shape.unknown_rank
    assert feeds._default_shape(index, node, 2, None) == ([], "a scalar: it is the predicate of a Switch")


def test_bool_inputs_beyond_the_cap_take_false(monkeypatch):
    names = [f"flag{i}" for i in range(verify_module.MAX_BOOL_INPUTS + 1)]
    seen = []

    def once(original, rewritten, options, feeds, trace):
        seen.append(dict(options.values))
        return verify_module.Verification({})

    monkeypatch.setattr(verify_module, "bool_inputs", lambda graph, options: dict.fromkeys(names))
    monkeypatch.setattr(verify_module, "_verify_once", once)
    result = verify_module.verify(None, None)
    assert len(seen) == 2 ** verify_module.MAX_BOOL_INPUTS == len(result.combinations)
    assert all(values[names[-1]] is False for values in seen)
    assert len({tuple(v[n] for n in names[:-1]) for v in seen}) == 16
    assert result.warnings == [f"5 bool inputs: every combination of the first 4 was run, {names[-1]} only with its default (false without one)"]


@pytest.mark.parametrize("name, flags", [
    ("keras2_phase_placeholder", ["--set", "keras_learning_phase=0"]),
    ("keras2_phase_default", ["--set-defaults"]),
    ("keras2_phase_loop", ["--set", "keras_learning_phase=false"]),
])
def test_set_rewrites_folds_and_verifies_against_the_fed_original(tmp_path, capsys, name, flags):
    out = tmp_path / "out.pb"
    code, stdout, err = run(capsys, "rewrite", PHASE / f"{name}.pb", "-o", out, *flags, "--format", "json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["summary"] == {"batch_norms": 2, "affine": 0, "fold": 2, "fuse": 0, "skip": 0, "training": 0}
    assert report["phase"]["values"] == {"keras_learning_phase": False}
    checks = report["verification"]["outputs"]
    assert [c["name"] for c in checks] == ["out"] and checks[0]["passed"] and checks[0]["max_rel"] < 1e-5
    assert report["verification"]["inputs"]["keras_learning_phase"] == []
    assert "fed to the original" in report["verification"]["shape_sources"]["keras_learning_phase"]
    written = ops(bnrewrite.load_graph(out))
    assert written["BiasAdd"] == 2 and not any(written[op] for op in TRAINING + ("Rsqrt",))
    assert written["Placeholder"] == 1  # x; the learning phase is a constant
    if name == "keras2_phase_loop":
        assert all(written[op] == ops(load(name))[op] for op in LOOP)
    else:
        assert not any(written[op] for op in CONTROL_FLOW)
        code, stdout, _ = run(capsys, "rewrite", PHASE / f"{name}.pb", "-o", out, *flags)
        assert "compared with the original graph fed keras_learning_phase=false" in stdout


@pytest.mark.parametrize("name", ["keras2_phase_placeholder", "keras2_phase_default"])
def test_without_set_both_phases_verify(tmp_path, capsys, name):
    out = tmp_path / "out.pb"
    code, stdout, err = run(capsys, "rewrite", PHASE / f"{name}.pb", "-o", out, "--format", "json")
    assert code == 0, err
    verification = json.loads(stdout)["verification"]
    assert verification["combinations"] == [{"keras_learning_phase": False}, {"keras_learning_phase": True}]
    assert [c["name"] for c in verification["outputs"]] == \
        ["out [keras_learning_phase=false]", "out [keras_learning_phase=true]"]
    assert all(c["passed"] for c in verification["outputs"])


def test_nothing_to_set_leaves_every_graph_byte_for_byte(realgraphs):
    graphs = sorted(FIXTURES.glob("**/*.pb*")) + sorted(realgraphs.glob("*.pb*"))
    with_defaults = set()
    for path in graphs:
        graph = bnrewrite.load_graph(path)
        resolved, resolution = phase.resolve(graph, {}, defaults=True)
        if resolution.values:
            with_defaults.add(path.stem)
        else:
            assert resolved.SerializeToString(deterministic=True) == graph.SerializeToString(deterministic=True), path
    # the PlaceholderWithDefaults of bools or numbers (hostile_read_file's is a string)
    assert with_defaults == {"cond_keras_default", "hostile_memory_bomb", "keras2_phase_default"}


def test_set_defaults_folds_the_fused_learning_phase_fixture():
    graph = bnrewrite.load_graph(FIXTURES / "cond_keras_default.pb")
    new, report = bnrewrite.rewrite(graph, set_defaults=True, verify=bnrewrite.VerifyOptions())
    assert [(e.form, e.action, e.host_node) for e in report.batch_norms] == [("FusedBatchNormV3", "fold", "conv2d_1/Conv2D")]
    assert not any(ops(new)[op] for op in CONTROL_FLOW + ("FusedBatchNormV3", "PlaceholderWithDefault"))
    assert report.verification["outputs"][0]["passed"]


@pytest.mark.parametrize("value", [False, True])
def test_a_while_loop_inside_a_branch_lives_or_dies_with_it(value):
    """The loop's Merge is never resolved: fed from a dead Enter it dies whole, no dangling input."""
    import tensorflow as tf
    from bnrewrite import graphio, validate

    tf.compat.v1.disable_control_flow_v2()
    try:
        graph = tf.Graph()
        with graph.as_default():
            flag = tf.compat.v1.placeholder(tf.bool, [], name="flag")
            x = tf.compat.v1.placeholder(tf.float32, [2], name="x")

            def doubled():
                return tf.compat.v1.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 2.0),
                                               [tf.constant(0), x], name="loop")[1]
            tf.identity(tf.compat.v1.cond(flag, doubled, lambda: x + 1.0, name="c"), name="out")
    finally:
        tf.compat.v1.enable_control_flow_v2()
    original = graphio.to_internal(graph.as_graph_def())
    resolved, _ = phase.resolve(original, {"flag": value})
    assert validate.structural(resolved, ["out"]) == []
    cond = [n.name for n in resolved.node if n.name.startswith("c/") and not n.name.startswith("c/loop/")]
    assert (ops(resolved)["Enter"] > 0) == value  # the loop is kept whole or pruned whole
    assert not [n for n in cond if "Switch" in n or "Merge" in n], cond
    # the loop counter's Exit is a sink too: fetch only what both graphs compute
    check = bnrewrite.verify(original, resolved, bnrewrite.VerifyOptions(outputs=["out"], values={"flag": value}))
    assert check.passed and [c.name for c in check.outputs] == ["out"]
