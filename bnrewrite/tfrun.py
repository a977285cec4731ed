"""Run GraphDefs in TensorFlow, in a worker process: the only module that imports it.

TensorFlow aborts the whole process on some malformed graphs (a C++ CHECK failure,
signal 6), and writes its C++ logs straight to file descriptor 2. Both stay in a
child: `python -m bnrewrite.tfrun` serves run requests over its stdin/stdout, with its
stderr discarded. The worker is started on first use and kept for later calls (one
TensorFlow import per process); if it dies, the call raises CannotVerifyError and the
next call starts a new one.

NCHW convolutions have CPU kernels only through oneDNN (DESIGN §7): the worker turns it on
unless the user set TF_ENABLE_ONEDNN_OPTS; verify.py handles CPUs where that is not enough.
Whether TensorFlow is installed is checked here without importing it (find_spec).
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import pickle
import re
import struct
import subprocess
import sys
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np

from . import names
from .errors import CannotVerifyError, GraphRunError

_worker: subprocess.Popen | None = None
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
MISSING = ("TensorFlow is not installed, so nothing can be verified: pip install 'bnrewrite[tensorflow]', "
           "or skip verification (--no-verify; verify=None in the API)")


def available() -> bool:
    """Is TensorFlow installed? Answered without importing it (that takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def onednn_off() -> bool:
    """Did the user turn oneDNN off for the worker? (Unset: the worker turns it on.)"""
    return os.environ.get(ONEDNN, "1").strip().lower() in ("0", "false")


def run(graph: bytes, feeds: Mapping[str, np.ndarray], fetches: Sequence[str],
        label: str = "the graph") -> list[np.ndarray]:
    """Outputs `fetches` of the serialized GraphDef `graph`, fed `feeds`. Errors name the
    graph by `label` and carry TensorFlow's reason."""
    global _worker
    if not available():
        raise CannotVerifyError(MISSING)
    if _worker is None or _worker.poll() is not None:
        env = {ONEDNN: "1", **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        _worker = subprocess.Popen([sys.executable, "-m", "bnrewrite.tfrun"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        _send(_worker.stdin, (graph, dict(feeds), list(fetches)))
        status, payload = _receive(_worker.stdout)
    except (BrokenPipeError, EOFError, struct.error):
        code = _worker.wait()
        _worker = None
        what = f"signal {-code}" if code < 0 else f"exit {code}"
        raise CannotVerifyError(f"TensorFlow crashed ({what}) running {label}") from None
    if status != "ok":
        raise GraphRunError(f"TensorFlow cannot run {label}: {reason(*payload)}")
    return payload


# Lines of TensorFlow's messages that say where, not why: its headline, the Python stack
# of whoever built the graph, and the node (read separately).
_NOISE = re.compile(r"^(Graph execution error:|Detected at node|Node: |<stack trace unavailable>|File \"|"
                    r"\[\[.*\]\]$)")
LONG = 160
_NODE = re.compile(r"\[\[(?:\{\{)?(?:node )?([^\]{}]+?)(?:\}\})?\]\]|^Node: '([^']+)'")


def reason(kind: str, message: str) -> str:
    """The informative part of a TensorFlow error: its status (from the class of an
    OpError, UnimplementedError -> UNIMPLEMENTED; `kind` is empty for errors raised while
    importing the graph), the first line that says why, and the node."""
    lines = [line.strip() for line in message.splitlines()]
    why = next((line for line in lines if line and not _NOISE.match(line)), "")
    if len(why) > LONG:  # the reason, then advice about tf.contrib and the like
        why = re.split(r"(?<=\.) (?=[A-Z])", why, maxsplit=1)[0]
    node = next((m.group(1) or m.group(2) for m in map(_NODE.search, lines) if m), None)
    status = re.sub(r"(?<!^)(?=[A-Z])", "_", kind.removesuffix("Error")).upper()
    text = ": ".join(part for part in (status, why) if part) or "no reason given"
    named = node and (f"node {node}" in why or f"'{node}'" in why)
    return f"{text} [[node {node}]]" if node and not named else text


@atexit.register
def _stop() -> None:
    if _worker is not None and _worker.poll() is None:
        _worker.stdin.close()
        _worker.wait(timeout=10)


def _send(pipe: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def _receive(pipe: BinaryIO) -> Any:
    header = pipe.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", header)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _execute(tf: Any, graph: bytes, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list:
    with tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(graph), name="")
        with tf.compat.v1.Session(graph=tf_graph) as session:
            tensor = lambda name: tf_graph.get_tensor_by_name(_full_name(name))
            return session.run([tensor(n) for n in fetches], {tensor(k): v for k, v in feeds.items()})


def _full_name(name: str) -> str:
    """TensorFlow's lookup wants "node:0" where GraphDefs write "node"."""
    ref = names.parse(name)
    return f"{ref.node}:{ref.index}"


def _serve() -> None:
    import tensorflow as tf

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            graph, feeds, fetches = _receive(stdin)
        except EOFError:
            return
        try:
            reply = ("ok", _execute(tf, graph, feeds, fetches))
        except (ValueError, TypeError, KeyError, RuntimeError, tf.errors.OpError) as error:
            kind = type(error).__name__ if isinstance(error, tf.errors.OpError) else ""
            reply = ("error", (kind, getattr(error, "message", None) or str(error)))
        _send(stdout, reply)


if __name__ == "__main__":
    _serve()
