"""What the gate says about one conversation, kept apart from whether the gate worked.

`status` is ok / error / timeout / busy (the gate's queue was full: nothing was scored); any
non-ok status carries the fail-closed action (REFUSE by default, ESCALATE if configured) and can
never be ALLOW, so "the guard failed" is never read as "the guard passed".

`why_escalated(decision_dict)` tells an approver why a stored decision is ESCALATE when the head
itself did not pick ESCALATE: a confidence threshold (the head's top choice was ALLOW or REFUSE,
but not with the probability the calibrated threshold asks; for a split head, whose thresholds
are refuse_at and escalate_at, the escalation judge's threshold), or a gate failure with the
fail action ESCALATE. It reads only what a Decision records (action, status, probs, thresholds, reason).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeGuard

from so8t.labels import Action

Status = Literal["ok", "error", "timeout", "busy"]
SEVERITY = {Action.ALLOW: 0, Action.ESCALATE: 1, Action.REFUSE: 2}


@dataclass(frozen=True)
class Decision:
    action: Action
    status: Status
    probs: tuple[float, float, float] | None  # (ALLOW, ESCALATE, REFUSE) of the view that decided
    thresholds: dict | None  # the decision rule used (None: argmax)
    model_version: str
    policy_version: str
    input_hash: str
    latency_ms: float
    reason: str = ""  # which view decided, or what failed
    views: list[dict] = field(default_factory=list)  # every view scored: conversation and each user turn

    def __post_init__(self):
        if self.status != "ok" and self.action == Action.ALLOW:
            raise ValueError("a failed gate decision can never be ALLOW")
        if self.status == "ok" and not finite_probs(self.probs):
            raise ValueError(f"an ok decision needs three finite probabilities, got {self.probs!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        """JSON-safe: no NaN or infinity anywhere (a non-finite number becomes None)."""
        out = _json_safe(asdict(self))
        out["action"] = self.action.name
        out["probs"] = None if self.probs is None else [_round(p) for p in self.probs]
        return out


def finite_probs(probs) -> TypeGuard[Iterable[Any]]:
    """Three finite numbers in [0, 1] that sum to 1 (within float error)."""
    try:
        values = [float(x) for x in probs]
    except (TypeError, ValueError):
        return False
    return (
        len(values) == 3
        and all(math.isfinite(x) and -1e-6 <= x <= 1 + 1e-6 for x in values)
        and abs(sum(values) - 1.0) < 1e-3
    )


def _round(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def why_escalated(decision: dict) -> str | None:
    """Why ``decision`` (a ``Decision.to_dict()``, e.g. an approval's stored decision) is ESCALATE
    when that was not the head's own top choice; None when it was (or the action is not ESCALATE,
    or the decision does not record enough to tell)."""
    if not isinstance(decision, dict) or decision.get("action") != Action.ESCALATE.name:
        return None
    reason = str(decision.get("reason") or "")
    if decision.get("status", "ok") != "ok":
        return (
            f"the gate did not decide (status {decision.get('status')}): {reason or 'no reason recorded'}; "
            "it fails closed to ESCALATE"
        )
    probs, thr = decision.get("probs"), decision.get("thresholds")
    if (
        not isinstance(thr, dict)
        or not finite_probs(probs)
        or "refuse_at" not in thr
        or not ({"allow_at", "escalate_at"} & set(thr))
    ):
        return None  # argmax, or not recorded: the head itself chose ESCALATE
    p = [float(x) for x in probs]
    top = Action(max(range(3), key=lambda i: (p[i], SEVERITY[Action(i)])))  # ties: the stricter, as decide()
    if top == Action.ESCALATE:
        return None
    where = reason.split("; ", 1)[1] if "; " in reason else ""
    where = f" ({where})" if where else ""
    if "escalate_at" in thr:
        return _why_split(p, top, float(thr["refuse_at"]), float(thr["escalate_at"]), where)
    allow_at, refuse_at = float(thr["allow_at"]), float(thr["refuse_at"])
    if top == Action.ALLOW:
        return (
            f"escalated by the confidence threshold, not by the head: its top choice was ALLOW, but P(ALLOW) "
            f"{p[0]:.2f} is below allow_at {allow_at:.2f}, so it was not sure enough to allow{where}"
        )
    return (
        f"escalated by the confidence threshold, not by the head: its top choice was REFUSE, but P(REFUSE) "
        f"{p[2]:.2f} is below refuse_at {refuse_at:.2f} (and P(ALLOW) {p[0]:.2f} below allow_at "
        f"{allow_at:.2f}), so it was not sure enough to refuse{where}"
    )


def _why_split(p: list[float], top: Action, refuse_at: float, escalate_at: float, where: str) -> str:
    """A split head's ESCALATE where its composed top choice was ALLOW or REFUSE: the judge's
    e = P(needs a person | not refused) reached escalate_at (and P(REFUSE) stayed below refuse_at)."""
    rest = p[0] + p[1]
    e = p[1] / rest if rest > 0 else 1.0
    judge = (
        f"the escalation judge's P(needs a person | not refused) {e:.2f} is at or above escalate_at {escalate_at:.2f}"
    )
    if top == Action.ALLOW:
        return f"escalated by the escalation judge's threshold, not by the top choice (ALLOW): {judge}{where}"
    return (
        f"escalated by the thresholds, not by the top choice (REFUSE): P(REFUSE) {p[2]:.2f} is below refuse_at "
        f"{refuse_at:.2f}, so the primary head did not refuse, and {judge}{where}"
    )
