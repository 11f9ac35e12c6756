"""The approval queue shared by several processes on one real PostgreSQL server (replicas of the
gated server): approvals, claims and expiry race, and each item changes once. Every process writes
its records to the same audit chain in the database, which must stay one valid chain.

Each test releases its processes together (they wait for a "go" file), so they really contend for
the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from so8t.agent.approvals import ApprovalQueue, Status
from so8t.agent.audit import Redactor
from so8t.agent.audit_db import DatabaseAuditLog, verify_database

SRC = str(Path(__file__).resolve().parents[2] / "src")
ESCALATE = {"action": "ESCALATE", "rationale": "needs a person"}

# One contender: a queue writing ahead to the shared audit chain (as the server does, keeping the
# id and status of each event); it waits for `go`, then does its part and prints what it saw.
_CONTENDER = """
import json, os, sys, time
from pathlib import Path
from so8t.agent.approvals import AlreadyClaimed, ApprovalQueue, InvalidTransition
from so8t.agent.audit import Redactor
from so8t.agent.audit_db import DatabaseAuditLog
url, audit_url, action, ids, go, ready, name = sys.argv[1:8]
audit = DatabaseAuditLog(audit_url, redact=Redactor({}, secret_keys=None))
q = ApprovalQueue(url, write_ahead=lambda ev: audit.append_batch([(n, {"id": d["id"], "status": d["status"]})
                                                                  for n, d in ev]))
ids = ids.split(",")
Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
out = {"won": [], "lost": [], "errors": []}
if action == "expire":
    out["won"] = [a.id for a in q.expire_due()]
    for id in ids:  # a read expires too: it must not trip over the other process's expiry
        out["lost"].append(q.get(id).status.value)
else:
    for id in ids:
        try:
            if action == "approve":
                q.approve(id, name)
            else:
                q.run_once(id, lambda request: {"ran_by": name})
            out["won"].append(id)
        except (AlreadyClaimed, InvalidTransition) as exc:
            out["lost"].append(exc.status.value)
        except Exception as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


@pytest.fixture
def db(postgresql):
    """(approvals URL, audit URL): one fresh PostgreSQL database holding both, as replicas share it."""
    url = postgresql.new_database(f"q_{uuid.uuid4().hex[:12]}")
    return url, url


def queue(db) -> tuple[ApprovalQueue, DatabaseAuditLog]:
    audit = DatabaseAuditLog(db[1], redact=Redactor({}, secret_keys=None))
    q = ApprovalQueue(
        db[0], write_ahead=lambda ev: audit.append_batch([(n, {"id": d["id"], "status": d["status"]}) for n, d in ev])
    )
    return q, audit


def race(db, action: str, ids: list[str], tmp_path: Path, n: int = 3) -> list[dict]:
    """Start n contender processes, release them together, return what each saw."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    go = tmp_path / f"go-{action}"
    procs, ready = [], []
    for i in range(n):
        ready.append(tmp_path / f"ready-{action}-{i}")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CONTENDER,
                    db[0],
                    db[1],
                    action,
                    ",".join(ids),
                    str(go),
                    str(ready[-1]),
                    f"p{i}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    deadline = time.monotonic() + 90
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def audit_events(db) -> list[dict]:
    audit = DatabaseAuditLog(db[1])
    recs = audit.tail(100_000)
    audit.close()
    return recs


def test_two_approvers_in_two_processes_approve_each_item_once(db, tmp_path):
    q, audit = queue(db)
    ids = [q.submit({"n": i}, ESCALATE, "alice").id for i in range(8)]
    outs = race(db, "approve", ids, tmp_path, n=2)
    assert [o["errors"] for o in outs] == [[], []]
    assert sorted(sum((o["won"] for o in outs), [])) == sorted(ids)  # each approved by exactly one
    assert sum((o["lost"] for o in outs), []) == ["APPROVED"] * 8  # the other was told why
    assert all(q.get(i).status is Status.APPROVED for i in ids)
    approved = Counter(r["data"]["id"] for r in audit_events(db) if r["event"] == "approval.approved")
    assert approved == Counter(ids)
    assert verify_database(db[1]).ok
    q.close()
    audit.close()


def test_three_workers_run_each_approved_item_exactly_once(db, tmp_path):
    q, audit = queue(db)
    ids = [q.submit({"n": i}, ESCALATE, "alice").id for i in range(8)]
    for i in ids:
        q.approve(i, "carol")
    outs = race(db, "run", ids, tmp_path, n=3)
    assert [o["errors"] for o in outs] == [[], [], []]
    won = sum((o["won"] for o in outs), [])
    # run_once returns the stored result to a caller that finds the item already EXECUTED, so a
    # "won" can be a replay: what ran is what the queue recorded, once per item
    assert set(won) <= set(ids)
    for i in ids:
        item = q.get(i)
        assert item.status is Status.EXECUTED and item.result["ran_by"] in ("p0", "p1", "p2")
    events = Counter((r["event"], r["data"]["id"]) for r in audit_events(db) if r["event"].startswith("approval.exec"))
    assert events == Counter({(e, i): 1 for i in ids for e in ("approval.executing", "approval.executed")})
    assert verify_database(db[1]).ok
    q.close()
    audit.close()


def test_three_workers_expiring_at_once_expire_each_item_once(db, tmp_path):
    q, audit = queue(db)
    ids = [q.submit({"n": i}, ESCALATE, "alice", ttl_s=0.5).id for i in range(12)]
    time.sleep(0.6)
    outs = race(db, "expire", ids, tmp_path, n=3)
    assert sorted(sum((o["won"] for o in outs), [])) == sorted(ids)  # every item expired by one process
    assert all(o["lost"] == ["TIMEOUT"] * 12 for o in outs)  # and every read saw it, no error
    timeouts = Counter(r["data"]["id"] for r in audit_events(db) if r["event"] == "approval.timeout")
    assert timeouts == Counter(ids)
    assert verify_database(db[1]).ok
    q.close()
    audit.close()
