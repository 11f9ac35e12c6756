"""Keyed audit downgrade (issue 13, item 11): whoever can write an HMAC-keyed log but lacks the key
re-chains it with plain SHA-256. That must not verify: not without the key (the log says it is keyed),
not with it (each re-chained record is reported as downgraded); and the writers never mix modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from so8t.agent.audit import KEYED_LOG, AuditError, AuditLog, Redactor, record_hash, verify
from so8t.cli import main as cli

KEY = b"operator-only-key"


def keyed_log(path: Path, n: int = 5) -> list[dict]:
    log = AuditLog(path, key=KEY, redact=Redactor())
    return [log.append("gate.refuse", {"i": i, "preview": f"request {i}"}) for i in range(n)]


def rechain_without_key(path: Path, strip_marker: bool, start: int = 0) -> None:
    """The attack: rewrite record 2's data, then recompute the hashes from record ``start`` on with plain
    SHA-256 (the only hash the attacker can compute), optionally dropping the keyed marker too."""
    recs = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    recs[2]["data"]["preview"] = "nothing to see here"
    prev = recs[start - 1]["hash"] if start else "0" * 64
    for rec in recs[start:]:
        if strip_marker:
            rec.pop("mac", None)
        rec["prev"] = prev
        rec["hash"] = prev = record_hash(rec)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), "utf-8")


def kinds(report) -> list[tuple[str, int]]:
    return [(p.kind, p.line) for p in report.problems]


def test_every_keyed_record_says_so(tmp_path):
    recs = keyed_log(tmp_path / "audit.jsonl")
    assert all(r["mac"] == "hmac-sha256" for r in recs)
    assert verify(tmp_path / "audit.jsonl", key=KEY).ok


def test_a_keyed_log_does_not_verify_without_the_key(tmp_path, monkeypatch, capsys):
    path = tmp_path / "audit.jsonl"
    keyed_log(path)
    report = verify(path)
    assert not report.ok and kinds(report) == [("key_required", 1)]
    assert report.problems[0].detail == KEYED_LOG == "this log is HMAC-keyed; set SO8T_AUDIT_KEY to verify it"
    monkeypatch.delenv("SO8T_AUDIT_KEY", raising=False)
    assert cli(["audit", "verify", str(path)]) == 1
    assert "this log is HMAC-keyed; set SO8T_AUDIT_KEY to verify it" in capsys.readouterr().out
    monkeypatch.setenv("SO8T_AUDIT_KEY", KEY.decode())
    assert cli(["audit", "verify", str(path)]) == 0


def test_a_keyed_log_rechained_without_the_key_fails_both_ways(tmp_path):
    path = tmp_path / "audit.jsonl"
    keyed_log(path)
    rechain_without_key(path, strip_marker=False)
    assert kinds(verify(path)) == [("key_required", 1)]  # before the fix: OK
    report = verify(path, key=KEY)
    assert kinds(report) == [("downgraded", n) for n in range(1, 6)]
    assert "re-chained without the key" in report.problems[0].detail


def test_a_rechained_log_with_the_marker_stripped_fails_under_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    keyed_log(path)
    rechain_without_key(path, strip_marker=True)
    assert kinds(verify(path, key=KEY)) == [("downgraded", n) for n in range(1, 6)]
    # The documented limit: with every marker gone, the file alone looks like an unkeyed log.
    assert verify(path).ok


def test_a_partly_rechained_log_still_needs_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    keyed_log(path)
    rechain_without_key(path, strip_marker=True, start=2)  # only the newest records are rewritten
    assert kinds(verify(path)) == [("key_required", 1)]
    assert kinds(verify(path, key=KEY)) == [("downgraded", n) for n in range(3, 6)]


def test_a_writer_without_the_key_refuses_to_extend_a_keyed_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    keyed_log(path)
    before = path.read_bytes()
    with pytest.raises(AuditError, match="HMAC-keyed; set SO8T_AUDIT_KEY"):
        AuditLog(path).append("gate.refuse", {"i": 99})
    assert path.read_bytes() == before
    assert verify(path, key=KEY).ok


def test_a_writer_with_the_key_refuses_a_plain_or_rechained_log_and_a_wrong_key(tmp_path):
    plain = tmp_path / "plain.jsonl"
    AuditLog(plain).append("gate.refuse", {"i": 0})
    with pytest.raises(AuditError, match="plain SHA-256"):
        AuditLog(plain, key=KEY).append("gate.refuse", {"i": 1})
    rechained = tmp_path / "rechained.jsonl"
    keyed_log(rechained)
    rechain_without_key(rechained, strip_marker=True)
    with pytest.raises(AuditError, match="re-chained without the key"):
        AuditLog(rechained, key=KEY).append("gate.refuse", {"i": 9})
    AuditLog(tmp_path / "k.jsonl", key=KEY).append("x")
    with pytest.raises(AuditError, match="does not verify under this HMAC key"):
        AuditLog(tmp_path / "k.jsonl", key=b"other").append("y")
    assert [json.loads(line)["event"] for line in (tmp_path / "k.jsonl").read_text().splitlines()] == ["x"]


def test_a_keyed_log_written_before_the_marker_can_still_be_extended(tmp_path):
    path = tmp_path / "audit.jsonl"
    old = {"seq": 0, "ts": "2026-01-01T00:00:00.000000Z", "event": "gate.refuse", "data": {}, "prev": "0" * 64}
    old["hash"] = record_hash(old, KEY)  # an HMAC record without "mac", as older versions wrote
    path.write_text(json.dumps(old) + "\n", "utf-8")
    new = AuditLog(path, key=KEY).append("gate.refuse", {"i": 1})
    assert new["mac"] == "hmac-sha256" and new["prev"] == old["hash"]
    assert verify(path, key=KEY).ok and kinds(verify(path)) == [("key_required", 2)]
