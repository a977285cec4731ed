"""Untrusted graphs (fixtures/hostile/, from tools/make_fixtures.py): verification never lets
a graph write, read, call Python, hang or exhaust memory; each ends in exit 2 with one line
and no output file. The control case (random ops, Assert) still verifies."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import bnrewrite
from bnrewrite import cli, tfrun
from bnrewrite.verify import Options

from conftest import FIXTURES

HOSTILE = FIXTURES / "hostile"
WRITTEN = "bnrewrite_hostile_write.txt"  # hostile_write_file's default target, relative


def sidecar(name: str) -> dict:
    return json.loads((HOSTILE / f"{name}.expected.json").read_text())


def cases(expect: str) -> list[str]:
    return sorted(p.name.removesuffix(".expected.json") for p in HOSTILE.glob("*.expected.json")
                  if json.loads(p.read_text())["hostile"]["expect"] == expect)


def commands(name: str, out: Path) -> dict[str, list[str]]:
    graph = str(HOSTILE / f"{name}.pb")
    return {"rewrite": ["rewrite", graph, "-o", str(out)], "verify": ["verify", graph, graph],
            "probe": ["audit", "--probe", graph]}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnrewrite: "), err
    return err[0]


def test_the_groups_are_there() -> None:
    assert cases("refused") == ["hostile_py_func", "hostile_read_file", "hostile_write_file"]
    assert cases("timeout") == ["hostile_endless_loop"]
    assert cases("memory") == ["hostile_memory_bomb"]
    assert cases("verifies") == ["control_harmless_stateful"]


@pytest.mark.parametrize("command", ["rewrite", "verify", "probe"])
@pytest.mark.parametrize("name", cases("refused"))
def test_side_effect_ops_are_refused(name, command, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.pb"
    target = tmp_path / "target.txt"
    feeds = ["--inputs", "x", "target", "--feed", f"target={target}"] if name == "hostile_write_file" else []
    before = (HOSTILE / f"{name}.pb").read_bytes()
    assert cli.main(commands(name, out)[command] + feeds) == 2
    assert (HOSTILE / f"{name}.pb").read_bytes() == before
    line = one_line_error(capsys)
    (op,) = sidecar(name)["hostile"]["ops"]
    node = {"WriteFile": "write", "ReadFile": "read", "PyFunc": "callback"}[op]
    assert f"{op} ({node}: " in line and "--trust-graph" in line
    assert not out.exists() and not target.exists() and not (tmp_path / WRITTEN).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_refusal_comes_before_feeds_are_made(capsys) -> None:
    """The file name is a string input nothing can fill: the refusal still comes first."""
    assert cli.main(["verify", *[str(HOSTILE / "hostile_write_file.pb")] * 2, "--inputs", "x", "target"]) == 2
    assert "refusing to run the graph" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["rewrite", "verify", "probe"])
def test_endless_loop_stops_at_the_time_limit(command, tmp_path, capsys) -> None:
    out = tmp_path / "out.pb"
    before = (HOSTILE / "hostile_endless_loop.pb").read_bytes()
    assert cli.main(commands("hostile_endless_loop", out)[command] + ["--timeout", "2"]) == 2
    assert (HOSTILE / "hostile_endless_loop.pb").read_bytes() == before
    line = one_line_error(capsys)
    assert "longer than the 2 s time limit" in line and "--timeout SECONDS raises it" in line
    assert not out.exists()


def test_memory_bomb_stops_at_the_memory_limit(tmp_path, monkeypatch, capsys) -> None:
    """64 GiB asked at run time: TensorFlow's allocator fails in the worker. oneDNN's
    allocator first waits 10 s for memory to be freed, twice (measured), which the default
    time limit allows for; the test turns oneDNN off, as it is on many CPUs, to not wait."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    out = tmp_path / "out.pb"
    argv = commands("hostile_memory_bomb", out)["rewrite"] + ["--max-memory", "3.5G"]
    assert cli.main(argv) == 2
    line = one_line_error(capsys)
    assert "more memory than the worker's 3.5 GiB limit" in line and "--max-memory SIZE raises it" in line
    assert not out.exists()
    # the parent and its worker are alive: the next run uses the same worker
    worker = tfrun._worker
    graph = bnrewrite.load_graph(HOSTILE / "control_harmless_stateful.pb")
    assert bnrewrite.verify(graph, graph, Options(max_memory=int(3.5 * (1 << 30)))).passed
    assert tfrun._worker is worker


