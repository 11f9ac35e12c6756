"""Decision thresholds on the head's probabilities (the seed's phase 3: "confidence threshold
-> automatic ESCALATE"), chosen on a dev set by `so8t calibrate`, stored in the run, and used
by `so8t eval` and the gate alike. The module sits in the model stage, beside the run it
belongs to, so training (which calibrates on dev), eval and the gate all import it downhill.

The rule, for probabilities (p_allow, p_escalate, p_refuse):

    p_refuse >= refuse_at            -> REFUSE    (refusing what must be refused comes first)
    else p_allow >= allow_at         -> ALLOW     (ALLOW only when the head is sure enough)
    else                             -> ESCALATE  (everything unsure goes to a person)

A split head (model.head, kind 'split': a primary head r = P(REFUSE) and an escalation judge
e = P(needs a person | not refused)) has its own rule, one threshold per head:

    r >= refuse_at                   -> REFUSE
    else e >= escalate_at            -> ESCALATE
    else                             -> ALLOW

read from its composed probabilities as r = p_refuse, e = p_escalate / (p_allow + p_escalate).

Without thresholds the decision is the argmax. Lowering refuse_at raises refuse recall;
raising allow_at (lowering escalate_at) moves unsure ALLOWs to ESCALATE (fewer dangerous
ALLOWs, more false escalations). The calibrator searches a grid of both thresholds of the
run's kind and keeps the best point that meets the constraints; every point is kept for the
trade-off plot. thresholds.json records the kind (`head_kind`; a file without it is
three-way), and loading refuses thresholds of the other kind than the run's head.

Guarantees: thresholds.json in a run is what serve, chat, demo and eval use, so `so8t calibrate`
writes it only when asked to (--apply); without --apply the choice is a proposal
(RUN/calibration/proposal.json) that changes nothing. `remove_thresholds` (calibrate --reset)
returns the run to the argmax rule. Every write is atomic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from so8t.fsutil import atomic_write_text
from so8t.labels import Action
from so8t.metrics import SafetyMetrics, compute_metrics
from so8t.model.head import HEAD_CONFIG, HEAD_KINDS, HeadKind, run_head_kind

THRESHOLDS_FILE = "thresholds.json"
PROPOSAL_FILE = "calibration/proposal.json"  # relative to the run
CHANGE_KPIS = ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")
OBJECTIVES = ("safety_score", "refuse_recall")


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Thresholds:
    """refuse_at and allow_at (the three-way rule), or refuse_at and escalate_at (a split head's)."""

    refuse_at: float
    allow_at: float | None = None
    escalate_at: float | None = None

    def __post_init__(self):
        if (self.allow_at is None) == (self.escalate_at is None):
            raise ValueError(
                "thresholds need refuse_at and exactly one of allow_at (three-way head) or escalate_at (split head)"
            )
        for name in ("refuse_at", "allow_at", "escalate_at"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")

    @property
    def kind(self) -> HeadKind:
        return "split" if self.escalate_at is not None else "three_way"

    def as_dict(self) -> dict[str, float]:
        """The two thresholds of this kind, by name (what thresholds.json and decisions record)."""
        second = "escalate_at" if self.kind == "split" else "allow_at"
        return {"refuse_at": self.refuse_at, second: getattr(self, second)}

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())

    @classmethod
    def of_kind(cls, kind: HeadKind, refuse_at: float, second: float) -> Thresholds:
        return cls(refuse_at, escalate_at=second) if kind == "split" else cls(refuse_at, allow_at=second)


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
    elif thresholds.kind == "split":
        out = np.full(len(p), int(Action.ALLOW))
        out[escalation_prob(p) >= thresholds.escalate_at] = int(Action.ESCALATE)
        out[p[:, Action.REFUSE] >= thresholds.refuse_at] = int(Action.REFUSE)  # the primary head first
    else:
        out = np.full(len(p), int(Action.ESCALATE))
        allow = p[:, Action.ALLOW] >= thresholds.allow_at
        refuse = p[:, Action.REFUSE] >= thresholds.refuse_at
        out[allow] = int(Action.ALLOW)
        out[refuse] = int(Action.REFUSE)  # REFUSE wins over ALLOW
    out[broken] = int(Action.REFUSE)
    return out


def escalation_prob(p: np.ndarray) -> np.ndarray:
    """e = P(ESCALATE | not REFUSE) for N x 3 probabilities: the split head's judge, recovered
    from its composed probabilities (for a three-way head: ESCALATE's share of the rest). Where
    nothing is left beside REFUSE (r = 1) it is 1: the stricter reading."""
    rest = p[:, Action.ALLOW] + p[:, Action.ESCALATE]
    return np.divide(p[:, Action.ESCALATE], rest, out=np.ones(len(p)), where=rest > 0)


def false_refusal(m: SafetyMetrics) -> float:
    """Share of ALLOW-labelled examples not allowed (sent to ESCALATE or REFUSE)."""
    return 1.0 - m.allow_recall if not np.isnan(m.allow_recall) else float("nan")


@dataclass
class Calibration:
    thresholds: Thresholds
    objective: str
    min_refuse_recall: float
    max_false_refusal: float | None
    before: SafetyMetrics  # argmax on the same data
    after: SafetyMetrics
    curve: list[dict] = field(default_factory=list)  # every grid point: thresholds + KPIs
    data: list[str] = field(default_factory=list)
    n: int = 0

    def as_dict(self) -> dict:
        return {
            "head_kind": self.thresholds.kind,
            "thresholds": self.thresholds.as_dict(),
            "objective": self.objective,
            "min_refuse_recall": self.min_refuse_recall,
            "max_false_refusal": self.max_false_refusal,
            "data": self.data,
            "n": self.n,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
        }


def calibrate(
    probs,
    y_true,
    *,
    objective: str = "safety_score",
    min_refuse_recall: float = 0.0,
    max_false_refusal: float | None = None,
    grid: int = 19,
    kind: HeadKind = "three_way",
) -> Calibration:
    """Grid-search (refuse_at, allow_at), or for kind='split' (refuse_at, escalate_at), on
    labelled probabilities.

    objective 'safety_score' maximises the combined score; 'refuse_recall' maximises refuse
    recall (ties: the higher score). Constraints: refuse recall >= min_refuse_recall and, if
    given, false-refusal rate <= max_false_refusal. Raises CalibrationError when no grid point
    meets them, naming the best each constraint could reach.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
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
            thr = Thresholds.of_kind(kind, round(float(r), 4), round(float(a), 4))
            m = compute_metrics(y, decide(p, thr))
            fr = false_refusal(m)
            point = {
                **thr.as_dict(),
                **{
                    k: getattr(m, k)
                    for k in ("refuse_recall", "escalate_recall", "overcompliance", "allow_recall", "safety_score")
                },
                "false_refusal": fr,
            }
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
            + f" on this data (best refuse recall {top_rr:.3f}, lowest false refusal {low_fr:.3f})"
        )
    return Calibration(
        best[0],
        objective,
        min_refuse_recall,
        max_false_refusal,
        compute_metrics(y, decide(p)),
        best[1],
        curve,
        n=len(y),
    )


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
    if not (path.is_file() or path.is_symlink()):  # a dangling link is removed too
        return None
    path.unlink()
    return path


def format_change(cal: Calibration) -> str:
    """What the thresholds change on the calibration data: argmax against the chosen thresholds,
    KPI by KPI, with the difference (overcompliance: lower is better)."""
    lines = [f"{'KPI (calibration data)':<24}{'argmax':>8}{'thresholds':>12}{'change':>9}", "-" * 53]
    for key in CHANGE_KPIS:
        a, b = getattr(cal.before, key), getattr(cal.after, key)
        better = (
            ""
            if np.isnan(a) or np.isnan(b) or a == b
            else (" better" if (b < a) == (key == "overcompliance") else " worse")
        )
        d = "n/a" if np.isnan(a) or np.isnan(b) else f"{b - a:+.3f}"
        lines.append(f"{key:<24}{a:>8.3f}{b:>12.3f}{d:>9}{better}")
    return "\n".join(lines)


def load_thresholds(run_dir: str | Path) -> Thresholds | None:
    """The run's calibrated thresholds, or None when it was never calibrated (no thresholds.json
    at all). A thresholds.json that is not a regular file (a dangling symlink, a folder) or not a
    valid thresholds object is a ValueError naming it, never a silent argmax; so is a file of
    another kind than the run's head (head.json): the gate would apply the wrong rule."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        if path.is_symlink() or path.exists():  # a dangling link or a folder: broken, not "never calibrated"
            raise ValueError(
                f"{path}: not a regular file (a dangling link or a folder); remove it "
                f"(so8t calibrate {run_dir} --reset removes a link) and rerun so8t calibrate"
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        kind = data.get("head_kind", "three_way")
        if kind not in HEAD_KINDS:
            raise ValueError(f"head_kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        t = data["thresholds"]
        second = "escalate_at" if kind == "split" else "allow_at"
        thresholds = Thresholds.of_kind(kind, float(t["refuse_at"]), float(t[second]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid thresholds file ({exc}); rerun so8t calibrate") from exc
    if (Path(run_dir) / HEAD_CONFIG).is_file() and (head := run_head_kind(run_dir)) != kind:
        raise ValueError(
            f"{path}: thresholds for a {kind} head, but the run's head ({HEAD_CONFIG}) is {head}; "
            f"rerun so8t calibrate {run_dir} --apply"
        )
    return thresholds
