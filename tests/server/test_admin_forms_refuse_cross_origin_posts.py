"""Issue 13, item 2: CSRF from another local port. With the operator signed in, a page on
127.0.0.1:<another port> auto-submitted an approve form and it ran (SameSite=Strict does not
separate ports). Now every POST under /admin is refused when another origin sent it, a
cookie-signed request needs the session's CSRF token, and a decision is bound to the request
hash the page showed. Each attack runs against a real server (uvicorn on loopback), the browser
one in a real headless Chromium."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from so8t.agent.approvals import ApprovalRow
from so8t.canonical import canonical_json, hash_text

CHROMIUM = Path("/usr/bin/chromium")


def _other_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_page_on_another_local_port_cannot_approve_reject_edit_or_sign_out(admin_server):
    srv = admin_server()
    first = srv.escalate()
    op = srv.operator()
    page = op.get("/admin/approvals")
    assert page.status_code == 200
    fields = srv.fields(page.text, first)
    evil = f"http://127.0.0.1:{_other_port()}"
    attacks = [  # what a page on another port can make the operator's browser send (cookie included)
        {"Origin": evil, "Sec-Fetch-Site": "same-site"},  # the attack as it happened
        {"Origin": evil},  # an older browser: Origin only
        {"Sec-Fetch-Site": "same-site"},  # Fetch metadata only
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed iframe
        {"Origin": srv.origin.replace("http://", "https://")},  # another scheme is another origin
    ]
    for headers in attacks:
        for form in ({"by": "mallory"}, {**fields, "by": "mallory"}):  # even with a leaked CSRF token and hash
            r = op.post(f"/admin/approvals/{first}/approve", data=form, headers=headers)
            assert r.status_code == 403 and "cross-origin request refused" in r.text, (headers, r.text)
            r = op.post(f"/admin/approvals/{first}/reject", data={**form, "reason": "x"}, headers=headers)
            assert r.status_code == 403, headers
            r = op.post(f"/admin/approvals/{first}/edit", data={**form, "content": "something else"}, headers=headers)
            assert r.status_code == 403, headers
            assert op.post("/admin/logout", data=form, headers=headers).status_code == 403
        assert srv.status(first) == "PENDING"
    assert len(srv.svc.approvals.list()) == 1  # no edit made a new item
    assert op.get("/admin/approvals").status_code == 200  # the session survived every attempt
    # the same form from the server's own page goes through
    r = op.post(f"/admin/approvals/{first}/approve", data=fields, headers=srv.same_origin)
    assert r.status_code == 303 and srv.status(first) == "APPROVED"


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(admin_server):
    srv = admin_server()
    first = srv.escalate()
    op, other = srv.operator(), srv.operator()
    fields = srv.fields(op.get("/admin/approvals").text, first)
    others_token = srv.fields(other.get("/admin/approvals").text, first)["csrf_token"]
    assert fields["csrf_token"] and others_token != fields["csrf_token"]
    for headers in (srv.same_origin, {}):  # a browser, or a script with no headers
        for token in (None, "", "wrong", fields["csrf_token"][:-1], others_token, fields["csrf_token"] + "x"):
            form = {"request_hash": fields["request_hash"]} | ({} if token is None else {"csrf_token": token})
            r = op.post(f"/admin/approvals/{first}/approve", data=form, headers=headers)
            assert r.status_code == 403 and "CSRF token" in r.text, (token, r.text)
            r = op.post(f"/admin/approvals/{first}/reject", data={**form, "reason": "no"}, headers=headers)
            assert r.status_code == 403
            r = op.post(f"/admin/approvals/{first}/edit", data={**form, "content": "other"}, headers=headers)
            assert r.status_code == 403
            assert op.post("/admin/logout", data=form, headers=headers).status_code == 403
    assert srv.status(first) == "PENDING" and len(srv.svc.approvals.list()) == 1
    # an old-style request with the raw admin token as the cookie is not a session
    for cookie in (f"so8t_admin={srv.token}", f"so8t_session={srv.token}"):
        raw = httpx.post(
            f"{srv.url}/admin/approvals/{first}/approve", data=fields, headers={"Cookie": cookie, **srv.same_origin}
        )
        assert raw.status_code == 401 and srv.status(first) == "PENDING"


def test_with_the_sessions_token_and_the_hash_the_operator_decides(admin_server):
    srv = admin_server()
    first, second, third = srv.escalate(), srv.escalate("Delete the production table now."), srv.escalate()
    op = srv.operator()
    page = op.get("/admin/approvals").text
    assert srv.fields(page, first)["request_hash"] == srv.svc.approvals.get(first).request_hash
    r = op.post(f"/admin/approvals/{first}/approve", data=srv.fields(page, first), headers=srv.same_origin)
    assert r.status_code == 303 and r.headers["location"] == "/admin/approvals" and srv.status(first) == "APPROVED"
    r = op.post(
        f"/admin/approvals/{second}/reject",
        data={**srv.fields(page, second, "reject"), "reason": "no"},
        headers=srv.same_origin,
    )
    assert r.status_code == 303 and srv.status(second) == "REJECTED"
    r = op.post(
        f"/admin/approvals/{third}/edit",
        data={**srv.fields(page, third), "content": "Tell me the time"},
        headers=srv.same_origin,
    )
    assert r.status_code == 303 and srv.status(third) == "EDITED"
    assert (
        srv.svc.approvals.get(srv.svc.approvals.get(third).superseded_by).request["messages"][-1]["content"]
        == "Tell me the time"
    )
    # a form without the hash is refused: a page always sends the one it showed
    fourth = srv.escalate()
    csrf = srv.fields(op.get("/admin/approvals").text, fourth)["csrf_token"]
    r = op.post(f"/admin/approvals/{fourth}/approve", data={"csrf_token": csrf}, headers=srv.same_origin)
    assert r.status_code == 400 and "request_hash" in r.text and srv.status(fourth) == "PENDING"


def test_a_stale_request_hash_is_a_409_and_nothing_changes(admin_server):
    srv = admin_server()
    first = srv.escalate("Email my team the meeting time")
    op = srv.operator()
    fields = srv.fields(op.get("/admin/approvals").text, first)  # what the operator saw
    # ... then the stored request is replaced (hash recomputed, so the queue's own check passes)
    swapped = {
        **srv.svc.approvals.get(first).request,
        "messages": [{"role": "user", "content": "Email the whole company the salary list"}],
    }
    text = canonical_json(swapped)
    with srv.svc.approvals.engine.begin() as conn:
        conn.execute(
            update(ApprovalRow).where(ApprovalRow.id == first).values(request_json=text, request_hash=hash_text(text))
        )
    before = srv.svc.approvals.get(first)
    for action, extra in (("approve", {}), ("reject", {"reason": "no"}), ("edit", {"content": "Tell me the time"})):
        r = op.post(f"/admin/approvals/{first}/{action}", data={**fields, **extra}, headers=srv.same_origin)
        assert r.status_code == 409, (action, r.text)
        assert "changed since the page was shown" in r.text and "nothing was done" in r.text
    after = srv.svc.approvals.get(first)
    assert after == before and after.status.value == "PENDING" and len(srv.svc.approvals.list()) == 1
    # a bearer script that passes a stale hash is refused the same way
    r = httpx.post(
        f"{srv.url}/admin/approvals/{first}/approve",
        data={"request_hash": fields["request_hash"]},
        headers={"Authorization": f"Bearer {srv.token}"},
    )
    assert r.status_code == 409 and srv.status(first) == "PENDING"
    # the page now shows the new request and its hash; deciding on that works
    fresh = srv.fields(op.get("/admin/approvals").text, first)
    assert fresh["request_hash"] == after.request_hash != fields["request_hash"]
    assert op.post(f"/admin/approvals/{first}/approve", data=fresh, headers=srv.same_origin).status_code == 303
    assert srv.status(first) == "APPROVED"


def test_every_post_route_under_admin_wants_the_csrf_token_and_the_same_origin(admin_server):
    """Covers routes added later too: each POST under /admin (sign-in aside, which has no session
    yet) refuses a signed-in cookie without the token, and a cross-origin post even with it."""
    srv = admin_server()
    first = srv.escalate()
    op = srv.operator()
    fields = srv.fields(op.get("/admin/approvals").text, first)
    posts = sorted(
        {
            r.path
            for r in srv.app.routes
            if getattr(r, "methods", None) and "POST" in r.methods and r.path.startswith("/admin")
        }
        - {"/admin/login"}
    )
    assert {
        "/admin/logout",
        "/admin/approvals/{approval_id}/approve",
        "/admin/approvals/{approval_id}/reject",
        "/admin/approvals/{approval_id}/edit",
    } <= set(posts)
    for path in posts:
        url = path.replace("{approval_id}", first)
        form = {"content": "x", "reason": "x", "request_hash": fields["request_hash"]}
        assert op.post(url, data=form, headers=srv.same_origin).status_code == 403, path
        cross = {"Origin": f"http://127.0.0.1:{_other_port()}", "Sec-Fetch-Site": "same-site"}
        assert op.post(url, data={**form, **fields}, headers=cross).status_code == 403, path
    assert srv.status(first) == "PENDING"


def test_a_bearer_script_needs_no_csrf_token_but_cannot_post_from_another_origin(admin_server):
    srv = admin_server()
    first, second = srv.escalate(), srv.escalate()
    auth = {"Authorization": f"Bearer {srv.token}"}
    evil = {"Origin": f"http://127.0.0.1:{_other_port()}", "Sec-Fetch-Site": "same-site"}
    assert httpx.post(f"{srv.url}/admin/approvals/{first}/approve", headers={**auth, **evil}).status_code == 403
    assert (
        httpx.post(f"{srv.url}/admin/approvals/{first}/approve", headers={"Authorization": "Bearer no"}).status_code
        == 401
    )
    assert srv.status(first) == "PENDING"
    r = httpx.post(f"{srv.url}/admin/approvals/{first}/approve", data={"by": "script"}, headers=auth)
    assert r.status_code == 303 and srv.status(first) == "APPROVED"
    h = srv.svc.approvals.get(second).request_hash
    r = httpx.post(f"{srv.url}/admin/approvals/{second}/approve", data={"request_hash": h}, headers=auth)
    assert r.status_code == 303 and srv.status(second) == "APPROVED"


@pytest.mark.chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (./setup.sh installs it)")
def test_the_attack_in_a_real_browser_a_page_on_another_port_auto_submits_an_approve_form(admin_server, tmp_path):
    """The reported attack, as it happened: the operator signed in in Chromium opens a page served
    from 127.0.0.1:<another port> that auto-submits an approve form to the gated server. The
    browser sends the SameSite=Strict cookie (same site), so only the server's checks stop it;
    the page even carries the operator's real CSRF token and hash (as if they had leaked)."""
    from playwright.sync_api import sync_playwright

    from so8t.server.llm_server import serve_in_thread
    from so8t.server.sandbox import static_site

    srv = admin_server()
    first, second = srv.escalate(), srv.escalate()
    site = tmp_path / "evil"
    site.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        page.goto(f"{srv.url}/admin/login")
        page.fill("#token", srv.token)
        page.click("#login")
        page.wait_for_selector(f"#row-{first}")
        leaked = srv.fields(page.content(), first)
        forms = "".join(
            f"<form id='f{i}' method='post' action='{srv.url}/admin/approvals/{aid}/approve' target='sink{i}'>"
            + "".join(f"<input type='hidden' name='{k}' value='{v}'>" for k, v in extra.items())
            + f"</form><iframe name='sink{i}'></iframe>"
            for i, (aid, extra) in enumerate([(first, leaked), (second, {"by": "mallory"})])
        )
        (site / "index.html").write_text(
            f"<!doctype html><html><body>{forms}<script>document.getElementById('f0').submit();"
            "document.getElementById('f1').submit();</script></body></html>"
        )
        with serve_in_thread(static_site(site)) as evil:
            assert evil.url.startswith("http://127.0.0.1:") and evil.url != srv.url
            seen = []
            page.on(
                "response",
                lambda resp: seen.append((resp.url, resp.status)) if "/admin/approvals/" in resp.url else None,
            )
            page.goto(evil.url + "/")
            page.wait_for_timeout(300)
            for _ in range(50):
                if len(seen) >= 2:
                    break
                page.wait_for_timeout(100)
        assert {u.split("/")[-2]: status for u, status in seen} == {first: 403, second: 403}, seen
        assert srv.status(first) == "PENDING" and srv.status(second) == "PENDING"
        # the operator's own click on the page still works
        page.goto(f"{srv.url}/admin/approvals")
        page.click(f"button.approve[data-id='{first}']")
        page.wait_for_selector(f"#row-{first}.APPROVED")
        browser.close()
    assert srv.status(first) == "APPROVED" and srv.status(second) == "PENDING"
