"""audit --probe: does a sample's result depend on the batch it runs in? Frozen
training-mode batch norms make it so; the rewrite keeps them, and the audit says it."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import graphio
from .errors import CannotVerifyError
from .feeds import make_feeds
from .index import GraphIndex
from .verify import Options, check_safe, compare, run


@dataclass(frozen=True)
class Probe:
    """How much output `name` of the first sample moves when it runs alone instead of
    inside a batch: zero for a graph whose samples are independent."""
    name: str
    batch: int
    max_abs: float
    max_rel: float


def probe(graph_def: Any, options: Options = Options()) -> list[Probe]:
    """Run a batch, then its first sample alone: frozen training-mode batch norms make
    a sample's result depend on the rest of its batch."""
    index = GraphIndex(graphio.to_internal(graph_def))
    fetches = list(options.outputs) or index.inferred_outputs()
    check_safe(graph_def, fetches, options)  # before feeds: a refusal must not wait on an unfillable input
    feeds = make_feeds(graph_def, replace(options, batch=max(options.batch, 2)))
    sizes = {v.shape[0] for v in feeds.values() if np.ndim(v)}
    if not feeds or len(sizes) != 1 or min(sizes) < 2:
        raise CannotVerifyError("probing needs inputs that share a batch dimension of 2 or more "
                                "(--batch, --input-shape)")
    batch = sizes.pop()
    batched = run(graph_def, feeds, fetches, options)
    alone = run(graph_def, {k: v[:1] if np.ndim(v) else v for k, v in feeds.items()}, fetches, options)
    found = []
    for name, together, single in zip(fetches, batched, alone):
        if np.ndim(together) == 0 or together.shape[0] != batch or single.shape[0] != 1:
            continue  # not a per-sample output
        check = compare(name, together[:1], single, rtol=0.0, atol=0.0)
        found.append(Probe(name, batch, check.max_abs, check.max_rel))
    return found
