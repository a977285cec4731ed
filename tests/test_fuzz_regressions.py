"""Inputs the mutation fuzzer (tools/fuzz.py) found breaking the CLI contract, replayed.

Each fixtures/fuzz/crash_*.json names its input, the command that broke and the outcome a
fix should give. Whatever the fix, the contract holds: exit 0 (rewrite: OUT written), or
exit 2 (exit 1 only when verification ran) with exactly one `bnrewrite: ` line on stderr,
no exception escaping cli.main, no OUT or `.OUT.*.tmp` left behind. Cases that hung or
exhausted memory replay in a child process with a timeout and an address-space cap.
"""
from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
fuzz = importlib.import_module("fuzz")

CASES = sorted((ROOT / "fixtures" / "fuzz").glob("crash_*.json"))
ISOLATE = ("hang", "died", "MemoryError")  # could take the test process down with them


def _check(meta: dict, outcome: str, sig: str | None, result: dict) -> None:
    """exit 1 is allowed only where the sidecar accepts it: verification refusing to write
    a rewrite whose float rounding an ill-conditioned graph amplifies past the tolerance."""
    detail = (result.get("exc") or {}).get("traceback") or result.get("stderr", "")
    allowed = ("ok", "exit2", "exit1") if meta["expected"] == "exit 1" else ("ok", "exit2")
    assert outcome in allowed, (
        f"{meta['signature']}: got {outcome} ({sig}); expected {meta['expected']}\n{detail}")


@pytest.mark.parametrize("sidecar", CASES, ids=[c.stem.removeprefix("crash_") for c in CASES])
def test_fuzz_regression(sidecar: Path, tmp_path: Path) -> None:
    meta = json.loads(sidecar.read_text())
    if meta["signature"].startswith(ISOLATE):
        outcome, sig, result = fuzz.replay(sidecar, timeout=60, mem_gib=4)
    else:
        data = (sidecar.parent / meta["input"]).read_bytes()
        runner = lambda argv, original: fuzz.run_in_process(argv, str(tmp_path / "stderr.txt"), original)
        [(_, outcome, sig, result)] = fuzz.run_case(runner, data, meta["input"].endswith(".pbtxt"),
                                                   [(meta["kind"], meta["command"])], tmp_path / "case")
    _check(meta, outcome, sig, result)


def test_fuzzer_smoke() -> None:
    """30 seeded mutations through audit and rewrite --no-verify, in-process: the mutator
    still produces cases, every outcome is classified, and none of them crashes."""
    outcomes = fuzz.smoke(n=30, seed=0)
    assert len(outcomes) == 60 and all(applied for _, applied, _, _, _ in outcomes)
    assert {outcome for *_, outcome, _ in outcomes} <= {"ok", "exit2", "exit1", "bad-rewrite", "crash", "hang"}
    crashes = [(i, applied, kind, sig) for i, applied, kind, outcome, sig in outcomes if outcome not in ("ok", "exit2")]
    assert not crashes, crashes


@pytest.mark.parametrize("effect", fuzz.SIDE_EFFECTS, ids=[e[0] for e in fuzz.SIDE_EFFECTS])
def test_fuzzer_contract_covers_untrusted_graphs(effect, tmp_path, monkeypatch) -> None:
    """m_side_effect makes a node of a (pruned) fixture wait for a side-effect op: the
    verified rewrite refuses it in one line; one that let it run would be judged a crash."""
    monkeypatch.setattr(fuzz, "SIDE_EFFECTS", [effect])
    graph = fuzz.parse((ROOT / "fixtures" / "fbn_v3_conv_nhwc.pb").read_bytes(), False)
    fuzz.m_side_effect(random.Random(0), graph)
    data = fuzz.dump(graph, False)
    runner = lambda argv, original: fuzz.run_in_process(argv, str(tmp_path / "stderr.txt"), original)
    [(_, outcome, sig, result)] = fuzz.run_case(runner, data, False, [("verify", fuzz.COMMANDS["verify"])],
                                                tmp_path / "case")
    assert (outcome, sig) == ("exit2", None)
    assert "refusing to run the graph" in result["stderr"] and f"{effect[0]} (fuzz_{effect[0]}_" in result["stderr"]
    out = tmp_path / "case" / "out.pb"
    out.write_bytes(data)
    let_through = {"rc": 0, "stderr": "", "exc": None}
    assert fuzz.judge("verify", let_through, out, (tmp_path / "case" / "in.pb", data)) == ("crash", "unsafe-ran@verify")
    assert not fuzz.WRITTEN.exists()
