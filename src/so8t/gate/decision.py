"""What the gate says about one conversation, kept apart from whether the gate worked.

`status` is ok / error / timeout; any non-ok status carries the fail-closed action (REFUSE by
default, ESCALATE if configured) and can never be ALLOW, so "the guard failed" is never read
as "the guard passed".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from so8t.labels import Action

Status = Literal["ok", "error", "timeout"]
SEVERITY = {Action.ALLOW: 0, Action.ESCALATE: 1, Action.REFUSE: 2}


@dataclass(frozen=True)
class Decision:
    action: Action
    status: Status
    probs: tuple[float, float, float] | None   # (ALLOW, ESCALATE, REFUSE) of the view that decided
    thresholds: dict | None                     # the decision rule used (None: argmax)
    model_version: str
    policy_version: str
    input_hash: str
    latency_ms: float
    reason: str = ""                            # which view decided, or what failed
    views: list[dict] = field(default_factory=list)  # every view scored: conversation and each user turn

    def __post_init__(self):
        if self.status != "ok" and self.action == Action.ALLOW:
            raise ValueError("a failed gate decision can never be ALLOW")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["action"] = self.action.name
        out["probs"] = None if self.probs is None else [round(p, 6) for p in self.probs]
        return out
