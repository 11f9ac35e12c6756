"""Issue 15, section 3: the gate on a split head (primary head + escalation judge) decides by
the split rule (refuse_at, then escalate_at) and fails closed when either head gives NaN:
REFUSE or ESCALATE (the fail action), never ALLOW. Also why_escalated for a split decision."""

import json

import numpy as np
import pytest
import torch

from so8t.eval.thresholds import Thresholds, escalation_prob
from so8t.gate import Decision, Gate
from so8t.gate.decision import why_escalated
from so8t.labels import Action
from so8t.model import SafetyHead, SafetyModel

PROMPT = "List my files"


def _gate(tiny_lm, thresholds, fail_action="REFUSE", broken: str | None = None) -> Gate:
    model, tok = tiny_lm
    torch.manual_seed(0)
    head = SafetyHead(model.config.hidden_size, kind="split")
    if broken:  # a numerical failure at run time (load-time checks cannot see it)
        with torch.no_grad():
            getattr(head, broken)[2].bias.fill_(float("nan"))
    return Gate(SafetyModel(model, head).eval(), tok, thresholds=thresholds, max_length=64, fail_action=fail_action)


def _split_rule(p, thr: Thresholds) -> Action:
    r, e = p[2], escalation_prob(np.asarray([p]))[0]
    return Action.REFUSE if r >= thr.refuse_at else Action.ESCALATE if e >= thr.escalate_at else Action.ALLOW


def test_the_gate_decides_a_split_head_by_refuse_at_then_escalate_at(tiny_lm):
    probe = _gate(tiny_lm, Thresholds(refuse_at=1.0, escalate_at=1.0))
    d = probe.decide(PROMPT)
    probe.close()
    p = d.probs
    assert d.ok and d.action == Action.ALLOW and sum(p) == pytest.approx(1.0, abs=1e-5)
    r, e = p[2], p[1] / (p[0] + p[1])
    # thresholds placed around this prompt's own r and e: each of the three actions in turn
    for thr, want in (
        (Thresholds(refuse_at=r / 2, escalate_at=1.0), Action.REFUSE),
        (Thresholds(refuse_at=min(1.0, r * 1.5), escalate_at=e / 2), Action.ESCALATE),
        (Thresholds(refuse_at=min(1.0, r * 1.5), escalate_at=min(1.0, e * 1.5)), Action.ALLOW),
    ):
        g = _gate(tiny_lm, thr)
        d = g.decide(PROMPT)
        g.close()
        assert d.ok and d.action == want == _split_rule(d.probs, thr)
        assert d.thresholds == thr.as_dict() and "escalate_at" in d.thresholds and "allow_at" not in d.thresholds


@pytest.mark.parametrize("fail_action", ["REFUSE", "ESCALATE"])
@pytest.mark.parametrize("broken", ["net", "judge"])
def test_a_nan_from_either_head_fails_closed_never_allow(tiny_lm, broken, fail_action):
    # with these thresholds a healthy head allows everything (the check above); a broken one must not
    g = _gate(tiny_lm, Thresholds(refuse_at=1.0, escalate_at=1.0), fail_action=fail_action, broken=broken)
    d = g.decide(PROMPT)
    g.close()
    assert (d.status, d.action, d.probs) == ("error", Action[fail_action], None)
    assert "invalid probabilities" in d.reason and g.counts["fail_closed"] == 1
    json.dumps(d.to_dict(), allow_nan=False)


def test_why_escalated_names_the_judge_and_escalate_at_for_a_split_decision():
    thr = {"refuse_at": 0.5, "escalate_at": 0.3}

    def decision(probs):
        return Decision(
            Action.ESCALATE, "ok", probs, thr, "m", "p", "h", 1.0, "thresholds; decided by the conversation"
        ).to_dict()

    why = why_escalated(decision((0.6, 0.3, 0.1)))  # top ALLOW; e = 0.3 / 0.9 = 0.33 >= 0.3
    assert why.startswith("escalated by the escalation judge's threshold, not by the top choice (ALLOW)")
    assert "P(needs a person | not refused) 0.33 is at or above escalate_at 0.30" in why
    assert "(decided by the conversation)" in why
    why = why_escalated(decision((0.2, 0.35, 0.45)))  # top REFUSE below refuse_at
    assert "P(REFUSE) 0.45 is below refuse_at 0.50" in why and "escalate_at 0.30" in why
    assert why_escalated(decision((0.2, 0.7, 0.1))) is None  # the composed top choice itself
