"""Many graphs at once: `audit DIR...` and `rewrite DIR -o OUTDIR`, across a process pool.

One job is one graph. A job that verifies starts its TensorFlow worker (tfrun) inside its
pool process and keeps it for that process's next graphs, so `--jobs N` runs at most N
TensorFlow workers. A graph that cannot be read, rewritten or verified is reported and
skipped, never stops the run; the run's exit code is the worst per-graph code.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import audit, load_graph, rewrite, save_graph
from .errors import BnRewriteError, GraphLoadError
from .report import EXIT_OK, AuditReport, RewriteReport, exit_code
from .verify import Options, unchecked

GRAPH_SUFFIXES = (".pb", ".pbtxt")


@dataclass
class Outcome:
    """What happened to one graph: its report, or the one line that says why not."""
    path: str
    code: int
    report: AuditReport | RewriteReport | None = None
    error: str | None = None
    output: str | None = None  # the file written (rewrite), None when nothing was written

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "output": self.output, "exit_code": self.code, "error": self.error,
                "report": self.report.to_dict() if self.report is not None else None}


def graph_files(models: Sequence[str], exclude: Path | None = None) -> list[Path | GraphLoadError]:
    """Files as given, folders searched recursively for .pb/.pbtxt (sorted, so runs are
    repeatable); `exclude` drops an output folder that lies inside an input folder."""
    found: list[Path | GraphLoadError] = []
    for model in models:
        path = Path(model)
        if not path.is_dir():
            found.append(path)
            continue
        inside = sorted(p for p in path.rglob("*") if p.suffix in GRAPH_SUFFIXES and p.is_file()
                        and not (exclude is not None and p.resolve().is_relative_to(exclude.resolve())))
        found.extend(inside or [GraphLoadError("folder holds no .pb or .pbtxt files", model)])
    return found


def audit_one(path: Path | GraphLoadError, outputs: Sequence[str], probing: Options | None,
              setting: Mapping[str, Any] = {}) -> Outcome:
    """Audit one graph (and probe it in TensorFlow when `probing` is given); `setting`:
    audit's set_values, set_defaults, training_bn and target."""
    label = str(path.path if isinstance(path, GraphLoadError) else path)
    try:
        if isinstance(path, GraphLoadError):
            raise path
        graph = load_graph(path)
        report = audit(graph, label, outputs, **setting)
        if probing is not None:
            from .probe import probe  # runs TensorFlow: an audit without --probe does not load it

            report.probe = [asdict(p) for p in probe(graph, probing)]
            report.trusted = unchecked([graph], list(outputs) or report.graph.outputs, probing)
        return Outcome(label, EXIT_OK, report)
    except BnRewriteError as error:  # the probe's errors learn which file they are about
        return Outcome(label, exit_code(error), error=str(error if error.path else type(error)(error.problem, label)))


def rewrite_one(source: Path, target: Path, mode: str, outputs: Sequence[str],
                options: Options | None, setting: Mapping[str, Any] = {}) -> Outcome:
    """Rewrite (and verify, unless `options` is None) one graph; write `target` only if
    it verified; `setting`: rewrite's set_values, set_defaults, training_bn and target.
    Parent folders of `target` are made as needed."""
    try:
        graph = load_graph(source)
        new_graph, report = rewrite(graph, mode, outputs, str(source), options, **setting)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_graph(new_graph, target)
        return Outcome(str(source), EXIT_OK, report, output=str(target))
    except BnRewriteError as error:
        return Outcome(str(source), exit_code(error), error=str(error))
    except OSError as error:  # the output folder cannot be made or written
        return Outcome(str(source), exit_code(GraphLoadError(str(error))), error=f"{target}: {error}")


def run(tasks: Sequence[tuple[Callable[..., Outcome], tuple]], jobs: int, progress: bool,
        what: str) -> list[Outcome]:
    """Outcomes of `tasks` (function, arguments) in the order given, `jobs` at a time.

    One job runs in this process (no pool to start). Pool processes are forked where the
    platform can, so they start with bnrewrite already imported; this process runs no
    thread that a fork could copy mid-work (the progress bar's monitor is off)."""
    bar = _bar(len(tasks), what) if progress else None
    try:
        if jobs <= 1 or len(tasks) <= 1:
            outcomes = []
            for function, arguments in tasks:
                outcomes.append(function(*arguments))
                _tick(bar, outcomes[-1])
            return outcomes
        import multiprocessing  # a pool's modules load only for a run that uses one
        from concurrent.futures import Future, ProcessPoolExecutor, as_completed

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context) as pool:
            futures: dict[Future, int] = {pool.submit(f, *a): i for i, (f, a) in enumerate(tasks)}
            results: dict[int, Outcome] = {}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    _tick(bar, results[futures[future]])
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            return [results[i] for i in range(len(tasks))]
    finally:
        if bar is not None:
            bar.close()


def default_jobs() -> int:
    """The CPUs this process may use (a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _bar(total: int, what: str) -> Any:
    from tqdm import tqdm  # only a run that shows a bar pays for importing it

    tqdm.monitor_interval = 0  # no monitor thread
    return tqdm(total=total, desc=what, unit="graph", file=sys.stderr, leave=False)


def _tick(bar: Any, outcome: Outcome) -> None:
    if bar is not None:
        bar.set_postfix_str(Path(outcome.path).name, refresh=False)
        bar.update(1)
