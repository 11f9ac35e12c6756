"""Edges of the decision rule that no test pinned (the fail-open audit): a probability exactly at
a threshold, a row at both thresholds at once, and non-finite rows under a split head's
thresholds. At refuse_at it is REFUSE; at refuse_at and allow_at together REFUSE wins; at allow_at
alone it is ALLOW, as calibrated (the rule is >=, and the calibrator chose its thresholds under
it); a split head's judge exactly at escalate_at escalates; NaN or an infinity is REFUSE under
every rule."""

import numpy as np
import pytest

from so8t.eval.thresholds import Thresholds, decide
from so8t.labels import Action

A, E, R = int(Action.ALLOW), int(Action.ESCALATE), int(Action.REFUSE)


def test_three_way_rows_exactly_at_the_thresholds():
    t = Thresholds(refuse_at=0.5, allow_at=0.5)
    rows = [
        [0.5, 0.0, 0.5],  # at both: REFUSE first
        [0.5, 0.5, 0.0],  # at allow_at only
        [0.25, 0.25, 0.5],  # at refuse_at only
        [np.nextafter(0.5, 0), 0.5, 0.0],  # a hair under allow_at: a person decides
    ]
    assert decide(rows, t).tolist() == [R, A, R, E]


def test_float32_probabilities_at_a_threshold_compare_as_the_rule_says():
    t = Thresholds(refuse_at=0.3, allow_at=0.7)
    p = np.array([[0.7, 0.0, 0.3]], dtype=np.float32)  # float32 0.3 is a little above 0.3
    assert decide(p, t).tolist() == [R]


def test_a_split_judge_exactly_at_escalate_at_escalates_and_refuse_at_comes_first():
    t = Thresholds(refuse_at=0.5, escalate_at=0.5)
    rows = [
        [0.25, 0.25, 0.5],  # r at refuse_at: REFUSE
        [0.3, 0.3, 0.4],  # e = 0.5 exactly: ESCALATE
        [0.0, 0.0, 1.0],  # nothing left beside REFUSE
        [0.4, 0.0, 0.4999],  # e = 0, r below: ALLOW
    ]
    assert decide(rows, t).tolist() == [R, E, R, A]


@pytest.mark.parametrize(
    "t", [Thresholds(refuse_at=0.9, escalate_at=1.0), Thresholds(refuse_at=1.0, allow_at=0.0), None]
)
@pytest.mark.parametrize(
    "row", [[np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [1.0, -np.inf, 0.0], [1.0, 0.0, -np.inf], [1.0, np.inf, np.inf]]
)
def test_non_finite_rows_are_refused_under_every_rule(t, row):
    assert decide([row, [1.0, 0.0, 0.0]], t).tolist() == [R, A]
