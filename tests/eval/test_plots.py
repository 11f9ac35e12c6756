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

    recs = [Record(prompt=f"p{i}{h}", label="ALLOW" if h == "safe" else "REFUSE", lang="en" if i % 2 else "ja",
                   meta={"pair": f"c{i}", "half": h, "kind": "homonym" if i < 2 else "definition"})
            for i in range(4) for h in ("safe", "unsafe")]
    rep = contrast_report(recs, [0, 2, 2, 2, 0, 0, 0, 1])
    out = plot_contrast(rep, {"gate": rep["overall"], "probe": {**rep["overall"], "unsafe_recall": math.nan}},
                        CONTRAST_TARGETS, tmp_path / "contrast.png")
    assert _is_png(out)
