"""Staged autonomy on real components: the service built from a server config (the real gate on
the tiny run, a SQLite approval queue, the JSONL audit log, real tools on a sandbox), and the
`so8t autonomy` commands run against the same config. Calls are proposed through the tool loop's
external entry (`ToolLoop.call`, what POST /v1/tools/call uses), so no LLM is needed."""

import json
import logging
import sqlite3

import pytest
import yaml

from so8t.agent.approvals import Status
from so8t.agent.audit import verify
from so8t.agent.autonomy import AutonomyError, AutonomyStore, check_domain, check_level
from so8t.agent.service import build_service
from so8t.agent.tools.config import load_tools
from so8t.cli import main
from so8t.config import ServerConfig

ASK = [{"role": "user", "content": "Please tidy my notes folder"}]
UNBOUNDED = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


@pytest.fixture
def world(run_with_thresholds, tmp_path):
    """Factory: (service, config file) for a gate with thresholds (refuse_at, allow_at); the
    default (1, 0) ALLOWs every call, so what waits is autonomy's doing."""
    box = tmp_path / "sandbox"
    (box / "files").mkdir(parents=True)
    (box / "files" / "notes.txt").write_text("buy milk; 牛乳を買う", encoding="utf-8")
    con = sqlite3.connect(box / "shop.db")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    tools = {
        "actions": {"files.delete": "deny"},
        "files": {"root": "sandbox/files"},
        "sql": {"url": "sqlite:///sandbox/shop.db"},
        "mail": {"drafts_dir": "sandbox/drafts", "sender": "agent@example.com"},
        "calendar": {"ics_path": "sandbox/calendar.ics", "owner": "agent@example.com"},
    }
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(tools), encoding="utf-8")
    services = []

    def start(refuse_at=1.0, allow_at=0.0, **kw):
        values = {
            "run": str(run_with_thresholds(refuse_at, allow_at)),
            "tools": str(tmp_path / "tools.yaml"),
            "approvals_url": f"sqlite:///{tmp_path}/state/approvals.db",
            "audit_path": str(tmp_path / "state" / "audit.jsonl"),
            "self_test": False,
            "max_tokens": 4,
            "autonomy_min_approvals": 3,
            **kw,
        }
        conf = tmp_path / "server.yaml"
        conf.write_text(yaml.safe_dump(values), encoding="utf-8")
        svc = build_service(ServerConfig(**values))
        services.append(svc)
        return svc, conf

    yield start
    for svc in services:
        svc.close()


def call(svc, name, arguments):
    return svc.router.toolloop.call(ASK, name, arguments, "alice")[0]


def records(svc, event):
    if not svc.audit.path.exists():
        return []
    return [r for r in svc.audit.tail(10_000) if r["event"] == event]


def autonomy(conf, *argv):
    return main(["autonomy", *argv, "--config", str(conf)])


def test_defaults_follow_the_tool_kind_read_runs_and_write_or_send_asks(world):
    svc, _ = world()
    toolset, policy = load_tools(svc.config.tools)
    defaults = policy.autonomy_defaults(toolset)
    for name, action in toolset.actions.items():
        expected = "deny" if name == "files.delete" else ("auto" if action.risk == "read" else "ask")
        assert defaults[name] == expected, name
    assert {
        defaults[n]
        for n in ("files.write", "mail.send", "calendar.create", "calendar.invite", "sql.execute", "mail.draft")
    } == {"ask"}
    assert {defaults[n] for n in ("files.read", "sql.query", "mail.read_draft", "calendar.list")} == {"auto"}
    assert call(svc, "files.read", {"path": "notes.txt"}).status == "executed"
    assert call(svc, "files.write", {"path": "todo.txt", "content": "x"}).status == "pending"


