"""Issue 13, item 9: the audit store fills up. Before the fix an escalated request was committed as
PENDING with no audit record, an approval moved to APPROVED although its record failed, and a step
whose completion could not be recorded stayed EXECUTING forever.

Now the queue writes a change's records first (write-ahead, all or none) and commits only when
they are written; a full store changes nothing and says so (AuditError); a step left EXECUTING is
closed by the recovery routine as FAILED ("interrupted"), with its record.

The store really fills: a 64 KiB tmpfs (skipped where mount is not permitted) and /dev/full (always)."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event

from so8t.agent.approvals import AlreadyClaimed, ApprovalQueue, Status
from so8t.agent.audit import AuditError, AuditLog, verify
from so8t.agent.service import approval_audit_record, build_service, open_approvals
from so8t.config import ServerConfig

from full_filesystem import FILLER_EVENT, KINDS, full_filesystem

ESCALATE = {"action": "ESCALATE", "status": "ok"}


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    yield from full_filesystem(request.param, tmp_path)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


def _queue(tmp_path, store, **kw):
    audit = AuditLog(store.log)
    cfg = ServerConfig(run="unused", approvals_url=f"sqlite:///{tmp_path}/approvals.db", audit_path=str(store.log))
    queue = open_approvals(cfg, audit)
    if kw:  # the same write-ahead wiring, with a test clock
        queue.close()
        queue = ApprovalQueue(cfg.approvals_url, write_ahead=queue._write_ahead, **kw)
    return queue, audit


def _events(store):
    events = [json.loads(line)["event"] for line in store.log.read_text(encoding="utf-8").splitlines()]
    return [e for e in events if e != FILLER_EVENT]


def test_an_escalation_is_not_queued_without_its_record(run_with_thresholds, tmp_path, store):
    svc = build_service(
        ServerConfig(
            run=str(run_with_thresholds(1.0, 1.0)),
            self_test=False,
            max_tokens=6,
            approvals_url=f"sqlite:///{tmp_path}/approvals.db",
            audit_path=str(store.log),
        )
    )
    try:
        store.fill()
        with pytest.raises(AuditError):
            svc.router.handle("Forward the board minutes to partner@example.com", "bob")
        assert svc.approvals.list() == []  # not committed as PENDING
        assert svc.audit_problem() is not None  # not ready while it fails
        store.free()
        assert svc.audit_problem() is None  # writes audit.restored: a real write
        res = svc.router.handle("Forward the board minutes to partner@example.com", "bob")
        assert res.outcome == "pending" and svc.approvals.get(res.approval_id).status is Status.PENDING
        assert _events(store) == ["audit.restored", "approval.requested", "gate.escalate"]
        assert verify(store.log).ok
    finally:
        svc.close()


def test_an_approval_that_cannot_be_recorded_stays_pending_and_nothing_runs(tmp_path, store):
    queue, _ = _queue(tmp_path, store)
    item = queue.submit({"tool": "mail.send", "arguments": {"draft_id": "x"}}, ESCALATE, "bob", kind="tool_call")
    store.fill()
    with pytest.raises(AuditError, match="could not be written|short write"):
        queue.approve(item.id, "carol", expected_hash=item.request_hash)
    assert queue.get(item.id).status is Status.PENDING  # not APPROVED
    with pytest.raises(AuditError):
        queue.reject(item.id, "carol", "no")
    assert queue.get(item.id).status is Status.PENDING
    store.free()
    queue.approve(item.id, "carol", expected_hash=item.request_hash)
    store.fill()
    ran = []
    with pytest.raises(AuditError):
        queue.run_once(item.id, lambda req: ran.append(req) or {"ok": True})
    assert ran == [] and queue.get(item.id).status is Status.APPROVED  # the claim did not commit: not EXECUTING
    store.free()
    assert queue.run_once(item.id, lambda req: ran.append(req) or {"ok": True}) == {"ok": True}
    assert len(ran) == 1 and queue.get(item.id).status is Status.EXECUTED
    assert _events(store) == ["approval.requested", "approval.approved", "approval.executing", "approval.executed"]
    assert verify(store.log).ok


def test_a_step_whose_completion_cannot_be_recorded_is_closed_by_the_recovery_routine(tmp_path, store):
    clock = Clock()
    queue, _ = _queue(tmp_path, store, clock=clock)
    item = queue.submit({"n": 1}, ESCALATE, "bob")
    queue.approve(item.id, "carol")
    ran = []

    def step(req):  # the disk fills while the step runs: its completion cannot be recorded
        ran.append(req)
        store.fill()
        return {"sent": True}

    with pytest.raises(AuditError):
        queue.run_once(item.id, step)
    assert queue.get(item.id).status is Status.EXECUTING  # neither EXECUTED nor FAILED could commit
    store.free()
    assert queue.recover_stuck(900) == []  # claimed just now: maybe still running
    clock.now += timedelta(seconds=901)
    closed = queue.recover_stuck(900)
    assert [c.id for c in closed] == [item.id]
    done = queue.get(item.id)
    assert done.status is Status.FAILED and done.reason.startswith("interrupted: EXECUTING since 2026-01-01")
    assert done.decided_by == "system:recovery"
    with pytest.raises(AlreadyClaimed):
        queue.run_once(item.id, step)  # never run again
    assert len(ran) == 1
    assert _events(store)[-2:] == ["approval.executing", "approval.interrupted"]
    assert verify(store.log).ok


def test_the_service_recovery_routine_closes_a_stuck_step_with_a_record(run_with_thresholds, tmp_path):
    cfg = ServerConfig(
        run=str(run_with_thresholds(1.0, 1.0)),
        self_test=False,
        max_tokens=6,
        approvals_url=f"sqlite:///{tmp_path}/approvals.db",
        audit_path=str(tmp_path / "audit.jsonl"),
    )
    svc = build_service(cfg)
    res = svc.router.handle("Forward the board minutes to partner@example.com", "bob")
    svc.approvals.approve(res.approval_id, "carol")
    svc.approvals.claim(res.approval_id)  # then the process dies
    svc.close()
    svc = build_service(cfg)  # a restart: younger than stuck_after_s, kept
    assert svc.approvals.get(res.approval_id).status is Status.EXECUTING
    svc.stuck_after_s = 0
    assert svc.recover() == {"fragments": 0, "interrupted": 1}
    assert svc.approvals.get(res.approval_id).status is Status.FAILED
    records = [json.loads(line) for line in Path(cfg.audit_path).read_text(encoding="utf-8").splitlines()]
    assert records[-1]["event"] == "approval.interrupted" and records[-1]["data"]["id"] == res.approval_id
    assert records[-1]["data"]["reason"].startswith("interrupted")
    assert verify(cfg.audit_path).ok
    svc.close()


def test_a_commit_that_fails_after_its_record_is_marked_aborted(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    batches = []

    def write_ahead(events):
        audit.append_batch([(n, approval_audit_record(d)) for n, d in events])
        batches.append([n for n, _ in events])

    queue = ApprovalQueue(f"sqlite:///{tmp_path}/q.db", write_ahead=write_ahead)
    item = queue.submit({"n": 1}, ESCALATE, "bob")

    def refuse_commit(session):  # the database refuses the commit that follows the approval's record
        if batches[-1] == ["approval.approved"]:
            raise RuntimeError("database is locked")

    event.listen(queue._sessions, "before_commit", refuse_commit)
    with pytest.raises(RuntimeError, match="database is locked"):
        queue.approve(item.id, "carol")
    event.remove(queue._sessions, "before_commit", refuse_commit)
    assert queue.get(item.id).status is Status.PENDING
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["event"] for r in records] == ["approval.requested", "approval.approved", "approval.aborted"]
    assert (
        records[-1]["data"]["aborted"] == "approval.approved" and "database is locked" in records[-1]["data"]["error"]
    )
