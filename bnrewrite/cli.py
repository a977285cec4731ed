"""Command line: `bnrewrite audit|rewrite|verify`. main(argv) -> exit code (see
report.py). User errors end in one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__, load_graph, registry, rewrite, save_graph, tfrun, verify, zoo
from .errors import BnRewriteError, CannotVerifyError
from .plan import TARGETS
from .rescue import POLICIES
from .report import EXIT_BAD_INPUT, EXIT_DIFFERS, EXIT_INTERRUPTED, EXIT_OK, exit_code, to_json, verification_lines
from .verify import BASE_TIMEOUT, DEFAULT_BATCH, TIMEOUT_PER_NODE, Options


class UsageError(BnRewriteError):
    """A flag's value is malformed (exit 2, like any bad input)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    try:
        registry.listing()  # a broken plugin is one line before any work, not one per graph
        return args.run(args)
    except BnRewriteError as error:
        return _complain(error)
    except BrokenPipeError:  # `bnrewrite audit ... | head` is not an error
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:  # nothing half-written: save_graph renames only when complete
        print("bnrewrite: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnrewrite",
        description="Audit and rewrite batch normalization in TensorFlow 1 frozen graphs.",
        epilog="Exit codes: 0 ok, 1 verification failed, 2 bad input or usage.")
    parser.add_argument("--version", action="version", version=f"bnrewrite {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser(
        "audit", help="list every batch norm and what the rewrite would do with it",
        description="List every batch norm in each graph: its form, nodes, channels, epsilon, "
                    "mode, the op it would fold into, and the action and reason.")
    cmd.add_argument("models", nargs="+", metavar="MODEL",
                     help=".pb/.pbtxt files, or folders searched recursively for them")
    cmd.add_argument("--format", choices=("text", "json"), default="text")
    cmd.add_argument("--probe", action="store_true",
                     help="run each graph in TensorFlow: how much does a sample's output change when "
                          "it runs alone instead of in a batch (frozen training-mode batch norms)")
    _feed_flags(cmd)
    _set_flags(cmd)
    _limit_flags(cmd)
    _jobs_flag(cmd)
    cmd.set_defaults(run=_audit)

    cmd = commands.add_parser(
        "rewrite", help="fold batch norms into the ops before them, fuse the rest",
        description="Rewrite a graph's batch norms, check in TensorFlow that every output is "
                    "unchanged, and only then write OUT (atomically). IN may be a folder: every "
                    ".pb/.pbtxt below it is rewritten to the same relative path below OUT.")
    cmd.add_argument("model", metavar="IN", help="a .pb/.pbtxt file, or a folder of them")
    cmd.add_argument("-o", "--output", required=True, metavar="OUT",
                     help=".pb or .pbtxt to write (a folder when IN is one)")
    cmd.add_argument("--mode", choices=("fold", "fuse"), default="fold",
                     help="fold: into weights where possible (default); fuse: FusedBatchNormV3 only")
    cmd.add_argument("--in-place", action="store_true", help="allow OUT to be IN")
    cmd.add_argument("--no-verify", action="store_true", help="skip running both graphs in TensorFlow")
    cmd.add_argument("--format", choices=("text", "json"), default="text")
    _feed_flags(cmd)
    _set_flags(cmd)
    _tolerance_flags(cmd)
    _limit_flags(cmd)
    _jobs_flag(cmd)
    cmd.set_defaults(run=_rewrite)

    cmd = commands.add_parser(
        "verify", help="run two graphs on the same inputs and compare their outputs",
        description="Exit 0 if every output matches, 1 if not, 2 if they cannot be run.")
    cmd.add_argument("original", metavar="ORIGINAL")
    cmd.add_argument("rewritten", metavar="REWRITTEN")
    cmd.add_argument("--format", choices=("text", "json"), default="text")
    _feed_flags(cmd)
    _tolerance_flags(cmd)
    _limit_flags(cmd)
    cmd.set_defaults(run=_verify)
    return parser


def _feed_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--inputs", nargs="+", default=[], metavar="NAME",
                     help="placeholders to feed (default: every Placeholder)")
    cmd.add_argument("--outputs", nargs="+", default=[], metavar="NAME",
                     help="tensors to compare and keep (default: nodes nothing consumes)")
    cmd.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                     help=f"size of an unknown batch dimension (default {DEFAULT_BATCH}); other unknown "
                          "dimensions follow the graph (see the report)")
    cmd.add_argument("--input-shape", action="append", default=[], metavar="NAME=D,D,...",
                     help="shape of one input, e.g. image=1,368,432,3")
    cmd.add_argument("--feed", action="append", default=[], metavar="NAME=VALUE",
                     help="value of one input: a number, true/false, a .npy file, @FILE for its "
                          "bytes as a string (e.g. wav_data=@speech.wav), or text")
    cmd.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _set_flags(cmd: argparse.ArgumentParser) -> None:
    """What shapes the plan, so `audit` with the same flags says what `rewrite` does."""
    cmd.add_argument("--target", choices=tuple(TARGETS), default="tf2",
                     help="what an unfolded batch norm becomes, so the result loads there: tf2 "
                          "FusedBatchNormV3 (default), tf1 FusedBatchNorm, tflite and onnx what "
                          "their converters map cleanly")
    cmd.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="set_values",
                     help="make a placeholder a constant (bool, int or float), e.g. keras_learning_phase=0, "
                          "and resolve the tf.conds it decides (verification feeds it to the original)")
    cmd.add_argument("--set-defaults", action="store_true",
                     help="make every PlaceholderWithDefault its default value, as --set does")
    cmd.add_argument("--training-bn", choices=POLICIES, default="keep",
                     help="training-mode batch norms: keep them in training mode with a warning (default), "
                          "error (exit 2) if one would remain, or moving-stats: a fused one whose moving "
                          "statistics are wired in runs in inference mode with them and folds (verified "
                          "against the original in inference mode)")


