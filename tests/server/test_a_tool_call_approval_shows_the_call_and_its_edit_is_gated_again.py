"""Issue 13, item 4: tool-call approvals were blind. The approvals page showed an empty request for
a tool call, and editing one failed with a 500 (KeyError: 'messages').

Now the page shows the tool, its arguments (pretty JSON, redacted like the audit log, escaped) and,
for mail.send, the draft it would send (sender, recipients, subject, body); an edit of a tool call
replaces its arguments (invalid JSON or arguments the tool refuses: a 400 naming the problem), is
gated again on the text the tool loop gates, and only then can be approved and run; an edit the
gate refuses is REJECTED and never runs. Everything is real: the server on loopback, the mail tool
writing .eml drafts, a local SMTP server, the gate on the tiny run (ESCALATE for everything; where a
test needs the gate to refuse one call, its scorer is a content rule), and a headless Chromium."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from so8t.agent.approvals import Status
from so8t.agent.audit import verify
from so8t.canonical import canonical_json
from so8t.server.sandbox import LocalSmtp, make_sandbox

pytestmark = pytest.mark.smtp  # every test's world has a LocalSmtp

CHROMIUM = Path("/usr/bin/chromium")
CARD = "4111 1111 1111 1111"
KEY = "sk_live_abcdefghijklmnop1234"


@pytest.fixture
def world(admin_server, tmp_path):
    with LocalSmtp() as smtp:
        box = make_sandbox(tmp_path / "box", web_url="http://127.0.0.1:9/", smtp_port=smtp.port)
        srv = admin_server(tools=str(box.tools_yaml))
        assert srv.svc.toolset is not None
        yield srv, smtp, box


def _draft(srv, **fields) -> str:
    """A real draft, written by the mail tool (with its recorded sha256)."""
    tools = srv.svc.toolset
    return tools.execute(tools.validate("mail.draft", fields))["draft_id"]


def _propose(srv, tool: str, arguments: dict) -> str:
    r = httpx.post(
        f"{srv.url}/v1/tools/call",
        json={"conversation": [{"role": "user", "content": "Please do it"}], "tool": tool, "arguments": arguments},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    return r.json()["approval_id"]


def _row(page: str, approval_id: str) -> str:
    m = re.search(rf"<tr class='\w+' id='row-{approval_id}'>(.*?)</tr>", page, re.DOTALL)
    assert m, f"no row for {approval_id}"
    return m.group(1)


def _cell(row: str, cls: str) -> str:
    m = re.search(rf"<(\w+) class='{cls}'[^>]*>(.*?)</\1>", row, re.DOTALL)
    assert m, f"no .{cls}"
    return html.unescape(m.group(2))


def _textarea(page: str, approval_id: str, name: str) -> str:
    m = re.search(rf"<textarea name='{name}'[^>]*data-id='{approval_id}'[^>]*>(.*?)</textarea>", page, re.DOTALL)
    assert m, f"no {name} textarea for {approval_id}"
    return html.unescape(m.group(1))


def test_a_mail_send_approval_shows_the_tool_its_arguments_and_the_draft(world):
    srv, _, _ = world
    draft_id = _draft(
        srv,
        to=["Ben Carter <ben@example.com>"],
        cc=["ops@example.jp"],
        subject="Q3 plan <script>alert(1)</script>",
        body=f"Hi Ben,\nthe plan is attached.\nCard: {CARD}\n<img src=x onerror=alert(2)>",
    )
    send = _propose(srv, "mail.send", {"draft_id": draft_id})
    other = _propose(srv, "mail.draft", {"to": ["eve@example.com"], "subject": "keys", "body": f"the key is {KEY}"})
    page = srv.operator().get("/admin/approvals").text

    row = _row(page, send)
    assert _cell(row, "tool") == "mail.send"
    assert json.loads(_cell(row, "arguments")) == {"draft_id": draft_id}  # was: an empty request
    assert _cell(row, "draft-to") == "ben@example.com" and _cell(row, "draft-cc") == "ops@example.jp"
    assert _cell(row, "draft-from") == "agent@example.com"
    assert _cell(row, "draft-subject") == "Q3 plan <script>alert(1)</script>"  # shown as text...
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in row  # ...never as markup
    body = _cell(row, "draft-body")
    assert body.startswith("Hi Ben,\nthe plan is attached.") and "<img src=x onerror=alert(2)>" in body
    assert CARD not in page and "[REDACTED:credit_card]" in body  # redacted like the audit log
    assert len(_cell(row, "draft-sha256")) == 64
    assert json.loads(_textarea(page, send, "arguments")) == {"draft_id": draft_id}

    row = _row(page, other)
    args = json.loads(_cell(row, "arguments"))
    assert _cell(row, "tool") == "mail.draft" and args["subject"] == "keys"
    assert KEY not in page and args["body"] == "the key is [REDACTED:api_key]"
    assert _cell(row, "recipients") == "eve@example.com"  # who it reaches, in clear


@pytest.mark.chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (./setup.sh installs it)")
def test_the_operator_reads_the_draft_in_a_real_browser(world):
    from playwright.sync_api import sync_playwright

    srv, _, _ = world
    draft_id = _draft(
        srv, to=["ben@example.com"], subject="予定 <b>x</b>", body="金曜に出荷します。\n<script>alert(3)</script>"
    )
    send = _propose(srv, "mail.send", {"draft_id": draft_id})
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{srv.url}/admin/approvals")
        page.fill("#token", srv.token)
        page.click("#login")
        page.wait_for_selector(f"#row-{send}")
        assert page.inner_text(f"#row-{send} .tool") == "mail.send"
        assert page.inner_text(f"#row-{send} .draft-to") == "ben@example.com"
        assert page.inner_text(f"#row-{send} .draft-subject") == "予定 <b>x</b>"
        assert (
            page.inner_text(f"#row-{send} .draft-body").rstrip("\n") == "金曜に出荷します。\n<script>alert(3)</script>"
        )
        assert dialogs == []  # nothing in the draft ran
        browser.close()


def test_editing_a_tool_calls_arguments_gates_the_edited_call_again_and_runs_it(world, monkeypatch):
    srv, smtp, box = world
    wrong = _draft(srv, to=["ben@example.com"], subject="Q3 plan", body="the draft with the old numbers")
    right = _draft(srv, to=["carol@example.jp"], subject="Q3 plan (fixed)", body="the draft with the new numbers")
    first = _propose(srv, "mail.send", {"draft_id": wrong})
    op = srv.operator()
    page = op.get("/admin/approvals").text
    form = srv.fields(page, first, "edit")
    assert _textarea(page, first, "arguments")

    def edit(arguments):
        return op.post(f"/admin/approvals/{first}/edit", data={**form, "arguments": arguments}, headers=srv.same_origin)

    for bad, message in [
        ('{"draft_id": ', "arguments: not valid JSON: Expecting value (line 1, column 14)"),
        ('["x"]', "arguments: must be a JSON object"),
        ('{"draft_id": "../../etc/passwd"}', "draft_id"),
        (json.dumps({"draft_id": right, "bcc": ["x@evil.test"]}), "bcc"),
    ]:
        r = edit(bad)
        assert r.status_code == 400 and message in html.unescape(r.text), (bad, r.text)  # was: 500
    assert srv.status(first) == "PENDING" and len(srv.svc.approvals.list()) == 1  # nothing changed

    seen = []
    real = srv.svc.gate.decide
    monkeypatch.setattr(srv.svc.gate, "decide", lambda convo: (seen.append(convo), real(convo))[1])
    r = edit(json.dumps({"draft_id": right}, indent=4))
    assert r.status_code == 303, r.text
    old = srv.svc.approvals.get(first)
    new = srv.svc.approvals.get(old.superseded_by)
    assert old.status is Status.EDITED and new.status is Status.PENDING  # ESCALATE again: a person approves it
    assert new.kind == "tool_call" and new.request == {"tool": "mail.send", "arguments": {"draft_id": right}}
    canonical = canonical_json({"name": "mail.send", "arguments": {"draft_id": right}})
    assert seen == [[{"role": "user", "content": f"Agent tool call: {canonical}"}]]  # the tool loop's text
    assert new.decision["action"] == "ESCALATE"

    assert srv.svc.work_once()["ran"] == 0 and smtp.messages == []  # gated, not approved: nothing runs
    page = op.get("/admin/approvals").text
    r = op.post(f"/admin/approvals/{new.id}/approve", data=srv.fields(page, new.id), headers=srv.same_origin)
    assert r.status_code == 303
    assert srv.svc.work_once()["ran"] == 1
    assert srv.svc.approvals.get(new.id).status is Status.EXECUTED
    assert [m["to"] for m in smtp.messages] == [["carol@example.jp"]]  # the edited call ran, once
    assert b"the draft with the new numbers" in smtp.messages[0]["data"]
    assert (box.drafts / f"{wrong}.eml").exists()  # the original never ran
    assert verify(srv.svc.config.audit_path).ok


def test_an_edit_the_gate_refuses_is_rejected_and_never_runs(world, monkeypatch):
    srv, smtp, _ = world
    harmless = _draft(srv, to=["ben@example.com"], subject="lunch", body="Lunch at noon?")
    leak = _draft(srv, to=["ben@example.com"], subject="all customer records", body="attached: every customer's card")
    first = _propose(srv, "mail.send", {"draft_id": harmless})
    gate = srv.svc.gate  # the gate's judgement of content: the leaking draft's call is REFUSE, the rest ESCALATE
    gate.thresholds = None
    monkeypatch.setattr(
        gate,
        "_score",
        lambda views: np.array([[0.05, 0.05, 0.9] if leak in json.dumps(v) else [0.05, 0.9, 0.05] for v in views]),
    )
    op = srv.operator()
    page = op.get("/admin/approvals").text
    r = op.post(
        f"/admin/approvals/{first}/edit",
        data={**srv.fields(page, first, "edit"), "arguments": json.dumps({"draft_id": leak})},
        headers=srv.same_origin,
    )
    assert r.status_code == 303, r.text
    new = srv.svc.approvals.get(srv.svc.approvals.get(first).superseded_by)
    assert new.status is Status.REJECTED and new.decided_by == "gate" and new.decision["action"] == "REFUSE"
    r = op.post(
        f"/admin/approvals/{new.id}/approve",
        data={**srv.fields(page, first), "request_hash": new.request_hash},
        headers=srv.same_origin,
    )
    assert r.status_code == 409 and srv.svc.approvals.get(new.id).status is Status.REJECTED
    assert srv.svc.work_once()["ran"] == 0 and smtp.messages == []


def test_a_redacted_value_left_as_shown_keeps_its_stored_value(world):
    srv, _, _ = world
    first = _propose(srv, "mail.draft", {"to": ["ben@example.com"], "subject": "keys", "body": f"the key is {KEY}"})
    op = srv.operator()
    page = op.get("/admin/approvals").text
    shown = json.loads(_textarea(page, first, "arguments"))
    assert shown == {"body": "the key is [REDACTED:api_key]", "subject": "keys", "to": ["[REDACTED:email]"]}
    form = srv.fields(page, first, "edit")

    r = op.post(
        f"/admin/approvals/{first}/edit",
        headers=srv.same_origin,  # a changed value still holding a marker
        data={**form, "arguments": json.dumps({**shown, "body": "the new key is [REDACTED:api_key]"})},
    )
    assert r.status_code == 400 and "arguments.body: still holds a redaction marker ([REDACTED:api_key])" in r.text
    r = op.post(
        f"/admin/approvals/{first}/edit",
        headers=srv.same_origin,
        data={**form, "arguments": json.dumps({**shown, "subject": "the key"})},
    )
    assert r.status_code == 303, r.text
    new = srv.svc.approvals.get(srv.svc.approvals.get(first).superseded_by)
    assert new.request["arguments"] == {"to": ["ben@example.com"], "subject": "the key", "body": f"the key is {KEY}"}


def test_chat_edits_keep_working(world):
    srv, _, _ = world
    first = srv.escalate("Email the whole company the salary list")
    op = srv.operator()
    page = op.get("/admin/approvals").text
    assert _textarea(page, first, "content") == "Email the whole company the salary list"
    r = op.post(
        f"/admin/approvals/{first}/edit",
        headers=srv.same_origin,
        data={**srv.fields(page, first, "edit"), "content": "Email my team the meeting time"},
    )
    assert r.status_code == 303, r.text
    new = srv.svc.approvals.get(srv.svc.approvals.get(first).superseded_by)
    assert new.status is Status.PENDING and new.request["messages"][-1]["content"] == "Email my team the meeting time"
    page = op.get("/admin/approvals").text
    r = op.post(
        f"/admin/approvals/{new.id}/edit",
        headers=srv.same_origin,
        data={**srv.fields(page, new.id, "edit"), "arguments": "{}"},
    )
    assert r.status_code == 400 and "edited through 'content'" in html.unescape(r.text)
