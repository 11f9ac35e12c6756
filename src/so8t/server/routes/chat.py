"""GET /v1/models and POST /v1/chat/completions: OpenAI-compatible chat through the gate.

Guarantees: the model named must be one this server serves (else 404 ``model_not_found``); a
conversation over one of the gate's caps is a 413 before anything is scored; a full gate queue
is a 503 with Retry-After. Streaming never shows unchecked text: the request is routed (gated,
answered, queued or refused) first, and only the complete answer is sent, as one content chunk.
A backend that gave no answer is a 5xx in OpenAI's error shape, streamed or not, never a 200;
the reply's ``so8t`` field carries the gate's decision in every case.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from so8t.agent.router import RouterResult
from so8t.server.openai_schema import (
    SSE_DONE,
    ChatRequest,
    chunk_head,
    completion,
    delta_choice,
    error_response,
    sse,
)
from so8t.server.routes.common import ServiceDep, ValidText, gate_busy, too_large

__all__ = ["MODEL_NAMES", "GatedChatRequest", "router"]

MODEL_NAMES = ("so8t-gated",)  # what clients put in "model"; the run behind it is the server's choice
_FINISH = {"answered": "stop", "pending": "stop", "refused": "content_filter", "failed": "stop"}

router = APIRouter()


class GatedChatRequest(ValidText, ChatRequest):
    """The OpenAI chat request, text checked first."""


@router.get("/v1/models")
def models():
    return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "so8t"} for m in MODEL_NAMES]}


@router.post("/v1/chat/completions")
def chat(req: GatedChatRequest, request: Request, service: ServiceDep):
    if req.model is not None and req.model not in MODEL_NAMES:
        return error_response(
            404,
            f"unknown model {req.model!r}; this server serves {', '.join(MODEL_NAMES)}",
            param="model",
            kind="model_not_found",
        )
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    if (big := service.gate.size_problem(messages)) is not None:
        return too_large(big, "messages")
    requester = request.headers.get("x-so8t-user") or "anonymous"
    result = service.router.handle(messages, requester, max_tokens=req.budget(), temperature=req.temperature)
    if result.decision.status == "busy":
        return gate_busy(service.gate)
    meta = _meta(result)
    if result.error is not None:
        # The LLM gave no answer: a 5xx in OpenAI's error shape, streamed or not, never a 200
        # that a client could take for an answer (the decision and llm.error are recorded).
        e = result.error
        return error_response(e.status, e.message, kind=e.type, code=e.code, extra={"so8t": meta})
    cid, created, finish = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), _FINISH[result.outcome]
    if req.stream:
        events = _events(cid, created, result.text, finish, meta)
        return StreamingResponse(events, media_type="text/event-stream")
    return completion(cid, created, MODEL_NAMES[0], result.text, finish, so8t=meta)


def _meta(result: RouterResult) -> dict[str, Any]:
    """The reply's ``so8t`` field: what happened to the request, and the gate's whole decision."""
    return {
        "outcome": result.outcome,
        "action": result.decision.action.name,
        "status": result.decision.status,
        "approval_id": result.approval_id,
        "decision": result.decision.to_dict(),
    }


def _events(cid: str, created: int, text: str, finish: str, meta: dict[str, Any]) -> Iterator[str]:
    """The text is complete and already routed; only now does any of it leave the server."""
    head = chunk_head(cid, created, MODEL_NAMES[0])
    yield sse({**head, "so8t": meta, "choices": [delta_choice({"role": "assistant", "content": text}, None)]})
    yield sse({**head, "choices": [delta_choice({}, finish)]})
    yield SSE_DONE
