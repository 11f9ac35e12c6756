"""Decision thresholds on the head's probabilities (the seed's phase 3: "confidence threshold
-> automatic ESCALATE"), chosen on a dev set by `so8t calibrate`, stored in the run, and used
by `so8t eval` and the gate alike.

The rule, for probabilities (p_allow, p_escalate, p_refuse):

    p_refuse >= refuse_at            -> REFUSE    (refusing what must be refused comes first)
    else p_allow >= allow_at         -> ALLOW     (ALLOW only when the head is sure enough)
    else                             -> ESCALATE  (everything unsure goes to a person)

Without thresholds the decision is the argmax. Lowering refuse_at raises refuse recall;
raising allow_at moves unsure ALLOWs to ESCALATE (fewer dangerous ALLOWs, more false
escalations). The calibrator searches a grid of both and keeps the best point that meets the
constraints; every point is kept for the trade-off plot.

Guarantees: thresholds.json in a run is what serve, chat, demo and eval use, so `so8t calibrate`
writes it only when asked to (--apply); without --apply the choice is a proposal
(RUN/calibration/proposal.json) that changes nothing. `remove_thresholds` (calibrate --reset)
returns the run to the argmax rule. Every write is atomic.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from so8t.eval.metrics import SafetyMetrics, compute_metrics
from so8t.fsutil import atomic_write_text
from so8t.labels import Action

THRESHOLDS_FILE = "thresholds.json"
PROPOSAL_FILE = "calibration/proposal.json"   # relative to the run
CHANGE_KPIS = ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")
OBJECTIVES = ("safety_score", "refuse_recall")


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Thresholds:
    refuse_at: float
    allow_at: float

    def __post_init__(self):
        for name in ("refuse_at", "allow_at"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")


def decide(probs, thresholds: Thresholds | None = None) -> np.ndarray:
    """Actions (ints) for an N x 3 array of probabilities; argmax when thresholds is None.

    Never fails open: a tie goes to the stricter action (the column order is the severity
    order, so argmax over the reversed columns picks the strictest of the tied), and a row
    holding NaN or an infinity is REFUSE (numpy's argmax would read NaN as index 0 = ALLOW)."""
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(Action):
        raise ValueError(f"probabilities must be N x {len(Action)}, got shape {p.shape}")
    broken = ~np.isfinite(p).all(axis=1)
    if thresholds is None:
        out = (len(Action) - 1) - p[:, ::-1].argmax(axis=1)
    else:
        out = np.full(len(p), int(Action.ESCALATE))
        allow = p[:, Action.ALLOW] >= thresholds.allow_at
        refuse = p[:, Action.REFUSE] >= thresholds.refuse_at
        out[allow] = int(Action.ALLOW)
        out[refuse] = int(Action.REFUSE)  # REFUSE wins over ALLOW
    out[broken] = int(Action.REFUSE)
    return out


def false_refusal(m: SafetyMetrics) -> float:
    """Share of ALLOW-labelled examples not allowed (sent to ESCALATE or REFUSE)."""
    return 1.0 - m.allow_recall if not np.isnan(m.allow_recall) else float("nan")


@dataclass
class Calibration:
    thresholds: Thresholds
    objective: str
    min_refuse_recall: float
    max_false_refusal: float | None
    before: SafetyMetrics                   # argmax on the same data
    after: SafetyMetrics
    curve: list[dict] = field(default_factory=list)  # every grid point: thresholds + KPIs
    data: list[str] = field(default_factory=list)
    n: int = 0

    def as_dict(self) -> dict:
        return {
            "thresholds": asdict(self.thresholds), "objective": self.objective,
            "min_refuse_recall": self.min_refuse_recall, "max_false_refusal": self.max_false_refusal,
            "data": self.data, "n": self.n, "before": self.before.as_dict(), "after": self.after.as_dict(),
        }


def calibrate(probs, y_true, *, objective: str = "safety_score", min_refuse_recall: float = 0.0,
              max_false_refusal: float | None = None, grid: int = 19) -> Calibration:
    """Grid-search (refuse_at, allow_at) on labelled probabilities.

    objective 'safety_score' maximises the combined score; 'refuse_recall' maximises refuse
    recall (ties: the higher score). Constraints: refuse recall >= min_refuse_recall and, if
    given, false-refusal rate <= max_false_refusal. Raises CalibrationError when no grid point
    meets them, naming the best each constraint could reach.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    if not len(y):
        raise CalibrationError("no labelled examples to calibrate on")
    if not (y == Action.REFUSE).any() and min_refuse_recall > 0:
        raise CalibrationError("the calibration data has no REFUSE example, so refuse recall is undefined")
    values = np.linspace(0.05, 0.95, grid)
    curve, best, best_key = [], None, None
    for r in values:
        for a in values:
            thr = Thresholds(round(float(r), 4), round(float(a), 4))
            m = compute_metrics(y, decide(p, thr))
            fr = false_refusal(m)
            point = {**asdict(thr), **{k: getattr(m, k) for k in ("refuse_recall", "escalate_recall", "overcompliance",
                                                                   "allow_recall", "safety_score")}, "false_refusal": fr}
            curve.append(point)
            rr = 0.0 if np.isnan(m.refuse_recall) else m.refuse_recall
            if rr < min_refuse_recall or (max_false_refusal is not None and not fr <= max_false_refusal):
                continue
            key = (m.safety_score, rr) if objective == "safety_score" else (rr, m.safety_score)
            if best_key is None or key > best_key:
                best, best_key = (thr, m), key
    if best is None:
        top_rr = max(np.nan_to_num(c["refuse_recall"]) for c in curve)
        low_fr = min(np.nan_to_num(c["false_refusal"], nan=1.0) for c in curve)
        raise CalibrationError(
            f"no thresholds meet refuse recall >= {min_refuse_recall}"
            + (f" and false refusal <= {max_false_refusal}" if max_false_refusal is not None else "")
            + f" on this data (best refuse recall {top_rr:.3f}, lowest false refusal {low_fr:.3f})")
    return Calibration(best[0], objective, min_refuse_recall, max_false_refusal,
                       compute_metrics(y, decide(p)), best[1], curve, n=len(y))


def save_thresholds(run_dir: str | Path, cal: Calibration, *, proposal: bool = False) -> Path:
    """Write the calibration atomically (a crash leaves the old file or none): into the run's
    thresholds.json, which the gate then uses, or with proposal=True to RUN/calibration/proposal.json,
    which nothing reads."""
    path = Path(run_dir) / (PROPOSAL_FILE if proposal else THRESHOLDS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cal.as_dict(), indent=2, ensure_ascii=False))
    return path


def remove_thresholds(run_dir: str | Path) -> Path | None:
    """Delete the run's thresholds.json (the gate goes back to argmax); the path removed, or None
    when the run had none."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    path.unlink()
    return path


def format_change(cal: Calibration) -> str:
    """What the thresholds change on the calibration data: argmax against the chosen thresholds,
    KPI by KPI, with the difference (overcompliance: lower is better)."""
    lines = [f"{'KPI (calibration data)':<24}{'argmax':>8}{'thresholds':>12}{'change':>9}", "-" * 53]
    for key in CHANGE_KPIS:
        a, b = getattr(cal.before, key), getattr(cal.after, key)
        better = "" if np.isnan(a) or np.isnan(b) or a == b else (
            " better" if (b < a) == (key == "overcompliance") else " worse")
        d = "n/a" if np.isnan(a) or np.isnan(b) else f"{b - a:+.3f}"
        lines.append(f"{key:<24}{a:>8.3f}{b:>12.3f}{d:>9}{better}")
    return "\n".join(lines)


def load_thresholds(run_dir: str | Path) -> Thresholds | None:
    """The run's calibrated thresholds, or None when it was never calibrated."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        t = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
        return Thresholds(float(t["refuse_at"]), float(t["allow_at"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid thresholds file ({exc}); rerun so8t calibrate") from exc
