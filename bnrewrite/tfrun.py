"""Run GraphDefs in TensorFlow, in a worker process: the only module that imports it.

TensorFlow aborts the whole process on some malformed graphs (a C++ CHECK failure,
signal 6), and writes its C++ logs straight to file descriptor 2. Both stay in a
child: `python -m bnrewrite.tfrun` serves requests over its stdin/stdout, with its
stderr discarded. The worker is started on first use and kept for later calls (one
TensorFlow import per process); if it dies, the call raises CannotVerifyError and the
next call starts a new one.

NCHW convolutions have CPU kernels only through oneDNN (DESIGN §7): the worker turns it on
unless the user set TF_ENABLE_ONEDNN_OPTS; verify.py handles CPUs where that is not enough.
Whether TensorFlow is installed is checked here without importing it (find_spec).

A graph is untrusted code (DESIGN §5), so the worker is fenced in: it is killed when a
run outlives its time limit and ends when its parent does; it starts in an empty temporary
working directory (removed when it ends), without credentials in its environment, and
with its data segment capped (RLIMIT_DATA, not RLIMIT_AS: TensorFlow reserves address
space per thread; with 128 threads it held 3.2 GB of address space for 0.65 GB resident
and aborted under a 2 GiB RLIMIT_AS, while RLIMIT_DATA counted 1.5 GB and let it run). A
graph asking for more than the cap gets TensorFlow's ResourceExhaustedError, not the OOM
killer.
"""
from __future__ import annotations

import atexit
import fnmatch
import importlib.util
import os
import pickle
import re
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np

from . import names
from .errors import CannotVerifyError, GraphRunError, VerifyMemoryLimit, VerifyTimeout

# Environment variables a graph has no business reading (fnmatch, on the upper-cased name).
CREDENTIALS = ("AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_*CREDENTIALS*", "CLOUDSDK_*",
               "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*_KEY", "*_KEY_*", "*APIKEY*", "*CREDENTIAL*",
               "SSH_AUTH_SOCK", "NETRC", "KUBECONFIG")
STARTUP_TIMEOUT = 300.0  # importing TensorFlow: ~3 s here, much more on a loaded machine
DEFAULT_MEMORY_FRACTION = 0.5  # of the machine's physical memory
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
MISSING = ("TensorFlow is not installed, so nothing can be verified: pip install 'bnrewrite[tensorflow]', "
           "or skip verification (--no-verify; verify=None in the API)")


def available() -> bool:
    """Is TensorFlow installed? Answered without importing it (that takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def onednn_off() -> bool:
    """Did the user turn oneDNN off for the worker? (Unset: the worker turns it on.)"""
    return os.environ.get(ONEDNN, "1").strip().lower() in ("0", "false")


@dataclass(frozen=True)
class Limits:
    """What one run of a graph may take: seconds (worker start-up not counted) and
    bytes of data segment for the worker."""
    timeout: float
    max_memory: int


def default_max_memory() -> int:
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * DEFAULT_MEMORY_FRACTION)


def _size_text(size: int) -> str:
    return f"{size / (1 << 30):.3g} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.3g} MiB"


class _Worker:
    def __init__(self, max_memory: int) -> None:
        # Here, not at the top: a process that starts no worker (an audit) does not import
        # them (subprocess, and tempfile with random and shutil: 3-5 ms).
        import subprocess
        import tempfile

        self.max_memory = max_memory
        self.directory = tempfile.mkdtemp(prefix="bnrewrite-worker-")
        env = {ONEDNN: "1", **{k: v for k, v in os.environ.items() if not _is_credential(k)}}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        # The working directory is empty, so the package must be found from where it is.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bnrewrite.tfrun", str(max_memory)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.directory, env=env)
        self.ready = False
        self.expired = False  # killed by its timer: the run outlived its time limit

    def ask(self, request: tuple, timeout: float) -> Any:
        """Send `request`, wait for the reply. A timer kills the worker when the start-up
        or the run outlives its limit (then `self.expired`, and the read ends in EOFError)."""
        if not self.ready:
            self._within(STARTUP_TIMEOUT, lambda: _receive(self.process.stdout))
            self.ready = True
        _send(self.process.stdin, request)
        return self._within(timeout, lambda: _receive(self.process.stdout))

    def _within(self, seconds: float, read: Callable[[], Any]) -> Any:
        timer = threading.Timer(seconds, self._expire)
        timer.start()
        try:
            return read()
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        self.process.kill()

    def stop(self) -> int:
        """End the worker (nothing to save in it) and remove its directory."""
        import shutil

        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        return code


_worker: _Worker | None = None


def run(graph: bytes, feeds: Mapping[str, np.ndarray], fetches: Sequence[str], limits: Limits,
        label: str = "the graph") -> list[np.ndarray]:
    """Outputs `fetches` of the serialized GraphDef `graph`, fed `feeds`. Errors name the
    graph by `label` and carry TensorFlow's reason."""
    return _ask(("run", graph, dict(feeds), list(fetches)), limits, label)


