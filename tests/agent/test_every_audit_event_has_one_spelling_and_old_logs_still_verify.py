"""The audit event names live in one list (so8t.agent.audit_events), and the approval events are
spelled one way: the way the approval queue writes them (approval.rejected, approval.timeout).

Before, so8t.agent.audit also declared APPROVAL_DENIED = "approval.denied" and APPROVAL_EXPIRED =
"approval.expired" while the queue wrote the other spelling. A log that holds the old spelling
must still verify (``so8t audit verify`` checks hashes and the chain, not names), and the old
names must be read as the events they meant."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from so8t.agent import audit, audit_events
from so8t.agent.approvals import EVENTS, RECOVERY_EVENTS
from so8t.agent.audit import AuditLog, Redactor, verify
from so8t.cli import main

SRC = Path(__file__).resolve().parents[2] / "src" / "so8t"
# an event name, not a file name (autonomy.json, audit.jsonl)
EVENT_LIKE = re.compile(r"(gate|tool|approval|llm|autonomy)\.(?!jsonl?$)[a-z_]+|audit\.(recovered|restored)")


def test_no_module_spells_an_event_name_outside_the_one_list():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "audit_events.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and EVENT_LIKE.fullmatch(node.value):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_the_approval_events_are_spelled_the_way_the_queue_writes_them():
    assert audit_events.APPROVAL_REJECTED == "approval.rejected"
    assert audit_events.APPROVAL_TIMEOUT == "approval.timeout"
    assert EVENTS == audit_events.APPROVAL_EVENTS and RECOVERY_EVENTS == audit_events.APPROVAL_RECOVERY_EVENTS
    assert set(EVENTS + RECOVERY_EVENTS) <= set(audit_events.EVENTS)
    assert "approval.denied" not in audit_events.EVENTS and "approval.expired" not in audit_events.EVENTS
    # the old constant names stay importable and now name what is written
    assert audit.APPROVAL_DENIED == "approval.rejected" and audit.APPROVAL_EXPIRED == "approval.timeout"


def test_the_old_spelling_is_read_as_the_event_it_meant():
    assert audit_events.canonical_event("approval.denied") == "approval.rejected"
    assert audit_events.canonical_event("approval.expired") == "approval.timeout"
    for name in audit_events.EVENTS + ("something.else",):
        assert audit_events.canonical_event(name) == name


def test_a_log_written_with_the_old_spelling_still_verifies(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, redact=Redactor({}, secret_keys=None))
    log.append("approval.requested", {"id": "a" * 32})
    log.append("approval.denied", {"id": "a" * 32, "reason": "no"})
    log.append("approval.expired", {"id": "b" * 32})
    log.append(audit_events.APPROVAL_REJECTED, {"id": "c" * 32})

    report = verify(path)
    assert report.ok and report.records == 4 and report.problems == []
    assert main(["audit", "verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 4 records")