def _setting(args: argparse.Namespace) -> dict[str, Any]:
    return {"set_values": dict(_split(spec, "--set") for spec in args.set_values),
            "set_defaults": args.set_defaults, "training_bn": args.training_bn, "target": args.target}


def _jobs_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-j", "--jobs", type=int, default=zoo.default_jobs(), metavar="N",
                     help="graphs processed at once, each verifying in its own TensorFlow worker "
                          "(default: the number of CPUs)")


def _tolerance_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--rtol", type=float, help="accept max|a-b| <= atol + rtol x max|a| instead of the "
                                                "bound calibrated on the graph's own rounding noise")
    cmd.add_argument("--atol", type=float, help="absolute tolerance (with --rtol; each defaults by dtype)")


def _limit_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--trust-graph", action="store_true",
                     help="run the graph even if it holds ops with side effects (files, Python, ...): "
                          "only for graphs you trust")
    cmd.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                     help=f"time limit per run of a graph (default {BASE_TIMEOUT:g} s + "
                          f"{TIMEOUT_PER_NODE:g} s per node)")
    cmd.add_argument("--max-memory", type=_size, metavar="SIZE",
                     help="memory limit of the TensorFlow worker, e.g. 4G or 512M "
                          "(default: half the machine's memory)")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"wants a positive number of seconds, got '{value}'")
    return seconds


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(value: str) -> int:
    """Bytes from "4G", "512M", "1.5GiB" or a plain number."""
    number = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    try:
        size = float(number.removesuffix(unit)) * SIZE_UNITS[unit]
    except ValueError:
        size = 0.0
    if not 1 <= size < float("inf"):
        raise argparse.ArgumentTypeError(f"wants a size such as 4G or 512M, got '{value}'")
    return int(size)


def _audit(args: argparse.Namespace) -> int:
    if args.probe:
        _need_tensorflow(" ".join(args.models), "and --probe runs each graph in it", " (audit without --probe needs none)")
    probing = _options(args) if args.probe else None
    tasks = [(zoo.audit_one, (path, args.outputs, probing, _setting(args))) for path in zoo.graph_files(args.models)]
    outcomes = zoo.run(tasks, args.jobs, _show_progress(args) and len(tasks) > 1, "auditing")
    for outcome in outcomes:
        if outcome.error:
            print(f"bnrewrite: {outcome.error}", file=sys.stderr)
    reports = [outcome.report for outcome in outcomes if outcome.report is not None]
    if reports:
        print(to_json(reports) if args.format == "json" else
              "\n\n".join(report.to_text() for report in reports))
    return max(outcome.code for outcome in outcomes)


def _rewrite(args: argparse.Namespace) -> int:
    source, target = Path(args.model), Path(args.output)
    if not args.no_verify:
        _need_tensorflow(args.model, "so the rewrite cannot be verified",
                         ", or pass --no-verify to write it unverified")
    if source.is_dir():
        return _rewrite_folder(args, source, target)
    if not args.in_place and target.exists() and source.exists() and target.samefile(source):
        raise UsageError("-o names the input itself; pass --in-place to replace it", args.output)
    graph = load_graph(source)
    options = None if args.no_verify else _options(args)
    _progress(args, "rewriting" + ("" if args.no_verify else " and verifying in TensorFlow"))
    try:
        new_graph, report = rewrite(graph, args.mode, args.outputs, str(source), options, **_setting(args))
    except CannotVerifyError as error:
        raise CannotVerifyError(f"{error.problem} (--no-verify skips the check)", error.path) from None
    del graph  # the original's memory, for the serialised result
    save_graph(new_graph, target)
    _print(args, report.to_dict, lambda: report.to_text() + f"\n  wrote {target}")
    return EXIT_OK


