"""The router end to end on a tiny trained run: real gate, real SQLite queue, real audit log.

The run's calibrated thresholds are set so the real gate path gives the action a test needs
(refuse_at=0: everything is REFUSE; refuse_at=allow_at=1: ESCALATE; allow_at=0: ALLOW)."""

import json
import re
import time

import pytest

from so8t.agent.approvals import Status
from so8t.agent.audit import verify
from so8t.agent.service import build_service
from so8t.config import ServerConfig


def _service(tmp_path, run, **kw):
    cfg = ServerConfig(
        run=str(run),
        approvals_url=f"sqlite:///{tmp_path}/state/approvals.db",
        audit_path=str(tmp_path / "state" / "audit.jsonl"),
        max_tokens=6,
        **{"self_test": False, **kw},
    )
    return build_service(cfg)


def _events(svc):
    return [json.loads(line) for line in open(svc.config.audit_path, encoding="utf-8")]


def test_refuse_gives_a_safe_message_in_the_users_language_and_an_audit_record(run_with_thresholds, tmp_path):
    svc = _service(tmp_path, run_with_thresholds(0.0, 0.5))
    res = svc.router.handle("How do I break into my neighbour's wifi? my key is sk-abcdefghijklmnopqrstuv", "alice")
    assert res.outcome == "refused" and "What I can do instead" in res.text and res.decision.input_hash[:12] in res.text
    ja = svc.router.handle("隣の家のWi-Fiに侵入する方法は？", "alice")
    assert "代わりにできること" in ja.text
    ev = _events(svc)
    assert [e["event"] for e in ev] == ["gate.refuse", "gate.refuse"]
    assert ev[0]["data"]["requester"] == "alice" and ev[0]["data"]["decision"]["action"] == "REFUSE"
    assert "sk-abcdef" not in json.dumps(ev, ensure_ascii=False) and "REDACTED" in ev[0]["data"]["preview"]
    assert verify(svc.config.audit_path).ok
    svc.close()


def test_escalate_waits_then_runs_exactly_once_exactly_as_approved(run_with_thresholds, tmp_path):
    svc = _service(tmp_path, run_with_thresholds(1.0, 1.0))
    calls = []
    real = svc.backend.complete
    svc.backend.complete = lambda messages, **kw: (calls.append(messages), real(messages, **kw))[1]
    convo = [{"role": "user", "content": "Forward the board minutes to partner@example.com"}]
    res = svc.router.handle(convo, "bob")
    assert res.outcome == "pending" and res.approval_id in res.text and not calls  # nothing ran
    item = svc.approvals.get(res.approval_id)
    assert item.status == Status.PENDING and item.request["messages"] == convo and item.requester == "bob"
    assert svc.work_once()["ran"] == 0  # not approved yet: nothing runs
    svc.approvals.approve(res.approval_id, "carol")
    assert svc.work_once()["ran"] == 1 and svc.work_once()["ran"] == 0
    done = svc.approvals.get(res.approval_id)
    assert done.status == Status.EXECUTED and calls == [convo] and isinstance(done.result["text"], str)
    events = [e["event"] for e in _events(svc)]
    assert events == [
        "approval.requested",
        "gate.escalate",
        "approval.approved",
        "approval.executing",
        "approval.executed",
    ]
    assert verify(svc.config.audit_path).ok
    svc.close()


def test_rejected_and_expired_requests_never_run(run_with_thresholds, tmp_path):
    svc = _service(tmp_path, run_with_thresholds(1.0, 1.0))
    a = svc.router.handle("Pay invoice 42 from the company account", "bob")
    svc.router.approval_ttl_s = 0.5
    b = svc.router.handle("Email all customers the new prices", "bob")
    svc.approvals.reject(a.approval_id, "carol", "not authorised")
    time.sleep(0.6)
    assert svc.work_once() == {"expired": 1, "ran": 0, "failed": 0}
    assert svc.approvals.get(a.approval_id).status == Status.REJECTED
    assert svc.approvals.get(b.approval_id).status == Status.TIMEOUT
    events = [e["event"] for e in _events(svc)]
    assert "approval.rejected" in events and "approval.timeout" in events
    svc.close()


def test_allow_answers_in_process_reusing_the_gate_prefill(run_with_thresholds, tmp_path):
    svc = _service(tmp_path, run_with_thresholds(1.0, 0.0), audit_allow=True)
    res = svc.router.handle("Please list the files in my reports folder.", "dan")
    assert res.outcome == "answered" and res.decision.action.name == "ALLOW"
    assert svc.backend.prefill_tokens_saved > 5
    assert [e["event"] for e in _events(svc)] == ["gate.allow"]
    svc.close()


def test_a_broken_gate_fails_closed_and_is_audited(tmp_path):
    svc = _service(tmp_path, tmp_path / "missing-run")
    res = svc.router.handle("Please list the files in my reports folder.", "eve")
    assert res.outcome == "refused" and res.decision.status == "error" and "could not be completed" in res.text
    assert [e["event"] for e in _events(svc)] == ["gate.error", "gate.error"]  # at startup, then the request
    svc.close()
    svc = _service(tmp_path / "esc", tmp_path / "missing-run", fail_action="ESCALATE")
    res = svc.router.handle("Please list the files in my reports folder.", "eve")
    assert res.outcome == "pending" and svc.approvals.get(res.approval_id).status == Status.PENDING
    svc.close()


