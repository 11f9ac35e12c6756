"""The gated HTTP surface: every route is a thin call into the Service (no logic a test could
not call without HTTP).

Client routes (no token: the server binds to localhost by default):
  POST /v1/gate                 checks only: the decision, nothing runs
  POST /v1/chat/completions     OpenAI-compatible, gated; the reply's `so8t` field says what happened
  GET  /v1/approvals/{id}       status (and the answer once it ran) of an escalated request
Operator routes (so8t.server.admin: sign in by POST with the admin token, a server-side session,
CSRF tokens and Origin checks on every POST, approvals bound to the request hash shown):
  GET/POST /admin/login, POST /admin/logout
  GET  /admin/approvals         the approvals page; POST .../{id}/approve | reject | edit
  GET  /admin/api/approvals     the same as JSON (or Authorization: Bearer <admin token>)
Health: GET /healthz (alive), /readyz (the gate is loaded, the audit log takes records and the
approvals database answers), /metrics (Prometheus text). While the audit log cannot be written,
every request that would need a record is a 503 with Retry-After (nothing run, queued or
approved); while the approvals database cannot be used, so is every request that would queue or
change an approval (kind "approvals_unavailable"): an escalation is never answered instead.

Policy lives on the server: request fields and headers cannot change thresholds, fail action
or logging. Streaming never shows unchecked text: the gate decides before anything is
generated, and the answer is sent only once it is complete.

Malformed input is a 4xx in OpenAI's error shape, decided before anything runs (no gate call, no
audit record, no approval): every string in a request body (values and keys, extra fields too)
must be valid Unicode, so a lone surrogate (JSON "\\ud800" without its pair) is a 400 whose
`param` names the field ("messages[1].content"); an unknown `?status=` on the admin API is a
400 that lists the accepted values.

JSON bodies need their Content-Type: a POST under /v1 with a body is read only when it says
`Content-Type: application/json` (or `application/...+json`); any other type, or none, is a
415 that names the expected type and the curl flag that sends it (`curl -d` alone sends
`application/x-www-form-urlencoded`). A body without a Content-Type is not guessed to be JSON
on purpose: a web page may send one to localhost without a CORS preflight, so guessing would
let any site the operator visits call the gate, the chat and the tools.

A backend that fails (down, timed out, a reply that is not a chat completion, an error status)
is a 5xx in OpenAI's error shape, for `stream: true` too (before any event is sent): 504
`backend_timeout`, 502 `backend_unreachable` / `backend_bad_response` / `backend_http_error`,
500 `backend_error` for the in-process model; the body's `so8t` field still carries the gate's
decision, and the audit log has an `llm.error` record naming the failure.

Bounded work: a conversation over one of the gate's caps (server config gate_max_turns,
gate_max_chars, gate_max_tokens, gate_max_views) is a 413 naming the cap, the value and the
config key, before anything is scored; when gate_queue_max requests already wait for the gate,
/v1/gate and /v1/chat/completions answer 503 with Retry-After (nothing scored, queued for a
person or audited). A gate timeout fails closed only the request that timed out. Concurrent
/v1/gate and chat requests are scored together in one forward pass of the gate (server config
gate_batching, gate_batch_window_ms, gate_batch_max; each decision is the one the request gets
alone); /metrics counts the rounds by size (so8t_gate_batches_total{requests="n"}).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from so8t.agent.approvals import ApprovalNotFound, Status
from so8t.agent.audit import AuditError
from so8t.agent.service import Service
from so8t.agent.sqlstore import StoreUnavailable
from so8t.gate.gate import LATENCY_BUCKETS_MS, Gate, TooLarge
from so8t.server.admin import mount_admin, parse_status  # noqa: F401  (parse_status: re-exported)
from so8t.server.llm_server import ChatRequest, describe_validation, error_response

log = logging.getLogger("so8t.server")
AUDIT_RETRY_AFTER_S = 30
MODEL_NAMES = ("so8t-gated",)  # what clients put in "model"; the run behind it is the server's choice


_SURROGATE = re.compile("[\ud800-\udfff]")  # a decoded JSON string holds one only when it is unpaired


def find_lone_surrogate(value: Any) -> tuple[str, str, int] | None:
    """(where, the surrogate, its index) of the first lone surrogate in parsed JSON, else None.

    `where` reads like the request: "messages[1].content", "arguments.path", "arguments (a key)".
    Iterative, so a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            if m := _SURROGATE.search(v):
                return where or "body", m.group(), m.start()
        elif isinstance(v, dict):
            stack += [(f"{where} (a key)" if where else "(a key)", k) for k in reversed(list(v)) if isinstance(k, str)]
            stack += [(f"{where}.{k}" if where else str(k), x) for k, x in reversed(list(v.items()))]
        elif isinstance(v, (list, tuple)):
            stack += [(f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v)))]
    return None


