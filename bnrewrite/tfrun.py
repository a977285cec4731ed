"""Run GraphDefs in TensorFlow, in a worker process: the only module that imports it.

TensorFlow aborts the whole process on some malformed graphs (a C++ CHECK failure,
signal 6), and writes its C++ logs straight to file descriptor 2. Both stay in a
child: `python -m bnrewrite.tfrun` serves run requests over its stdin/stdout, with its
stderr discarded. The worker is started on first use and kept for later calls (one
TensorFlow import per process); if it dies, the call raises CannotVerifyError and the
next call starts a new one.
"""
from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np

from . import names
from .errors import CannotVerifyError

_worker: subprocess.Popen | None = None


def run(graph: bytes, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
    """Outputs `fetches` of the serialized GraphDef `graph`, fed `feeds`."""
    global _worker
    if _worker is None or _worker.poll() is not None:
        _worker = subprocess.Popen([sys.executable, "-m", "bnrewrite.tfrun"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        _send(_worker.stdin, (graph, dict(feeds), list(fetches)))
        status, payload = _receive(_worker.stdout)
    except (BrokenPipeError, EOFError, struct.error):
        code = _worker.wait()
        _worker = None
        what = f"signal {-code}" if code < 0 else f"exit {code}"
        raise CannotVerifyError(f"TensorFlow crashed ({what}) running the graph"
                                " (--no-verify skips the check)") from None
    if status != "ok":
        raise CannotVerifyError(f"TensorFlow cannot run the graph: {payload} (--no-verify skips the check)")
    return payload


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
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as error:
            message = (getattr(error, "message", None) or str(error)).strip()
            reply = ("error", message.splitlines()[0] if message else type(error).__name__)
        _send(stdout, reply)


if __name__ == "__main__":
    _serve()
