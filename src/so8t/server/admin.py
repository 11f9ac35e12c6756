"""The operators' surface under /admin: sign-in, the approvals page and API, approve / reject / edit.

``mount_admin(app, service)`` adds these routes to the gated server (``so8t.server.app``):

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

import hashlib
import hmac
import html
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from so8t.agent.approvals import ApprovalError, ApprovalNotFound, Status
from so8t.agent.redaction import Redactor
from so8t.agent.review import EditError, request_view
from so8t.agent.service import Service
from so8t.canonical import hash_text
from so8t.server.approval_view import (
    render_edit_form,
    render_request,
    render_status,
    render_why,
)
from so8t.server.llm_server import error_response

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

COOKIE = "so8t_session"  # holds a session id, never the admin token
COOKIE_PATH = "/admin"
DEFAULT_SESSION_TTL_S = 8 * 3600.0
CSRF_FIELD = "csrf_token"
HASH_FIELD = "request_hash"
_MAX_SESSIONS = 1000  # only token holders create sessions; this only bounds memory
_CROSS = ("cross-site", "same-site")  # Sec-Fetch-Site values refused on a state-changing request
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    # not no-referrer: under it a browser sends "Origin: null" with the page's own form posts
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def token_matches(given: str, expected: str) -> bool:
    """Constant time in the content and the length of both: fixed-size digests are compared."""
    return hmac.compare_digest(_digest(given), _digest(expected))


# --- sessions ----------------------------------------------------------------------------------


@dataclass
class AdminSession:
    csrf: str  # per-session random token every state-changing form carries
    expires_at: float  # on the store's clock (monotonic)
    token_fp: bytes  # digest of the admin token in force at sign-in


class AdminSessions:
    """Server-side operator sessions, **in memory** (lost on restart, not shared between
    processes), keyed by the sha256 of the id so the id itself is not kept.

    An id is ``secrets.token_urlsafe(32)`` (32 random bytes); a session lives ``ttl_s`` seconds
    from creation (absolute, not renewed by use); ``clock`` is monotonic seconds (a test may
    replace it)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = _MAX_SESSIONS,
    ):
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self.ttl_s, self.clock, self.max_sessions = float(ttl_s), clock, max_sessions
        self._items: dict[bytes, AdminSession] = {}
        self._lock = threading.Lock()

    def create(self, admin_token: str) -> tuple[str, AdminSession]:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        session = AdminSession(
            csrf=secrets.token_urlsafe(32), expires_at=now + self.ttl_s, token_fp=_digest(admin_token)
        )
        with self._lock:
            self._sweep(now)
            while len(self._items) >= self.max_sessions:  # the oldest goes first
                self._items.pop(min(self._items, key=lambda k: self._items[k].expires_at))
            self._items[_digest(sid)] = session
        return sid, session

    def get(self, sid: str | None, admin_token: str) -> AdminSession | None:
        """The live session with this id, or None (unknown, expired, or from another admin token)."""
        if not sid:
            return None
        key = _digest(sid)
        with self._lock:
            session = self._items.get(key)
            if session is None:
                return None
            if self.clock() >= session.expires_at or not hmac.compare_digest(session.token_fp, _digest(admin_token)):
                del self._items[key]
                return None
            return session

    def delete(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            return self._items.pop(_digest(sid), None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._sweep(self.clock())
            return len(self._items)

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self._items.items() if now >= s.expires_at]:
            del self._items[key]


class SignInLimiter:
    """At most ``max_failures`` failed sign-ins per client address within ``window_s`` seconds."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(client)
            if len(recent) < self.max_failures:
                return 0.0
            return max(0.0, recent[0] + self.window_s - self.clock())

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self.clock())
            if len(self._failures) > 10_000:  # bound memory: forget clients with no recent failure
                for c in [c for c, q in self._failures.items() if not q]:
                    del self._failures[c]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        cutoff = self.clock() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        return q


# --- origin checks -----------------------------------------------------------------------------


def own_origin(request: Request) -> str:
    """This server's origin as the client addressed it: scheme://host[:port] (the Host header)."""
    host = request.headers.get("host") or (
        f"{request.url.hostname}:{request.url.port}" if request.url.port else str(request.url.hostname)
    )
    return f"{request.url.scheme}://{host}".lower()


def same_origin(request: Request) -> str | None:
    """Why this request must be refused as cross-origin, or None when nothing says it is.

    ``Origin`` (when present) must equal our own origin exactly ("null" never does);
    ``Sec-Fetch-Site`` must not be cross-site or same-site (another port on the same host is
    same-site). A request with neither header (curl, a script) passes this check: the CSRF
    token, or the bearer token, is what it must then hold."""
    origin = request.headers.get("origin")
    if origin is not None and origin.strip().rstrip("/").lower() != own_origin(request):
        return f"cross-origin request refused: Origin {origin[:200]!r} is not this server ({own_origin(request)})"
    site = (request.headers.get("sec-fetch-site") or "").strip().lower()
    if site in _CROSS:
        return f"cross-origin request refused: Sec-Fetch-Site is {site}"
    return None


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


# --- the routes --------------------------------------------------------------------------------


@dataclass
class Caller:
    """Who is calling: a signed-in session (cookie) or a script holding the token (bearer)."""

    session: AdminSession | None  # None for a bearer caller
    session_id: str | None = None

    @property
    def bearer(self) -> bool:
        return self.session is None


def _wants_json(request: Request) -> bool:
    return "authorization" in request.headers or request.url.path.startswith("/admin/api/")


def mount_admin(app: FastAPI, service: Service) -> AdminSessions:
    """Add the /admin routes to ``app``; returns the session store (also ``app.state.admin_sessions``)."""
    sessions = AdminSessions(getattr(service.config, "admin_session_ttl_s", DEFAULT_SESSION_TTL_S))
    limiter = SignInLimiter()
    app.state.admin_sessions, app.state.admin_sign_in_limiter = sessions, limiter
    env = service.config.admin_token_env

    def admin_token() -> str | None:
        return os.environ.get(env) or None

    @app.middleware("http")
    async def admin_guard(request: Request, call_next):
        path = request.url.path
        if not (path == "/admin" or path.startswith("/admin/")):
            return await call_next(request)
        # Every state-changing request under /admin, whatever its route: refused when another
        # origin sent it (another port on 127.0.0.1 included), before anything reads its body.
        if request.method not in ("GET", "HEAD", "OPTIONS") and (why := same_origin(request)) is not None:
            resp: Response = error_response(403, why, kind="forbidden")
        else:
            resp = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    # -- answers

    def sign_in_page(status: int, message: str = "", *, clear_cookie: bool = False) -> HTMLResponse:
        note = f"<p class='err'>{html.escape(message)}</p>" if message else ""
        resp = HTMLResponse(_page("Sign in", note + _LOGIN_FORM), status)
        if clear_cookie:
            resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return resp

    def refuse(request: Request, status: int, message: str, kind: str) -> Response:
        if _wants_json(request):
            return error_response(status, message, kind=kind)
        if status == 401:
            return sign_in_page(401, message, clear_cookie=COOKIE in request.cookies)
        return HTMLResponse(
            _page("Approvals", f"<p class='err'>{html.escape(message)}</p><p><a href='/admin/approvals'>back</a></p>"),
            status,
        )

    # -- who is calling

    def authorised(request: Request) -> Caller | Response:
        """The caller (a live session, or the bearer token), or the refusal to send."""
        token = admin_token()
        if not token:
            return refuse(request, 503, f"the approvals UI is disabled: set {env}", "unavailable")
        auth = request.headers.get("authorization")
        if auth is not None:
            # A script: the token itself, in a header no cross-origin page can set. A wrong
            # header is refused outright (no fallback to a cookie sent alongside it).
            if token_matches(auth.removeprefix("Bearer ").strip(), token):
                return Caller(session=None)
            return refuse(request, 401, "admin token required", "unauthorized")
        sid = request.cookies.get(COOKIE)
        session = sessions.get(sid, token)
        if session is None:
            return refuse(
                request, 401, "session expired or signed out: sign in again" if sid else "sign in first", "unauthorized"
            )
        return Caller(session=session, session_id=sid)

    def authorised_post(request: Request, csrf_token: str) -> Caller | Response:
        """authorised(), and for a session the CSRF token of that session (the Origin and
        Sec-Fetch-Site checks already ran in admin_guard)."""
        caller = authorised(request)
        if isinstance(caller, Response):
            return caller
        # Bearer callers skip the CSRF token: the Authorization header is not CSRF-able.
        if caller.session is not None and not (
            csrf_token
            and hmac.compare_digest(csrf_token.encode("utf-8", "surrogatepass"), caller.session.csrf.encode())
        ):
            return refuse(request, 403, "missing or wrong CSRF token: reload the page and try again", "forbidden")
        return caller

    def stale(request: Request, caller: Caller, approval_id: str, seen_hash: str) -> Response | None:
        """409 when the stored request is not the one whose hash the operator's form carries."""
        if not seen_hash:
            if caller.bearer:
                return None  # a script may leave the binding out (the forms always carry it)
            return refuse(
                request, 400, f"{HASH_FIELD} missing: reload the page and decide again", "invalid_request_error"
            )
        try:
            a = service.approvals.get(approval_id)
        except ApprovalNotFound as exc:
            return refuse(request, 404, str(exc), "not_found")
        if hash_text(a.request_json) != a.request_hash or not hmac.compare_digest(
            seen_hash.encode("utf-8", "surrogatepass"), a.request_hash.encode()
        ):
            return refuse(
                request,
                409,
                f"approval {approval_id} changed since the page was shown (its request hash "
                f"is {a.request_hash}, the form was for {seen_hash[:64]}): nothing was done; reload the "
                "page and decide again",
                "conflict",
            )
        return None

    def act(request: Request, approval_id: str, csrf_token: str, seen_hash: str, fn: Callable[[str | None], object]):
        """The shared path of approve / reject / edit: who, CSRF, the hash seen, then ``fn(hash)``."""
        caller = authorised_post(request, csrf_token)
        if isinstance(caller, Response):
            return caller
        if (conflict := stale(request, caller, approval_id, seen_hash)) is not None:
            return conflict
        try:
            fn(seen_hash or None)
        except EditError as exc:  # an edit that does not fit its request: names the field
            return refuse(request, 400, str(exc), "invalid_request_error")
        except (ApprovalError, ValueError) as exc:
            return HTMLResponse(
                _page(
                    "Approvals", f"<p class='err'>{html.escape(str(exc))}</p><p><a href='/admin/approvals'>back</a></p>"
                ),
                409,
            )
        return RedirectResponse("/admin/approvals", status_code=303)

    # -- sign-in and sign-out

    @app.get("/admin/login", response_class=HTMLResponse)
    def login_form():
        # Never signs in, whatever the query says (a token in a URL ends up in logs and history).
        return sign_in_page(200)

    @app.post("/admin/login")
    def login(request: Request, token: str = Form("")):
        expected = admin_token()
        if not expected:
            return sign_in_page(503, f"the approvals UI is disabled: set {env}")
        client = request.client.host if request.client else "unknown"
        if (wait := limiter.retry_after(client)) > 0:
            resp: Response = sign_in_page(429, f"too many failed sign-ins: try again in {int(wait) + 1} s")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        if not token_matches(token, expected):
            limiter.failed(client)
            return sign_in_page(401, "Wrong or missing token.")
        limiter.succeeded(client)
        sessions.delete(request.cookies.get(COOKIE))  # never keep a session id chosen before sign-in
        sid, _ = sessions.create(expected)
        resp = RedirectResponse("/admin/approvals", status_code=303)
        resp.set_cookie(
            COOKIE,
            sid,
            max_age=max(1, int(sessions.ttl_s)),
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    @app.post("/admin/logout")
    def logout(request: Request, csrf_token: str = Form("")):
        caller = authorised_post(request, csrf_token)
        if isinstance(caller, Response):
            return caller
        sessions.delete(caller.session_id)
        resp = RedirectResponse("/admin/login", status_code=303)
        resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return resp

    # -- reading

    @app.get("/admin/api/approvals")
    def api_list(request: Request, status: str | None = None):
        if isinstance(caller := authorised(request), Response):
            return caller
        try:
            chosen = parse_status(status)
        except ValueError as exc:
            return error_response(400, str(exc), param="status")
        service.approvals.expire_due()
        return [a.to_dict() for a in service.approvals.list(status=chosen)]

    @app.get("/admin/approvals", response_class=HTMLResponse)
    def page(request: Request):
        if isinstance(caller := authorised(request), Response):
            return caller  # 401: the sign-in form
        service.approvals.expire_due()
        csrf = caller.session.csrf if caller.session is not None else ""
        signed_in = (
            (
                f"<form method='post' action='/admin/logout' id='logout-form'>{_csrf_field(csrf)}"
                "<button id='logout'>Sign out</button></form>"
            )
            if caller.session is not None
            else ""
        )
        return HTMLResponse(
            _page(
                "Approvals",
                signed_in + _approvals_html(service.approvals.list(limit=100), csrf, service.describe_approval),
            )
        )

    # -- deciding

    @app.post("/admin/approvals/{approval_id}/approve")
    def approve(
        request: Request,
        approval_id: str,
        by: str = Form("operator"),
        csrf_token: str = Form(""),
        request_hash: str = Form(""),
    ):
        return act(
            request,
            approval_id,
            csrf_token,
            request_hash,
            lambda seen: service.approvals.approve(approval_id, by, expected_hash=seen),
        )

    @app.post("/admin/approvals/{approval_id}/reject")
    def reject(
        request: Request,
        approval_id: str,
        reason: str = Form(""),
        by: str = Form("operator"),
        csrf_token: str = Form(""),
        request_hash: str = Form(""),
    ):
        return act(
            request,
            approval_id,
            csrf_token,
            request_hash,
            lambda seen: service.approvals.reject(approval_id, by, reason),
        )

    @app.post("/admin/approvals/{approval_id}/edit")
    def edit(
        request: Request,
        approval_id: str,
        content: str | None = Form(None),
        arguments: str | None = Form(None),
        by: str = Form("operator"),
        csrf_token: str = Form(""),
        request_hash: str = Form(""),
    ):
        # content: a chat's new last message; arguments: a tool call's new arguments (JSON)
        return act(
            request,
            approval_id,
            csrf_token,
            request_hash,
            lambda seen: service.edit_approval(approval_id, by, content=content, arguments=arguments),
        )

    return sessions


# --- HTML --------------------------------------------------------------------------------------

_LOGIN_FORM = (
    "<form method='post' action='/admin/login'><label>Admin token "
    "<input type='password' name='token' id='token' autocomplete='current-password'></label> "
    "<button id='login'>Sign in</button></form>"
)


def _csrf_field(csrf: str) -> str:
    return f"<input type='hidden' name='{CSRF_FIELD}' value='{html.escape(csrf, quote=True)}'>"


def decision_fields(csrf: str, approval) -> str:
    """The hidden fields every approve / reject / edit form must carry: the session's CSRF token
    and the hash of the request the page shows (the route refuses a changed request with 409)."""
    return (
        _csrf_field(csrf)
        + f"<input type='hidden' name='{HASH_FIELD}' value='{html.escape(approval.request_hash, quote=True)}'>"
    )


def _page(title: str, body: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>so8t · {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:.4rem;vertical-align:top;text-align:left}} .err{{color:#b00}}
.PENDING{{background:#fff7d6}} .EXECUTED{{background:#e8f6e8}} .REJECTED,.TIMEOUT{{background:#f6e8e8}}
pre{{white-space:pre-wrap;margin:0}} form{{display:inline}}</style></head>
<body><h1>so8t · {html.escape(title)}</h1>{body}</body></html>"""


def _approvals_html(items, csrf: str = "", describe: Callable | None = None) -> str:
    """The table; ``describe(approval)`` gives each request's view (so8t.agent.review.request_view)."""
    if not items:
        return "<p id='empty'>No approval requests.</p>"
    rows = []
    for a in items:
        dec = a.decision
        view = describe(a) if describe is not None else request_view(a, redactor=Redactor())
        probs = dec.get("probs") or []
        actions = ""
        if a.status == Status.PENDING:
            fields = decision_fields(csrf, a)
            actions = (
                f"<form method='post' action='/admin/approvals/{a.id}/approve'>{fields}"
                f"<button class='approve' data-id='{a.id}'>Approve</button></form> "
                f"<form method='post' action='/admin/approvals/{a.id}/reject'>{fields}"
                f"<input name='reason' placeholder='reason (required)' class='reason' data-id='{a.id}'> "
                f"<button class='reject' data-id='{a.id}'>Reject</button></form> " + render_edit_form(a, view, fields)
            )
        rows.append(
            f"<tr class='{a.status.value}' id='row-{a.id}'><td><code title='{a.id}'>{a.id[:12]}</code><br>"
            f"{html.escape(a.kind)}</td>"
            f"<td>{render_request(view)}</td>"
            f"<td>{html.escape(str(dec.get('action')))} ({html.escape(str(dec.get('status')))})<br>"
            f"{' / '.join(f'{p:.2f}' for p in probs if p is not None)}{render_why(dec)}</td>"
            f"<td>{html.escape(a.requester)}</td><td>{a.expires_at:%Y-%m-%d %H:%M:%S} UTC</td>"
            f"<td class='status'>{render_status(a, view)}</td>"
            f"<td>{actions}</td></tr>"
        )
    head = (
        "<tr><th>id</th><th>request</th><th>gate (ALLOW / ESCALATE / REFUSE)</th><th>requester</th>"
        "<th>expires</th><th>status</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"
