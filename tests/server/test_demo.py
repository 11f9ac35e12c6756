"""`so8t demo` end to end on the tiny run (gate set to allow, so the tiers decide): real
sandbox, real SMTP server, real browser-less tools, real server and approval worker."""

import pytest

from so8t.cli import main
from so8t.server.demo import latest_run, run_demo


@pytest.mark.smtp  # the demo starts a LocalSmtp
def test_demo_walks_through_allowed_and_escalated_then_approved(run_with_thresholds, tmp_path, monkeypatch):
    lines = []
    res = run_demo(run_with_thresholds(1.0, 0.0), tmp_path / "demo", say=lines.append, self_test=False)
    text = "\n".join(lines)
    assert res["allowed"] == ["executed", "executed"] and "[[3]]" in text
    assert res["escalated_then_sent"] and res["mail_steps"] == ["executed", "approved"] and "received 1 message" in text
    assert res["audit_ok"] and res["refused"] in ("refused", "answered")  # this tiny gate allows everything
    assert not res["as_expected"] and "decided them" in text  # and the demo says so


def test_demo_needs_a_trained_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert latest_run() is None
    assert main(["demo"]) == 2 and "so8t train" in capsys.readouterr().err


def _demo_folders(root):
    return sorted(p.name for p in root.glob("so8t-demo-*"))


@pytest.mark.smtp  # the demo starts a LocalSmtp
def test_demo_removes_its_temporary_folder_unless_asked_to_keep_it(run_with_thresholds, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's temporary folders land here
    monkeypatch.delenv("SO8T_ADMIN_TOKEN", raising=False)
    run, lines = run_with_thresholds(1.0, 0.0), []
    res = run_demo(run, say=lines.append, self_test=False)
    assert res["audit_ok"] and _demo_folders(tmp_path) == []  # was: every demo left a so8t-demo-* folder
    assert "removed the temporary folder" in lines[-1] and "--keep" in lines[-1]
    assert "SO8T_ADMIN_TOKEN" not in __import__("os").environ  # nor its admin token in the environment

    lines.clear()
    res = run_demo(run, say=lines.append, self_test=False, keep=True)
    kept = tmp_path / _demo_folders(tmp_path)[0]
    assert res["workdir"] == str(kept) and (kept / "audit.jsonl").stat().st_size > 0
    assert lines[-1] == f"kept {kept}; read the audit log with: so8t audit verify {kept / 'audit.jsonl'}"


@pytest.mark.smtp  # the demo starts a LocalSmtp
def test_a_demo_that_fails_midway_still_removes_its_folder(run_with_thresholds, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def say(line):
        if line.startswith("gated server"):
            raise RuntimeError("the terminal went away")

    with pytest.raises(RuntimeError, match="went away"):
        run_demo(run_with_thresholds(1.0, 0.0), say=say, self_test=False)
    assert _demo_folders(tmp_path) == []


@pytest.mark.smtp  # the demo starts a LocalSmtp
def test_a_workdir_the_user_names_is_kept(run_with_thresholds, tmp_path):
    lines = []
    run_demo(run_with_thresholds(1.0, 0.0), tmp_path / "mine", say=lines.append, self_test=False)
    assert (tmp_path / "mine" / "audit.jsonl").exists() and not any("removed" in x for x in lines)
