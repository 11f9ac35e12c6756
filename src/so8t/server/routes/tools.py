"""POST /v1/tools/call: a tool call proposed by the client's own agent.

Guarantees: the call is validated, gated with the conversation that led to it, checked against
the autonomy policy, then run, queued for a person or refused (``so8t.agent.toolloop``); a
result is returned only when the call was executed. No tools configured: 404. A conversation
over one of the gate's caps: 413 before anything is scored.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from so8t.server.openai_schema import error_response
from so8t.server.routes.common import ServiceDep, ValidText, too_large

__all__ = ["ToolCallRequest", "router"]

router = APIRouter()


class ToolCallRequest(ValidText):
    model_config = ConfigDict(extra="forbid")
    conversation: list[dict] = Field(min_length=1, description="the conversation that led to the call")
    tool: str
    arguments: dict


@router.post("/v1/tools/call")
def tool_call(req: ToolCallRequest, request: Request, service: ServiceDep):
    """A tool call proposed by the client's own agent: validated, gated with the
    conversation, checked against the autonomy policy, then run, queued or refused."""
    loop = service.router.toolloop
    if loop is None:
        return error_response(
            404, "no tools are configured on this server (set 'tools' in the server config)", kind="not_found"
        )
    proposed = {"role": "user", "content": f"Agent tool call: {json.dumps(req.arguments, ensure_ascii=False)}"}
    if (big := service.gate.size_problem(list(req.conversation) + [proposed])) is not None:
        return too_large(big, "conversation")
    step, result = loop.call(
        req.conversation, req.tool, req.arguments, request.headers.get("x-so8t-user") or "anonymous"
    )
    return {
        "status": step.status,
        "detail": step.detail,
        "approval_id": step.approval_id,
        "call_hash": step.call_hash,
        "result": result if step.status == "executed" else None,
    }
