"""Tensor references as GraphDef spells them: "node", "node:1", "^node"."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple


class TensorRef(NamedTuple):
    node: str
    index: int = 0
    control: bool = False

    def __str__(self) -> str:
        if self.control:
            return "^" + self.node
        return tensor_name(self.node, self.index)


@lru_cache(maxsize=1 << 12)  # passes re-read nearby names; a cache of every name cost 13 MB at 50k nodes
def parse(ref: str) -> TensorRef:
    """Split an input string into node name, output index and control flag."""
    if ref.startswith("^"):
        return TensorRef(ref[1:], 0, True)
    node, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return TensorRef(node, int(index))
    return TensorRef(ref, 0)


def tensor_name(node: str, index: int = 0) -> str:
    """Canonical name of output `index` of `node` (":0" is left implicit)."""
    return node if index == 0 else f"{node}:{index}"


def canonical(ref: str) -> str:
    """"node:0" and "node" name the same tensor; use one spelling everywhere."""
    return ref if ":" not in ref else str(parse(ref))  # most names have no port: no parse


def node_of(ref: str) -> str:
    if ":" not in ref and not ref.startswith("^"):
        return ref
    return parse(ref).node
