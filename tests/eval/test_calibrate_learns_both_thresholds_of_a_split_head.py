"""Issue 15, section 3: for a split head, calibration learns refuse_at (the primary head's) and
escalate_at (the escalation judge's); thresholds.json records which kind it holds, a file
without the field is three-way, and thresholds of the other kind than the run's head do not load."""

import json

import numpy as np
import pytest

from so8t.eval.thresholds import Thresholds, calibrate, decide, load_thresholds, save_thresholds
from so8t.model import SafetyHead, save_head

A, E, R = 0, 1, 2


def _composed(r: float, e: float) -> list[float]:
    return [(1 - r) * (1 - e), (1 - r) * e, r]


def _known():
    """r and e per example where exactly refuse_at in (0.3, 0.4] and escalate_at in (0.3, 0.45]
    decide every example right; argmax gets two of them wrong."""
    rows = [
        (R, 0.9, 0.2),
        (R, 0.7, 0.5),
        (R, 0.4, 0.8),  # r = 0.4, e = 0.8: argmax says ESCALATE
        (E, 0.1, 0.9),
        (E, 0.2, 0.6),
        (E, 0.1, 0.45),  # r = 0.1, e = 0.45: argmax says ALLOW
        (A, 0.3, 0.3),
        (A, 0.05, 0.1),
        (A, 0.2, 0.25),
        (A, 0.1, 0.0),
    ]
    return np.array([_composed(r, e) for _, r, e in rows]), np.array([y for y, _, _ in rows])


def test_calibrate_learns_refuse_at_and_escalate_at_where_the_answer_is_known():
    p, y = _known()
    cal = calibrate(p, y, kind="split")
    t = cal.thresholds
    assert t.kind == "split" and t.allow_at is None
    assert 0.3 < t.refuse_at <= 0.4 and 0.3 < t.escalate_at <= 0.45
    assert (cal.after.refuse_recall, cal.after.escalate_recall, cal.after.allow_recall) == (1.0, 1.0, 1.0)
    assert cal.before.refuse_recall < 1.0 and cal.before.escalate_recall < 1.0  # argmax misses
    assert decide(p, t).tolist() == y.tolist()
    assert len(cal.curve) == 19 * 19 and all({"refuse_at", "escalate_at"} <= set(c) for c in cal.curve)
    assert not any("allow_at" in c for c in cal.curve)


def test_the_three_way_grid_on_the_same_data_is_a_different_rule():
    p, y = _known()
    cal = calibrate(p, y)
    assert cal.thresholds.kind == "three_way" and cal.thresholds.escalate_at is None
    assert {"refuse_at", "allow_at"} <= set(cal.curve[0])


def test_thresholds_json_records_the_kind_and_loads_back(tmp_path):
    p, y = _known()
    save_head(SafetyHead(8, kind="split"), tmp_path, {"pooling": "mean"})
    cal = calibrate(p, y, kind="split")
    save_thresholds(tmp_path, cal)
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["head_kind"] == "split" and set(saved["thresholds"]) == {"refuse_at", "escalate_at"}
    assert load_thresholds(tmp_path) == cal.thresholds


def test_an_old_thresholds_json_without_the_kind_is_three_way(tmp_path):
    save_head(SafetyHead(8), tmp_path, {"pooling": "mean"})
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"refuse_at": 0.4, "allow_at": 0.7}}))
    assert load_thresholds(tmp_path) == Thresholds(refuse_at=0.4, allow_at=0.7)


@pytest.mark.parametrize(
    "head_kind,file_kind,second", [("split", "three_way", "allow_at"), ("three_way", "split", "escalate_at")]
)
def test_thresholds_of_the_other_kind_than_the_runs_head_do_not_load(tmp_path, head_kind, file_kind, second):
    save_head(SafetyHead(8, kind=head_kind), tmp_path, {"pooling": "mean"})
    (tmp_path / "thresholds.json").write_text(
        json.dumps({"head_kind": file_kind, "thresholds": {"refuse_at": 0.4, second: 0.7}})
    )
    with pytest.raises(ValueError, match=f"thresholds for a {file_kind} head, but the run's head .* is {head_kind}"):
        load_thresholds(tmp_path)


def test_a_split_thresholds_file_missing_escalate_at_names_the_field(tmp_path):
    (tmp_path / "thresholds.json").write_text(
        json.dumps({"head_kind": "split", "thresholds": {"refuse_at": 0.4, "allow_at": 0.7}})
    )
    with pytest.raises(ValueError, match=r"thresholds\.json: not a valid thresholds file \('escalate_at'\)"):
        load_thresholds(tmp_path)


def test_thresholds_need_exactly_one_second_threshold():
    with pytest.raises(ValueError, match="exactly one of allow_at"):
        Thresholds(refuse_at=0.5)
    with pytest.raises(ValueError, match="exactly one of allow_at"):
        Thresholds(refuse_at=0.5, allow_at=0.5, escalate_at=0.5)
    with pytest.raises(ValueError, match="escalate_at must be a number in"):
        Thresholds(refuse_at=0.5, escalate_at=1.5)
