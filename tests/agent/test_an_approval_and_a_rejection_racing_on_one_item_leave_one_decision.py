"""Two people decide the same escalated request at the same moment, one approving and one
rejecting (two threads on one SQLite file, each with its own connection). Each item ends with
exactly one decision and one record of it; the other person hears InvalidTransition; an item
the rejection won never runs. (PostgreSQL's two-approver race is in
test_approvals_on_postgresql.py; no test raced an approval against a rejection.)"""

import threading

import pytest

from so8t.agent.approvals import ApprovalQueue, InvalidTransition, Status


def test_approve_and_reject_racing_leave_exactly_one_decision_and_a_rejected_item_never_runs(tmp_path):
    records: list = []
    lock = threading.Lock()

    def write_ahead(batch):
        with lock:
            records.extend(batch)

    url = f"sqlite:///{tmp_path}/q.db"
    q = ApprovalQueue(url, write_ahead=write_ahead)
    items = [q.submit({"n": i}, {"action": "ESCALATE", "status": "ok"}, "alice").id for i in range(30)]
    won: dict[str, list[str]] = {"approve": [], "reject": []}
    lost: dict[str, list[str]] = {"approve": [], "reject": []}
    barrier = threading.Barrier(2)

    def decide(kind):
        mine = ApprovalQueue(url, write_ahead=write_ahead)
        barrier.wait()
        for id in items:
            try:
                if kind == "approve":
                    mine.approve(id, "bob")
                else:
                    mine.reject(id, "carol", "no")
                won[kind].append(id)
            except InvalidTransition:
                lost[kind].append(id)
        mine.close()

    threads = [threading.Thread(target=decide, args=(k,)) for k in ("approve", "reject")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won["approve"] + won["reject"]) == sorted(items)
    assert set(lost["approve"]) == set(won["reject"]) and set(lost["reject"]) == set(won["approve"])
    decided = [d["id"] for name, d in records if name in ("approval.approved", "approval.rejected")]
    assert sorted(decided) == sorted(items)
    ran = []
    for id in items:
        status = q.get(id).status
        assert status is (Status.APPROVED if id in won["approve"] else Status.REJECTED)
        if status is Status.REJECTED:
            with pytest.raises(InvalidTransition):
                q.run_once(id, ran.append)
    assert ran == []
    q.close()