def test_harmless_stateful_ops_still_verify(tmp_path, capsys) -> None:
    out = tmp_path / "out.pb"
    assert cli.main(commands("control_harmless_stateful", out)["rewrite"] + ["--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (check,) = report["verification"]["outputs"]
    assert check["passed"] and check["max_rel"] < 1e-5
    assert report["verification"]["trusted"] is None and report["op_changes"]["FusedBatchNormV3"] == [1, 0]
    assert out.exists()


def test_trust_graph_runs_the_write(tmp_path, capsys) -> None:
    out, target = tmp_path / "out.pb", tmp_path / "written" / "by_graph.txt"
    target.parent.mkdir()
    argv = commands("hostile_write_file", out)["rewrite"] + [
        "--trust-graph", "--inputs", "x", "target", "--feed", f"target={target}", "--format", "json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["trusted"] == ["WriteFile"]
    assert target.read_text() == "written by a graph" and out.exists()
    target.unlink()
    probe = commands("hostile_write_file", out)["probe"] + ["--trust-graph", "--inputs", "x", "target",
                                                            "--feed", f"target={target}"]
    assert cli.main(probe) == 0
    text = capsys.readouterr().out
    assert "--trust-graph: ran without the side-effect check (side-effect ops: WriteFile)" in text
    assert "probe: out moves by up to 0 " in text and target.exists()


def test_trusted_graph_runs_in_an_empty_directory_without_credentials(tmp_path, monkeypatch) -> None:
    """Its relative file lands in the worker's own temporary directory, never in ours;
    the worker sees no credentials."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("BNREWRITE_TEST_PLAIN", "kept")
    graph = bnrewrite.load_graph(HOSTILE / "hostile_write_file.pb")
    options = Options(trust_graph=True, max_memory=3 << 30)  # a limit of its own: a fresh worker
    assert bnrewrite.verify(graph, graph, options).trusted == ["WriteFile"]
    worker = Path(f"/proc/{tfrun._worker.process.pid}")
    directory = Path(tfrun._worker.directory)
    assert worker.joinpath("cwd").resolve() == directory.resolve()
    assert [p.name for p in directory.iterdir()] == [WRITTEN]
    environ = worker.joinpath("environ").read_bytes().split(b"\0")
    assert b"BNREWRITE_TEST_PLAIN=kept" in environ and not any(e.startswith(b"AWS_") for e in environ)
    assert list(tmp_path.iterdir()) == []
    tfrun._worker.stop()
    assert not directory.exists()


def test_api_errors_are_typed() -> None:
    write = bnrewrite.load_graph(HOSTILE / "hostile_write_file.pb")
    with pytest.raises(bnrewrite.UnsafeGraphError, match="WriteFile"):
        bnrewrite.rewrite(write, verify=bnrewrite.VerifyOptions())
    loop = bnrewrite.load_graph(HOSTILE / "hostile_endless_loop.pb")
    with pytest.raises(bnrewrite.VerifyTimeout):
        bnrewrite.rewrite(loop, verify=bnrewrite.VerifyOptions(timeout=1))
    assert issubclass(bnrewrite.UnsafeGraphError, bnrewrite.CannotVerifyError)
    assert issubclass(bnrewrite.VerifyTimeout, bnrewrite.CannotVerifyError)
    assert issubclass(bnrewrite.VerifyMemoryLimit, bnrewrite.CannotVerifyError)


def test_audit_lists_side_effects(capsys) -> None:
    assert cli.main(["audit", str(HOSTILE), "--format", "json"]) == 0
    reports = {Path(r["graph"]["path"]).stem: r["side_effects"] for r in json.loads(capsys.readouterr().out)}
    assert reports["hostile_write_file"] == [{"op": "WriteFile", "nodes": ["write"], "verdict": "refused",
                                              "why": "reads or writes files", "runs": True}]
    assert reports["hostile_endless_loop"] == reports["hostile_memory_bomb"] == []
    assert {(e["op"], e["verdict"]) for e in reports["control_harmless_stateful"]} == {
        ("Assert", "allowed"), ("RandomUniform", "allowed")}
    assert cli.main(["audit", str(HOSTILE / "hostile_read_file.pb")]) == 0
    assert "side effect: ReadFile (read) reads or writes files: verification refuses" in capsys.readouterr().out


@pytest.mark.parametrize("text, size", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
                                        ("2048", 2048), ("64kb", 64 << 10)])
def test_memory_sizes(text, size) -> None:
    assert cli._size(text) == size


@pytest.mark.parametrize("flag", [["--max-memory", "lots"], ["--max-memory", "0"], ["--timeout", "-3"],
                                  ["--timeout", "nan"]])
def test_bad_limits_are_usage_errors(flag, capsys) -> None:
    assert cli.main(["verify", "a.pb", "b.pb", *flag]) == 2
    assert f"argument {flag[0]}: wants a " in capsys.readouterr().err
