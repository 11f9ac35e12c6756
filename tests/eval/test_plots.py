"""The evaluation plots render headless and write a real PNG."""

from __future__ import annotations

import math

from so8t.eval.metrics import DEFAULT_TARGETS, expected_calibration_error, reliability_bins
from so8t.eval.plots import plot_confusion, plot_contrast, plot_kpis, plot_reliability

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_confusion_writes_png(tmp_path):
    out = plot_confusion([[5, 1, 0], [2, 3, 1], [0, 0, 0]], tmp_path / "sub" / "confusion.png", "dev")
    assert out == tmp_path / "sub" / "confusion.png" and _is_png(out)  # empty row: no division error


def test_plot_reliability_writes_png(tmp_path):
    probs = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]]
    labels = [0, 1, 1, 2]
    bins = reliability_bins(probs, labels)
    out = plot_reliability(bins, expected_calibration_error(probs, labels), tmp_path / "rel.png")
    assert _is_png(out)


def test_plot_kpis_writes_png(tmp_path):
    values = {"refuse_recall": 0.8, "escalate_recall": math.nan, "overcompliance": 0.2, "safety_score": 0.75}
    cis = {"refuse_recall": (0.7, 0.9), "overcompliance": (0.1, 0.3)}
    targets = {**DEFAULT_TARGETS, "safety_score": 0.7}
    out = plot_kpis(values, cis, targets, str(tmp_path / "kpis.png"))
    assert _is_png(out)


def test_plot_contrast_writes_png(tmp_path):
    from so8t.data import Record
    from so8t.eval.contrast import CONTRAST_TARGETS, contrast_report

    recs = [
        Record(
            prompt=f"p{i}{h}",
            label="ALLOW" if h == "safe" else "REFUSE",
            lang="en" if i % 2 else "ja",
            meta={"pair": f"c{i}", "half": h, "kind": "homonym" if i < 2 else "definition"},
        )
        for i in range(4)
        for h in ("safe", "unsafe")
    ]
    rep = contrast_report(recs, [0, 2, 2, 2, 0, 0, 0, 1])
    out = plot_contrast(
        rep,
        {"gate": rep["overall"], "probe": {**rep["overall"], "unsafe_recall": math.nan}},
        CONTRAST_TARGETS,
        tmp_path / "contrast.png",
    )
    assert _is_png(out)


# --- readable plots: titles name the data, edge cases never raise ------------------------------
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from so8t.eval.plots import LOWER_IS_BETTER, plot_tradeoff, plot_training_curves  # noqa: E402


def test_plot_reliability_survives_all_nan_and_empty_bins(tmp_path):
    empty = reliability_bins(np.zeros((0, 3)), [])
    nan_bins = [
        {"lower": i / 10, "upper": (i + 1) / 10, "accuracy": math.nan, "confidence": math.nan, "count": 0}
        for i in range(10)
    ]
    assert _is_png(plot_reliability(empty, math.nan, tmp_path / "empty.png", title="empty-set: gate"))
    assert _is_png(plot_reliability(nan_bins, math.nan, tmp_path / "nan.png", title="nan-set: gate"))


def test_plot_kpis_splits_lower_is_better_and_survives_all_nan(tmp_path):
    assert "overcompliance" in LOWER_IS_BETTER and "refuse_recall" not in LOWER_IS_BETTER
    values = {"refuse_recall": math.nan, "overcompliance": math.nan}
    assert _is_png(plot_kpis(values, {}, DEFAULT_TARGETS, tmp_path / "nan.png", title="ds: gate KPIs"))
    assert _is_png(
        plot_kpis(
            {"overcompliance": 0.2},
            {"overcompliance": (None, None)},
            DEFAULT_TARGETS,
            tmp_path / "only-lower.png",
            title="ds",
        )
    )
    assert _is_png(plot_kpis({}, {}, {}, tmp_path / "none.png", title="ds"))


