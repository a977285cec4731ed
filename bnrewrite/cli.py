"""Command line: `bnrewrite audit MODEL...`. main(argv) -> exit code; see report.py
for the codes. User errors end in one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__, audit, load_graph
from .errors import BnRewriteError, GraphLoadError
from .report import EXIT_BAD_INPUT, AuditReport, exit_code, to_json

GRAPH_SUFFIXES = (".pb", ".pbtxt")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return EXIT_BAD_INPUT if exc.code else 0
    try:
        return args.run(args)
    except BrokenPipeError:  # `bnrewrite audit ... | head` is not an error
        sys.stdout = open(os.devnull, "w")
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnrewrite",
        description="Audit and rewrite batch normalization in TensorFlow 1 frozen graphs.",
        epilog="Exit codes: 0 ok, 1 verification failed, 2 bad input or usage.")
    parser.add_argument("--version", action="version", version=f"bnrewrite {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    audit_cmd = commands.add_parser(
        "audit", help="list every batch norm and what the rewrite would do with it",
        description="List every batch norm in each graph: its form, nodes, channels, epsilon, "
                    "mode, the op it would fold into, and the action and reason.")
    audit_cmd.add_argument("models", nargs="+", metavar="MODEL",
                           help=".pb/.pbtxt files, or folders searched recursively for them")
    audit_cmd.add_argument("--format", choices=("text", "json"), default="text")
    audit_cmd.set_defaults(run=_audit)
    return parser


def _audit(args: argparse.Namespace) -> int:
    reports: list[AuditReport] = []
    status = 0
    for path in _graph_files(args.models):
        try:
            if isinstance(path, GraphLoadError):
                raise path
            reports.append(audit(load_graph(path), str(path)))
        except BnRewriteError as error:
            status = max(status, _complain(error))
    if args.format == "json":
        if reports:
            print(to_json(reports))
    else:
        print("\n\n".join(report.to_text() for report in reports))
    return status


def _graph_files(models: Sequence[str]) -> list[Path | GraphLoadError]:
    found: list[Path | GraphLoadError] = []
    for model in models:
        path = Path(model)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix in GRAPH_SUFFIXES and p.is_file())
            found.extend(inside or [GraphLoadError("folder holds no .pb or .pbtxt files", model)])
        else:
            found.append(path)
    return found


def _complain(error: BnRewriteError) -> int:
    print(f"bnrewrite: {error}", file=sys.stderr)
    return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