class ValidText(BaseModel):
    """Refuses a body holding text that is not valid Unicode, before any field is read."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        if found := find_lone_surrogate(data):
            where, char, index = found
            where = where if len(where) <= 200 else where[:200] + "..."  # a path through a deep nest
            raise PydanticCustomError(
                "lone_surrogate",
                "{where}: lone surrogate {char} at character {index} is not valid Unicode text "
                "(a \\ud800-\\udfff escape must be one half of a surrogate pair); send the text as UTF-8",
                {"where": where, "char": f"\\u{ord(char):04x}", "index": index},
            )
        return data


class GateRequest(ValidText):
    model_config = ConfigDict(extra="ignore")  # a client cannot smuggle policy in: extra fields are dropped
    messages: list[dict] | None = None
    input: str | None = Field(default=None, description="a single user message, instead of messages")


class ToolCallRequest(ValidText):
    model_config = ConfigDict(extra="forbid")
    conversation: list[dict] = Field(min_length=1, description="the conversation that led to the call")
    tool: str
    arguments: dict


class GatedChatRequest(ValidText, ChatRequest):
    """The OpenAI chat request, text checked first."""


def too_large(big: TooLarge, param: str) -> JSONResponse:
    """413 for a conversation over one of the gate's caps: which cap, the value, the config key."""
    return error_response(
        413, f"request too large for the safety gate: {big.message()}", param=param, kind="request_too_large"
    )


def gate_busy(gate: Gate) -> JSONResponse:
    """503 with Retry-After: the gate's queue is full (server config gate_queue_max)."""
    wait = gate.retry_after_s()
    resp = error_response(
        503,
        f"the safety gate is busy ({gate.queue_max} requests waiting, server config "
        f"gate_queue_max); nothing was run, retry after {wait} s",
        kind="server_busy",
    )
    resp.headers["Retry-After"] = str(wait)
    return resp


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header says JSON: application/json or application/<anything>+json,
    any parameters (charset) allowed; case does not matter."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def wrong_content_type(content_type: str | None) -> JSONResponse:
    """415 for a JSON route sent another type (or none): the type expected, and how to send it."""
    got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    hint = (
        " (what `curl -d` sends unless told otherwise)"
        if (content_type or "").lower().startswith("application/x-www-form-urlencoded")
        else ""
    )
    return error_response(
        415,
        f"unsupported media type: this route reads a JSON body and needs Content-Type: "
        f"application/json, got {got}{hint}; send the header (curl: -H 'Content-Type: "
        f"application/json', or --json '<body>')",
        param="Content-Type",
        kind="unsupported_media_type",
    )


def approval_gauges(service: Service) -> list[str]:
    """The queue's gauges, read from the shared database (the same on every replica); when it
    cannot be read, so8t_approvals_store_up 0 and no queue numbers (the gate's own metrics stay)."""
    try:
        pending, oldest = service.approvals.pending_count(), service.approvals.oldest_pending_age_s()
    except StoreUnavailable:
        return ["# TYPE so8t_approvals_store_up gauge", "so8t_approvals_store_up 0"]
    return [
        "# TYPE so8t_approvals_store_up gauge",
        "so8t_approvals_store_up 1",
        "# TYPE so8t_approvals_pending gauge",
        f"so8t_approvals_pending {pending}",
        "# TYPE so8t_approvals_oldest_pending_seconds gauge",
        f"so8t_approvals_oldest_pending_seconds {oldest or 0:.3f}",
    ]