def stateful(ops: Sequence[str], limits: Limits) -> set[str]:
    """The ops of `ops` that TensorFlow's live op registry marks stateful."""
    return _ask(("stateful", list(ops)), limits)


def _ask(request: tuple, limits: Limits, label: str = "the graph") -> Any:
    global _worker
    if not available():
        raise CannotVerifyError(MISSING)
    if _worker is not None and (_worker.process.poll() is not None or _worker.max_memory != limits.max_memory):
        _worker.stop()
        _worker = None
    if _worker is None:
        _worker = _Worker(limits.max_memory)
    try:
        status, payload = _worker.ask(request, limits.timeout)
    except (EOFError, BrokenPipeError, struct.error):
        started, expired, code = _worker.ready, _worker.expired, _worker.stop()
        _worker = None
        what = f"signal {-code}" if code < 0 else f"exit {code}"
        if not started:
            raise CannotVerifyError(f"the TensorFlow worker did not start ({what}, memory limit "
                                    f"{_size_text(limits.max_memory)})") from None
        if expired:
            raise VerifyTimeout(f"{label} ran longer than the {limits.timeout:g} s time limit and was "
                                "stopped (--timeout SECONDS raises it)") from None
        raise CannotVerifyError(f"TensorFlow crashed ({what}) running {label}") from None
    if status == "memory":
        raise VerifyMemoryLimit(f"{label} needs more memory than the worker's {_size_text(limits.max_memory)} "
                                f"limit ({payload}; --max-memory SIZE raises it)")
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
    if _worker is not None:
        _worker.stop()


def _is_credential(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name.upper(), pattern) for pattern in CREDENTIALS)


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
    # Grappler's remapper fuses ops into kernels that oneDNN does not all have: Conv2D ->
    # FusedBatchNorm -> Tanh fails with "Fusion is not implemented: [FusedBatchNorm,Tanh]"
    # (TF 2.21, oneDNN on). Verification compares the graphs' arithmetic, both run alike.
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.remapping = config.graph_options.rewrite_options.OFF
    with tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(graph), name="")
        with tf.compat.v1.Session(graph=tf_graph, config=config) as session:
            tensor = lambda name: tf_graph.get_tensor_by_name(_full_name(name))
            return session.run([tensor(n) for n in fetches], {tensor(k): v for k, v in feeds.items()})


def _stateful(ops: Sequence[str]) -> set[str]:
    from tensorflow.python.framework import op_def_registry

    return {op for op in ops if getattr(op_def_registry.get(op), "is_stateful", False)}


def _full_name(name: str) -> str:
    """TensorFlow's lookup wants "node:0" where GraphDefs write "node"."""
    ref = names.parse(name)
    return f"{ref.node}:{ref.index}"


def _orphaned(parent: int) -> None:
    """A graph in an endless loop never reads its stdin's end: end with the parent, and
    remove the working directory it would have removed."""
    import shutil

    while os.getppid() == parent:
        time.sleep(1)
    shutil.rmtree(os.getcwd(), ignore_errors=True)
    os._exit(1)


def _serve(max_memory: int) -> None:
    import resource  # POSIX only, as the cap is

    threading.Thread(target=_orphaned, args=(os.getppid(),), daemon=True).start()
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = max_memory if hard == resource.RLIM_INFINITY else min(max_memory, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    import tensorflow as tf

    stdout = sys.stdout.buffer
    _send(stdout, "ready")
    while True:
        try:
            kind, *request = _receive(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply = ("ok", _execute(tf, *request) if kind == "run" else _stateful(*request))
        except (MemoryError, tf.errors.ResourceExhaustedError) as error:
            reply = ("memory", type(error).__name__)
        except (ValueError, TypeError, KeyError, RuntimeError, tf.errors.OpError) as error:
            kind = type(error).__name__ if isinstance(error, tf.errors.OpError) else ""
            reply = ("error", (kind, getattr(error, "message", None) or str(error)))
        _send(stdout, reply)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
