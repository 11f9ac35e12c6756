"""Decision thresholds and the decision rule, re-exported from `so8t.model.thresholds`: they
belong to the run (RUN/thresholds.json), and training's calibration, eval and the gate all use
them, so they live in the model stage, below each of those. This path keeps working for callers
that import it."""

from so8t.model.thresholds import (
    CHANGE_KPIS,
    OBJECTIVES,
    PROPOSAL_FILE,
    THRESHOLDS_FILE,
    Calibration,
    CalibrationError,
    Thresholds,
    calibrate,
    decide,
    escalation_prob,
    false_refusal,
    format_change,
    load_thresholds,
    remove_thresholds,
    save_thresholds,
)

__all__ = [
    "CHANGE_KPIS",
    "OBJECTIVES",
    "PROPOSAL_FILE",
    "THRESHOLDS_FILE",
    "Calibration",
    "CalibrationError",
    "Thresholds",
    "calibrate",
    "decide",
    "escalation_prob",
    "false_refusal",
    "format_change",
    "load_thresholds",
    "remove_thresholds",
    "save_thresholds",
]
