"""Read and write GraphDefs: .pb (binary) and .pbtxt (text), atomically.

The format is chosen by suffix, then by sniffing: a binary file named .pbtxt or a
text file named .pb still loads. Everything here works on TensorBoard's copy of
TensorFlow's protos (DESIGN §6), so loading never imports TensorFlow.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from google.protobuf import message, text_format
from tensorboard.compat.proto import graph_pb2

from .errors import GraphLoadError

GraphDef = graph_pb2.GraphDef
TEXT_SUFFIXES = (".pbtxt", ".txt", ".pbtext", ".prototxt")
PROTOBUF_LIMIT = 2**31


def load_graph(path: str | os.PathLike[str]) -> Any:
    """Parse a GraphDef file; raises GraphLoadError with a one-line reason."""
    where = str(path)
    try:
        if Path(path).stat().st_size >= PROTOBUF_LIMIT:
            raise GraphLoadError("larger than protobuf's 2 GiB limit for one message", where)
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise GraphLoadError("no such file", where) from None
    except IsADirectoryError:
        raise GraphLoadError("is a directory, not a graph file", where) from None
    except OSError as exc:
        raise GraphLoadError(f"cannot read: {exc.strerror or exc}", where) from None
    if not data.strip():
        raise GraphLoadError("empty file, not a GraphDef", where)
    parsers = [_parse_text, _parse_binary]
    if not where.lower().endswith(TEXT_SUFFIXES):
        parsers.reverse()
    problems = []
    for parse in parsers:
        try:
            graph = parse(data)
        except _NotThisFormat as exc:
            problems.append(str(exc))
            continue
        if not graph.node:
            problems.append("parsed, but holds no nodes")
            continue
        return graph
    raise GraphLoadError(problems[0], where)


def save_graph(graph_def: Any, path: str | os.PathLike[str]) -> None:
    """Write deterministically via a temporary file and rename: never a partial file."""
    import tempfile  # only a save pays for it (3 ms): an audit writes nothing

    target = Path(path)
    if str(target).lower().endswith(TEXT_SUFFIXES):
        data = text_format.MessageToString(graph_def).encode()
    else:
        data = graph_def.SerializeToString(deterministic=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_internal(graph_def: Any) -> Any:
    """A private copy as TensorBoard's GraphDef, whatever class the caller holds."""
    copy = GraphDef()
    if isinstance(graph_def, GraphDef):
        copy.CopyFrom(graph_def)
    elif hasattr(graph_def, "SerializeToString") and type(graph_def).__name__ == "GraphDef":
        copy.ParseFromString(graph_def.SerializeToString())
    else:
        raise TypeError(f"expected a GraphDef, got {type(graph_def).__name__}")
    return copy


def as_internal(graph_def: Any) -> Any:
    """TensorBoard's GraphDef to read, not to change: the caller's own object when it is
    one already (no copy of a big graph), else a converted copy."""
    return graph_def if isinstance(graph_def, GraphDef) else to_internal(graph_def)


def like(graph_def: Any, template: Any) -> Any:
    """Return `graph_def` as an instance of the class the caller gave us."""
    if isinstance(graph_def, type(template)):
        return graph_def
    result = type(template)()
    result.ParseFromString(graph_def.SerializeToString(deterministic=True))
    return result


class _NotThisFormat(Exception):
    pass


def _parse_binary(data: bytes) -> Any:
    graph = GraphDef()
    try:
        graph.ParseFromString(data)
    except (message.DecodeError, RuntimeError, ValueError) as exc:  # RecursionError is a RuntimeError
        raise _NotThisFormat(f"not a binary GraphDef ({_first_line(exc) or 'truncated or corrupt'})") from None
    return graph


def _parse_text(data: bytes) -> Any:
    graph = GraphDef()
    try:
        text_format.Parse(data.decode("utf-8"), graph)
    except UnicodeDecodeError:
        raise _NotThisFormat("not a text GraphDef (not UTF-8)") from None
    except text_format.ParseError as exc:
        raise _NotThisFormat(f"text GraphDef syntax error: {_first_line(exc)}") from None
    except RecursionError:
        raise _NotThisFormat("text GraphDef nested too deeply") from None
    return graph


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
