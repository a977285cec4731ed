"""Long run of the property suite (tests/test_properties.py): thousands of random graphs.

    python tools/property_long.py [--examples 3000] [--seed N]

CI runs the same test with 40 fixed examples; this draws fresh ones (a new seed each run
unless --seed is given) and prints hypothesis's statistics. A failure prints the smallest
graph spec that breaks a property; add it to the catalogue fixtures or the tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    env = dict(os.environ, BNREWRITE_PROPERTY_EXAMPLES=str(args.examples))
    command = [sys.executable, "-m", "pytest", "-q", "-x", "--hypothesis-show-statistics",
               str(ROOT / "tests" / "test_properties.py")]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
