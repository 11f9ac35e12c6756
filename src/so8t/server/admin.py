"""The operators' surface under /admin: sign-in, the approvals page and API, approve / reject / edit.

``mount_admin(app, service)`` adds these routes to the gated server (``so8t.server.app``); the
sessions, origin checks and the caller dependencies are ``so8t.server.admin_auth``, the HTML
``so8t.server.admin_html``:

  GET  /admin/login                 the sign-in form; it never signs anyone in (``?token=`` is ignored)
  POST /admin/login                 sign in: the admin token in the form field ``token``
  POST /admin/logout                sign out: the session is deleted on the server
  GET  /admin/approvals             the approvals page
  POST /admin/approvals/{id}/approve | reject | edit
                                    edit: ``content`` (a chat's new last message) or ``arguments``
                                    (a tool call's new arguments, JSON); what an edit means per
                                    kind is so8t.agent.review, the request's HTML so8t.server.approval_view
  GET  /admin/api/approvals         the same as JSON (``?status=``)

What it guarantees (each has a regression test on a real server:
tests/server/test_admin_forms_refuse_cross_origin_posts.py, test_admin_sign_in_is_a_post_and_a_server_side_session.py):

* **The admin token never travels in a URL and never is the cookie.** Sign-in is a POST whose
  body holds the token; ``GET /admin/login?token=...`` shows the form, sets nothing and does not
  echo the token. A correct token creates a server-side session: its id is 32 random bytes
  (``secrets.token_urlsafe(32)``) and the only thing the cookie holds. The cookie is HttpOnly,
  SameSite=Strict, Path=/admin, Secure when the request came over https, and has a Max-Age equal
  to the session's lifetime.
* **Sessions expire and can be ended.** A session lasts ``admin_session_ttl_s`` (8 hours by
  default) from sign-in, not renewed by use; ``POST /admin/logout`` deletes it. An unknown,
  expired or signed-out session id gets 401 and the sign-in form. A session is bound to the
  admin token in force when it was created, so changing ``SO8T_ADMIN_TOKEN`` ends every session.
  The store is **in memory, in this process**: a restart signs everyone out, and several worker
  processes would not share sessions (``so8t serve`` runs one).
* **No cross-site request forgery.** Every POST under /admin is refused (403) when its ``Origin``
  header is present and is not this server's own origin (scheme://host[:port] of the request), or
  when ``Sec-Fetch-Site`` says ``cross-site`` or ``same-site``. Ports matter: a page on
  ``127.0.0.1:<another port>`` is *same-site* (so SameSite=Strict cookies do reach us) but not
  same-origin, and is refused. This check is a middleware, so a route added later is covered too.
  On top of it every state-changing route (approve, reject, edit, logout) signed in by cookie
  must carry the session's CSRF token (a per-session random value, a hidden field in each form,
  compared with ``hmac.compare_digest``).
* **An approval is bound to the request the operator saw.** The approve / reject / edit forms
  carry the approval's ``request_hash`` (sha256 of the canonical request, stored at submit time);
  if the stored request, or its hash, differs from it, the route answers 409 and changes nothing
  (approve also passes it to the queue, which re-checks it inside the transaction that approves).
* **Sign-in does not leak the token by timing** (the sha256 digests of the given and the real
  token are compared with ``hmac.compare_digest``, so neither content nor length shows) and
  **failed sign-ins are rate limited**: after 10 failures within 60 s from one client address,
  further attempts (right or wrong) get 429 with Retry-After until the window passes. The limit
  is modest by design: the address is the one uvicorn reports, and a local client that may send
  X-Forwarded-For (uvicorn trusts it from 127.0.0.1) can spread its attempts; the token's own
  entropy is what stops guessing.
* Every /admin response says ``Cache-Control: no-store``, ``X-Frame-Options: DENY``,
  ``Content-Security-Policy: frame-ancestors 'none'`` and ``Referrer-Policy: same-origin``
  (no framing, no caching of approval data, no /admin URL sent to another site).

Scripts use ``Authorization: Bearer <admin token>`` instead of a session. Such a request is not
CSRF-able (a page on another origin cannot attach an Authorization header without a CORS
preflight, and this server grants none), so it needs no CSRF token; it may pass ``request_hash``
(checked when given, as for the forms). The Origin / Sec-Fetch-Site check applies to it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from so8t.agent.approvals import ApprovalError, ApprovalNotFound, Status
from so8t.agent.review import EditError
from so8t.agent.service import Service
from so8t.canonical import hash_text
from so8t.server.admin_auth import (
    DEFAULT_SESSION_TTL_S,
    Admin,
    AdminDep,
    AdminRefusal,
    AdminSessions,
    Caller,
    SignInLimiter,
    admin_caller,
    admin_guard,
    admin_post_caller,
    refusal_response,
    same_origin,
    text_matches,
    token_matches,
)
from so8t.server.admin_html import (
    COOKIE,
    COOKIE_PATH,
    HASH_FIELD,
    approvals_html,
    csrf_field,
    decision_fields,
    message_page,
    page as html_page,
    sign_in_page,
)
from so8t.server.openai_schema import error_response
from so8t.server.routes.common import add_routes

__all__ = [
    "COOKIE",
    "DEFAULT_SESSION_TTL_S",
    "AdminSessions",
    "SignInLimiter",
    "decision_fields",
    "mount_admin",
    "parse_status",
    "same_origin",
]

router = APIRouter(prefix="/admin")
Reader = Annotated[Caller, Depends(admin_caller)]
Writer = Annotated[Caller, Depends(admin_post_caller)]


def mount_admin(app: FastAPI, service: Service) -> AdminSessions:
    """Add the /admin routes to ``app``; returns the session store (also ``app.state.admin_sessions``)."""
    sessions = AdminSessions(getattr(service.config, "admin_session_ttl_s", DEFAULT_SESSION_TTL_S))
    limiter = SignInLimiter()
    app.state.admin = Admin(service, sessions, limiter)
    app.state.admin_sessions, app.state.admin_sign_in_limiter = sessions, limiter
    app.middleware("http")(admin_guard)
    app.exception_handler(AdminRefusal)(refusal_response)
    add_routes(app, router)
    return sessions


def parse_status(value: str | None) -> Status | None:
    """The approval status a `?status=` names (any case); ValueError listing the accepted ones."""
    if value is None:
        return None
    try:
        return Status(value.upper())
    except ValueError:
        raise ValueError(
            f"unknown status {value!r}: give one of {', '.join(s.value for s in Status)}, or leave status out for all"
        ) from None


# --- sign-in and sign-out ----------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form():
    # Never signs in, whatever the query says (a token in a URL ends up in logs and history).
    return sign_in_page(200)


@router.post("/login")
def login(request: Request, admin: AdminDep, token: str = Form("")):
    expected = admin.token()
    if not expected:
        return sign_in_page(503, f"the approvals UI is disabled: set {admin.token_env}")
    client = request.client.host if request.client else "unknown"
    if (wait := admin.limiter.retry_after(client)) > 0:
        resp: Response = sign_in_page(429, f"too many failed sign-ins: try again in {int(wait) + 1} s")
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    if not token_matches(token, expected):
        admin.limiter.failed(client)
        return sign_in_page(401, "Wrong or missing token.")
    admin.limiter.succeeded(client)
    admin.sessions.delete(request.cookies.get(COOKIE))  # never keep a session id chosen before sign-in
    sid, _ = admin.sessions.create(expected)
    resp = RedirectResponse("/admin/approvals", status_code=303)
    resp.set_cookie(
        COOKIE,
        sid,
        max_age=max(1, int(admin.sessions.ttl_s)),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout")
def logout(admin: AdminDep, caller: Writer):
    admin.sessions.delete(caller.session_id)
    resp = RedirectResponse("/admin/login", status_code=303)
    resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return resp


# --- reading -----------------------------------------------------------------------------------


@router.get("/api/approvals")
def api_list(admin: AdminDep, caller: Reader, status: str | None = None):
    try:
        chosen = parse_status(status)
    except ValueError as exc:
        return error_response(400, str(exc), param="status")
    admin.service.approvals.expire_due()
    return [a.to_dict() for a in admin.service.approvals.list(status=chosen)]


@router.get("/approvals", response_class=HTMLResponse)
def page(admin: AdminDep, caller: Reader):
    service = admin.service
    service.approvals.expire_due()
    csrf = caller.session.csrf if caller.session is not None else ""
    signed_in = (
        f"<form method='post' action='/admin/logout' id='logout-form'>{csrf_field(csrf)}"
        "<button id='logout'>Sign out</button></form>"
        if caller.session is not None
        else ""
    )
    table = approvals_html(service.approvals.list(limit=100), csrf, service.describe_approval)
    return HTMLResponse(html_page("Approvals", signed_in + table))


# --- deciding ----------------------------------------------------------------------------------


@router.post("/approvals/{approval_id}/approve")
def approve(
    approval_id: str, admin: AdminDep, caller: Writer, by: str = Form("operator"), request_hash: str = Form("")
):
    def run(seen: str | None) -> object:
        return admin.service.approvals.approve(approval_id, by, expected_hash=seen)

    return act(admin, caller, approval_id, request_hash, run)


@router.post("/approvals/{approval_id}/reject")
def reject(
    approval_id: str,
    admin: AdminDep,
    caller: Writer,
    reason: str = Form(""),
    by: str = Form("operator"),
    request_hash: str = Form(""),
):
    return act(
        admin, caller, approval_id, request_hash, lambda seen: admin.service.approvals.reject(approval_id, by, reason)
    )


@router.post("/approvals/{approval_id}/edit")
def edit(
    approval_id: str,
    admin: AdminDep,
    caller: Writer,
    content: str | None = Form(None),
    arguments: str | None = Form(None),
    by: str = Form("operator"),
    request_hash: str = Form(""),
):
    # content: a chat's new last message; arguments: a tool call's new arguments (JSON)
    def run(seen: str | None) -> object:
        return admin.service.edit_approval(approval_id, by, content=content, arguments=arguments)

    return act(admin, caller, approval_id, request_hash, run)


def act(admin: Admin, caller: Caller, approval_id: str, seen_hash: str, fn: Callable[[str | None], object]):
    """The shared path of approve / reject / edit (the caller and its CSRF token already
    checked by ``admin_post_caller``): the hash seen, then ``fn(hash)``."""
    check_fresh(admin, caller, approval_id, seen_hash)
    try:
        fn(seen_hash or None)
    except EditError as exc:  # an edit that does not fit its request: names the field
        raise AdminRefusal(400, str(exc), "invalid_request_error") from exc
    except (ApprovalError, ValueError) as exc:
        return message_page(str(exc), 409)
    return RedirectResponse("/admin/approvals", status_code=303)


def check_fresh(admin: Admin, caller: Caller, approval_id: str, seen_hash: str) -> None:
    """AdminRefusal 409 when the stored request is not the one whose hash the operator's form carries."""
    if not seen_hash:
        if caller.bearer:
            return  # a script may leave the binding out (the forms always carry it)
        raise AdminRefusal(400, f"{HASH_FIELD} missing: reload the page and decide again", "invalid_request_error")
    try:
        a = admin.service.approvals.get(approval_id)
    except ApprovalNotFound as exc:
        raise AdminRefusal(404, str(exc), "not_found") from exc
    if hash_text(a.request_json) != a.request_hash or not text_matches(seen_hash, a.request_hash):
        raise AdminRefusal(
            409,
            f"approval {approval_id} changed since the page was shown (its request hash "
            f"is {a.request_hash}, the form was for {seen_hash[:64]}): nothing was done; reload the "
            "page and decide again",
            "conflict",
        )
