"""`so8t chat` after an escalation (issue 17, item 9): the user never saw the answer.

The chat told the user their message waits for a person and then forgot it: an approval on the
page or with `so8t approvals approve` ran nothing (only a server's worker runs approved items)
and nothing was ever shown. Now the chat follows each of its escalated messages: once approved it
runs it exactly once and prints the answer; a rejection, an edit and a server that ran it first
are handled too. Real parts only: the tiny run's gate (ESCALATE for everything), the in-process
model, the SQLite queue and the audit log; the operator uses the real CLI."""

from __future__ import annotations

import builtins

import pytest
import yaml

from so8t.agent.approvals import Status
from so8t.agent.audit import verify
from so8t.agent.service import build_service
from so8t.agent.terminal import TerminalChat
from so8t.cli import main
from so8t.config import ServerConfig


@pytest.fixture
def setup(run_with_thresholds, tmp_path):
    """(config file, ServerConfig) for a gate that escalates everything, state under tmp_path."""
    fields = {
        "run": str(run_with_thresholds(1.0, 1.0)),
        "approvals_url": f"sqlite:///{tmp_path}/approvals.db",
        "audit_path": str(tmp_path / "audit.jsonl"),
        "max_tokens": 4,
        "self_test": False,
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path, ServerConfig(**fields)


def _queue_items(cfg):
    svc = build_service(cfg)
    try:
        return svc.approvals.list()
    finally:
        svc.close()


def test_so8t_chat_prints_the_answer_once_an_operator_approves_with_the_cli(setup, monkeypatch, capsys):
    path, cfg = setup
    out: list[str] = []

    def operator_then(line):
        def read(prompt):
            approval_id = _queue_items(cfg)[0].id
            assert main(["approvals", "approve", approval_id[:8], "--config", str(path), "--by", "carol"]) == 0
            return line

        return read

    script = iter([lambda p: "Please list my files", operator_then(""), lambda p: "/etc/hosts, what is it?"])

    def fake_input(prompt):
        try:
            return next(script)(prompt)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    assert main(["chat", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(out) if line.startswith("[ESCALATE"))
    assert out[first].endswith("pending") and "waits for it" in out[first + 2]
    items = _queue_items(cfg)
    asked = next(a for a in items if a.request["messages"][-1]["content"] == "Please list my files")
    assert asked.status is Status.EXECUTED  # was: APPROVED for ever, nothing ran it
    done = out.index(f"[approval {asked.id[:12]}: EXECUTED, approved by carol]")
    assert out[done + 1] == f"so8t> {asked.result['text']}"  # was: never shown
    # a line that starts with / but is no command is a message, as before
    assert any(a.request["messages"][-1]["content"] == "/etc/hosts, what is it?" for a in items)
    assert verify(cfg.audit_path).ok


def test_a_rejection_is_shown_with_its_reason_and_nothing_runs(setup):
    _, cfg = setup
    svc, lines = build_service(cfg), []
    try:
        chat = TerminalChat(svc, "dana", lines.append)
        chat.send("Delete the old invoices")
        svc.approvals.reject(chat.waiting[0], "carol", "needs a ticket")
        assert chat.check() == 0
        assert (
            lines[-1]
            == f"[approval {svc.approvals.list()[0].id[:12]}: REJECTED by carol: needs a ticket] nothing was run"
        )
    finally:
        svc.close()


def test_an_edited_request_is_followed_to_what_it_became_and_wait_returns_its_answer(setup):
    _, cfg = setup
    svc, lines = build_service(cfg), []
    try:
        chat = TerminalChat(svc, "dana", lines.append)
        chat.send("Send the report to everyone")
        asked = chat.waiting[0]
        new = svc.edit_approval(asked, "carol", content="Send the report to the team")
        assert new.status is Status.PENDING and chat.check() == 1  # the edit waits again
        chat.wait(poll_s=0, sleep=lambda s: svc.approvals.approve(new.id, "erin"))
        assert lines[-2] == f"[approval {asked[:12]} (edited into {new.id[:12]}): EXECUTED, approved by erin]"
        assert lines[-1] == f"so8t> {svc.approvals.get(new.id).result['text']}" and chat.waiting == []
    finally:
        svc.close()


def test_a_request_a_servers_worker_ran_first_is_shown_from_the_queue_not_run_again(setup):
    _, cfg = setup
    chat_svc, server_svc, lines = build_service(cfg), build_service(cfg), []
    try:
        chat = TerminalChat(chat_svc, "dana", lines.append)
        chat.send("Summarise the meeting notes")
        chat_svc.approvals.approve(chat.waiting[0], "carol")
        assert server_svc.work_once()["ran"] == 1
        answer = chat_svc.approvals.get(chat.waiting[0]).result["text"]
        assert chat.check() == 0 and lines[-1] == f"so8t> {answer}"
        executed = [r for r in _records(cfg.audit_path) if r.get("event") == "approval.executed"]
        assert len(executed) == 1  # it ran once, on the server
    finally:
        chat_svc.close()
        server_svc.close()


def _records(path):
    import json

    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
