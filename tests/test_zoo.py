"""Model zoos: `audit DIR` and `rewrite DIR -o OUTDIR` over many graphs, `--jobs` at a time."""
from __future__ import annotations

import json
import shutil

import bnrewrite
from bnrewrite import cli, fold_math
from conftest import FIXTURES, fixture_path
from test_realgraphs_rewrite import wav_bytes

ZOO = {"a/trap_mixed_forms.pb": "trap_mixed_forms", "a/b/bnwgn_conv_scale.pb": "bnwgn_conv_scale",
       "fbn_v3_half.pb": "fbn_v3_half"}


def make_zoo(root, broken=True):
    for relative, name in ZOO.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture_path(name), root / relative)
    if broken:
        (root / "a" / "broken.pb").write_bytes(b"not a graph")
    return root


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rewrite_folder_keeps_the_layout_verifies_each_graph_and_skips_a_bad_one(tmp_path, capsys):
    zoo, out = make_zoo(tmp_path / "zoo"), tmp_path / "out"
    code, stdout, err = run(capsys, "rewrite", zoo, "-o", out, "--jobs", "2", "--format", "json")
    assert code == 2, err  # the worst per-graph code: the broken file
    report = json.loads(stdout)
    by_path = {g["path"]: g for g in report["graphs"]}
    assert len(by_path) == 4 and report["summary"] == {"graphs": 4, "written": 3, "verification_failed": 0,
                                                       "bad_input": 1}
    broken = by_path[str(zoo / "a" / "broken.pb")]
    assert broken["exit_code"] == 2 and "broken.pb" in broken["error"] and broken["output"] is None
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(ZOO)
    for relative, name in ZOO.items():
        entry = by_path[str(zoo / relative)]
        assert entry["exit_code"] == 0 and entry["report"]["verification"]["outputs"]
        # the same bytes as rewriting the graph on its own
        alone = tmp_path / "alone.pb"
        assert cli.main(["rewrite", str(fixture_path(name)), "-o", str(alone), "--no-verify"]) == 0
        assert (out / relative).read_bytes() == alone.read_bytes()
    capsys.readouterr()


def test_a_graph_failing_verification_is_not_written_and_the_rest_are(tmp_path, capsys, monkeypatch):
    real = fold_math.BNParams.scale_offset
    monkeypatch.setattr(fold_math.BNParams, "scale_offset",
                        lambda self: (real(self)[0] * 1.05, real(self)[1]))  # an injected bug
    zoo, out = make_zoo(tmp_path / "zoo", broken=False), tmp_path / "out"
    shutil.copy(fixture_path("neg_plain_convnet"), zoo / "plain.pb")  # nothing to fold: unaffected
    code, stdout, _ = run(capsys, "rewrite", zoo, "-o", out, "--jobs", "1")
    assert code == 1
    assert [p.name for p in out.rglob("*.pb")] == ["plain.pb"]
    assert stdout.splitlines()[-1] == "4 graphs: 1 written, 3 failed verification, 0 could not be read, " \
                                      "rewritten or verified"


def test_jobs_do_not_change_what_the_audit_says(capsys):
    runs = [run(capsys, "audit", FIXTURES, "--jobs", jobs, "--format", "json") for jobs in ("1", "2")]
    assert runs[0] == runs[1]
    code, stdout, err = runs[0]
    audited = {report["graph"]["path"] for report in json.loads(stdout)}
    refused = {line.split(": ")[1] for line in err.splitlines()}  # "bnrewrite: PATH: problem"
    every = {str(p) for p in FIXTURES.rglob("*.pb*")}
    assert audited | refused == every and not audited & refused
    assert code == (2 if refused else 0)


def test_folder_input_wants_a_folder_output(tmp_path, capsys):
    zoo = make_zoo(tmp_path / "zoo", broken=False)
    target = tmp_path / "file.pb"
    target.write_bytes(b"")
    code, stdout, err = run(capsys, "rewrite", zoo, "-o", target, "--no-verify")
    assert code == 2 and stdout == "" and "must name a folder" in err
    code, _, err = run(capsys, "rewrite", zoo, "-o", zoo, "--no-verify")
    assert code == 2 and "--in-place" in err


def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, capsys):
    zoo = make_zoo(tmp_path / "zoo", broken=False)
    for _ in range(2):  # the second run must not find the first run's results as inputs
        code, stdout, _ = run(capsys, "rewrite", zoo, "-o", zoo / "out", "--no-verify", "--format", "json")
        assert code == 0 and json.loads(stdout)["summary"]["graphs"] == len(ZOO)
    assert bnrewrite.load_graph(zoo / "out" / "fbn_v3_half.pb").node


def test_the_real_graphs_as_a_zoo_all_verify(tmp_path, capsys, realgraphs):
    """Every real graph rewritten and verified, two at a time, with one summary: the KWS
    graphs get their WAV, which the graphs without a `wav_data` input ignore."""
    wav = tmp_path / "speech.wav"
    wav.write_bytes(wav_bytes())
    code, stdout, err = run(capsys, "rewrite", realgraphs, "-o", tmp_path / "out", "--jobs", "2",
                            "--feed", f"wav_data=@{wav}", "--format", "json")
    report = json.loads(stdout)
    graphs = sorted(p.name for p in realgraphs.iterdir() if p.suffix in (".pb", ".pbtxt"))
    assert code == 0, err
    assert report["summary"] == {"graphs": len(graphs), "written": len(graphs), "verification_failed": 0,
                                 "bad_input": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == graphs
    assert all(g["report"]["verification"]["outputs"] for g in report["graphs"])
