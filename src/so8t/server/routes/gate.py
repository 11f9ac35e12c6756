"""POST /v1/gate: checks only. The gate's decision on a conversation; nothing runs, nothing is queued.

Guarantees: exactly one of ``messages`` / ``input`` (else 400); a conversation over one of the
gate's caps is a 413 before anything is scored; a full gate queue is a 503 with Retry-After.
Extra fields are dropped, so a client cannot smuggle policy in.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from so8t.server.openai_schema import error_response
from so8t.server.routes.common import ServiceDep, ValidText, gate_busy, too_large

__all__ = ["GateRequest", "router"]

router = APIRouter()


class GateRequest(ValidText):
    model_config = ConfigDict(extra="ignore")  # a client cannot smuggle policy in: extra fields are dropped
    messages: list[dict] | None = None
    input: str | None = Field(default=None, description="a single user message, instead of messages")


@router.post("/v1/gate")
def gate(req: GateRequest, service: ServiceDep):
    if (req.messages is None) == (req.input is None):
        return error_response(400, "give exactly one of 'messages' or 'input'")
    conversation = req.messages if req.messages is not None else req.input
    if (big := service.gate.size_problem(conversation)) is not None:
        return too_large(big, "messages" if req.messages is not None else "input")
    decision = service.gate.decide(conversation)
    if decision.status == "busy":
        return gate_busy(service.gate)
    return decision.to_dict()