def create_app(service: Service, *, start_worker: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if start_worker:
            service.start_worker()
        yield
        service.close()

    app = FastAPI(title="so8t gated agent", version="0.1", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Oversized bodies are refused before anything reads them; a body of unknown length
        # (chunked) is refused too, so the limit cannot be sidestepped.
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None and request.headers.get("transfer-encoding"):
                return error_response(411, "send a Content-Length (chunked request bodies are not accepted)")
            if length is not None and (not length.isdigit() or int(length) > service.config.max_body_bytes):
                return error_response(413, f"request body larger than {service.config.max_body_bytes} bytes")
            # Every POST under /v1 reads JSON; a body of another type (or none) is never guessed to be JSON.
            ctype = request.headers.get("content-type")
            if request.url.path.startswith("/v1/") and length not in (None, "0") and not is_json_media_type(ctype):
                return wrong_content_type(ctype)
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        # e.g. a body that is not valid UTF-8: the same OpenAI error shape as every other 4xx
        detail = exc.detail if exc.status_code != 400 else f"invalid request: {exc.detail} (is it UTF-8 JSON?)"
        return error_response(exc.status_code, str(detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        for err in exc.errors():  # a lone surrogate names its own field: the error is the body's
            if err.get("type") == "lone_surrogate":
                return error_response(400, f"invalid request: {err['msg']}", param=err["ctx"]["where"])
        message, param = describe_validation(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(AuditError)
    async def _audit_failing(_: Request, exc: AuditError):
        # Fail closed: whatever needed a record (a refusal, an escalation, an approval, a tool
        # call) did not happen; the store's path and error stay in the server's log.
        log.error("audit log failing, request refused: %s", exc)
        resp = error_response(
            503,
            "the audit log cannot be written, and nothing runs unrecorded: nothing was "
            "run, queued or changed; retry later (/readyz says when the service is ready)",
            kind="audit_unavailable",
        )
        resp.headers["Retry-After"] = str(AUDIT_RETRY_AFTER_S)
        return resp

    @app.exception_handler(StoreUnavailable)
    async def _store_failing(_: Request, exc: StoreUnavailable):
        # Fail closed: the change (a queued escalation, an approval, a claim) was rolled back.
        log.error("approvals database failing, request refused: %s", exc)
        resp = error_response(
            503,
            "the approvals database cannot be used: nothing was run, queued or changed; "
            "retry later (/readyz says when the service is ready)",
            kind="approvals_unavailable",
        )
        resp.headers["Retry-After"] = str(AUDIT_RETRY_AFTER_S)
        return resp

    # ------------------------------------------------------------------ health

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        g = service.gate
        audit = service.audit_problem()  # a store that cannot take records: not ready (fail closed)
        approvals = service.approvals_problem()
        ready = g.ready and audit is None and approvals is None
        body = {
            "ready": ready,
            "model_version": g.model_version,
            "policy_version": g.policy_version,
            "error": g.load_error or audit or approvals,
            "audit": audit or "ok",
            "approvals": approvals or "ok",
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        # every decision the gate made (chat, checks-only, tool calls and results), counted by the gate
        decisions, latency = service.gate.decisions, service.gate.latency
        lines = ["# TYPE so8t_gate_decisions_total counter"]
        lines += [
            f'so8t_gate_decisions_total{{action="{a}",status="{s}"}} {n}' for (a, s), n in sorted(decisions.items())
        ]
        lines += [
            "# TYPE so8t_gate_fail_closed_total counter",
            f"so8t_gate_fail_closed_total {service.gate.counts.get('fail_closed', 0)}",
            "# TYPE so8t_gate_latency_ms histogram",
        ]
        lines += [f'so8t_gate_latency_ms_bucket{{le="{b}"}} {latency[b]}' for b in LATENCY_BUCKETS_MS]
        lines += [
            f'so8t_gate_latency_ms_bucket{{le="+Inf"}} {latency["count"]}',
            f"so8t_gate_latency_ms_sum {latency['sum']:.3f}",
            f"so8t_gate_latency_ms_count {latency['count']}",
        ]
        lines += approval_gauges(service)
        lines += [
            "# TYPE so8t_gate_ready gauge",
            f"so8t_gate_ready {int(service.gate.ready)}",
            "# TYPE so8t_gate_queue_pending gauge",
            f"so8t_gate_queue_pending {service.gate.queue_state()['pending']}",
        ]
        # scoring rounds by how many requests one forward pass held (gate_batching)
        sizes = dict(service.gate.batch_sizes)
        lines += ["# TYPE so8t_gate_batches_total counter"]
        lines += [f'so8t_gate_batches_total{{requests="{n}"}} {sizes[n]}' for n in sorted(sizes)]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ clients

    @app.post("/v1/gate")
    def gate(req: GateRequest):
        if (req.messages is None) == (req.input is None):
            return error_response(400, "give exactly one of 'messages' or 'input'")
        conversation = req.messages if req.messages is not None else req.input
        if (big := service.gate.size_problem(conversation)) is not None:
            return too_large(big, "messages" if req.messages is not None else "input")
        decision = service.gate.decide(conversation)
        if decision.status == "busy":
            return gate_busy(service.gate)
        return decision.to_dict()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "so8t"} for m in MODEL_NAMES]}

    @app.post("/v1/chat/completions")
    def chat(req: GatedChatRequest, request: Request):
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
        finish = {"answered": "stop", "pending": "stop", "refused": "content_filter", "failed": "stop"}[result.outcome]
        meta = {
            "outcome": result.outcome,
            "action": result.decision.action.name,
            "status": result.decision.status,
            "approval_id": result.approval_id,
            "decision": result.decision.to_dict(),
        }
        if result.error is not None:
            # The LLM gave no answer: a 5xx in OpenAI's error shape, streamed or not, never a 200
            # that a client could take for an answer (the decision and llm.error are recorded).
            return error_response(
                result.error.status,
                result.error.message,
                kind=result.error.type,
                code=result.error.code,
                extra={"so8t": meta},
            )
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = MODEL_NAMES[0]
        if req.stream:

            def events():
                # the text is complete and already routed; only now does any of it leave the server
                first = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "so8t": meta,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": result.text}, "finish_reason": None}
                    ],
                }
                last = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                }
                yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": finish}
            ],
            "so8t": meta,
        }

    @app.post("/v1/tools/call")
    def tool_call(req: ToolCallRequest, request: Request):
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

    @app.get("/v1/approvals/{approval_id}")
    def approval_status(approval_id: str):
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

    # ------------------------------------------------------------------ operators

    mount_admin(app, service)  # /admin: sign-in, sessions, CSRF and origin checks (so8t.server.admin)

    return app
