"""Every catalogue fixture (tools/make_fixtures.py) is audited exactly as its sidecar says:
the same batch norms, and for each its form, mode, host, action, reason, channel layout
and the parameter values the generator set."""
from __future__ import annotations

import pytest

import bnrewrite
from conftest import expected, fixture_cases, fixture_path

CASES = fixture_cases()
FIELDS = ("form", "training", "statistics", "host", "action", "reason", "channels", "channel_axis")
PARAMS = ("gamma", "beta", "mean", "variance")
OPTIONAL = ("direction", "consumers")  # checked where the sidecar states them
# Where the graph Casts float32 parameters to half before use, the audit reports the
# values the graph computes with: the generator's float32 values rounded to fp16.
REL = {"bn_half_cast": 1e-3}


def test_the_catalogue_is_there():
    assert len(CASES) >= 40, CASES
    prefixes = {name.split("_")[0] for name in CASES}
    assert {"bnwgn", "fbn", "bn", "formula", "train", "cond", "host", "fwd", "trap", "neg", "affine",
            "qat"} <= prefixes


@pytest.mark.parametrize("name", CASES)
def test_audit_matches_sidecar(name):
    want = expected(name)
    report = bnrewrite.audit(bnrewrite.load_graph(fixture_path(name)), name)
    got = {entry.output: entry for entry in report.batch_norms}
    assert sorted(got) == sorted(bn["output"] for bn in want["batch_norms"])
    for bn in want["batch_norms"]:
        entry = got[bn["output"]]
        fields = FIELDS + tuple(f for f in OPTIONAL if f in bn)
        assert {f: getattr(entry, f) for f in fields} == {f: bn[f] for f in fields}, bn["output"]
        if bn["epsilon"] is None:
            assert entry.epsilon is None
        else:
            assert entry.epsilon == pytest.approx(bn["epsilon"], rel=1e-6)
        for role in PARAMS:
            if bn[role] is None:
                assert getattr(entry, role) is None, role
            else:
                rel = REL.get(name, 1e-6)
                assert getattr(entry, role) == pytest.approx(bn[role], rel=rel, abs=rel / 10), role
        for key in ("scale", "shift"):  # a plain affine's map, where the sidecar states it
            if key in bn:
                assert getattr(entry, key) == pytest.approx(bn[key], rel=1e-6, abs=1e-7), key
        if "branches" in bn:
            assert {k: (v["form"], v["output"], v["statistics"]) for k, v in entry.branches.items()} == \
                {k: (v["form"], v["output"], v["statistics"]) for k, v in bn["branches"].items()}
    assert report.graph.inputs == want["inputs"]
    assert sorted(report.graph.outputs) == sorted(want["outputs"])


@pytest.mark.parametrize("name", CASES)
def test_audit_leaves_the_callers_graph_alone(name):
    graph = bnrewrite.load_graph(fixture_path(name))
    before = graph.SerializeToString(deterministic=True)
    bnrewrite.audit(graph)
    assert graph.SerializeToString(deterministic=True) == before


@pytest.mark.parametrize("name", ["neg_layer_norm", "train_moments_conv_bn", "train_sufficient_statistics"])
def test_statistics_found_without_stop_gradient(name):
    """Inference tools strip StopGradient (optimize_for_inference does): a layer norm must
    stay invisible and batch statistics must stay training mode."""
    graph = bnrewrite.load_graph(fixture_path(name))
    stopped = {n.name: n.input[0] for n in graph.node if n.op == "StopGradient"}
    assert stopped
    kept = [n for n in graph.node if n.name not in stopped]
    for node in kept:
        node.input[:] = [stopped.get(ref, ref) for ref in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    found = [(e.output, e.training, e.statistics) for e in bnrewrite.audit(graph).batch_norms]
    assert found == [(bn["output"], bn["training"], bn["statistics"]) for bn in expected(name)["batch_norms"]]


def test_every_reason_is_declared_and_documented():
    """The reasons are a promise of the JSON: each one the plan can give is declared in
    plan.REASONS and explained in the README's table, and nothing else is."""
    from bnrewrite import plan
    from conftest import ROOT
    given = {reason for reason, _ in plan.CHECKS + plan.FORWARD_CHECKS} | {plan.FUSE_MODE[0]}
    assert given == set(plan.REASONS)
    readme = (ROOT / "README.md").read_text()
    documented = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `")}
    assert set(plan.REASONS) <= documented
