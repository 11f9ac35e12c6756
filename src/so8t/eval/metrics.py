"""The safety KPIs, re-exported from `so8t.metrics` (their one definition, below every stage,
so training's early stopping and calibration use them without importing from eval). This
path keeps working for callers that import it."""

from so8t.metrics import (
    DEFAULT_TARGETS,
    SCORE_WEIGHTS,
    Labels,
    SafetyMetrics,
    Scores,
    binary_metrics,
    bootstrap_ci,
    breakdown,
    check_targets,
    compute_metrics,
    confusion_matrix,
    expected_calibration_error,
    format_kpis,
    per_class_report,
    reliability_bins,
    verdict,
)

__all__ = [
    "DEFAULT_TARGETS",
    "SCORE_WEIGHTS",
    "Labels",
    "SafetyMetrics",
    "Scores",
    "binary_metrics",
    "bootstrap_ci",
    "breakdown",
    "check_targets",
    "compute_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "format_kpis",
    "per_class_report",
    "reliability_bins",
    "verdict",
]
