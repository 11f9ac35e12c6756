"""approve() expired a due item in one transaction and approved in the next without looking at
the expiry again: an approval that arrived as the item expired (after the expiry check, before
the UPDATE; on PostgreSQL a wait for another replica's row lock widens that window to seconds)
moved a request past its expires_at to APPROVED, and the worker then ran it. An expired
escalation must never run: the approval transaction now checks the expiry itself and times the
item out instead (InvalidTransition naming TIMEOUT, one approval.timeout record)."""

from datetime import datetime, timedelta, timezone

import pytest

from so8t.agent.approvals import ApprovalQueue, InvalidTransition, Status

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def test_an_item_that_expires_between_the_expiry_check_and_the_approval_is_not_approved(tmp_path):
    clock, records = Clock(), []
    q = ApprovalQueue(f"sqlite:///{tmp_path}/q.db", clock=clock, write_ahead=records.extend)
    a = q.submit({"kind": "chat", "messages": []}, {"action": "ESCALATE", "status": "ok"}, "alice", ttl_s=60)
    clock.now = T0 + timedelta(seconds=59.999)  # not yet due when approve() checks
    expire = q._expire

    def check_then_time_passes(id=None):
        out = expire(id)
        clock.now = a.expires_at  # the item falls due before the approval's transaction
        return out

    q._expire = check_then_time_passes
    with pytest.raises(InvalidTransition, match="TIMEOUT"):
        q.approve(a.id, "bob")
    got = q.get(a.id)
    assert got.status is Status.TIMEOUT and got.decided_at == a.expires_at and got.reason == "expired"
    assert [name for name, _ in records] == ["approval.requested", "approval.timeout"]
    ran = []
    with pytest.raises(InvalidTransition):
        q.run_once(a.id, ran.append)
    assert ran == []
    q.close()


def test_an_item_approved_before_its_expiry_is_approved(tmp_path):
    clock = Clock()
    q = ApprovalQueue(f"sqlite:///{tmp_path}/q.db", clock=clock)
    a = q.submit({"x": 1}, {"action": "ESCALATE"}, "alice", ttl_s=60)
    clock.now = a.expires_at - timedelta(microseconds=1)
    assert q.approve(a.id, "bob").status is Status.APPROVED
    q.close()
