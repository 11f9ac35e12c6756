"""Issue 17, item 9, on the approvals page (a real server, a signed-in operator): an item that ran
showed only EXECUTED, without its answer or who approved it; an item a confidence threshold
escalated gave the approver no reason. Now the status cell says who approved it and when and holds
the answer (a tool call's result redacted like its arguments), and the gate cell holds the hint
so8t.gate.decision.why_escalated gives."""

from __future__ import annotations

import html
import re

import httpx

from so8t.agent.approvals import Status
from so8t.gate.decision import why_escalated
from so8t.server.sandbox import make_sandbox

KEY = "sk_live_abcdefghijklmnop1234"


def _row(page: str, approval_id: str) -> str:
    m = re.search(rf"<tr class='\w+' id='row-{approval_id}'>(.*?)</tr>", page, re.DOTALL)
    assert m, f"no row for {approval_id}"
    return m.group(1)


def _cell(row: str, cls: str) -> str | None:
    m = re.search(rf"<(\w+) class='{cls}'[^>]*>(.*?)</\1>", row, re.DOTALL)
    return html.unescape(m.group(2)) if m else None


def _approve(srv, op: httpx.Client, approval_id: str, by: str) -> None:
    page = op.get("/admin/approvals").text
    r = op.post(
        f"/admin/approvals/{approval_id}/approve",
        data={**srv.fields(page, approval_id), "by": by},
        headers=srv.same_origin,
    )
    assert r.status_code == 303, r.text


def test_an_executed_chat_shows_its_answer_and_who_approved_it(admin_server):
    srv = admin_server()
    first = srv.escalate("Send the salary sheet to everyone")
    op = srv.operator()
    row = _row(op.get("/admin/approvals").text, first)
    assert _cell(row, "decided-by") is None and _cell(row, "result") is None  # PENDING: nobody decided yet
    _approve(srv, op, first, "carol")
    assert "approved by carol at " in _cell(_row(op.get("/admin/approvals").text, first), "decided-by")
    answer = srv.svc.router.run_approved(first)["text"]  # what the server's worker does with it
    assert srv.status(first) == Status.EXECUTED.value
    row = _row(op.get("/admin/approvals").text, first)
    assert "approved by carol at " in _cell(row, "decided-by")
    assert _cell(row, "result") == answer


def test_a_rejection_names_who_rejected_it(admin_server):
    srv = admin_server()
    first = srv.escalate()
    op = srv.operator()
    page = op.get("/admin/approvals").text
    r = op.post(
        f"/admin/approvals/{first}/reject",
        data={**srv.fields(page, first, "reject"), "by": "dave", "reason": "needs a ticket"},
        headers=srv.same_origin,
    )
    assert r.status_code == 303
    row = _row(op.get("/admin/approvals").text, first)
    assert "rejected by dave" in _cell(row, "decided-by") and "needs a ticket" in row


def test_an_executed_tool_calls_result_is_shown_redacted(admin_server, tmp_path):
    box = make_sandbox(tmp_path / "box", web_url="http://127.0.0.1:9/", smtp_port=9)
    (box.files / "keys.txt").write_text(f"the deploy key is {KEY}\n", encoding="utf-8")
    srv = admin_server(tools=str(box.tools_yaml))
    r = httpx.post(
        f"{srv.url}/v1/tools/call",
        json={
            "conversation": [{"role": "user", "content": "read keys.txt"}],
            "tool": "files.read",
            "arguments": {"path": "keys.txt"},
        },
        timeout=60,
    ).json()
    assert r["status"] == "pending", r
    op = srv.operator()
    _approve(srv, op, r["approval_id"], "erin")
    stored = srv.svc.router.toolloop.execute_approved(r["approval_id"])["text"]
    assert KEY in stored  # the requester's answer is the real file
    shown = _cell(_row(op.get("/admin/approvals").text, r["approval_id"]), "result")
    assert "the deploy key is" in shown and KEY not in shown and "[REDACTED:" in shown


def test_a_threshold_escalation_gives_the_approver_the_reason(admin_server):
    """Thresholds 1 / 1: the gate escalates everything, whatever the head's top choice."""
    srv = admin_server()
    first = srv.escalate("Send the salary sheet to everyone")
    decision = srv.svc.approvals.get(first).decision
    why = why_escalated(decision)
    assert why is not None, f"the tiny head's own choice was ESCALATE here: {decision['probs']}"
    row = _row(srv.operator().get("/admin/approvals").text, first)
    assert _cell(row, "why-escalated") == why and ("allow_at 1.00" in why or "refuse_at 1.00" in why)