def test_an_ask_domain_holds_an_allowed_write_until_approved_and_then_runs_it_once(world, tmp_path):
    svc, _ = world()
    target = tmp_path / "sandbox" / "files" / "todo.txt"
    step = call(svc, "files.write", {"path": "todo.txt", "content": "締め切りは金曜"})
    assert step.status == "pending" and not target.exists()
    item = svc.approvals.get(step.approval_id)
    assert item.action == "ALLOW" and item.decision["hold"] == "autonomy"  # the gate's ALLOW, kept as it was
    assert item.decision["autonomy"] == {"domain": "files.write", "level": "ask", "source": "config"}
    (held,) = records(svc, "tool.escalated")
    assert held["data"]["hold"] == "autonomy" and held["data"]["decision"]["action"] == "ALLOW"
    assert svc.work_once()["ran"] == 0 and not target.exists()  # nobody approved yet: nothing runs
    svc.approvals.approve(step.approval_id, "carol")
    assert svc.work_once()["ran"] == 1 and svc.work_once()["ran"] == 0
    assert target.read_text(encoding="utf-8") == "締め切りは金曜"
    assert svc.approvals.get(step.approval_id).status == Status.EXECUTED
    assert len(records(svc, "tool.executed")) == 1 and verify(svc.config.audit_path).ok


def test_set_is_audited_and_a_running_server_applies_auto_at_its_next_call(world, tmp_path, capsys):
    svc, conf = world()
    assert call(svc, "files.write", {"path": "a.txt", "content": "1"}).status == "pending"
    assert autonomy(conf, "set", "files.write", "auto", "--by", "carol", "--reason", "20 clean approvals") == 0
    assert "files.write: ask -> auto by carol" in capsys.readouterr().out
    (rec,) = records(svc, "autonomy.set")
    assert rec["data"] == {
        "domain": "files.write",
        "level": "auto",
        "previous": "ask",
        "previous_source": "config",
        "by": "carol",
        "reason": "20 clean approvals",
    }
    state = json.loads((tmp_path / "state" / "autonomy.json").read_text(encoding="utf-8"))
    assert state["levels"]["files.write"]["audit_hash"] == rec["hash"]
    step = call(svc, "files.write", {"path": "b.txt", "content": "2"})
    assert step.status == "executed" and (tmp_path / "sandbox" / "files" / "b.txt").read_text() == "2"
    # demoting is recorded and applied the same way; the same level again is recorded too
    assert autonomy(conf, "set", "files.write", "ask", "--by", "dan") == 0
    assert call(svc, "files.write", {"path": "c.txt", "content": "3"}).status == "pending"
    assert autonomy(conf, "set", "files.write", "ask", "--by", "dan") == 0
    assert "recorded again: its count restarts" in capsys.readouterr().out
    assert [(r["data"]["previous"], r["data"]["level"]) for r in records(svc, "autonomy.set")] == [
        ("ask", "auto"),
        ("auto", "ask"),
        ("ask", "ask"),
    ]
    assert verify(svc.config.audit_path).ok


@pytest.mark.parametrize(
    "refuse_at, allow_at, status, hold", [(1.0, 1.0, "pending", "gate"), (0.0, 0.5, "refused", None)]
)
def test_auto_never_loosens_the_gates_escalate_or_refuse(world, tmp_path, refuse_at, allow_at, status, hold):
    svc, conf = world(refuse_at, allow_at)
    assert autonomy(conf, "set", "files.write", "auto") == 0
    step = call(svc, "files.write", {"path": "x.txt", "content": "x"})
    assert step.status == status and not (tmp_path / "sandbox" / "files" / "x.txt").exists()
    if hold:
        assert records(svc, "tool.escalated")[-1]["data"]["hold"] == "gate"
        assert "hold" not in svc.approvals.get(step.approval_id).decision


def test_a_config_deny_cannot_be_lifted_by_set(world, capsys):
    svc, conf = world()
    assert autonomy(conf, "set", "files.delete", "auto") == 2
    assert "'deny' in the tools config" in capsys.readouterr().err
    assert records(svc, "autonomy.set") == [] and call(svc, "files.delete", {"path": "notes.txt"}).status == "refused"


