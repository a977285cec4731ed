"""Property suite: random graphs of every catalogue form, host, layout, dtype, channel
count and parameter range (negative gamma, tiny variance, large epsilon), with shared
weights and extra consumers, and linear ops after the batch norm to fold forward into
(padding-refused where the shift is not zero). For each: the rewrite keeps every output in TensorFlow, is
idempotent and deterministic, leaves the input alone, and does what the audit said.

BNREWRITE_PROPERTY_EXAMPLES sets the number of examples (CI default 40);
tools/property_long.py runs thousands.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, event, given, settings

import bnrewrite
from bnrewrite.verify import Options
from graphgen import PADDING_SEEN, build, specs

EXAMPLES = int(os.environ.get("BNREWRITE_PROPERTY_EXAMPLES", "40"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
          suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_rewrite_properties(spec):
    graph, outputs = build(spec)
    before = graph.SerializeToString(deterministic=True)
    audit = bnrewrite.audit(graph)
    assert len(audit.batch_norms) == 1, (spec, [(e.form, e.output) for e in audit.batch_norms])
    (planned,) = audit.batch_norms
    event(f"{planned.action}: {planned.direction or planned.reason}")  # counts in the long run
    assert planned.training == (spec.form == "moments")

    rewritten, report = bnrewrite.rewrite(graph)
    assert graph.SerializeToString(deterministic=True) == before
    assert [(e.output, e.action, e.reason) for e in report.batch_norms] == \
        [(planned.output, planned.action, planned.reason)]
    if spec.host != "none" and not spec.second_consumer and spec.form != "moments" \
            and planned.reason != "fold-precision":
        assert planned.action == "fold", (spec, planned.reason, planned.detail)
        assert planned.direction == "backward", spec  # preferred where both are possible
    if spec.host == "none" and spec.consumer != "none" and spec.form != "moments" and not spec.bn_side:
        if spec.consumer in PADDING_SEEN and not spec.zero_shift:
            assert planned.reason == "padding", (spec, planned.reason, planned.detail)
        elif spec.consumer.startswith("MaxPool") and planned.reason == "negative-scale":
            pass  # a gamma drawn at or below zero
        elif planned.reason != "fold-precision":
            assert (planned.action, planned.direction) == ("fold", "forward"), (spec, planned.detail)
    if spec.bn_side and spec.host == "none":
        assert planned.action != "fold", spec

    result = bnrewrite.verify(graph, rewritten, Options(outputs=outputs, batch=3, seed=spec.seed))
    assert result.passed, (spec, result.describe())

    again, _ = bnrewrite.rewrite(rewritten)
    assert again.SerializeToString(deterministic=True) == rewritten.SerializeToString(deterministic=True)
    twice, _ = bnrewrite.rewrite(graph)
    assert twice.SerializeToString(deterministic=True) == rewritten.SerializeToString(deterministic=True)
