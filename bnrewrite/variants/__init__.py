"""The batch-norm catalogue. Each family file declares its forms as data:

- `Variant`: a pattern rooted at the node producing the batch norm's output that binds
  the input "x" and whichever of gamma, beta, mean, variance, epsilon the form holds
  as values; `attrs` says which node attributes of the root carry the rest.
- `Statistics`: how a training-mode graph computes mean and variance from the batch
  (bound to the same "x"), so a form whose mean/variance are not constant can be
  told apart from one whose statistics are merely fed.

Adding a variant = one entry in a family file + a fixture in tools/make_fixtures.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..pattern import Pattern


@dataclass(frozen=True)
class Variant:
    form: str
    pattern: Pattern
    attrs: Mapping[str, str] = field(default_factory=dict)  # role -> attribute of the root


@dataclass(frozen=True)
class Statistics:
    name: str
    mean: Pattern  # binds "axes" (the reduction axes) and shares "x" with the variant
    variance: Pattern


def catalogue() -> tuple[Variant, ...]:
    """Every form, larger patterns first: where two overlap, the larger one wins."""
    from . import decomposed, formula, fused, global_norm
    return (*decomposed.VARIANTS, *formula.VARIANTS, *fused.VARIANTS, *global_norm.VARIANTS)


def statistics() -> tuple[Statistics, ...]:
    from . import moments
    return moments.STATISTICS