def test_a_corrupt_state_file_means_ask_everywhere_with_a_clear_warning(world, tmp_path, caplog, capsys):
    svc, conf = world()
    state = tmp_path / "state" / "autonomy.json"
    state.write_text('{"format": "so8t-autonomy/1", "levels": {"files.read": ', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="so8t.autonomy"):
        step = call(svc, "files.read", {"path": "notes.txt"})  # a read, 'auto' by default
        call(svc, "files.list", {})
    assert step.status == "pending"
    assert svc.approvals.get(step.approval_id).decision["autonomy"]["source"] == "unreadable"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(state) in warnings[0] and "not valid JSON" in warnings[0]
    assert "ask" in warnings[0]
    assert autonomy(conf, "set", "files.write", "auto") == 2  # set refuses to overwrite it
    assert str(state) in capsys.readouterr().err and state.read_text().endswith('"files.read": ')
    assert autonomy(conf, "report") == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "not valid JSON" in out and "no proposals" in out
    state.write_text(
        json.dumps(
            {"format": "so8t-autonomy/1", "levels": {"files.read": {"level": "sometimes", "by": "x", "at": "y"}}}
        )
    )
    assert call(svc, "files.read", {"path": "notes.txt"}).status == "pending"  # a bad level is unusable too
    assert "levels.files.read.level" in caplog.records[-1].getMessage()
    state.unlink()  # nothing set: the defaults again
    assert call(svc, "files.read", {"path": "notes.txt"}).status == "executed"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["files.wirte", "auto"], "unknown domain 'files.wirte'; did you mean 'files.write'?"),
        (["mail.sned", "ask"], "did you mean 'mail.send'?"),
        (["files.write", "atuo"], "unknown autonomy level 'atuo'; did you mean 'auto'?"),
        (["files.write", "approval"], "did you mean 'ask'?"),
    ],
)
def test_bad_domain_or_level_names_the_closest_valid_one(world, capsys, argv, expected):
    svc, conf = world()
    assert autonomy(conf, "set", *argv) == 2
    assert expected in capsys.readouterr().err and records(svc, "autonomy.set") == []
    assert not (svc.router.toolloop.autonomy.path).exists()


def test_name_checks_list_what_is_valid_when_nothing_is_close():
    with pytest.raises(AutonomyError, match=r"levels: ask, auto"):
        check_level("zzz")
    with pytest.raises(AutonomyError, match=r"configured tool actions: files.read, files.write"):
        check_domain("qqq", ["files.read", "files.write"])