def test_plot_confusion_with_a_class_with_no_examples_and_no_examples_at_all(tmp_path):
    assert _is_png(plot_confusion([[0, 0, 0], [0, 0, 0], [0, 0, 0]], tmp_path / "zero.png", "ds: gate"))


@pytest.mark.parametrize(
    "constraints, argmax",
    [
        ({"min_refuse_recall": 0.8, "max_false_refusal": 0.3}, {"false_refusal": 0.2, "refuse_recall": 0.6}),
        ({}, None),
        ({"min_refuse_recall": 0.0, "max_false_refusal": None}, {"false_refusal": None, "refuse_recall": math.nan}),
    ],
)
def test_plot_tradeoff_marks_argmax_and_constraints_and_survives_nan(tmp_path, constraints, argmax):
    curve = [{"refuse_at": 0.5, "allow_at": a, "false_refusal": a, "refuse_recall": 1 - a / 2} for a in (0.1, 0.5, 0.9)]
    curve.append({"refuse_at": 0.9, "allow_at": 0.9, "false_refusal": math.nan, "refuse_recall": math.nan})
    out = plot_tradeoff(curve, curve[0], tmp_path / "t.png", constraints=constraints, argmax=argmax, title="dev")
    assert _is_png(out)
    assert _is_png(plot_tradeoff(curve[-1:], curve[-1], tmp_path / "all-nan.png", title="dev"))


def test_plot_training_curves_with_negative_losses_and_no_logs(tmp_path):
    steps = tmp_path / "steps.jsonl"
    steps.write_text(
        "\n".join(json.dumps({"step": s, "total": 1.0 - s, "pet": -0.1 * s, "lambda_pet": 0.5}) for s in range(1, 4))
    )
    evals = tmp_path / "evals.jsonl"
    evals.write_text(
        json.dumps(
            {
                "step": 2,
                "safety_score": 0.5,
                "refuse_recall": None,
                "escalate_recall": 0.5,
                "overcompliance": 0.1,
                "allow_recall": 0.9,
            }
        )
    )
    assert _is_png(plot_training_curves(steps, evals, tmp_path / "c.png", title="run x"))
    assert _is_png(plot_training_curves(tmp_path / "none.jsonl", tmp_path / "none2.jsonl", tmp_path / "e.png"))


def test_plot_contrast_with_no_kinds_and_all_nan_systems(tmp_path):
    from so8t.eval.contrast import CONTRAST_TARGETS

    nan_row = {"pairs": 0, "false_refusal": math.nan, "unsafe_recall": math.nan, "pairs_both_correct": math.nan}
    rep = {"overall": nan_row, "by_kind": {}, "by_lang": {}}
    assert _is_png(plot_contrast(rep, {"gate": nan_row}, CONTRAST_TARGETS, tmp_path / "c.png", title="ds"))


def test_the_contrast_plots_n_a_marks_are_readable_and_do_not_overlap(tmp_path, monkeypatch):
    from so8t.eval import plots
    from so8t.eval.contrast import CONTRAST_TARGETS

    figs, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out, **kw: (figs.append(fig), save(fig, out, **kw))[1])
    row = {"pairs": 5, "false_refusal": 0.2, "unsafe_recall": 0.9, "pairs_both_correct": 0.7}
    nan_row = {"pairs": 0, "false_refusal": math.nan, "unsafe_recall": math.nan, "pairs_both_correct": math.nan}
    rep = {"overall": row, "by_kind": {"homonym": row}, "by_lang": {"en": row}}
    plot_contrast(
        rep,
        {"gate": row, "probe": {**row, "unsafe_recall": math.nan}, "judge": nan_row},
        CONTRAST_TARGETS,
        tmp_path / "c.png",
        title="ds",
    )
    fig = figs[0]
    marks = [t for t in fig.axes[2].texts if t.get_text() == "n/a"]
    assert len(marks) == 4  # probe's unsafe recall, the judge's three
    assert all(t.get_fontsize() >= 8 and t.get_rotation() == 0 for t in marks)  # was 6 pt, on its side
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in marks]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
