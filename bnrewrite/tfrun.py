"""Run GraphDefs in TensorFlow, in a worker process: the only module that imports it.

TensorFlow aborts the whole process on some malformed graphs (a C++ CHECK failure,
signal 6), and writes its C++ logs straight to file descriptor 2. Both stay in a
child: `python -m bnrewrite.tfrun` serves requests over its stdin/stdout, with its
stderr discarded. The worker is started on first use and kept for later calls (one
TensorFlow import per process); if it dies, the call raises CannotVerifyError and the
next call starts a new one.

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
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np

from . import names
from .errors import CannotVerifyError, VerifyMemoryLimit, VerifyTimeout

# Environment variables a graph has no business reading (fnmatch, on the upper-cased name).
CREDENTIALS = ("AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_*CREDENTIALS*", "CLOUDSDK_*",
               "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*_KEY", "*_KEY_*", "*APIKEY*", "*CREDENTIAL*",
               "SSH_AUTH_SOCK", "NETRC", "KUBECONFIG")
STARTUP_TIMEOUT = 300.0  # importing TensorFlow: ~3 s here, much more on a loaded machine
DEFAULT_MEMORY_FRACTION = 0.5  # of the machine's physical memory


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
        self.max_memory = max_memory
        self.directory = tempfile.mkdtemp(prefix="bnrewrite-worker-")
        env = {k: v for k, v in os.environ.items() if not _is_credential(k)}
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
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        return code


_worker: _Worker | None = None


def run(graph: bytes, feeds: Mapping[str, np.ndarray], fetches: Sequence[str], limits: Limits) -> list[np.ndarray]:
    """Outputs `fetches` of the serialized GraphDef `graph`, fed `feeds`."""
    return _ask(("run", graph, dict(feeds), list(fetches)), limits)


def stateful(ops: Sequence[str], limits: Limits) -> set[str]:
    """The ops of `ops` that TensorFlow's live op registry marks stateful."""
    return _ask(("stateful", list(ops)), limits)


def _ask(request: tuple, limits: Limits) -> Any:
    global _worker
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
            raise VerifyTimeout(f"the graph ran longer than the {limits.timeout:g} s time limit and was "
                                "stopped (--timeout SECONDS raises it)") from None
        raise CannotVerifyError(f"TensorFlow crashed ({what}) running the graph"
                                " (--no-verify skips the check)") from None
    if status == "memory":
        raise VerifyMemoryLimit(f"the graph needs more memory than the worker's {_size_text(limits.max_memory)} "
                                f"limit ({payload}; --max-memory SIZE raises it)")
    if status != "ok":
        raise CannotVerifyError(f"TensorFlow cannot run the graph: {payload} (--no-verify skips the check)")
    return payload


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
    with tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(graph), name="")
        with tf.compat.v1.Session(graph=tf_graph) as session:
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
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as error:
            message = (getattr(error, "message", None) or str(error)).strip()
            reply = ("error", message.splitlines()[0] if message else type(error).__name__)
        _send(stdout, reply)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
