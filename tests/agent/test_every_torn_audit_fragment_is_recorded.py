"""Issue 13, item 9: on a full filesystem the recovery of a torn audit line left four torn side
files but one ``audit.recovered`` record, and ``verify`` said OK.

Now a side file that cannot be written in full is removed again (no fragment without a record);
``recover()`` (run by the server at start-up and in its worker) gives every side file no record
names a record of its own; ``verify`` lists every fragment and fails on one that is unrecorded or
changed."""

import hashlib
import json

import pytest

from so8t.agent.audit import AuditError, AuditLog, format_report, verify

from full_filesystem import full_filesystem

TORN = '{"seq": 9, "ts": "2026-01-01T00:00:00Z", "event": "gate.refuse", "data": {"p": "途中'.encode()


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sides(folder):
    return sorted(p.name for p in folder.glob("audit.jsonl.torn-*"))


@pytest.fixture
def tmpfs(tmp_path):
    yield from full_filesystem("tmpfs", tmp_path)


def test_a_full_disk_leaves_no_unrecorded_fragment(tmpfs):
    log = AuditLog(tmpfs.log)
    log.append("gate.refuse", {"n": 1})
    with open(tmpfs.log, "ab") as f:  # a process killed mid-write
        f.write(TORN)
    tmpfs.fill()
    for _ in range(4):  # each append must set the torn tail aside first: the disk is full
        with pytest.raises(AuditError):
            log.append("gate.refuse", {"n": 2})
    assert _sides(tmpfs.folder) == []  # was: four side files
    report = verify(tmpfs.log)
    assert [p.kind for p in report.problems] == ["torn"] and report.fragments == []
    tmpfs.free()
    log.append("gate.refuse", {"n": 3})
    sides = _sides(tmpfs.folder)
    recovered = [r for r in _records(tmpfs.log) if r["event"] == "audit.recovered"]
    assert len(sides) == 1 and [r["data"]["side_file"] for r in recovered] == sides
    assert (tmpfs.folder / sides[0]).read_bytes() == TORN
    report = verify(tmpfs.log)
    assert report.ok and [(f.side_file, f.state, f.torn_bytes) for f in report.fragments] == [
        (sides[0], "kept", len(TORN))
    ]
    assert "1 torn fragment(s) set aside" in format_report(report) and sides[0] in format_report(report)


def test_recovery_records_every_fragment_and_verify_reports_each(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("gate.refuse", {"n": 1})
    # What the attack left: side files that no record names (empty and partial copies of a torn
    # tail, from set-asides that failed on the full disk), and a torn tail still in the log.
    left = {
        "audit.jsonl.torn-20260101T000000000001Z": b"",
        "audit.jsonl.torn-20260101T000000000002Z": TORN[:7],
        "audit.jsonl.torn-20260101T000000000003Z": TORN[:19],
        "audit.jsonl.torn-20260101T000000000004Z": TORN,
    }
    for name, data in left.items():
        (tmp_path / name).write_bytes(data)
    with open(path, "ab") as f:
        f.write(TORN)

    before = verify(path)
    assert not before.ok  # was: OK
    assert sorted(p.kind for p in before.problems) == ["torn"] + ["unrecorded_fragment"] * 4
    assert sorted(f.side_file for f in before.fragments if f.state == "unrecorded") == sorted(left)
    text = format_report(before)
    assert all(name in text for name in left) and "outside the log: unrecorded_fragment" in text

    written = log.recover()
    assert [r["event"] for r in written] == ["audit.recovered"] * 5  # one record per fragment
    named = {r["data"]["side_file"]: r["data"] for r in written}
    assert set(left) < set(named) and len(named) == 5
    for name, data in left.items():
        assert named[name]["torn_bytes"] == len(data) and named[name]["sha256"] == hashlib.sha256(data).hexdigest()
    tail_side = (set(named) - set(left)).pop()
    assert (tmp_path / tail_side).read_bytes() == TORN
    assert log.recover() == []  # each is recorded once

    after = verify(path)
    assert after.ok and sorted(f.side_file for f in after.fragments) == sorted(named)
    assert {f.state for f in after.fragments} == {"kept"}
    text = format_report(after)
    assert text.startswith(f"OK: {after.records} records") and "5 torn fragment(s) set aside" in text
    assert all(f"torn fragment {name}:" in text for name in named)

    # the evidence is checked: a changed side file fails verify, a deleted one is listed as missing
    (tmp_path / "audit.jsonl.torn-20260101T000000000002Z").write_bytes(b"something else")
    (tmp_path / "audit.jsonl.torn-20260101T000000000003Z").unlink()
    report = verify(path)
    changed = "audit.jsonl.torn-20260101T000000000002Z"
    assert [(p.kind, p.seq) for p in report.problems] == [("fragment_changed", _seq_of(path, changed))]
    assert {f.side_file: f.state for f in report.fragments}["audit.jsonl.torn-20260101T000000000003Z"] == "missing"


def _seq_of(path, side_file):
    return next(
        r["seq"] for r in _records(path) if r["event"] == "audit.recovered" and r["data"]["side_file"] == side_file
    )
