"""GET /v1/approvals/{id}: an escalated request's status, and its answer once it ran.

Guarantees: read-only; an unknown id is a 404; the answer is shown only for an EXECUTED item.
"""

from __future__ import annotations

from fastapi import APIRouter

from so8t.agent.approvals import ApprovalNotFound, Status
from so8t.server.openai_schema import error_response
from so8t.server.routes.common import ServiceDep

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/approvals/{approval_id}")
def approval_status(approval_id: str, service: ServiceDep):
    try:
        a = service.approvals.get(approval_id)
    except ApprovalNotFound:
        return error_response(404, f"no approval {approval_id}", kind="not_found")
    return {
        "id": a.id,
        "status": a.status.value,
        "expires_at": a.expires_at.isoformat(),
        "reason": a.reason,
        "superseded_by": a.superseded_by,
        "answer": (a.result or {}).get("text") if a.status == Status.EXECUTED else None,
    }
