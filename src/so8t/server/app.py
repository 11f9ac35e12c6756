"""The gated HTTP surface: every route is a thin call into the Service (no logic a test could
not call without HTTP). ``create_app`` only wires: the Service on ``app.state.service``, the body
checks (a middleware), the error handlers, and one router per area (``so8t.server.routes``:
health, gate, chat, tools, approvals; ``so8t.server.admin``: the operators' routes).

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

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from so8t.agent.audit import AuditError
from so8t.agent.service import Service
from so8t.agent.sqlstore import StoreUnavailable
from so8t.server.admin import mount_admin, parse_status
from so8t.server.openai_schema import error_response, invalid_request
from so8t.server.routes import approvals, chat, gate, health, tools
from so8t.server.routes.chat import MODEL_NAMES, GatedChatRequest
from so8t.server.routes.common import ValidText, add_routes, find_lone_surrogate, gate_busy, too_large
from so8t.server.routes.gate import GateRequest
from so8t.server.routes.health import approval_gauges
from so8t.server.routes.tools import ToolCallRequest

__all__ = [  # the names other modules used from here before the routes moved out stay importable
    "AUDIT_RETRY_AFTER_S",
    "MODEL_NAMES",
    "GateRequest",
    "GatedChatRequest",
    "ToolCallRequest",
    "ValidText",
    "approval_gauges",
    "create_app",
    "find_lone_surrogate",
    "gate_busy",
    "is_json_media_type",
    "parse_status",
    "too_large",
    "wrong_content_type",
]

log = logging.getLogger("so8t.server")
AUDIT_RETRY_AFTER_S = 30


def create_app(service: Service, *, start_worker: bool = True) -> FastAPI:
    """The gated app around ``service``; its worker starts with the app unless ``start_worker`` is False."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if start_worker:
            service.start_worker()
        yield
        service.close()

    app = FastAPI(title="so8t gated agent", version="0.1", lifespan=lifespan)
    app.state.service = service
    app.middleware("http")(limit_body)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(AuditError)(audit_failing)
    app.exception_handler(StoreUnavailable)(store_failing)
    for area in (health, gate, chat, tools, approvals):
        add_routes(app, area.router)
    mount_admin(app, service)  # /admin: sign-in, sessions, CSRF and origin checks (so8t.server.admin)
    return app


# --- request bodies ----------------------------------------------------------------------------


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header says JSON: application/json or application/<anything>+json,
    any parameters (charset) allowed; case does not matter."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def wrong_content_type(content_type: str | None):
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


async def limit_body(request: Request, call_next):
    """Middleware: oversized bodies are refused before anything reads them; a body of unknown
    length (chunked) is refused too, so the limit cannot be sidestepped; every POST under /v1
    reads JSON, and a body of another type (or none) is never guessed to be JSON."""
    if request.method in ("POST", "PUT", "PATCH"):
        limit = request.app.state.service.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is None and request.headers.get("transfer-encoding"):
            return error_response(411, "send a Content-Length (chunked request bodies are not accepted)")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error_response(413, f"request body larger than {limit} bytes")
        ctype = request.headers.get("content-type")
        if request.url.path.startswith("/v1/") and length not in (None, "0") and not is_json_media_type(ctype):
            return wrong_content_type(ctype)
    return await call_next(request)


# --- errors ------------------------------------------------------------------------------------


async def http_error(_: Request, exc: StarletteHTTPException):
    # e.g. a body that is not valid UTF-8: the same OpenAI error shape as every other 4xx
    detail = exc.detail if exc.status_code != 400 else f"invalid request: {exc.detail} (is it UTF-8 JSON?)"
    return error_response(exc.status_code, str(detail))


async def audit_failing(_: Request, exc: AuditError):
    # Fail closed: whatever needed a record (a refusal, an escalation, an approval, a tool
    # call) did not happen; the store's path and error stay in the server's log.
    log.error("audit log failing, request refused: %s", exc)
    return error_response(
        503,
        "the audit log cannot be written, and nothing runs unrecorded: nothing was "
        "run, queued or changed; retry later (/readyz says when the service is ready)",
        kind="audit_unavailable",
        retry_after=AUDIT_RETRY_AFTER_S,
    )


async def store_failing(_: Request, exc: StoreUnavailable):
    # Fail closed: the change (a queued escalation, an approval, a claim) was rolled back.
    log.error("approvals database failing, request refused: %s", exc)
    return error_response(
        503,
        "the approvals database cannot be used: nothing was run, queued or changed; "
        "retry later (/readyz says when the service is ready)",
        kind="approvals_unavailable",
        retry_after=AUDIT_RETRY_AFTER_S,
    )
