"""Issue 17, item 9: an approver saw ESCALATE with probabilities like 0.62 / 0.25 / 0.13 and no
reason. why_escalated reads a stored decision and says when a calibrated threshold (not the head's
top choice) escalated it, or a gate failure did; nothing when the head itself chose ESCALATE."""

from so8t.gate.decision import Decision, why_escalated
from so8t.labels import Action

THR = {"refuse_at": 0.5, "allow_at": 0.8}


def _decision(action, probs, thresholds=THR, status="ok", reason="thresholds; decided by the conversation"):
    return Decision(action, status, probs, thresholds, "m", "p", "h", 1.0, reason).to_dict()


def test_an_allow_that_was_not_sure_enough_names_p_allow_and_allow_at():
    why = why_escalated(_decision(Action.ESCALATE, (0.62, 0.25, 0.13)))
    assert why.startswith("escalated by the confidence threshold, not by the head: its top choice was ALLOW")
    assert "P(ALLOW) 0.62 is below allow_at 0.80" in why and "(decided by the conversation)" in why


def test_a_refuse_that_was_not_sure_enough_names_p_refuse_and_refuse_at():
    why = why_escalated(_decision(Action.ESCALATE, (0.15, 0.4, 0.45), reason="thresholds; decided by user turn 2"))
    assert "top choice was REFUSE" in why and "P(REFUSE) 0.45 is below refuse_at 0.50" in why
    assert "(decided by user turn 2)" in why


def test_a_tie_is_read_as_the_stricter_action_as_the_gate_reads_it():
    assert "top choice was REFUSE" in why_escalated(_decision(Action.ESCALATE, (0.4, 0.2, 0.4)))


def test_the_heads_own_escalate_needs_no_hint():
    assert why_escalated(_decision(Action.ESCALATE, (0.2, 0.7, 0.1))) is None
    assert why_escalated(_decision(Action.ESCALATE, (0.2, 0.7, 0.1), thresholds=None, reason="argmax")) is None


def test_other_actions_and_unrecorded_decisions_get_no_hint():
    assert why_escalated(_decision(Action.ALLOW, (0.9, 0.05, 0.05))) is None
    assert why_escalated(_decision(Action.REFUSE, (0.1, 0.1, 0.8))) is None
    assert why_escalated({"action": "ESCALATE"}) is None and why_escalated({}) is None
    assert why_escalated(None) is None


def test_a_gate_failure_that_fails_closed_to_escalate_says_so():
    d = _decision(Action.ESCALATE, None, status="timeout", reason="fail-closed: the gate took longer than 2 s")
    why = why_escalated(d)
    assert why.startswith("the gate did not decide (status timeout): fail-closed: the gate took longer than 2 s")
    assert "fails closed to ESCALATE" in why
