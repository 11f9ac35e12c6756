"""The HTML of the operators' pages: the page frame, the sign-in form, the approvals table.

Guarantees: every value from a request, a decision or an operator is HTML-escaped (the request's
own view is laid out by ``so8t.server.approval_view``, which escapes too); every approve / reject
/ edit form carries the session's CSRF token and the hash of the request the page shows
(``decision_fields``), which ``so8t.server.admin`` checks before acting.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from fastapi.responses import HTMLResponse

from so8t.agent.approvals import Status
from so8t.agent.redaction import Redactor
from so8t.agent.review import request_view
from so8t.server.approval_view import render_edit_form, render_request, render_status, render_why

__all__ = [
    "COOKIE",
    "COOKIE_PATH",
    "CSRF_FIELD",
    "HASH_FIELD",
    "approvals_html",
    "csrf_field",
    "decision_fields",
    "message_page",
    "page",
    "sign_in_page",
]

COOKIE = "so8t_session"  # holds a session id, never the admin token
COOKIE_PATH = "/admin"
CSRF_FIELD = "csrf_token"
HASH_FIELD = "request_hash"

_LOGIN_FORM = (
    "<form method='post' action='/admin/login'><label>Admin token "
    "<input type='password' name='token' id='token' autocomplete='current-password'></label> "
    "<button id='login'>Sign in</button></form>"
)


def csrf_field(csrf: str) -> str:
    return f"<input type='hidden' name='{CSRF_FIELD}' value='{html.escape(csrf, quote=True)}'>"


def decision_fields(csrf: str, approval) -> str:
    """The hidden fields every approve / reject / edit form must carry: the session's CSRF token
    and the hash of the request the page shows (the route refuses a changed request with 409)."""
    return (
        csrf_field(csrf)
        + f"<input type='hidden' name='{HASH_FIELD}' value='{html.escape(approval.request_hash, quote=True)}'>"
    )


def page(title: str, body: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>so8t · {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:.4rem;vertical-align:top;text-align:left}} .err{{color:#b00}}
.PENDING{{background:#fff7d6}} .EXECUTED{{background:#e8f6e8}} .REJECTED,.TIMEOUT{{background:#f6e8e8}}
pre{{white-space:pre-wrap;margin:0}} form{{display:inline}}</style></head>
<body><h1>so8t · {html.escape(title)}</h1>{body}</body></html>"""


def message_page(message: str, status: int) -> HTMLResponse:
    """The approvals page's frame around one error message and a link back."""
    return HTMLResponse(
        page("Approvals", f"<p class='err'>{html.escape(message)}</p><p><a href='/admin/approvals'>back</a></p>"),
        status,
    )


def sign_in_page(status: int, message: str = "", *, clear_cookie: bool = False) -> HTMLResponse:
    note = f"<p class='err'>{html.escape(message)}</p>" if message else ""
    resp = HTMLResponse(page("Sign in", note + _LOGIN_FORM), status)
    if clear_cookie:
        resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return resp


def approvals_html(items, csrf: str = "", describe: Callable | None = None) -> str:
    """The table; ``describe(approval)`` gives each request's view (so8t.agent.review.request_view)."""
    if not items:
        return "<p id='empty'>No approval requests.</p>"
    head = (
        "<tr><th>id</th><th>request</th><th>gate (ALLOW / ESCALATE / REFUSE)</th><th>requester</th>"
        "<th>expires</th><th>status</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(_row(a, csrf, describe) for a in items)}</table>"


def _row(a, csrf: str, describe: Callable | None) -> str:
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
    return (
        f"<tr class='{a.status.value}' id='row-{a.id}'><td><code title='{a.id}'>{a.id[:12]}</code><br>"
        f"{html.escape(a.kind)}</td>"
        f"<td>{render_request(view)}</td>"
        f"<td>{html.escape(str(dec.get('action')))} ({html.escape(str(dec.get('status')))})<br>"
        f"{' / '.join(f'{p:.2f}' for p in probs if p is not None)}{render_why(dec)}</td>"
        f"<td>{html.escape(a.requester)}</td><td>{a.expires_at:%Y-%m-%d %H:%M:%S} UTC</td>"
        f"<td class='status'>{render_status(a, view)}</td>"
        f"<td>{actions}</td></tr>"
    )
