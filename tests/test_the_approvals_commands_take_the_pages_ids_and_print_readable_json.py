"""Issue 17, item 9, on the command line: `so8t approvals show` refused the 12-character ids the
page shows, `list` had no header row, and `show` printed the request and decision as escaped JSON
strings. Now show / approve / reject take a unique prefix of at least 8 characters (an ambiguous
or unknown one is a one-line error, exit 2), list starts with a header, and show prints indented
JSON with the request, decision and result as JSON, who approved it, and why it escalated."""

import json

from so8t.agent.service import build_service
from so8t.cli import main
from so8t.config import ServerConfig
from so8t.gate.decision import why_escalated


def _escalated(tmp_path, run, *requests):
    cfg = ServerConfig(
        run=str(run),
        approvals_url=f"sqlite:///{tmp_path}/state/approvals.db",
        audit_path=str(tmp_path / "state" / "audit.jsonl"),
        max_tokens=6,
        self_test=False,
    )
    svc = build_service(cfg)
    ids = [svc.router.handle(text, "bob").approval_id for text in requests]
    return svc, ids, ["--set", f"approvals_url={cfg.approvals_url}", "--set", f"audit_path={cfg.audit_path}"]


def test_list_starts_with_a_header_row(run_with_thresholds, tmp_path, capsys):
    svc, (a, b), state = _escalated(
        tmp_path, run_with_thresholds(1.0, 1.0), "Wire 5,000 EUR to the supplier", "本番DBのusersテーブルを削除して"
    )
    svc.close()
    assert main(["approvals", "list", *state]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "(UTC)", "REQUESTER", "REQUEST"]
    assert lines[1].startswith(b) and lines[2].startswith(a) and "本番DBのusersテーブルを削除して" in lines[1]
    assert lines[0].index("STATUS") == lines[1].index("PENDING")  # the columns line up


def test_show_approve_and_reject_take_the_twelve_characters_the_page_shows(run_with_thresholds, tmp_path, capsys):
    svc, (a, b), state = _escalated(tmp_path, run_with_thresholds(1.0, 1.0), "Wire 5,000 EUR", "Delete old records")
    assert main(["approvals", "approve", a[:12], "--by", "carol", *state]) == 0
    assert f"{a} approved by carol" in capsys.readouterr().out
    assert main(["approvals", "reject", b[:8], "--reason", "needs a ticket", *state]) == 0
    assert f"{b} rejected by" in capsys.readouterr().out
    answer = svc.router.run_approved(a)["text"]
    svc.close()
    assert main(["approvals", "show", a[:12], *state]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["id"] == a and shown["status"] == "EXECUTED" and shown["approved_by"] == "carol"
    assert shown["request"]["messages"][-1]["content"] == "Wire 5,000 EUR"  # JSON, not an escaped string
    assert shown["decision"]["action"] == "ESCALATE" and shown["result"]["text"] == answer
    assert "request_json" not in shown and '\\"' not in out and out.startswith('{\n  "')  # indented, no escapes
    assert shown["why_escalated"] == why_escalated(shown["decision"]) and shown["why_escalated"]


def test_an_unknown_ambiguous_or_short_id_is_a_one_line_error(run_with_thresholds, tmp_path, capsys):
    svc, (a,), state = _escalated(tmp_path, run_with_thresholds(1.0, 1.0), "Wire 5,000 EUR")
    svc.close()
    capsys.readouterr()  # the model's loading bars
    wrong = ("0" if a[0] != "0" else "1") + a[1:12]
    assert main(["approvals", "show", wrong, *state]) == 2
    err = capsys.readouterr().err
    assert err == f"so8t: error: no approval whose id starts with '{wrong}'; did you mean '{a[:12]}'?\n"
    assert main(["approvals", "approve", a[:6], *state]) == 2
    assert "too short: give at least 8" in capsys.readouterr().err
