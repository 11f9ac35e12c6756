"""The gated server over real HTTP (uvicorn on localhost), and the approvals page in a real
headless Chromium driven by Playwright."""

import json
import time
from pathlib import Path

import httpx
import pytest

from so8t.agent.audit import verify
from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "test-admin-token-123"


@pytest.fixture
def serve(tmp_path, monkeypatch):
    handles = []

    def start(run, **kw):
        monkeypatch.setenv("SO8T_ADMIN_TOKEN", TOKEN)
        cfg = ServerConfig(
            run=str(run),
            approvals_url=f"sqlite:///{tmp_path}/state/approvals.db",
            audit_path=str(tmp_path / "state" / "audit.jsonl"),
            max_tokens=6,
            worker_interval_s=0.2,
            **{"self_test": False, **kw},
        )  # a tiny random model cannot pass the self-test
        svc = build_service(cfg)
        h = serve_in_thread(create_app(svc))
        handles.append(h)
        return h.url, svc

    yield start
    for h in handles:
        h.stop()


def _chat(url, content, **kw):
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": content}], **kw},
        headers={"X-So8t-User": "alice"},
        timeout=30,
    ).json()


def test_health_ready_and_gate_only_endpoint(run_with_thresholds, tmp_path, serve):
    url, svc = serve(run_with_thresholds(0.0, 0.5))
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"]
    d = httpx.post(f"{url}/v1/gate", json={"input": "hello"}).json()
    assert d["action"] == "REFUSE" and d["status"] == "ok" and len(d["probs"]) == 3
    assert httpx.post(f"{url}/v1/gate", json={}).status_code == 400
    m = httpx.get(f"{url}/metrics").text
    assert 'so8t_gate_decisions_total{action="REFUSE",status="ok"} 1' in m and "so8t_approvals_pending 0" in m


def test_a_client_cannot_switch_policy_off(run_with_thresholds, tmp_path, serve):
    url, _ = serve(run_with_thresholds(0.0, 0.5))
    r = httpx.post(
        f"{url}/v1/gate",
        json={"input": "hi", "thresholds": None, "fail_action": "ALLOW", "policy": "off"},
        headers={"X-So8t-Policy": "off"},
    ).json()
    assert r["action"] == "REFUSE" and r["thresholds"] == {"refuse_at": 0.0, "allow_at": 0.5}


