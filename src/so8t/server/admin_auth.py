"""Who may use /admin: server-side sessions, the sign-in rate limit, origin checks, and the
FastAPI dependencies that admit a caller or raise.

Guarantees (the full list, with the tests that hold them, is in ``so8t.server.admin``):

* A session id is 32 random bytes, stored only as its sha256; a session lives a fixed time from
  sign-in and is bound to the admin token in force then. The store is in memory, in this process.
* Tokens are compared as sha256 digests with ``hmac.compare_digest`` (neither content nor length
  shows by timing); CSRF tokens with ``hmac.compare_digest`` too.
* ``admin_caller`` / ``admin_post_caller`` either return the ``Caller`` or raise ``AdminRefusal``
  (401, 403 or 503); a route that depends on them never runs for a caller they refuse.
  ``refusal_response`` turns the refusal into JSON for scripts and the API, the sign-in form for
  a 401 in a browser, an HTML message otherwise.
* ``admin_guard`` (a middleware, so routes added later are covered) refuses every non-GET request
  under /admin whose Origin is not this server's or whose Sec-Fetch-Site is cross-site or
  same-site, before its body is read, and adds the security headers to every /admin response.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request
from fastapi.responses import Response

from so8t.agent.service import Service
from so8t.server.admin_html import COOKIE, message_page, sign_in_page
from so8t.server.openai_schema import error_response

__all__ = [
    "DEFAULT_SESSION_TTL_S",
    "Admin",
    "AdminDep",
    "AdminRefusal",
    "AdminSession",
    "AdminSessions",
    "Caller",
    "SignInLimiter",
    "admin_caller",
    "admin_guard",
    "admin_post_caller",
    "own_origin",
    "refusal_response",
    "same_origin",
    "token_matches",
]

DEFAULT_SESSION_TTL_S = 8 * 3600.0
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


def text_matches(given: str, expected: str) -> bool:
    """A form value (possibly holding lone surrogates) equals ``expected``, compared in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


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


async def admin_guard(request: Request, call_next):
    """Middleware: a state-changing request under /admin from another origin (another port on
    127.0.0.1 included) is refused before anything reads its body; security headers on every answer."""
    path = request.url.path
    if not (path == "/admin" or path.startswith("/admin/")):
        return await call_next(request)
    if request.method not in ("GET", "HEAD", "OPTIONS") and (why := same_origin(request)) is not None:
        resp: Response = error_response(403, why, kind="forbidden")
    else:
        resp = await call_next(request)
    for k, v in _SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


# --- callers -----------------------------------------------------------------------------------


class AdminRefusal(Exception):
    """An /admin request refused: ``refusal_response`` answers it (JSON, sign-in form or HTML)."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def wants_json(request: Request) -> bool:
    return "authorization" in request.headers or request.url.path.startswith("/admin/api/")


def refusal_response(request: Request, exc: AdminRefusal) -> Response:
    """The exception handler for ``AdminRefusal``."""
    if wants_json(request):
        return error_response(exc.status, exc.message, kind=exc.kind)
    if exc.status == 401:
        return sign_in_page(401, exc.message, clear_cookie=COOKIE in request.cookies)
    return message_page(exc.message, exc.status)


@dataclass
class Caller:
    """Who is calling: a signed-in session (cookie) or a script holding the token (bearer)."""

    session: AdminSession | None  # None for a bearer caller
    session_id: str | None = None

    @property
    def bearer(self) -> bool:
        return self.session is None


@dataclass
class Admin:
    """The operators' state of one app (``app.state.admin``): its service, sessions and limiter."""

    service: Service
    sessions: AdminSessions
    limiter: SignInLimiter

    @property
    def token_env(self) -> str:
        return self.service.config.admin_token_env

    def token(self) -> str | None:
        """The admin token in force now (read on every request: changing it ends every session)."""
        return os.environ.get(self.token_env) or None

    def caller(self, request: Request) -> Caller:
        """The caller (a live session, or the bearer token); AdminRefusal otherwise."""
        token = self.token()
        if not token:
            raise AdminRefusal(503, f"the approvals UI is disabled: set {self.token_env}", "unavailable")
        auth = request.headers.get("authorization")
        if auth is not None:
            # A script: the token itself, in a header no cross-origin page can set. A wrong
            # header is refused outright (no fallback to a cookie sent alongside it).
            if token_matches(auth.removeprefix("Bearer ").strip(), token):
                return Caller(session=None)
            raise AdminRefusal(401, "admin token required", "unauthorized")
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid, token)
        if session is None:
            why = "session expired or signed out: sign in again" if sid else "sign in first"
            raise AdminRefusal(401, why, "unauthorized")
        return Caller(session=session, session_id=sid)


def get_admin(request: Request) -> Admin:
    return request.app.state.admin


AdminDep = Annotated[Admin, Depends(get_admin)]


def admin_caller(request: Request, admin: AdminDep) -> Caller:
    """Dependency: the caller of a reading route, or AdminRefusal."""
    return admin.caller(request)


def admin_post_caller(request: Request, admin: AdminDep, csrf_token: str = Form("")) -> Caller:
    """Dependency: the caller of a state-changing route, and for a session that session's CSRF
    token (the Origin and Sec-Fetch-Site checks already ran in ``admin_guard``). Bearer callers
    skip the CSRF token: the Authorization header is not CSRF-able."""
    caller = admin.caller(request)
    if caller.session is not None and not (csrf_token and text_matches(csrf_token, caller.session.csrf)):
        raise AdminRefusal(403, "missing or wrong CSRF token: reload the page and try again", "forbidden")
    return caller
