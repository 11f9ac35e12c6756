"""Stage 4: metrics (the one definition of every KPI), reports and plots."""

from so8t.metrics import DEFAULT_TARGETS, SafetyMetrics, compute_metrics

__all__ = ["DEFAULT_TARGETS", "SafetyMetrics", "compute_metrics"]