def test_report_counts_decisions_per_domain_and_proposes_promotion_and_demotion(world, tmp_path, capsys):
    svc, conf = world()
    q = svc.approvals
    for k in range(3):  # files.write: 3 approved -> promote
        q.approve(call(svc, "files.write", {"path": f"w{k}.txt", "content": "x"}).approval_id, "carol")
    moves = [call(svc, "files.move", {"src": "notes.txt", "dst": f"m{k}.txt"}).approval_id for k in range(4)]
    q.approve(moves[0], "carol")  # files.move: 3 approved, 1 edited
    q.approve(moves[1], "carol")
    q.approve(moves[2], "carol")
    child = svc.edit_approval(moves[3], "carol", arguments='{"src": "notes.txt", "dst": "kept.txt"}')
    q.approve(child.id, "carol")  # the edit's own approval is not counted
    drafts = [
        call(svc, "mail.draft", {"to": ["aiko@example.jp"], "subject": "s", "body": "b"}).approval_id for _ in range(4)
    ]
    for d in drafts[:3]:
        q.approve(d, "carol")
    q.reject(drafts[3], "carol", "wrong recipient")  # mail.draft: a rejection blocks it
    held = call(svc, "sql.query", {"sql": UNBOUNDED})  # a read the tool itself holds
    assert held.status == "pending" and svc.approvals.get(held.approval_id).decision["hold"] == "review"
    q.reject(held.approval_id, "carol", "too expensive")  # sql.query (auto): demote
    waiting = call(
        svc,
        "calendar.create",
        {"summary": "standup", "start": "2026-03-02T09:00:00+09:00", "end": "2026-03-02T09:15:00+09:00"},
    )
    assert autonomy(conf, "set", "calendar.create", "auto") == 0  # promoted by hand while one waits...
    q.reject(waiting.approval_id, "carol", "wrong day")  # ...and rejected after: demote
    call(svc, "files.write", {"path": "later.txt", "content": "x"})  # still pending: counted as pending
    capsys.readouterr()
    assert autonomy(conf, "report", "--json") == 0
    rows = {d["domain"]: d for d in json.loads(capsys.readouterr().out)["domains"]}
    counts = {
        d: (r["level"], r["approved"], r["edited"], r["rejected"], r["pending"], r["proposal"])
        for d, r in rows.items()
        if d
        in ("files.write", "files.move", "mail.draft", "sql.query", "calendar.create", "files.read", "files.delete")
    }
    assert counts == {
        "files.write": ("ask", 3, 0, 0, 1, "auto"),
        "files.move": ("ask", 3, 1, 0, 0, None),
        "mail.draft": ("ask", 3, 0, 1, 0, None),
        "sql.query": ("auto", 0, 0, 1, 0, "ask"),
        "calendar.create": ("auto", 0, 0, 1, 0, "ask"),
        "files.read": ("auto", 0, 0, 0, 0, None),
        "files.delete": ("deny", 0, 0, 0, 0, None),
    }
    assert rows["files.write"]["command"] == "so8t autonomy set files.write auto"
    assert rows["calendar.create"]["source"] == "set" and rows["calendar.create"]["since"]
    # nothing promotes itself: the report changed no level
    assert call(svc, "files.write", {"path": "still.txt", "content": "x"}).status == "pending"
    assert autonomy(conf, "report", "--min-approvals", "4") == 0
    text = capsys.readouterr().out
    assert "files.write: 3 of 4 approvals" in text and "-> propose ask: so8t autonomy set sql.query ask" in text
    # re-setting mail.draft to ask restarts its count after the rejection
    assert autonomy(conf, "set", "mail.draft", "ask") == 0 and autonomy(conf, "report", "--json") == 0
    row = next(
        d for d in json.loads(capsys.readouterr().out.split("\n", 1)[1])["domains"] if d["domain"] == "mail.draft"
    )
    assert (row["level"], row["source"], row["approved"], row["rejected"]) == ("ask", "set", 0, 0)
    # acting on the proposal starts a fresh record for that domain
    assert autonomy(conf, "set", "files.write", "auto") == 0 and autonomy(conf, "report", "--json") == 0
    row = next(
        d for d in json.loads(capsys.readouterr().out.split("\n", 1)[1])["domains"] if d["domain"] == "files.write"
    )
    assert (row["level"], row["source"], row["approved"], row["proposal"]) == ("auto", "set", 0, None)


def test_report_flags_a_state_file_edited_by_hand(world, tmp_path, capsys):
    _, conf = world()
    state = tmp_path / "state" / "autonomy.json"
    state.write_text(
        json.dumps(
            {
                "format": "so8t-autonomy/1",
                "levels": {
                    "mail.send": {
                        "level": "auto",
                        "by": "mallory",
                        "at": "2026-01-01T00:00:00Z",
                        "audit_hash": "0" * 64,
                    }
                },
            }
        )
    )
    assert autonomy(conf, "report") == 0
    out = capsys.readouterr().out
    assert "warning: mail.send: the state file says 'auto' but that is not the audit log's last autonomy.set" in out


def test_a_set_the_audit_log_cannot_record_changes_nothing(world, tmp_path, capsys):
    _, conf = world()
    cfg = yaml.safe_load(conf.read_text())
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    cfg["audit_path"], cfg["autonomy_path"] = str(blocked), str(tmp_path / "state" / "autonomy.json")
    conf.write_text(yaml.safe_dump(cfg))  # the audit "log" is a folder
    assert autonomy(conf, "set", "files.write", "auto") == 2
    assert "audit log cannot take the record, so nothing changed" in capsys.readouterr().err
    assert not (tmp_path / "state" / "autonomy.json").exists()
    assert AutonomyStore(tmp_path / "state" / "autonomy.json").level("files.write", "ask").level == "ask"
