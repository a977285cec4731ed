"""Folding forward: may a batch norm fold into the linear ops that read it? The checks
as data (the plan runs them where folding backward was refused), and the fold they allow.

Forward, the scale goes into each consumer's input-channel weights, the shift into a bias
after it: exact only where the consumer cannot see padding, so a nonzero shift into a
SAME-padded window wider than one element is refused (`padding`), never approximated.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from . import folds
from .findings import Finding
from .fold_math import as_channel_vector
from .folds import Fold
from .consumers import Consumer, Readers
from .hosts import HOSTS, weights_shared
from .index import GraphIndex


@dataclass(frozen=True)
class Forward:
    """What the checks look at: the batch norm, its readers, and the linear ops whose
    weights backward folds change (`claimed`)."""
    finding: Finding
    readers: Readers
    index: GraphIndex
    fetched: frozenset[str]
    claimed: frozenset[str]

    def scale(self, consumer: Consumer) -> np.ndarray:
        return folds.input_scale_shift(self.finding, consumer)[0]

    def shift(self, consumer: Consumer) -> np.ndarray:
        return folds.input_scale_shift(self.finding, consumer)[1]

    @cached_property
    def fold(self) -> Fold | str:
        return folds.forward(self.finding, [
            (c, weights_shared(self.index, c.node, HOSTS[c.op].weights_input),
             c.bias_node is not None and c.node not in self.fetched) for c in self.readers.consumers])


def _other_readers(c: Forward) -> str | None:
    """The batch norm's value disappears: nothing else may read or fetch it."""
    if c.readers.others:
        return f"{c.finding.output} is also read by {', '.join(sorted(c.readers.others))}"
    links = [k.entry for k in c.readers.consumers if k.entry != k.node]  # they will read x
    fetched = [node for node in (c.finding.output, *c.readers.chain, *links) if node in c.fetched]
    return f"{fetched[0]} is a fetched output" if fetched else None


def _each(test: Callable[[Forward, Consumer], str | None]) -> Callable[[Forward], str | None]:
    def check(c: Forward) -> str | None:
        return next(filter(None, (test(c, consumer) for consumer in c.readers.consumers)), None)
    return check


def _consumer_mismatch(c: Forward, k: Consumer) -> str | None:
    f = c.finding
    if k.channel_axis is None or k.channels is None:
        return f"{k.node} does not read it along an input-channel axis"
    if k.flatten is not None and not f.uniform and (
            f.channel_axis != -1 or k.flatten != k.channels or k.channels % f.channels):
        return (f"{k.entry} flattens to {k.flatten} values a row, {k.node} takes {k.channels}: not "
                f"whole rows of the batch norm's {f.channels} last-axis channels")
    if k.flatten is None and not f.uniform and (k.channel_axis != f.channel_axis or k.channels != f.channels):
        return (f"{k.node} takes {k.channels} channels on axis {k.channel_axis}, the batch norm "
                f"normalises {f.channels} on axis {f.channel_axis}")
    outputs = int(np.prod([k.weights.shape[a] for a in k.weight_axes]))
    if k.bias is not None and as_channel_vector(k.bias, outputs) is None:
        return f"the bias after {k.node} is not one value per output channel"
    return None


FORWARD_CHECKS: tuple[tuple[str, Callable[[Forward], str | None]], ...] = (
    ("host-has-other-consumers", _other_readers),
    ("not-constant", _each(lambda c, k: None if k.weights is not None else f"weights of {k.node} are not constant")),
    ("non-finite-parameters", _each(lambda c, k: f"weights of {k.node} hold NaN or infinity"
                                    if not np.isfinite(np.asarray(k.weights, np.float64)).all() else None)),
    ("channel-mismatch", _each(_consumer_mismatch)),
    ("consumer-folded", _each(lambda c, k: f"{k.node} takes a batch norm folded backward"
                              if k.node in c.claimed else None)),
    ("padding", _each(lambda c, k: f"{k.node} sees {k.padding} and the shift is not zero"
                      if k.padding and np.any(c.shift(k) != 0) else None)),
    ("negative-scale", _each(lambda c, k: f"{k.entry} takes the maximum, which a scale of zero or less "
                             "does not commute with" if k.monotone and np.any(c.scale(k) <= 0) else None)),
    ("fold-precision", lambda c: c.fold if isinstance(c.fold, str) else None),
)