def _rewrite_folder(args: argparse.Namespace, source: Path, target: Path) -> int:
    """Every graph below `source` to the same relative path below `target`; a graph that
    fails is reported and skipped, and the exit code is the worst of them."""
    if target.exists() and not target.is_dir():
        raise UsageError("IN is a folder, so -o must name a folder", args.output)
    if target.resolve() == source.resolve() and not args.in_place:
        raise UsageError("-o names the input folder itself; pass --in-place to replace its graphs",
                         args.output)
    options = None if args.no_verify else _options(args)
    tasks = []
    for path in zoo.graph_files([str(source)], exclude=None if args.in_place else target):
        if isinstance(path, BnRewriteError):
            raise path
        tasks.append((zoo.rewrite_one, (path, target / path.relative_to(source), args.mode,
                                        args.outputs, options, _setting(args))))
    outcomes = zoo.run(tasks, args.jobs, _show_progress(args), "rewriting")
    lines = []
    for outcome in outcomes:
        if outcome.report is not None:
            s = outcome.report.summary()
            lines.append(f"ok       {outcome.path} -> {outcome.output}: {s['fold']} folded, {s['fuse']} fused, "
                         f"{s['skip']} left; " + ("not verified" if options is None else "verified"))
        else:
            lines.append(f"exit {outcome.code}   {outcome.error}")
    written = sum(outcome.output is not None for outcome in outcomes)
    summary = {"graphs": len(outcomes), "written": written,
               "verification_failed": sum(outcome.code == EXIT_DIFFERS for outcome in outcomes),
               "bad_input": sum(outcome.code == EXIT_BAD_INPUT for outcome in outcomes)}
    lines.append(f"{summary['graphs']} graphs: {written} written, {summary['verification_failed']} "
                 f"failed verification, {summary['bad_input']} could not be read, rewritten or verified")
    _print(args, lambda: {"graphs": [outcome.to_dict() for outcome in outcomes], "summary": summary},
           lambda: "\n".join(lines))
    return max(outcome.code for outcome in outcomes)


def _verify(args: argparse.Namespace) -> int:
    both = f"{args.original}, {args.rewritten}"
    _need_tensorflow(both, "and verify runs both graphs in it", " (audit and rewrite --no-verify work without it)")
    original, rewritten = load_graph(args.original), load_graph(args.rewritten)
    _progress(args, "running both graphs in TensorFlow")
    try:
        result = verify(original, rewritten, _options(args))
    except CannotVerifyError as error:
        raise CannotVerifyError(f"{error.problem} (--input-shape and --feed choose the inputs)", both) from None
    data = {**asdict(result), "passed": result.passed}
    lines = verification_lines(data)
    if result.trusted is not None:
        lines.append(f"(--trust-graph: side-effect ops ran unchecked: {', '.join(result.trusted) or 'none'})")
    _print(args, lambda: data, lambda: "\n".join(lines + [result.describe()]))
    return EXIT_OK if result.passed else EXIT_DIFFERS


def _need_tensorflow(path: str, why: str, otherwise: str) -> None:
    """Checked before any work, without importing TensorFlow (DESIGN §6)."""
    if not tfrun.available():
        raise CannotVerifyError(f"TensorFlow is not installed, {why}: pip install 'bnrewrite[tensorflow]'{otherwise}",
                                path)


def _options(args: argparse.Namespace) -> Options:
    return Options(inputs=args.inputs, outputs=args.outputs, batch=args.batch,
                   shapes=dict(_shape(spec) for spec in args.input_shape),
                   values=dict(_feed(spec) for spec in args.feed),
                   rtol=getattr(args, "rtol", None), atol=getattr(args, "atol", None),
                   trust_graph=args.trust_graph, timeout=args.timeout, max_memory=args.max_memory)


def _split(spec: str, flag: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise UsageError(f"{flag} wants NAME=VALUE, got '{spec}'")
    return name, value


def _shape(spec: str) -> tuple[str, list[int]]:
    name, value = _split(spec, "--input-shape")
    try:
        return name, [int(d) for d in value.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape wants NAME=D,D,..., got '{spec}'") from None


def _feed(spec: str) -> tuple[str, Any]:
    name, value = _split(spec, "--feed")
    try:
        if value.startswith("@"):
            return name, np.array(Path(value[1:]).read_bytes(), dtype=object)
        if value.endswith(".npy"):
            return name, np.load(value, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--feed {name}: cannot read {value.lstrip('@')}: {error}") from None
    if value.lower() in ("true", "false"):
        return name, np.array(value.lower() == "true")
    for kind in (int, float):
        try:
            return name, np.array(kind(value))
        except ValueError:
            pass
    return name, np.array(value.encode(), dtype=object)


def _print(args: argparse.Namespace, data: Callable[[], dict], text: Callable[[], str]) -> None:
    """Only the format asked for is built: a 50k-node graph's JSON report takes a second."""
    print(json.dumps(data(), indent=1, sort_keys=True) if args.format == "json" else text())


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _progress(args: argparse.Namespace, what: str) -> None:
    if _show_progress(args):
        print(f"bnrewrite: {what}...", file=sys.stderr)


def _complain(error: BnRewriteError) -> int:
    print(f"bnrewrite: {error}", file=sys.stderr)
    return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
