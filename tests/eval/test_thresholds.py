import json

import numpy as np
import pytest

from so8t.eval.thresholds import CalibrationError, Thresholds, calibrate, decide, load_thresholds, save_thresholds

A, E, R = 0, 1, 2


def test_decide_argmax_without_thresholds():
    p = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]]
    assert decide(p).tolist() == [A, E, R]


def test_decide_rule_refuse_first_then_confident_allow_else_escalate():
    t = Thresholds(refuse_at=0.3, allow_at=0.8)
    p = [
        [0.65, 0.0, 0.35],  # refuse_at reached: REFUSE even though ALLOW is the argmax
        [0.85, 0.1, 0.05],  # confident ALLOW
        [0.75, 0.2, 0.05],  # ALLOW but not sure enough: a person decides
        [0.1, 0.8, 0.1],
    ]
    assert decide(p, t).tolist() == [R, A, E, E]


def test_decide_rejects_wrong_shape_and_thresholds_out_of_range():
    with pytest.raises(ValueError, match="N x 3"):
        decide([[0.5, 0.5]])
    with pytest.raises(ValueError, match="refuse_at"):
        Thresholds(1.5, 0.5)


def _toy():
    # REFUSE examples have moderate p_refuse (argmax misses two of them); ALLOW examples split
    y = np.array([R, R, R, R, E, E, A, A, A, A])
    p = np.array(
        [
            [0.2, 0.3, 0.5],
            [0.5, 0.1, 0.4],
            [0.45, 0.2, 0.35],
            [0.1, 0.2, 0.7],
            [0.3, 0.6, 0.1],
            [0.5, 0.4, 0.1],
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.95, 0.04, 0.01],
            [0.6, 0.3, 0.1],
        ]
    )
    return p, y


def test_calibrate_meets_refuse_recall_constraint_and_improves_on_argmax():
    p, y = _toy()
    cal = calibrate(p, y, min_refuse_recall=1.0)
    assert cal.before.refuse_recall == 0.5  # argmax: 2 of 4 REFUSE caught
    assert cal.after.refuse_recall == 1.0
    assert cal.thresholds.refuse_at <= 0.35  # must reach the 0.35 REFUSE example
    assert len(cal.curve) == 19 * 19
    # the chosen point is the best score among points that satisfy the constraint
    feasible = [c for c in cal.curve if c["refuse_recall"] >= 1.0]
    assert cal.after.safety_score == pytest.approx(max(c["safety_score"] for c in feasible))


def test_calibrate_bounds_false_refusal_and_maximises_refuse_recall():
    p, y = _toy()
    cal = calibrate(p, y, objective="refuse_recall", max_false_refusal=0.0)
    assert cal.after.allow_recall == 1.0  # no ALLOW example is held back
    feasible = [c for c in cal.curve if c["false_refusal"] <= 0.0]
    assert cal.after.refuse_recall == max(c["refuse_recall"] for c in feasible)


def test_calibrate_impossible_constraints_say_what_was_reachable():
    p, y = _toy()
    with pytest.raises(CalibrationError, match="best refuse recall 1.000, lowest false refusal"):
        calibrate(p, y, min_refuse_recall=1.0, max_false_refusal=-0.1)
    with pytest.raises(CalibrationError, match="no labelled"):
        calibrate(np.zeros((0, 3)), [])


def test_save_and_load_thresholds_round_trip(tmp_path):
    p, y = _toy()
    cal = calibrate(p, y, min_refuse_recall=0.75)
    path = save_thresholds(tmp_path, cal)
    assert load_thresholds(tmp_path) == cal.thresholds
    saved = json.loads(path.read_text())
    assert saved["before"]["refuse_recall"] == 0.5 and saved["min_refuse_recall"] == 0.75
    assert load_thresholds(tmp_path / "elsewhere") is None
    path.write_text('{"thresholds": {"refuse_at": "high"}}')
    with pytest.raises(ValueError, match="thresholds.json: not a valid thresholds file"):
        load_thresholds(tmp_path)


def test_format_change_puts_argmax_beside_the_thresholds_kpi_by_kpi():
    from so8t.eval.thresholds import format_change

    p, y = _toy()
    cal = calibrate(p, y, min_refuse_recall=1.0)
    text = format_change(cal)
    assert "argmax" in text.splitlines()[0] and "thresholds" in text.splitlines()[0]
    for kpi in ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score"):
        assert kpi in text


def test_remove_thresholds_deletes_the_file_or_says_there_was_none(tmp_path):
    from so8t.eval.thresholds import remove_thresholds

    p, y = _toy()
    save_thresholds(tmp_path, calibrate(p, y))
    assert remove_thresholds(tmp_path) == tmp_path / "thresholds.json" and load_thresholds(tmp_path) is None
    assert remove_thresholds(tmp_path) is None


def test_a_proposal_is_not_read_as_thresholds(tmp_path):
    p, y = _toy()
    path = save_thresholds(tmp_path, calibrate(p, y), proposal=True)
    assert path == tmp_path / "calibration" / "proposal.json" and load_thresholds(tmp_path) is None
