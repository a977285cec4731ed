"""The batch-norm catalogue. Each family file declares its forms as data:

- `Variant`: a pattern rooted at the node producing the batch norm's output that binds
  the input "x" and whichever of gamma, beta, mean, variance, epsilon the form holds
  as values; `attrs` says which node attributes of the root carry the rest; its flags
  say what the plan may turn it into.
- `Statistics`: how a training-mode graph computes mean and variance from the batch
  (bound to the same "x"), so a form whose mean/variance are not constant can be
  told apart from one whose statistics are merely fed.

Arithmetic with constant parameters needs no pattern: affine.py reduces any spelling to
scale * x + shift, reported as FORMULA (a batch norm: sqrt(variance + epsilon) under it)
or AFFINE. The patterns name the forms people know and find those whose parameters are
not constant (batch statistics, fed values).

Adding a variant = one entry in a family file + a fixture in tools/make_fixtures.py; a new
family is one entry point in pyproject.toml and registry.BUILTIN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tensorboard.compat.proto import types_pb2

from ..pattern import Pattern

# What FusedBatchNormV3 computes in: x's dtype must be one of these to fuse into one.
FUSED_DTYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16})


@dataclass(frozen=True)
class Variant:
    form: str
    pattern: Pattern | None  # None: found by the affine-chain analysis
    attrs: Mapping[str, str] = field(default_factory=dict)  # role -> attribute of the root
    # role -> what TensorFlow's op definition gives an attribute the NodeDef leaves out (a
    # FusedBatchNorm without is_training runs in training mode)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # What a batch norm that cannot fold becomes (a plan.FUSED_AS key; None: it stays):
    # "fused-op" one FusedBatchNormV3 over the same tensors (needs no constants),
    # "scale-shift" one Mul and one Add of constant vectors.
    fuses_to: str | None = "scale-shift"
    fused_dtypes: frozenset[int] = FUSED_DTYPES  # x dtypes a "fused-op" replacement takes
    side_outputs: bool = False  # outputs besides y (batch statistics) that others may read
    batch_norm: bool = True  # False: a plain scale/shift, reported only where it can fold
    # A graph holding none of these ops cannot hold the form: the finder skips it there
    # (empty: no such op); most graphs have no Rsqrt, and matching is the audit's cost.
    needs: frozenset[str] = frozenset()


FORMULA = Variant("formula", None)
AFFINE = Variant("affine", None, fuses_to=None, batch_norm=False)


@dataclass(frozen=True)
class Statistics:
    name: str
    mean: Pattern  # binds "axes" (the reduction axes) and shares "x" with the variant
    variance: Pattern


def catalogue() -> tuple[Variant, ...]:
    """Every registered form (registry.py: the core's families and any plugin's), larger
    patterns first: where two overlap, the one listed first wins."""
    from ..registry import variants
    return variants()


def statistics() -> tuple[Statistics, ...]:
    from . import moments
    return moments.STATISTICS
