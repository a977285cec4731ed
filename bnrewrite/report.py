"""Reports as dataclasses, rendered to text or JSON; and the one place that decides
exit codes (DESIGN §5: 0 ok, 1 verification failed, 2 bad input or usage).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import BnRewriteError, VerificationError
from .findings import Finding
from .plan import Decision
from .safety import ALLOWED, REFUSED_VERDICT, SideEffect
from .variants import AFFINE

EXIT_OK, EXIT_DIFFERS, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


def exit_code(error: BaseException | None) -> int:
    if error is None:
        return EXIT_OK
    if isinstance(error, VerificationError):
        return EXIT_DIFFERS
    if isinstance(error, BnRewriteError):
        return EXIT_BAD_INPUT
    raise error  # not the user's doing: an internal bug keeps its traceback


@dataclass
class GraphInfo:
    path: str | None
    nodes: int
    producer: int
    inputs: list[str]
    outputs: list[str]


@dataclass
class BatchNormEntry:
    form: str
    output: str
    input: str
    nodes: list[str]
    channels: int | None
    channel_axis: int
    epsilon: float | None
    training: bool
    statistics: str
    host: str | None  # op type of the linear op it folds into
    host_node: str | None
    action: str
    reason: str | None
    detail: str
    gamma: list[float] | None
    beta: list[float] | None
    mean: list[float] | None
    variance: list[float] | None
    shared_weights: bool = False
    direction: str | None = None  # with action fold: backward (into host_node) or forward
    consumers: list[str] = field(default_factory=list)  # forward: the linear ops it folds into
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # y = x * scale + shift per channel, where the parameters above do not say it
    # (form "affine", or a formula whose mean and beta are not separable)
    scale: list[float] | None = None
    shift: list[float] | None = None


@dataclass
class AuditReport:
    graph: GraphInfo
    batch_norms: list[BatchNormEntry]
    probe: list[dict[str, Any]] | None = None  # audit --probe: batch dependence per output
    side_effects: list[SideEffect] = field(default_factory=list)
    trusted: list[str] | None = None  # audit --probe --trust-graph: side-effect ops run unchecked
    catalogue: list[dict[str, Any]] | None = None  # registry.listing(): the variants and hosts looked for
    training_bn: dict[str, Any] | None = None  # rescue.Rescue as a dict: policy, rescued, kept, rescuable

    def summary(self) -> dict[str, int]:
        """Counts; a plain affine (form "affine") is not a batch norm, but its action counts."""
        counts = Counter(entry.action for entry in self.batch_norms)
        affine = sum(entry.form == AFFINE.form for entry in self.batch_norms)
        return {"batch_norms": len(self.batch_norms) - affine, "affine": affine, "fold": counts["fold"],
                "fuse": counts["fuse"], "skip": counts["skip"],
                "training": sum(e.training for e in self.batch_norms)}

    def to_dict(self) -> dict[str, Any]:
        data = {"graph": asdict(self.graph), "summary": self.summary(),
                "batch_norms": [asdict(entry) for entry in self.batch_norms],
                "side_effects": [asdict(effect) for effect in self.side_effects]}
        if self.training_bn is not None:
            data["training_bn"] = self.training_bn
        if self.probe is not None:
            data["probe"] = self.probe
            data["trusted"] = self.trusted
        if self.catalogue is not None:
            data["catalogue"] = self.catalogue
        return data

    def to_text(self) -> str:
        g = self.graph
        s = self.summary()
        lines = [
            f"{g.path or '<graph>'}: {g.nodes} nodes, producer {g.producer}",
            f"  inputs:  {', '.join(g.inputs) or '(none)'}",
            f"  outputs: {', '.join(g.outputs) or '(none)'}",
            f"  {s['batch_norms']} batch norms{_affine(s)}: {s['fold']} fold, {s['fuse']} fuse, "
            f"{s['skip']} skip ({s['training']} training mode)",
        ]
        if self.batch_norms:
            lines.append(_table(
                ("form", "output", "nodes", "C", "epsilon", "mode", "host", "action", "reason"),
                [(e.form, e.output, str(len(e.nodes)), _blank(e.channels), _blank(e.epsilon, "{:g}"),
                  "training" if e.training else "inference", e.host or "-", e.action, e.reason or "-")
                 for e in self.batch_norms]))
        lines.extend(f"  {e.output}: {b['with_set']}" for e in self.batch_norms
                     for b in e.branches.values() if "with_set" in b)
        lines.extend(_side_effect_lines(self.side_effects))
        lines.extend(_training_bn_lines(self.training_bn))
        for p in self.probe or ():
            lines.append(f"  probe: {p['name']} moves by up to {p['max_abs']:.3g} ({p['max_rel']:.3g} of its "
                         f"scale) when a sample runs alone instead of in a batch of {p['batch']}")
        if self.probe is not None and self.trusted is not None:
            lines.append(_trusted_line(self.trusted))
        if self.catalogue is not None:
            lines.append(_catalogue_line(self.catalogue))
        return "\n".join(lines)


@dataclass
class RewriteReport:
    graph: GraphInfo
    mode: str
    batch_norms: list[BatchNormEntry]
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    verification: dict[str, Any] | None = None  # None: not verified
    control_edges_dropped: list[str] = field(default_factory=list)  # "^read -> consumer"
    phase: dict[str, Any] | None = None  # --set / --set-defaults: phase.Resolution as a dict
    target: str = "tf2"  # where the result is going: what unfolded batch norms became
    training_bn: dict[str, Any] | None = None  # rescue.Rescue as a dict: policy, rescued, kept, rescuable

    def op_changes(self) -> dict[str, tuple[int, int]]:
        """Op type -> (count before, count after), for the types whose count changed."""
        ops = sorted(set(self.ops_before) | set(self.ops_after))
        return {op: (self.ops_before.get(op, 0), self.ops_after.get(op, 0)) for op in ops
                if self.ops_before.get(op, 0) != self.ops_after.get(op, 0)}

    def summary(self) -> dict[str, int]:
        return AuditReport(self.graph, self.batch_norms).summary()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        data["op_changes"] = {op: list(counts) for op, counts in self.op_changes().items()}
        return data

    def to_text(self) -> str:
        audit = AuditReport(self.graph, self.batch_norms, training_bn=self.training_bn).to_text().splitlines()
        s = self.summary()
        audit[3] = (f"  {s['batch_norms']} batch norms{_affine(s)}: {s['fold']} folded, {s['fuse']} fused, "
                    f"{s['skip']} left as they were ({s['training']} training mode)")
        lines = audit + [f"  nodes: {self.graph.nodes} -> {self.nodes_after}; target {self.target}"]
        if self.control_edges_dropped:
            shown = self.control_edges_dropped[:3]
            more = len(self.control_edges_dropped) - len(shown)
            lines.append(f"  {len(self.control_edges_dropped)} control edges from constant reads the rewrite "
                         f"made dead were dropped: {', '.join(shown)}{f' and {more} more' if more else ''}")
        if self.phase is not None:
            lines.append(f"  {self.phase['summary']}")
        changes = self.op_changes()
        if changes:
            lines.append(_table(("op", "before", "after"),
                                [(op, str(a), str(b)) for op, (a, b) in changes.items()]))
        if self.verification is None:
            lines.append("  outputs not verified (--no-verify)")
        else:
            lines.append(f"  verified in TensorFlow: {len(self.verification['outputs'])} outputs match")
            if self.phase is not None:
                fed = ", ".join(f"{k}={str(v).lower()}" for k, v in self.phase["values"].items())
                lines.append(f"    compared with the original graph fed {fed}")
            if self.training_bn and self.training_bn["rescued"]:
                lines.append(f"    compared with the original in inference mode for the "
                             f"{len(self.training_bn['rescued'])} batch norms run with their moving statistics")
            lines.extend("    " + line for line in verification_lines(self.verification))
            if self.verification.get("trusted") is not None:
                lines.append(_trusted_line(self.verification["trusted"]))
        return "\n".join(lines)


def _training_bn_lines(rescue: dict[str, Any] | None) -> list[str]:
    """The --training-bn policy, the moving statistics each rescued batch norm now uses,
    and a warning naming how many stay in training mode (rescue.Rescue as a dict)."""
    if rescue is None or not (rescue["rescued"] or rescue["kept"]):
        return []  # nothing in training mode: the policy did nothing to tell (JSON still names it)
    lines = [f"  --training-bn {rescue['policy']}"]
    lines.extend(f"  {bn}: inference mode with its moving statistics {used['mean']}, {used['variance']}"
                 for bn, used in rescue["rescued"].items())
    if rescue["kept"]:
        what = "would make rewrite fail" if rescue["policy"] == "error" else "kept in training mode"
        hint = "" if not rescue["rescuable"] else (
            f"; {len(rescue['rescuable'])} of them have moving statistics wired in, which --training-bn "
            "moving-stats would use to fold them")
        lines.append(f"  warning: {len(rescue['kept'])} training-mode batch norms {what} (first {rescue['kept'][0]}): "
                     f"their outputs depend on the batch{hint}")
    return lines


def verification_lines(verification: dict[str, Any]) -> list[str]:
    """Per output: ok or DIFFERS, the observed difference, the noise and the bound
    (verify.OutputCheck as a dict); then each input's shape and where it came from, and
    how the graphs were run where that matters."""
    lines = []
    for c in verification["outputs"]:
        status = "ok" if c["passed"] else "DIFFERS"
        if c["problem"]:
            lines.append(f"{c['name']}: {status}: {c['problem']}")
            continue
        noise = "" if c["noise"] is None else f"  noise {c['noise']:.3g}"
        lines.append(f"{c['name']}: {status}  max abs {c['max_abs']:.3g} ({c['max_rel']:.3g} of scale){noise}"
                     f"  bound {c['bound']:.3g} = {c['rule']}  ({c['dtype']})")
    notes = [f"input '{name}' {verification['inputs'][name]}: {source}"
             for name, source in verification["shape_sources"].items()]
    if verification["lowered_producer"]:
        notes.append("the original holds BatchNormWithGlobalNormalization: run with producer 8")
    if verification["channels_last"]:
        notes.append(f"{verification['channels_last']} channels-first ops ran channels-last between "
                     "transposes in both graphs: TensorFlow has no CPU kernel for them here")
    if len(verification.get("combinations", ())) > 1:
        flags = ", ".join(verification["combinations"][0])
        notes.append(f"bool inputs {flags}: both graphs ran with each of the "
                     f"{len(verification['combinations'])} combinations of their values")
    return lines + notes + [f"warning: {w}" for w in verification["warnings"]]


def entry(decision: Decision) -> BatchNormEntry:
    f = decision.finding
    host = decision.host
    mapping = f.scale_offset() if f.params() is None else None
    return BatchNormEntry(
        form=f.form, output=f.output, input=f.x, nodes=sorted(f.nodes), channels=f.channels,
        channel_axis=f.channel_axis, training=f.training, statistics=f.statistics,
        host=host.op if host else None, host_node=host.node if host else None,
        epsilon=_shortest(f.epsilon),
        action=decision.action, reason=decision.reason, detail=decision.detail,
        gamma=_floats(f, "gamma"), beta=_floats(f, "beta"), mean=_floats(f, "mean"),
        variance=_floats(f, "variance"), shared_weights=decision.shared_weights,
        direction=decision.direction,
        consumers=[c.node for c in decision.readers.consumers] if decision.readers else [],
        branches={role: {"form": b.form, "output": b.output, "statistics": b.statistics}
                  for role, b in f.branches.items()},
        scale=None if mapping is None else [float(v) for v in mapping[0]],
        shift=None if mapping is None else [float(v) for v in mapping[1]],
    )


def _affine(summary: dict[str, int]) -> str:
    return f" and {summary['affine']} affine" if summary["affine"] else ""


def to_json(reports: list[AuditReport]) -> str:
    """One object for one graph, a list for several (the audit CLI's promise)."""
    data: Any = [r.to_dict() for r in reports]
    return json.dumps(data[0] if len(data) == 1 else data, indent=1, sort_keys=True)


def _catalogue_line(entries: list[dict[str, Any]]) -> str:
    """The core's entries counted, a plugin's named: what a reader checks is that theirs loaded."""
    by_source: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        kinds = by_source.setdefault(e["distribution"], {})
        kinds.setdefault(e["group"].rpartition(".")[2], []).extend(e["registers"])
    parts = []
    for source, kinds in by_source.items():
        core = source.startswith("bnrewrite ")
        parts.append(f"{source}: " + ", ".join(
            f"{len(names)} {kind}" if core else f"{kind} {' '.join(names)}" for kind, names in kinds.items()))
    return f"  catalogue: {'; '.join(parts)}"


def _side_effect_lines(effects: list[SideEffect]) -> list[str]:
    """The refused and unknown ops one per line; the allowed ones (random numbers,
    Assert...) summed up on one."""
    what = {REFUSED_VERDICT: "verification refuses to run it (--trust-graph overrides)",
            "unknown": "verification asks TensorFlow's op registry first"}
    lines = [f"  side effect: {e.op} ({', '.join(e.nodes[:3])}{' ...' if len(e.nodes) > 3 else ''}) "
             f"{e.why}: " + (what[e.verdict] if e.runs else "the outputs do not depend on it")
             for e in effects if e.verdict != ALLOWED]
    allowed: Counter[str] = Counter()
    for e in (e for e in effects if e.verdict == ALLOWED):
        allowed[e.op] += len(e.nodes)
    if allowed:
        lines.append("  stateful ops allowed in verification: " + ", ".join(f"{op} x{n}" for op, n in allowed.items()))
    return lines


def _trusted_line(ops: list[str]) -> str:
    return ("  --trust-graph: ran without the side-effect check"
            + (f" (side-effect ops: {', '.join(ops)})" if ops else " (the graph holds no side-effect ops)"))


def _floats(finding: Finding, role: str) -> list[float] | None:
    vector = finding.vector(role)
    return None if vector is None else [float(v) for v in vector]


def _shortest(value: float | None) -> float | None:
    """Attributes and constants hold float32: report 0.001, not 0.0010000000474974513."""
    return None if value is None else float(str(np.float32(value)))


def _blank(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    render = lambda row: "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    return "\n".join([render(header), render(tuple("-" * w for w in widths)), *map(render, rows)])
