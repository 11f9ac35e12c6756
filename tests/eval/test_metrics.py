"""The added metrics against values worked out by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from so8t.eval.metrics import (
    binary_metrics,
    bootstrap_ci,
    breakdown,
    compute_metrics,
    expected_calibration_error,
    per_class_report,
    reliability_bins,
)

A, E, R = 0, 1, 2
nan = math.isnan


# --- per_class_report ---------------------------------------------------------------------------


def test_per_class_report_by_hand():
    y_true, y_pred = [A, A, E, E, R, R], [A, E, E, E, A, R]
    rep = per_class_report(y_true, y_pred)
    assert list(rep) == ["ALLOW", "ESCALATE", "REFUSE"]
    assert rep["ALLOW"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert rep["ESCALATE"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert rep["REFUSE"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert np.mean([r["f1"] for r in rep.values()]) == pytest.approx(compute_metrics(y_true, y_pred).macro_f1)


def test_per_class_report_undefined_ratios():
    rep = per_class_report([A, A], [A, R])
    assert rep["ALLOW"]["f1"] == pytest.approx(2 / 3)
    esc = rep["ESCALATE"]
    assert nan(esc["precision"]) and nan(esc["recall"]) and nan(esc["f1"]) and esc["support"] == 0
    ref = rep["REFUSE"]  # predicted once, never a label: precision 0, recall undefined
    assert ref["precision"] == 0.0 and nan(ref["recall"]) and nan(ref["f1"])
    # present but never predicted: precision undefined, F1 counts as 0 (as macro_f1 does)
    esc = per_class_report([A, E], [A, A])["ESCALATE"]
    assert nan(esc["precision"]) and esc["recall"] == 0.0 and esc["f1"] == 0.0


# --- breakdown ----------------------------------------------------------------------------------


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and nan(a[k]) and nan(b[k])) or a[k] == b[k] for k in a
    )


def test_breakdown_matches_compute_metrics_per_group():
    y_true = [A, R, E, R, A, R]
    y_pred = [A, R, A, A, E, R]
    groups = ["ja", "en", "ja", "ja", "en", "en"]
    out = breakdown(y_true, y_pred, groups)
    assert list(out) == ["ja", "en"]  # first-seen order
    # nan != nan, so compare the dicts with nan treated as equal
    assert _same(out["ja"].as_dict(), compute_metrics([A, E, R], [A, A, A]).as_dict())
    assert _same(out["en"].as_dict(), compute_metrics([R, A, R], [R, E, R]).as_dict())
    assert nan(out["en"].escalate_recall)
    assert out["ja"].overcompliance == 1.0 and out["en"].refuse_recall == 1.0
    assert sum(m.n for m in out.values()) == 6


def test_breakdown_length_mismatch():
    with pytest.raises(ValueError, match="length mismatch"):
        breakdown([A, R], [A, R], ["x"])


# --- binary_metrics -----------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    # unsafe = [0, 0, 1, 1]; pairs (unsafe, safe): .35>.1, .35<.4, .8>.1, .8>.4 -> AUROC 3/4.
    # Ranked .8(+) .4(-) .35(+) .1(-): AP = 0.5*1 + 0.5*(2/3) = 5/6.
    out = binary_metrics([A, A, R, E], [0.1, 0.4, 0.35, 0.8])
    assert out == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "false_positive_rate": 0.0, "auroc": 0.75, "auprc": 5 / 6}
    )


def test_binary_metrics_ties():
    # unsafe = [0, 1, 0, 1], scores .5 .5 .2 .9. AUROC pairs: (.5,.5)=1/2, (.5,.2)=1, (.9,.5)=1, (.9,.2)=1 -> 3.5/4.
    # AP: threshold .9 -> P 1, R 1/2; threshold .5 (both tied enter together) -> P 2/3, R 1 => 1/2 + 1/3.
    # At threshold .5 (inclusive): predicted unsafe = [1, 1, 0, 1] -> tp 2, fp 1.
    out = binary_metrics([A, R, A, E], [0.5, 0.5, 0.2, 0.9], threshold=0.5)
    assert out == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "false_positive_rate": 0.5, "auroc": 0.875, "auprc": 5 / 6}
    )


def test_binary_metrics_all_tied_scores():
    out = binary_metrics([A, R, A, R], [0.3] * 4)
    assert out["auroc"] == pytest.approx(0.5)
    assert out["auprc"] == pytest.approx(0.5)  # one threshold: precision = prevalence, recall 0 -> 1


def test_binary_metrics_perfect_and_inverted():
    assert binary_metrics([A, A, R, E], [0.1, 0.2, 0.8, 0.9])["auroc"] == 1.0
    assert binary_metrics([A, A, R, E], [0.1, 0.2, 0.8, 0.9])["auprc"] == 1.0
    assert binary_metrics([A, A, R, E], [0.9, 0.8, 0.2, 0.1])["auroc"] == 0.0
    # inverted: positives ranked 3rd, 4th -> AP = 0.5*(1/3) + 0.5*(2/4)
    assert binary_metrics([A, A, R, E], [0.9, 0.8, 0.2, 0.1])["auprc"] == pytest.approx(5 / 12)


def test_binary_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    s = rng.integers(0, 5, 60) / 4  # heavy ties
    pos, neg = s[y != A], s[y == A]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert binary_metrics(y, s)["auroc"] == pytest.approx(expected)


def test_binary_metrics_single_class():
    safe = binary_metrics([A, A, A], [0.2, 0.7, 0.9])
    assert nan(safe["auroc"]) and nan(safe["auprc"]) and nan(safe["recall"]) and nan(safe["f1"])
    assert safe["precision"] == 0.0 and safe["false_positive_rate"] == pytest.approx(2 / 3)
    unsafe = binary_metrics([R, E], [0.2, 0.7])
    assert nan(unsafe["auroc"]) and nan(unsafe["auprc"]) and nan(unsafe["false_positive_rate"])
    assert unsafe["recall"] == 0.5 and unsafe["precision"] == 1.0
    none_flagged = binary_metrics([A, R], [0.1, 0.2])
    assert nan(none_flagged["precision"]) and none_flagged["recall"] == 0.0 and none_flagged["f1"] == 0.0


def test_binary_metrics_length_mismatch():
    with pytest.raises(ValueError, match="length mismatch"):
        binary_metrics([A, R], [0.1])


# --- bootstrap_ci -------------------------------------------------------------------------------


def _sample(n=200, seed=1):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 3, n))
    return y_true, y_pred


def test_bootstrap_ci_deterministic_and_contains_point():
    y_true, y_pred = _sample()
    a = bootstrap_ci(y_true, y_pred, "refuse_recall", n=300, seed=7)
    assert a == bootstrap_ci(y_true, y_pred, "refuse_recall", n=300, seed=7)
    assert a != bootstrap_ci(y_true, y_pred, "refuse_recall", n=300, seed=8)
    for metric in ("refuse_recall", "safety_score", "overcompliance", "accuracy"):
        low, high = bootstrap_ci(y_true, y_pred, metric, n=300, seed=0)
        point = getattr(compute_metrics(y_true, y_pred), metric)
        assert 0.0 <= low < point < high <= 1.0, metric


def test_bootstrap_ci_narrows_with_alpha():
    y_true, y_pred = _sample()
    lo95, hi95 = bootstrap_ci(y_true, y_pred, "accuracy", n=300, alpha=0.05)
    lo50, hi50 = bootstrap_ci(y_true, y_pred, "accuracy", n=300, alpha=0.5)
    assert lo95 <= lo50 <= hi50 <= hi95


def test_bootstrap_ci_nan_safe():
    # one ESCALATE example: most resamples miss it (nan) and are skipped, the rest give 0 or 1
    y_true = [A] * 9 + [E]
    y_pred = [A] * 9 + [E]
    low, high = bootstrap_ci(y_true, y_pred, "escalate_recall", n=200)
    assert (low, high) == (1.0, 1.0)
    # never defined: no ESCALATE at all
    assert all(map(nan, bootstrap_ci([A, R], [A, R], "escalate_recall", n=50)))
    assert all(map(nan, bootstrap_ci([], [], "accuracy", n=10)))


def test_bootstrap_ci_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci([A], [A], "confusion", n=5)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci([A], [A], "f2", n=5)


# --- calibration --------------------------------------------------------------------------------

PROBS = [
    [0.9, 0.05, 0.05],  # conf .9, right
    [0.8, 0.1, 0.1],  # conf .8, wrong (label E)
    [0.2, 0.7, 0.1],  # conf .7, right
    [0.25, 0.25, 0.5],
]  # conf .5, right
LABELS = [A, E, E, R]


def test_ece_by_hand_ten_bins():
    # each example alone in its bin: (|1-.9| + |0-.8| + |1-.7| + |1-.5|) / 4
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(1.7 / 4)


def test_reliability_bins_and_ece_two_bins():
    bins = reliability_bins(PROBS, LABELS, n_bins=2)
    assert bins[0] == pytest.approx({"lower": 0.0, "upper": 0.5, "confidence": 0.5, "accuracy": 1.0, "count": 1})
    assert bins[1] == pytest.approx({"lower": 0.5, "upper": 1.0, "confidence": 0.8, "accuracy": 2 / 3, "count": 3})
    # 1/4 * |1 - .5| + 3/4 * |2/3 - .8|
    assert expected_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(0.225)


def test_reliability_bins_empty_bins_and_edges():
    bins = reliability_bins([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [A, R], n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 2]  # confidence 1.0 lands in the last bin
    assert nan(bins[0]["confidence"]) and nan(bins[0]["accuracy"])
    assert expected_calibration_error([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [A, R], n_bins=5) == 0.0


def test_calibration_empty_and_bad_shape():
    assert nan(expected_calibration_error(np.zeros((0, 3)), []))
    with pytest.raises(ValueError, match="N x classes"):
        reliability_bins([[0.5, 0.5, 0.0]], [A, R])
