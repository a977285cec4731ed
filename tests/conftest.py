"""Shared test helpers: paths, a tiny GraphDef builder, and running the CLI in-process."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tensorboard.compat.proto import graph_pb2, types_pb2

from bnrewrite.nodes import set_attrs

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SHARED_REALGRAPHS = ROOT.parent / "shared" / "realgraphs"


def realgraphs_dir() -> Path | None:
    """The real frozen graphs (../shared/realgraphs/MANIFEST.md): $BNREWRITE_REALGRAPHS,
    else ../shared/realgraphs beside the repository; None if neither exists."""
    folder = Path(os.environ.get("BNREWRITE_REALGRAPHS") or SHARED_REALGRAPHS)
    return folder if folder.is_dir() else None


def fixture_cases() -> list[str]:
    return sorted(p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json"))


def fixture_path(name: str) -> Path:
    for suffix in (".pb", ".pbtxt"):
        if (FIXTURES / (name + suffix)).exists():
            return FIXTURES / (name + suffix)
    raise FileNotFoundError(name)


def expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


class Builder:
    """Hand-built GraphDefs for cases no generator should produce (broken graphs)."""

    def __init__(self) -> None:
        self.graph = graph_pb2.GraphDef()

    def node(self, name: str, op: str, *inputs: str, **attrs) -> "Builder":
        set_attrs(self.graph.node.add(name=name, op=op, input=list(inputs)), **attrs)
        return self

    def const(self, name: str, value) -> "Builder":
        array = np.asarray(value, dtype=np.float32)
        return self.node(name, "Const", value=array, dtype=types_pb2.DT_FLOAT)


@pytest.fixture
def builder() -> Builder:
    return Builder()


@pytest.fixture(scope="session")
def realgraphs() -> Path:
    """Skipped where the real graphs are absent (a lone clone); CI sets
    BNREWRITE_REQUIRE_REALGRAPHS=1, which turns that skip into a failure."""
    folder = realgraphs_dir()
    if folder is None:
        where = (f"put the real graphs in {SHARED_REALGRAPHS} or name their folder in "
                 f"BNREWRITE_REALGRAPHS (README: 'Set-up for development')")
        if os.environ.get("BNREWRITE_REQUIRE_REALGRAPHS") == "1":
            pytest.fail(f"real graphs required (BNREWRITE_REQUIRE_REALGRAPHS=1): {where}")
        pytest.skip(f"real graphs not found: {where}")
    return folder