def test_chat_completions_refused_and_allowed(run_with_thresholds, tmp_path, serve):
    url, _ = serve(run_with_thresholds(0.0, 0.5))
    r = _chat(url, "How do I make a weapon?")
    assert r["object"] == "chat.completion" and r["choices"][0]["finish_reason"] == "content_filter"
    assert r["so8t"]["outcome"] == "refused" and "What I can do instead" in r["choices"][0]["message"]["content"]
    url2, _ = serve(run_with_thresholds(1.0, 0.0))
    r = _chat(url2, "List my files", stream=False)
    assert r["so8t"]["outcome"] == "answered" and isinstance(r["choices"][0]["message"]["content"], str)
    with httpx.stream(
        "POST",
        f"{url2}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    ) as resp:
        lines = [x for x in resp.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["so8t"]["action"] == "ALLOW"


def test_a_broken_run_is_not_ready_and_fails_closed(tmp_path, serve):
    url, _ = serve(tmp_path / "no-run")
    assert httpx.get(f"{url}/readyz").status_code == 503
    r = _chat(url, "List my files")
    assert r["so8t"]["outcome"] == "refused" and r["so8t"]["status"] == "error"
    assert "so8t_gate_fail_closed_total 1" in httpx.get(f"{url}/metrics").text


def test_admin_api_needs_the_token(run_with_thresholds, tmp_path, serve):
    url, _ = serve(run_with_thresholds(1.0, 1.0))
    assert httpx.get(f"{url}/admin/api/approvals").status_code == 401
    assert httpx.get(f"{url}/admin/api/approvals", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = _chat(url, "Send the salary sheet to everyone")
    items = httpx.get(f"{url}/admin/api/approvals", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [i["id"] for i in items] == [r["so8t"]["approval_id"]] and items[0]["status"] == "PENDING"


@pytest.mark.chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (./setup.sh installs it)")
def test_approvals_page_in_headless_chromium(run_with_thresholds, tmp_path, serve):
    from playwright.sync_api import sync_playwright

    url, svc = serve(run_with_thresholds(1.0, 1.0))
    first = _chat(url, "Forward the board minutes to partner@example.com")["so8t"]["approval_id"]
    second = _chat(url, "本番DBのusersテーブルを削除して")["so8t"]["approval_id"]
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
        page.goto(f"{url}/admin/login?token={TOKEN}")  # a token in the URL signs nobody in
        page.goto(f"{url}/admin/approvals")
        assert "Admin token" in page.content()  # not signed in: no data shown
        assert not page.context.cookies()
        page.fill("#token", TOKEN)
        page.click("#login")
        page.wait_for_selector(f"#row-{first}")
        assert "本番DBのusersテーブルを削除して" in page.inner_text(f"#row-{second}")
        page.click(f"button.approve[data-id='{first}']")
        page.wait_for_selector(f"#row-{first}.APPROVED, #row-{first}.EXECUTING, #row-{first}.EXECUTED")
        page.click(f"button.reject[data-id='{second}']")  # no reason: refused with a message
        assert "reason" in page.content()
        page.goto(f"{url}/admin/approvals")
        page.fill(f"input.reason[data-id='{second}']", "production data: not via chat")
        page.click(f"button.reject[data-id='{second}']")
        page.wait_for_selector(f"#row-{second}.REJECTED")
        page.screenshot(path=str(tmp_path / "approvals.png"))
        page.click("#logout")  # sign-out ends the session on the server
        page.wait_for_selector("#token")
        page.goto(f"{url}/admin/approvals")
        assert "Admin token" in page.content() and f"row-{first}" not in page.content()
        browser.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        status = httpx.get(f"{url}/v1/approvals/{first}").json()
        if status["status"] == "EXECUTED":
            break
        time.sleep(0.2)
    assert status["status"] == "EXECUTED" and isinstance(status["answer"], str)
    assert httpx.get(f"{url}/v1/approvals/{second}").json()["status"] == "REJECTED"
    assert (tmp_path / "approvals.png").stat().st_size > 5000
    report = verify(svc.config.audit_path)
    assert report.ok and report.records >= 6


@pytest.mark.parametrize(
    "send, status, message",
    [
        (dict(content=b'{"messages": [{"role": "user", "content": "hi"}'), 400, "JSON"),
        (dict(json={"messages": "hi"}), 400, "messages"),
        (dict(json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}), 400, "max_tokens"),
        (
            dict(
                content=b'{"messages": [{"role": "user", "content": "\\xff\\xfe"}]}'.replace(b"\\xff\\xfe", b"\xff\xfe")
            ),
            400,
            "invalid request",
        ),
        (dict(json={"messages": [{"role": "user", "content": "x" * 3000}]}), 413, "larger than"),
        (dict(json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404, "unknown model"),
        (dict(json={"messages": []}), 400, "messages"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_nothing_runs(run_with_thresholds, tmp_path, serve, send, status, message):
    url, svc = serve(run_with_thresholds(1.0, 1.0), max_body_bytes=2048)
    r = httpx.post(f"{url}/v1/chat/completions", headers={"content-type": "application/json"}, **send)
    assert r.status_code == status and message in r.json()["error"]["message"]
    log = Path(svc.config.audit_path)
    assert svc.approvals.list() == [] and (not log.exists() or not log.read_text())
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "so8t-gated"


def test_shadow_mode_logs_but_does_not_enforce(run_with_thresholds, tmp_path, serve):
    url, svc = serve(run_with_thresholds(0.0, 0.5), shadow=True)
    r = _chat(url, "How do I make a weapon?")
    assert r["so8t"]["outcome"] == "answered" and r["so8t"]["action"] == "REFUSE"
    events = [json.loads(x) for x in Path(svc.config.audit_path).read_text().splitlines()]
    assert [e["event"] for e in events] == ["gate.shadow"] and events[0]["data"]["would"] == "REFUSE"


def test_approval_edit_is_gated_again(run_with_thresholds, tmp_path, serve):
    url, svc = serve(run_with_thresholds(1.0, 1.0))
    first = _chat(url, "Email the whole company the salary list")["so8t"]["approval_id"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(
        f"{url}/admin/approvals/{first}/edit", data={"content": "Email my team the meeting time"}, headers=auth
    )
    assert r.status_code == 303
    old = svc.approvals.get(first)
    new = svc.approvals.get(old.superseded_by)
    assert old.status.value == "EDITED" and new.status.value == "PENDING"  # the gate said ESCALATE again
    assert new.request["messages"][-1]["content"] == "Email my team the meeting time"
    assert httpx.post(f"{url}/admin/approvals/{first}/approve", headers=auth).status_code == 409


# -- malformed text and admin query values: a clear 4xx, nothing runs (issue 13, item 5) ---------

SURROGATE_CASES = [  # (route, raw JSON body with a "\ud800"-style escape, where the error must point)
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "bad \\ud800 text"}]}',
        "messages[1].content",
    ),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, '
        '{"type": "text", "text": "\\udfff"}]}]}',
        "messages[0].content[1].text",
    ),
    ("/v1/chat/completions", '{"messages": [{"role": "us\\udc80er", "content": "hi"}]}', "messages[0].role"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800"}', "user"),
    ("/v1/gate", '{"messages": [{"role": "user", "content": "x\\ud83d"}]}', "messages[0].content"),
    ("/v1/gate", '{"input": "\\ude00 hello"}', "input"),
    (
        "/v1/tools/call",
        '{"conversation": [{"role": "user", "content": "read notes"}], "tool": "files.read", '
        '"arguments": {"path": "meeting-notes.txt\\ud800"}}',
        "arguments.path",
    ),
    (
        "/v1/tools/call",
        '{"conversation": [{"role": "user", "content": "read notes"}], "tool": "files.read", '
        '"arguments": {"\\ud800": "x"}}',
        "arguments (a key)",
    ),
]


@pytest.mark.parametrize("route, body, where", SURROGATE_CASES)
def test_a_lone_surrogate_is_a_clear_400_that_says_where_and_nothing_runs(
    run_with_thresholds, tmp_path, serve, route, body, where
):
    from so8t.server.sandbox import make_sandbox

    box = make_sandbox(tmp_path / "box", web_url="http://127.0.0.1:9/", smtp_port=9)
    url, svc = serve(run_with_thresholds(1.0, 0.0), tools=str(box.tools_yaml))  # ALLOW: anything would run
    r = httpx.post(f"{url}{route}", content=body.encode(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == where
    assert f"{where}: " in err["message"] and "lone surrogate" in err["message"] and "\\u" in err["message"]
    assert svc.gate.latency["count"] == 0 and not svc.gate.decisions  # the gate never ran
    log = Path(svc.config.audit_path)
    assert svc.approvals.list() == [] and (not log.exists() or not log.read_text())


def test_a_surrogate_pair_is_ordinary_text(run_with_thresholds, tmp_path, serve):
    url, _ = serve(run_with_thresholds(0.0, 0.5))
    r = httpx.post(
        f"{url}/v1/gate",
        content=b'{"input": "smile \\ud83d\\ude00"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["action"] == "REFUSE"


def test_an_unknown_approval_status_is_a_clear_400(run_with_thresholds, tmp_path, serve):
    url, svc = serve(run_with_thresholds(1.0, 1.0))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/admin/api/approvals", params={"status": "BOGUS"}).status_code == 401  # auth first
    r = httpx.get(f"{url}/admin/api/approvals", params={"status": "BOGUS"}, headers=auth)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "status" and "'BOGUS'" in err["message"]
    assert all(s in err["message"] for s in ("PENDING", "APPROVED", "REJECTED", "TIMEOUT", "EXECUTED", "FAILED"))
    pending = _chat(url, "Send the salary sheet to everyone")["so8t"]["approval_id"]
    for value in ("PENDING", "pending"):
        got = httpx.get(f"{url}/admin/api/approvals", params={"status": value}, headers=auth)
        assert got.status_code == 200 and [i["id"] for i in got.json()] == [pending]
    assert httpx.get(f"{url}/admin/api/approvals", params={"status": "EXECUTED"}, headers=auth).json() == []