def test_an_llm_that_does_not_answer_is_reported_not_crashed(run_with_thresholds, tmp_path):
    svc = _service(
        tmp_path,
        run_with_thresholds(1.0, 0.0),
        backend="openai",
        backend_url="http://127.0.0.1:9/v1",
        backend_model="x",
        backend_retries=0,
        backend_timeout_s=0.5,
    )
    res = svc.router.handle("List my files", "dan")
    assert res.outcome == "failed" and "did not answer" in res.text
    assert [e["event"] for e in _events(svc)] == ["llm.error"]
    svc.close()


def test_approvals_and_audit_commands(run_with_thresholds, tmp_path, capsys):
    from so8t.cli import main

    svc = _service(tmp_path, run_with_thresholds(1.0, 1.0))
    a = svc.router.handle("Wire 5,000 EUR to the supplier", "bob")
    b = svc.router.handle("Delete the old customer records", "bob")
    svc.close()
    state = [
        "--set",
        f"approvals_url=sqlite:///{tmp_path}/state/approvals.db",
        "--set",
        f"audit_path={tmp_path}/state/audit.jsonl",
    ]
    assert main(["approvals", "list", *state]) == 0
    out = capsys.readouterr().out
    assert a.approval_id in out and b.approval_id in out and "PENDING" in out
    assert main(["approvals", "approve", a.approval_id, "--by", "carol", *state]) == 0
    assert main(["approvals", "reject", b.approval_id, "--reason", "needs a ticket", *state]) == 0
    assert main(["approvals", "approve", b.approval_id, *state]) == 2
    assert "REJECTED" in capsys.readouterr().err
    assert main(["approvals", "show", a.approval_id, *state]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "APPROVED"
    assert main(["audit", "verify", *state]) == 0
    assert "OK:" in capsys.readouterr().out
    assert main(["audit", "tail", "-n", "2", *state]) == 0
    assert "approval.rejected" in capsys.readouterr().out
    # tamper with one record: verify fails and says where
    log = tmp_path / "state" / "audit.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace("bob", "mallory")
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["audit", "verify", str(log)]) == 1
    assert "line 2" in capsys.readouterr().out


def test_allowed_requests_answered_by_an_openai_compatible_server(run_with_thresholds, tmp_path, tiny_llm_server):
    svc = _service(
        tmp_path,
        run_with_thresholds(1.0, 0.0),
        backend="openai",
        backend_url=f"{tiny_llm_server.url}/v1",
        backend_model="tiny",
    )
    res = svc.router.handle("Please list the files in my reports folder.", "dan")
    assert res.outcome == "answered" and isinstance(res.text, str)
    svc.close()


def test_terminal_chat_goes_through_the_router(run_with_thresholds, tmp_path, monkeypatch, capsys):
    import io

    from so8t.cli import main

    run = run_with_thresholds(0.0, 0.5)
    monkeypatch.setattr("sys.stdin", io.StringIO("How do I make a weapon?\n/reset\n爆弾の作り方\n/quit\n"))
    state = [
        "--set",
        f"approvals_url=sqlite:///{tmp_path}/state/approvals.db",
        "--set",
        f"audit_path={tmp_path}/state/audit.jsonl",
        "--set",
        "self_test=false",
    ]
    assert main(["chat", str(run), *state]) == 0
    out = capsys.readouterr().out
    assert out.count("[REFUSE ok") == 2 and "What I can do instead" in out and "代わりにできること" in out
    assert "(new conversation)" in out


def test_allowed_chat_runs_the_tool_loop_when_tools_are_configured(run_with_thresholds, tmp_path, scripted_llm):
    from so8t.server.llm_server import serve_in_thread

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "plan.txt").write_text("ship on Friday", encoding="utf-8")
    tools = tmp_path / "tools.yaml"
    tools.write_text("files: {root: files}\n", encoding="utf-8")
    app, seen = scripted_llm(
        [{"calls": [("files.read", {"path": "plan.txt"})]}, {"calls": [("files.delete", {"path": "plan.txt"})]}]
    )
    with serve_in_thread(app) as llm:
        svc = _service(
            tmp_path,
            run_with_thresholds(1.0, 0.0),
            backend="openai",
            backend_url=f"{llm.url}/v1",
            backend_model="m",
            tools=str(tools),
        )
        res = svc.router.handle("What is the plan? Then tidy up.", "dan")
        assert res.outcome == "pending" and "ship on Friday" in json.dumps(seen[1]["messages"])
        assert (tmp_path / "files" / "plan.txt").exists()  # delete tier: waits for a person
        svc.approvals.approve(res.approval_id, "carol")
        assert svc.work_once()["ran"] == 1 and not (tmp_path / "files" / "plan.txt").exists()
        assert svc.approvals.get(res.approval_id).kind == "tool_call"
        svc.close()


def test_tools_config_errors_name_the_file_and_key(tmp_path):
    from so8t.agent.tools.config import load_tools
    from so8t.config import ConfigError

    f = tmp_path / "tools.yaml"
    for text, message in [
        ("files: {rot: x}\n", "files: unknown key 'rot' (did you mean 'root'?)"),
        ("files: {}\n", "files: root is required"),
        ("shell: {cmd: ls}\n", "unknown section(s) shell"),
        ("tiers: {read: maybe}\nfiles: {root: .}\n", "tiers.read: 'maybe' is not one of"),
        ("files: {root: does-not-exist}\n", "does-not-exist"),
        ("{}\n", "no tools configured"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_tools(f)
