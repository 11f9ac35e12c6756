"""Every audit event name, in one list: what the agent writes to the audit log and what it reads back.

Guarantees:

* Every record so8t writes carries one of ``EVENTS`` (the gate, the LLM, tool calls, approvals,
  autonomy changes, the store's own recovery), spelled as written here; every module that writes
  or reads an event uses these constants, not its own string.
* The approval events are spelled the way the approval queue has always written them:
  ``approval.rejected`` and ``approval.timeout``. The other spelling, ``approval.denied`` and
  ``approval.expired`` (the names this module's predecessor declared, though no code wrote them),
  is read as the same event (``canonical_event``), so a log or a script that uses it keeps
  meaning the same thing. ``so8t audit verify`` checks hashes and the chain, never event names:
  any non-empty event string, old or new, verifies.
"""

from __future__ import annotations

# -- the gate and the LLM (so8t.agent.router, so8t.agent.service)
GATE_ALLOW = "gate.allow"
GATE_ESCALATE = "gate.escalate"
GATE_REFUSE = "gate.refuse"
GATE_ERROR = "gate.error"
GATE_SHADOW = "gate.shadow"  # shadow mode: what the gate would have done
LLM_ERROR = "llm.error"

# -- tool calls (so8t.agent.toolloop)
TOOL_INVALID = "tool.invalid"
TOOL_PROPOSED = "tool.proposed"
TOOL_ALLOWED = "tool.allowed"  # the decision to run an auto call, written before it runs
TOOL_REFUSED = "tool.refused"
TOOL_ESCALATED = "tool.escalated"
TOOL_EXECUTED = "tool.executed"
TOOL_FAILED = "tool.failed"
TOOL_RESULT_WITHHELD = "tool.result_withheld"

# -- the approval queue (so8t.agent.approvals): the life of an item
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_APPROVED = "approval.approved"
APPROVAL_REJECTED = "approval.rejected"
APPROVAL_EDITED = "approval.edited"
APPROVAL_TIMEOUT = "approval.timeout"
APPROVAL_EXECUTING = "approval.executing"
APPROVAL_EXECUTED = "approval.executed"
APPROVAL_FAILED = "approval.failed"
# ... and outside its normal life: a step closed by recover_stuck, and (best-effort, in the
# write-ahead log only) a change whose records were written but whose commit failed.
APPROVAL_INTERRUPTED = "approval.interrupted"
APPROVAL_ABORTED = "approval.aborted"

# -- autonomy levels (so8t.agent.autonomy)
AUTONOMY_SET = "autonomy.set"
AUTONOMY_ABORTED = "autonomy.aborted"

# -- the audit store itself (so8t.agent.audit, so8t.agent.audit_db)
AUDIT_RECOVERED = "audit.recovered"
AUDIT_RESTORED = "audit.restored"  # the store takes records again after a failed write

APPROVAL_EVENTS = (
    APPROVAL_REQUESTED,
    APPROVAL_APPROVED,
    APPROVAL_REJECTED,
    APPROVAL_EDITED,
    APPROVAL_TIMEOUT,
    APPROVAL_EXECUTING,
    APPROVAL_EXECUTED,
    APPROVAL_FAILED,
)
APPROVAL_RECOVERY_EVENTS = (APPROVAL_INTERRUPTED, APPROVAL_ABORTED)

EVENTS = (
    (GATE_ALLOW, GATE_ESCALATE, GATE_REFUSE, GATE_ERROR, GATE_SHADOW, LLM_ERROR)
    + (TOOL_INVALID, TOOL_PROPOSED, TOOL_ALLOWED, TOOL_REFUSED, TOOL_ESCALATED)
    + (TOOL_EXECUTED, TOOL_FAILED, TOOL_RESULT_WITHHELD)
    + APPROVAL_EVENTS
    + APPROVAL_RECOVERY_EVENTS
    + (AUTONOMY_SET, AUTONOMY_ABORTED, AUDIT_RECOVERED, AUDIT_RESTORED)
)

# The other spelling of two approval events -> the one written.
LEGACY_EVENTS = {"approval.denied": APPROVAL_REJECTED, "approval.expired": APPROVAL_TIMEOUT}
# Kept importable under their old names; they now name the events the queue writes.
APPROVAL_DENIED = APPROVAL_REJECTED
APPROVAL_EXPIRED = APPROVAL_TIMEOUT


def canonical_event(name: str) -> str:
    """The event ``name`` means, in the spelling so8t writes (an old spelling is mapped; any
    other name, known or not, is returned as is)."""
    return LEGACY_EVENTS.get(name, name)


__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")] + ["canonical_event"]
