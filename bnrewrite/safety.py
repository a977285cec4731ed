"""Which ops a graph may run during verification: a frozen graph is a program (DESIGN §5).

Before any graph is run, every op the fetched outputs depend on (through data and control
edges, and inside the function-library bodies those ops call) gets a verdict, from data:
- REFUSED patterns first: ops that reach outside the process (files, Python, summaries,
  checkpoints, debug dumps, input pipelines, the network), whatever TensorFlow's op
  registry says: ReadFile and MatchingFiles, for one, are not marked stateful there;
- then TensorFlow's op registry (data/op_registry.json, written by tools/make_op_registry.py,
  so `audit` needs no TensorFlow): a stateless op is pure;
- a stateful op runs only if HARMLESS lists it: its state lives and dies in the session;
- an op the registry file does not know is "unknown": the worker asks its live registry.
`--trust-graph` skips the check; the audit lists the same verdicts without running anything.
"""
from __future__ import annotations

import fnmatch
import json
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

from . import names
from .errors import UnsafeGraphError

REFUSED = {
    "reads or writes files": ("*File*", "*Reader*", "ImmutableConst", "GenerateVocabRemapping",
                              "DecodeProtoV2", "EncodeProto"),  # the last two: descriptor_source
    "reads or writes checkpoints": ("Save*", "Restore*", "MergeV2Checkpoints", "*Checkpoint*",
                                    "LoadAndRemapMatrix"),
    "calls Python": ("PyFunc", "PyFuncStateless", "EagerPyFunc"),
    "writes summaries": ("*Summary*",),
    "prints (PrintV2 can print to a file)": ("PrintV2",),
    "debug dumps": ("Debug*", "Copy", "CopyHost"),  # Copy*: debug_ops_spec URLs
    "runs an input pipeline": ("*Dataset*", "*Iterator*"),
    "talks to other processes": ("*Rpc*", "_Send", "_Recv", "_HostSend", "_HostRecv", "Collective*"),
}
HARMLESS = {
    "random numbers": ("RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
                       "ParameterizedTruncatedNormal", "RandomShuffle", "RandomGamma", "RandomPoisson",
                       "RandomPoissonV2", "Multinomial", "RandomCrop"),
    "inputs and checks": ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "NoOp",
                          "ControlTrigger", "Assert", "CheckNumerics", "CheckNumericsV2"),
    "logs to the worker's stderr (discarded)": ("Print",),  # tf.Print, left inline in old graphs
    "v1 control flow": ("Enter", "RefEnter", "Exit", "RefExit", "NextIteration", "RefNextIteration",
                        "LoopCond", "Switch", "RefSwitch", "Merge", "RefMerge"),
    "in-memory arrays": ("TensorArray*", "Stack", "StackV2", "StackPush", "StackPushV2", "StackPop",
                         "StackPopV2", "StackClose", "StackCloseV2"),
    "function calls (bodies checked)": ("While", "If", "Case", "StatefulPartitionedCall"),
}
REFUSED_VERDICT, ALLOWED, UNKNOWN = "refused", "allowed", "unknown"


@dataclass(frozen=True)
class SideEffect:
    """Nodes of one op type that is not pure, and what verification does with them."""
    op: str
    nodes: tuple[str, ...]
    verdict: str  # refused | allowed | unknown (asked of TensorFlow's registry before running)
    why: str
    runs: bool  # the outputs depend on it: verification would run it


def matches(op: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(op, pattern) for pattern in patterns)


@lru_cache(maxsize=None)
def _registry() -> dict[str, bool]:
    # pkgutil, not importlib.resources: that costs 4-5 ms (it imports zipfile) of every audit
    data = json.loads(pkgutil.get_data(__package__, "data/op_registry.json"))
    return {**dict.fromkeys(data["stateless"], False), **dict.fromkeys(data["stateful"], True)}


@lru_cache(maxsize=None)
def verdict(op: str) -> tuple[str, str] | None:
    """(verdict, why) for an op with side effects, None for a pure one."""
    for why, patterns in REFUSED.items():
        if matches(op, patterns):
            return REFUSED_VERDICT, why
    stateful = _registry().get(op)
    if stateful is False:
        return None
    for why, patterns in HARMLESS.items():
        if matches(op, patterns):
            return ALLOWED, why
    if stateful is None:
        return UNKNOWN, "not in TensorFlow's op registry file"
    return REFUSED_VERDICT, "has state beyond the session (stateful in TensorFlow's op registry)"


def side_effects(graph: Any, outputs: Sequence[str]) -> list[SideEffect]:
    """Every op in `graph` (and its function library) that is not pure, marked with
    whether `outputs` depend on it."""
    functions = {f.signature.name for f in graph.library.function}
    found = [(scope, node) for scope, node in _all_nodes(graph)
             if node.op not in functions and verdict(node.op) is not None]
    running = {(scope, node.name) for scope, node in _reached(graph, outputs)} if found else set()
    grouped: dict[tuple[str, bool], list[str]] = {}
    for scope, node in found:
        grouped.setdefault((node.op, (scope, node.name) in running), []).append(_label(scope, node))
    return [SideEffect(op, tuple(nodes), *verdict(op), runs) for (op, runs), nodes in sorted(grouped.items())]


def check(graph: Any, fetches: Sequence[str]) -> tuple[str, ...]:
    """Raise UnsafeGraphError if running `fetches` would run a refused op; return the
    unknown ops the worker must find stateless in TensorFlow's live registry."""
    effects = [e for e in side_effects(graph, fetches) if e.runs]
    refused = [e for e in effects if e.verdict == REFUSED_VERDICT]
    if refused:
        raise UnsafeGraphError(describe(refused))
    return tuple(e.op for e in effects if e.verdict == UNKNOWN)


def describe(effects: Sequence[SideEffect], limit: int = 3) -> str:
    """One line: the refused ops, their nodes, why, and how to run them anyway."""
    parts = []
    for e in effects:
        shown = ", ".join(e.nodes[:limit]) + (f" and {len(e.nodes) - limit} more" if len(e.nodes) > limit else "")
        parts.append(f"{e.op} ({shown}: {e.why})")
    return ("refusing to run the graph, it holds side-effect ops: " + "; ".join(parts)
            + " (--trust-graph runs it anyway)")


def _reached(graph: Any, outputs: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(scope, node) for every node the outputs depend on, then every node of every
    function those call (scope: the function's name), transitively."""
    by_name = {node.name: node for node in graph.node}
    todo, seen = [names.node_of(output) for output in outputs], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        yield "", by_name[name]
        todo.extend(names.node_of(ref) for ref in by_name[name].input)
    functions = {f.signature.name: f for f in graph.library.function}
    calls, called = [f for name in seen for f in _calls(by_name[name], functions)], set()
    while calls:
        function = calls.pop()
        if function in called:
            continue
        called.add(function)
        for node in functions[function].node_def:
            yield function, node
            calls.extend(_calls(node, functions))


def _calls(node: Any, functions: dict[str, Any]) -> list[str]:
    """Library functions a node runs: as its op, or named in a func / list(func) attr."""
    named = [node.op] + [value.func.name for value in node.attr.values()] + [
        f.name for value in node.attr.values() for f in value.list.func]
    return [name for name in named if name in functions]


def _all_nodes(graph: Any) -> Iterator[tuple[str, Any]]:
    yield from (("", node) for node in graph.node)
    for function in graph.library.function:
        yield from ((function.signature.name, node) for node in function.node_def)


def _label(scope: str, node: Any) -> str:
    return f"{scope}/{node.name}" if scope else node.name
