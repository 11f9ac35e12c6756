"""`so8t demo` end to end on the tiny run (gate set to allow, so the tiers decide): real
sandbox, real SMTP server, real browser-less tools, real server and approval worker."""
from so8t.cli import main
from so8t.server.demo import latest_run, run_demo


def test_demo_walks_through_allowed_and_escalated_then_approved(run_with_thresholds, tmp_path, monkeypatch):
    lines = []
    res = run_demo(run_with_thresholds(1.0, 0.0), tmp_path / "demo", say=lines.append, self_test=False)
    text = "\n".join(lines)
    assert res["allowed"] == ["executed", "executed"] and "[[3]]" in text
    assert res["escalated_then_sent"] and res["mail_steps"] == ["executed", "approved"] and "received 1 message" in text
    assert res["audit_ok"] and res["refused"] in ("refused", "answered")  # this tiny gate allows everything
    assert not res["as_expected"] and "decided them" in text               # and the demo says so


def test_demo_needs_a_trained_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert latest_run() is None
    assert main(["demo"]) == 2 and "so8t train" in capsys.readouterr().err
