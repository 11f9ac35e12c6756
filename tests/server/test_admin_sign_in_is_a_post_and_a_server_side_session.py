"""Issue 13, item 3: the token in the URL. Sign-in was `GET /admin/login?token=...` (the token
landed in access logs and browser history) and the cookie was the raw admin token. Now sign-in is
a POST, the cookie holds a random server-side session id that expires and can be signed out,
and a URL token signs nobody in. Each case runs against a real server (uvicorn on loopback)."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

import httpx

from so8t.server.admin import COOKIE, DEFAULT_SESSION_TTL_S


def _cookie(resp: httpx.Response) -> SimpleCookie:
    jar = SimpleCookie()
    for header in resp.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


def test_a_token_in_the_url_signs_nobody_in_and_is_not_echoed(admin_server):
    srv = admin_server()
    client = httpx.Client(base_url=srv.url, timeout=30)
    r = client.get("/admin/login", params={"token": srv.token})
    assert r.status_code == 200 and "set-cookie" not in r.headers and not client.cookies
    assert srv.token not in r.text and "method='post' action='/admin/login'" in r.text
    for path in ("/admin/approvals", f"/admin/approvals?token={srv.token}"):
        page = client.get(path)
        assert page.status_code == 401 and "Admin token" in page.text and srv.token not in page.text
    assert client.get("/admin/api/approvals", params={"token": srv.token}).status_code == 401
    assert len(srv.app.state.admin_sessions) == 0


def test_sign_in_is_a_post_and_the_cookie_is_a_random_session_id(admin_server):
    srv = admin_server()
    first = srv.escalate()
    client = httpx.Client(base_url=srv.url, timeout=30)
    for wrong in ("", "nope", srv.token[:-1], srv.token + "x"):
        r = client.post("/admin/login", data={"token": wrong})
        assert r.status_code == 401 and "Wrong or missing token" in r.text and "set-cookie" not in r.headers
    r = client.post("/admin/login", data={"token": srv.token})
    assert r.status_code == 303 and r.headers["location"] == "/admin/approvals"
    header = r.headers["set-cookie"]
    morsel = _cookie(r)[COOKIE]
    assert srv.token not in header and morsel.value != srv.token and len(morsel.value) >= 43  # 32 random bytes
    assert morsel["httponly"] and morsel["samesite"].lower() == "strict" and morsel["path"] == "/admin"
    assert morsel["max-age"] == str(int(DEFAULT_SESSION_TTL_S)) and not morsel["secure"]  # plain http here
    for k, v in {"cache-control": "no-store", "x-frame-options": "DENY"}.items():
        assert r.headers[k] == v
    page = client.get("/admin/approvals")
    assert page.status_code == 200 and f"row-{first}" in page.text and srv.token not in page.text
    assert [i["id"] for i in client.get("/admin/api/approvals").json()] == [first]
    # each sign-in is a new session; sign-in from the same browser replaces its old one
    again = _cookie(srv.operator().post("/admin/login", data={"token": srv.token}))[COOKIE].value
    assert again != morsel.value
    old = morsel.value
    client.post("/admin/login", data={"token": srv.token})
    assert httpx.get(f"{srv.url}/admin/approvals", headers={"Cookie": f"{COOKIE}={old}"}).status_code == 401
    # served over https (here: through a proxy uvicorn trusts on loopback), the cookie is Secure
    r = httpx.post(f"{srv.url}/admin/login", data={"token": srv.token}, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303 and _cookie(r)[COOKIE]["secure"]


def test_unknown_signed_out_and_expired_sessions_get_401_and_the_sign_in_form(admin_server):
    srv = admin_server()
    store = srv.app.state.admin_sessions
    assert store.ttl_s == DEFAULT_SESSION_TTL_S == 8 * 3600
    bogus = httpx.get(f"{srv.url}/admin/approvals", headers={"Cookie": f"{COOKIE}=made-up-session-id"})
    assert bogus.status_code == 401 and "Admin token" in bogus.text and "session expired" in bogus.text
    assert _cookie(bogus)[COOKIE]["max-age"] == "0"  # and the stale cookie is cleared
    # sign-out deletes the session on the server: the same cookie, replayed, is refused
    op = srv.operator()
    sid = op.cookies[COOKIE]
    csrf = op.get("/admin/approvals").text.split("name='csrf_token' value='")[1].split("'")[0]
    r = op.post("/admin/logout", data={"csrf_token": csrf}, headers=srv.same_origin)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login" and _cookie(r)[COOKIE]["max-age"] == "0"
    replay = httpx.get(f"{srv.url}/admin/approvals", headers={"Cookie": f"{COOKIE}={sid}"})
    assert replay.status_code == 401 and "Admin token" in replay.text
    assert httpx.get(f"{srv.url}/admin/api/approvals", headers={"Cookie": f"{COOKIE}={sid}"}).status_code == 401
    # expiry: a session 8 hours old is refused (the store's clock moved on instead of the test waiting)
    op = srv.operator()
    assert op.get("/admin/approvals").status_code == 200
    real = store.clock
    store.clock = lambda: real() + DEFAULT_SESSION_TTL_S - 5
    assert op.get("/admin/approvals").status_code == 200
    store.clock = lambda: real() + DEFAULT_SESSION_TTL_S + 1
    expired = op.get("/admin/approvals")
    assert expired.status_code == 401 and "Admin token" in expired.text
    store.clock = real
    assert op.get("/admin/approvals").status_code == 401  # gone, not just hidden
    assert len(store) == 0


def test_the_session_lifetime_is_configurable_and_a_new_admin_token_ends_every_session(admin_server, monkeypatch):
    srv = admin_server(admin_session_ttl_s=1.5)
    r = httpx.post(f"{srv.url}/admin/login", data={"token": srv.token})
    assert _cookie(r)[COOKIE]["max-age"] == "1"
    cookie = {"Cookie": f"{COOKIE}={_cookie(r)[COOKIE].value}"}
    time.sleep(1.6)
    assert httpx.get(f"{srv.url}/admin/approvals", headers=cookie).status_code == 401
    srv = admin_server()
    op = srv.operator()
    monkeypatch.setenv("SO8T_ADMIN_TOKEN", "a-rotated-admin-token")
    assert op.get("/admin/approvals").status_code == 401


def test_failed_sign_ins_are_rate_limited(admin_server):
    srv = admin_server()
    limiter = srv.app.state.admin_sign_in_limiter
    for _ in range(limiter.max_failures):
        assert httpx.post(f"{srv.url}/admin/login", data={"token": "guess"}).status_code == 401
    for token in ("guess", srv.token):  # locked: even the right token waits
        r = httpx.post(f"{srv.url}/admin/login", data={"token": token})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "set-cookie" not in r.headers
    real = limiter.clock
    limiter.clock = lambda: real() + limiter.window_s + 1  # the window passed
    assert httpx.post(f"{srv.url}/admin/login", data={"token": srv.token}).status_code == 303
