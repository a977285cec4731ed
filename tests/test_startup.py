"""What a cold `bnrewrite audit` imports. Issue 11 wants it to take at most 1.5x a process
that imports numpy and the protos and parses the graph; tools/bench.py measures that (tests
never time anything). Here: an audit, run in a new process, loads none of what only
verification, --probe, --set or writing a file use, nor the standard-library modules that
cost milliseconds to import and that such a baseline process does not load."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, fixture_path

BASELINE = "import sys, numpy; from tensorboard.compat.proto import graph_pb2; print(*sys.modules)"
AUDIT = ("import contextlib, io, sys; from bnrewrite.cli import main\n"
         "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(sys.argv[1:])\n"
         "print(code, *sys.modules)")
# importlib.metadata: registry.py reads entry points itself; importlib.resources and zipfile:
# safety.py reads its data with pkgutil; tempfile and subprocess: saving a graph and the
# TensorFlow worker import them; phase: --set and learning-phase conds; probe: --probe.
UNUSED = {"tensorflow", "bnrewrite.probe", "bnrewrite.phase", "importlib.metadata", "importlib.resources",
          "zipfile", "email", "tempfile", "subprocess"}


def _modules(code: str, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_cold_audit_imports_only_what_it_uses():
    baseline = set(_modules(BASELINE))
    code, *loaded = _modules(AUDIT, "audit", str(fixture_path("trap_mixed_forms")))
    assert code == "0" and "bnrewrite.findings" in loaded
    assert sorted((set(loaded) - baseline) & UNUSED) == []


def test_the_verify_module_imported_late_leaves_the_verify_function():
    """The package imports verify.py itself, before defining the public bnrewrite.verify:
    the import system names each submodule it loads on its package, so importing verify.py
    only when something first verifies (to spare an audit) would replace that function."""
    code = ("import bnrewrite; from bnrewrite.verify import Options, compare; "
            "print(callable(bnrewrite.verify), bnrewrite.VerifyOptions is Options, callable(compare))")
    assert _modules(code) == ["True", "True", "True"]
