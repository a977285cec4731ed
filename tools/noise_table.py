"""The calibrated tolerance on real graphs: per output, the noise floor (how far the
original moves with its constants one ulp off), the bound, and the rewrite's observed
difference, in text (a Markdown table) or JSON.

    python tools/noise_table.py [--realgraphs DIR] [--format json]

The KWS graphs decode a WAV inside the graph; they are fed the synthetic one the tests use.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import bnrewrite  # noqa: E402
from bnrewrite.verify import Options  # noqa: E402
from conftest import realgraphs_dir  # noqa: E402
from test_realgraphs_rewrite import CASES  # noqa: E402


def measure(folder: Path) -> list[dict]:
    rows = []
    for name, (options, _, _) in sorted(CASES.items()):
        graph = bnrewrite.load_graph(folder / name)
        rewritten, report = bnrewrite.rewrite(graph)
        result = bnrewrite.verify(graph, rewritten, Options(**options))
        for check in result.outputs:
            rows.append({"graph": name, "folded": report.summary()["fold"], "output": check.name,
                         "dtype": check.dtype, "scale": check.scale, "noise": check.noise, "bound": check.bound,
                         "observed": check.max_abs, "passed": check.passed})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realgraphs", type=Path, default=None)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    folder = args.realgraphs or realgraphs_dir()
    if folder is None:
        parser.error("no real graphs: pass --realgraphs DIR or set BNREWRITE_REALGRAPHS")
    rows = measure(folder)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    print(f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(default: on)')}; noise, bound and observed "
          "difference relative to the output's scale")
    print("| graph | folded | output | dtype | scale | noise | bound | observed |")
    print("|---|---|---|---|---|---|---|---|")
    rel = lambda r, key: "-" if r[key] is None else f"{r[key] / r['scale']:.2g}" if r["scale"] else f"{r[key]:.2g}"
    for r in rows:
        print(f"| `{r['graph']}` | {r['folded']} | `{r['output']}` | {r['dtype']} | {r['scale']:.3g} | "
              f"{rel(r, 'noise')} | {rel(r, 'bound')} | {rel(r, 'observed')} |")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
