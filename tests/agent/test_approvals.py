"""The approval queue on real SQLite files: hash binding, expiry, edits, exactly-once execution."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from so8t.agent.approvals import (
    EVENTS,
    AlreadyClaimed,
    ApprovalError,
    ApprovalNotFound,
    ApprovalQueue,
    InvalidTransition,
    RequestHashMismatch,
    Status,
    canonical_json,
    request_hash,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ESCALATE = {"action": "ESCALATE", "rationale": "外部送信には承認が必要です。", "p": 0.91}
JA_REQUEST = {
    "tool": "send_mail",
    "args": {"to": "board@example.com", "件名": "取締役会議事録", "本文": "添付の通りです。"},
}
SRC = str(Path(__file__).resolve().parents[2] / "src")


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'q' / 'approvals.db'}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def q(url, clock):
    with ApprovalQueue(url, clock=clock, default_ttl_s=600) as queue:
        yield queue


def _db_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


# --- canonical JSON ----------------------------------------------------------------------------


def test_canonical_json_form():
    text = canonical_json({"b": 1, "a": [1, 2.5, None, True], "日本": "語"})
    assert text == '{"a":[1,2.5,null,true],"b":1,"日本":"語"}'
    assert canonical_json({"t": (1, 2)}) == '{"t":[1,2]}'


@pytest.mark.parametrize(
    "bad",
    [
        {"x": float("nan")},
        {"x": [float("inf")]},
        {"x": -float("inf")},
        {1: "int key"},
        {"x": {1, 2}},
        {"x": object()},
        {"x": b"bytes"},
        {"x": "\ud800"},
    ],
)
def test_canonical_json_rejects_non_json(bad):
    with pytest.raises(ValueError, match="not canonical JSON"):
        canonical_json(bad)


def test_canonical_json_error_names_the_place():
    with pytest.raises(ValueError, match=r"\$\.args\.n\[1\]"):
        canonical_json({"args": {"n": [1.0, float("nan")]}})


def test_request_hash_ignores_key_order():
    a = {"tool": "rm", "args": {"path": "/tmp/x", "recursive": True}}
    b = {"args": {"recursive": True, "path": "/tmp/x"}, "tool": "rm"}
    assert request_hash(a) == request_hash(b)
    assert len(request_hash(a)) == 64 and request_hash(a) != request_hash({**a, "tool": "rmdir"})


# --- submit / get / list -------------------------------------------------------------------------


def test_submit_get_list_round_trip_japanese(q, clock):
    a = q.submit(JA_REQUEST, ESCALATE, "agent:1", kind="tool_call")
    assert a.status is Status.PENDING and a.kind == "tool_call" and a.requester == "agent:1"
    assert len(a.id) == 32 and a.version == 1
    got = q.get(a.id)
    assert got == a
    assert got.request == JA_REQUEST and got.decision == ESCALATE and got.action == "ESCALATE"
    assert "取締役会議事録" in got.request_json  # stored as UTF-8, not \u escapes
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert got.expires_at == T0 + timedelta(seconds=600)
    assert got.decided_at is None and got.result is None and not got.terminal

    clock.advance(1)
    b = q.submit({"prompt": "こんにちは"}, ESCALATE, "agent:2", ttl_s=30)
    assert b.expires_at == clock.now + timedelta(seconds=30) and b.kind == "chat"
    assert [x.id for x in q.list()] == [b.id, a.id]  # newest first
    assert [x.id for x in q.list(limit=1)] == [b.id]
    assert [x.id for x in q.list(status="PENDING")] == [b.id, a.id]
    assert q.list(status=Status.APPROVED) == []
    assert q.pending_count() == 2
    clock.advance(9)
    assert q.oldest_pending_age_s() == pytest.approx(10.0)


def test_snapshots_are_frozen_and_detached(q):
    a = q.submit(JA_REQUEST, ESCALATE, "agent")
    with pytest.raises(AttributeError):
        a.status = Status.APPROVED  # type: ignore[misc]
    a.request["tool"] = "rm"  # a fresh copy: the snapshot and the queue are untouched
    assert a.request["tool"] == "send_mail" and q.get(a.id).request == JA_REQUEST


def test_submit_validates(q):
    with pytest.raises(ValueError):
        q.submit(["not", "a", "dict"], ESCALATE, "agent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not canonical JSON"):
        q.submit({"x": float("nan")}, ESCALATE, "agent")
    with pytest.raises(ValueError, match="requester"):
        q.submit({"x": 1}, ESCALATE, "  ")
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl_s"):
            q.submit({"x": 1}, ESCALATE, "agent", ttl_s=ttl)
    assert q.pending_count() == 0


def test_times_are_stored_as_utc_whatever_the_clock_zone(url):
    jst = timezone(timedelta(hours=9))
    local = datetime(2025, 1, 2, 12, 0, tzinfo=jst)
    with ApprovalQueue(url, clock=lambda: local) as queue:
        a = queue.submit({"x": 1}, ESCALATE, "agent")
        assert queue.get(a.id).created_at == local and queue.get(a.id).created_at.tzinfo == timezone.utc
    raw = sqlite3.connect(_db_path(url)).execute("SELECT created_at FROM approvals").fetchone()[0]
    assert raw.startswith("2025-01-02 03:00:00")


def test_naive_clock_is_refused(url):
    with ApprovalQueue(url, clock=lambda: datetime(2025, 1, 1)) as queue, pytest.raises(ValueError, match="aware"):
        queue.submit({"x": 1}, ESCALATE, "agent")


# --- hash binding ------------------------------------------------------------------------------


def test_stored_request_is_canonical_and_hash_bound(q):
    request = {"tool": "rm", "args": {"recursive": True, "path": "/srv/data"}}
    a = q.submit(request, ESCALATE, "agent")
    assert a.request_json == canonical_json(request)
    reordered = {"args": {"path": "/srv/data", "recursive": True}, "tool": "rm"}
    assert a.request_hash == request_hash(request) == request_hash(reordered)
    request["args"]["path"] = "/"  # the caller's dict changing later does not reach the queue
    assert q.get(a.id).request["args"]["path"] == "/srv/data"


def _tamper(url: str, id: str, sql: str, *params) -> None:
    con = sqlite3.connect(_db_path(url))
    with con:
        con.execute(sql, (*params, id))
    con.close()


def test_tampered_request_is_refused_at_claim(q, url):
    a = q.submit({"tool": "rm", "args": {"path": "/tmp/x"}}, ESCALATE, "agent")
    q.approve(a.id, "alice")
    _tamper(url, a.id, "UPDATE approvals SET request_json = ? WHERE id = ?", '{"args":{"path":"/"},"tool":"rm"}')
    with pytest.raises(RequestHashMismatch, match="no longer matches its hash"):
        q.claim(a.id)
    ran = []
    with pytest.raises(RequestHashMismatch):
        q.run_once(a.id, ran.append)
    assert ran == [] and q.get(a.id).status is Status.APPROVED  # refused, nothing changed


def test_rewriting_request_and_hash_is_caught_by_expected_hash(q, url):
    request = {"tool": "rm", "args": {"path": "/tmp/x"}}
    a = q.submit(request, ESCALATE, "agent")
    q.approve(a.id, "alice", expected_hash=a.request_hash)
    forged = {"tool": "rm", "args": {"path": "/"}}
    _tamper(
        url,
        a.id,
        "UPDATE approvals SET request_json = ?, request_hash = ? WHERE id = ?",
        canonical_json(forged),
        request_hash(forged),
    )
    with pytest.raises(RequestHashMismatch, match="the caller expected"):
        q.claim(a.id, expected_hash=a.request_hash)
    assert q.get(a.id).status is Status.APPROVED


def test_approve_with_wrong_expected_hash_is_refused(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    with pytest.raises(RequestHashMismatch):
        q.approve(a.id, "alice", expected_hash=request_hash({"x": 2}))
    assert q.get(a.id).status is Status.PENDING


# --- exactly once ------------------------------------------------------------------------------


def test_approve_then_run_once_runs_exactly_once(q):
    a = q.submit({"tool": "send_mail", "args": {"to": "x@example.com"}}, ESCALATE, "agent", kind="tool_call")
    approved = q.approve(a.id, "alice", "looks fine")
    assert approved.status is Status.APPROVED and approved.decided_by == "alice" and approved.reason == "looks fine"
    calls = []

    def fn(req):
        calls.append(req)
        return {"sent": True, "to": req["args"]["to"]}

    assert q.run_once(a.id, fn, expected_hash=a.request_hash) == {"sent": True, "to": "x@example.com"}
    assert q.run_once(a.id, fn) == {"sent": True, "to": "x@example.com"}  # replay: stored result
    assert calls == [{"tool": "send_mail", "args": {"to": "x@example.com"}}]
    done = q.get(a.id)
    assert done.status is Status.EXECUTED and done.result == {"sent": True, "to": "x@example.com"}
    with pytest.raises(AlreadyClaimed, match="EXECUTED") as exc:
        q.claim(a.id)
    assert exc.value.status is Status.EXECUTED


def test_claim_complete_by_hand(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    with pytest.raises(InvalidTransition) as exc:
        q.claim(a.id)  # never approved: not "already claimed"
    assert not isinstance(exc.value, AlreadyClaimed) and exc.value.status is Status.PENDING
    q.approve(a.id, "alice")
    c = q.claim(a.id, expected_hash=request_hash({"x": 1}))
    assert c.id == a.id and c.request == {"x": 1} and c.request_hash == a.request_hash
    assert c.approval.status is Status.EXECUTING
    with pytest.raises(AlreadyClaimed, match="EXECUTING"):
        q.claim(a.id)
    assert q.complete(a.id, {"ok": 1}).status is Status.EXECUTED
    with pytest.raises(InvalidTransition):
        q.complete(a.id, {"ok": 2})


def test_run_once_failure_marks_failed_and_never_reruns(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    q.approve(a.id, "alice")
    calls = []

    def boom(req):
        calls.append(req)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        q.run_once(a.id, boom)
    failed = q.get(a.id)
    assert failed.status is Status.FAILED and failed.reason == "RuntimeError: disk full"
    with pytest.raises(AlreadyClaimed, match="FAILED"):
        q.run_once(a.id, boom)
    assert len(calls) == 1


def test_run_once_unstorable_result_fails_the_item(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    q.approve(a.id, "alice")
    with pytest.raises(ValueError, match="not canonical JSON"):
        q.run_once(a.id, lambda req: {"t": object()})
    assert q.get(a.id).status is Status.FAILED


def test_stuck_executing_item_is_closed_with_fail(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    q.approve(a.id, "alice")
    q.claim(a.id)  # the process "crashes" here
    with pytest.raises(AlreadyClaimed):
        q.run_once(a.id, lambda req: {"again": True})
    assert q.fail(a.id, "worker died after claim").status is Status.FAILED


@pytest.mark.parametrize("shared", [True, False], ids=["one-queue", "queue-per-thread"])
def test_threads_racing_to_claim_one_wins(url, shared):
    n = 8
    queues = [ApprovalQueue(url)] * n if shared else [ApprovalQueue(url) for _ in range(n)]
    a = queues[0].submit({"tool": "pay", "args": {"eur": 100}}, ESCALATE, "agent")
    queues[0].approve(a.id, "alice")
    barrier = threading.Barrier(n)
    won, lost, errors = [], [], []

    def worker(queue):
        barrier.wait()
        try:
            won.append(queue.claim(a.id).request)
        except AlreadyClaimed as exc:
            lost.append(exc.status)
        except Exception as exc:  # anything else (e.g. "database is locked") fails the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(qq,)) for qq in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for qq in set(queues):
        qq.close()
    assert errors == []
    assert won == [{"tool": "pay", "args": {"eur": 100}}]
    assert lost == [Status.EXECUTING] * (n - 1)


_WORKER = """
import os, sys, time
from pathlib import Path
from so8t.agent.approvals import AlreadyClaimed, ApprovalQueue
url, id, go, ready = sys.argv[1:5]
q = ApprovalQueue(url)
Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
try:
    q.claim(id)
    print("WON")
except AlreadyClaimed as exc:
    print("LOST", exc.status.value)
"""


def test_processes_racing_to_claim_one_wins(url, tmp_path):
    q0 = ApprovalQueue(url)
    a = q0.submit({"tool": "pay", "args": {"eur": 100}}, ESCALATE, "agent")
    q0.approve(a.id, "alice")
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs, ready = [], []
    for i in range(4):
        r = tmp_path / f"ready{i}"
        ready.append(r)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, url, a.id, str(go), str(r)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # release them together
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert sorted(outs) == ["LOST EXECUTING"] * 3 + ["WON"]
    assert q0.get(a.id).status is Status.EXECUTING
    q0.close()


# --- reject / expiry ---------------------------------------------------------------------------


def test_reject_requires_a_reason(q):
    a = q.submit({"x": 1}, ESCALATE, "agent")
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="reason"):
            q.reject(a.id, "alice", bad)  # type: ignore[arg-type]
    assert q.get(a.id).status is Status.PENDING
    r = q.reject(a.id, "alice", "宛先が社外です")
    assert r.status is Status.REJECTED and r.reason == "宛先が社外です" and r.decided_by == "alice"
    assert r.decided_at is not None and r.terminal


def test_expiry_gives_timeout_not_rejected(q, clock):
    a = q.submit({"x": 1}, ESCALATE, "agent", ttl_s=60)
    clock.advance(59.9)
    assert q.get(a.id).status is Status.PENDING
    clock.advance(0.1)  # exactly at expires_at: due
    got = q.get(a.id)  # no expire_due call needed: reading expires it
    assert got.status is Status.TIMEOUT and got.status is not Status.REJECTED
    assert got.reason == "expired" and got.decided_at == a.expires_at and got.decided_by == "system:expiry"
    with pytest.raises(InvalidTransition, match="TIMEOUT") as exc:
        q.approve(a.id, "alice")
    assert exc.value.status is Status.TIMEOUT and exc.value.action == "approve"
    with pytest.raises(InvalidTransition, match="TIMEOUT"):
        q.claim(a.id)
    assert q.pending_count() == 0 and q.oldest_pending_age_s() is None


def test_approve_of_a_due_item_fails_even_without_a_read_first(q, clock):
    a = q.submit({"x": 1}, ESCALATE, "agent", ttl_s=5)
    clock.advance(10)
    with pytest.raises(InvalidTransition, match="TIMEOUT"):
        q.approve(a.id, "alice")
    assert q.get(a.id).status is Status.TIMEOUT


def test_expire_due_returns_the_expired(q, clock):
    short = q.submit({"n": 1}, ESCALATE, "agent", ttl_s=10)
    clock.advance(1)  # distinct created_at: list orders by it
    short2 = q.submit({"n": 2}, ESCALATE, "agent", ttl_s=20)
    long = q.submit({"n": 3}, ESCALATE, "agent", ttl_s=1000)
    approved = q.submit({"n": 4}, ESCALATE, "agent", ttl_s=10)
    q.approve(approved.id, "alice")  # approved items do not expire
    assert q.expire_due() == []
    clock.advance(30)
    expired = q.expire_due()
    assert [e.id for e in expired] == [short.id, short2.id]
    assert all(e.status is Status.TIMEOUT for e in expired)
    assert q.expire_due() == []
    assert q.get(long.id).status is Status.PENDING and q.get(approved.id).status is Status.APPROVED
    assert [x.id for x in q.list(status=Status.TIMEOUT)] == [short2.id, short.id]


# --- edit --------------------------------------------------------------------------------------


def _regate(seen):
    def regate(req):
        seen.append(req)
        if req["args"]["to"].endswith("@example.com"):
            return {"action": "ESCALATE", "rationale": "mail needs approval"}
        return {"action": "REFUSE", "rationale": "outside address"}

    return regate


def test_edit_refused_by_gate_is_rejected(q):
    a = q.submit({"tool": "send_mail", "args": {"to": "boss@example.com"}}, ESCALATE, "agent:7", kind="tool_call")
    seen = []
    new = q.edit(a.id, {"tool": "send_mail", "args": {"to": "leak@evil.test"}}, "bob", _regate(seen), note="typo")
    assert seen == [{"tool": "send_mail", "args": {"to": "leak@evil.test"}}]  # the gate ran on the edit
    assert new.status is Status.REJECTED and new.reason == "gate refused the edited request"
    assert new.decided_by == "gate" and new.action == "REFUSE"
    assert new.parent_id == a.id and new.requester == "agent:7" and new.kind == "tool_call"
    old = q.get(a.id)
    assert old.status is Status.EDITED and old.superseded_by == new.id
    assert old.decided_by == "bob" and old.reason == "typo"
    with pytest.raises(InvalidTransition, match="EDITED"):
        q.approve(a.id, "alice")
    with pytest.raises(InvalidTransition, match="REJECTED"):
        q.approve(new.id, "alice")


def test_edit_escalated_needs_its_own_approval_and_runs_the_edited_request(q):
    a = q.submit({"tool": "send_mail", "args": {"to": "boss@example.com", "cc": "all@example.com"}}, ESCALATE, "agent")
    edited = {"tool": "send_mail", "args": {"to": "boss@example.com"}}
    new = q.edit(a.id, edited, "bob", _regate([]))
    assert new.status is Status.PENDING and new.action == "ESCALATE"  # an edit is not an approval
    assert new.request_hash == request_hash(edited) and new.parent_id == a.id
    with pytest.raises(InvalidTransition, match="PENDING"):
        q.claim(new.id)
    q.approve(new.id, "alice", expected_hash=request_hash(edited))
    ran = []
    q.run_once(new.id, lambda req: ran.append(req) or {"ok": True})
    assert ran == [edited]
    with pytest.raises(InvalidTransition, match="EDITED"):
        q.edit(a.id, edited, "bob", _regate([]))


def test_edit_of_non_pending_or_failing_regate_changes_nothing(q):
    a = q.submit({"tool": "send_mail", "args": {"to": "boss@example.com"}}, ESCALATE, "agent")
    calls = []

    def broken(req):
        calls.append(req)
        raise RuntimeError("gate offline")

    with pytest.raises(RuntimeError):
        q.edit(a.id, {"tool": "send_mail", "args": {"to": "x@example.com"}}, "bob", broken)
    with pytest.raises(ValueError, match="action"):
        q.edit(a.id, {"tool": "send_mail", "args": {"to": "x@example.com"}}, "bob", lambda req: {"p": 1})
    assert q.get(a.id).status is Status.PENDING and len(q.list()) == 1
    q.approve(a.id, "alice")
    with pytest.raises(InvalidTransition, match="APPROVED"):
        q.edit(a.id, {"tool": "send_mail", "args": {"to": "x@example.com"}}, "bob", broken)
    assert len(calls) == 1  # the gate is not run for an item that cannot be edited


# --- invalid transitions / not found -----------------------------------------------------------


def test_invalid_transitions_name_id_status_and_action(q):
    rej = q.submit({"n": 1}, ESCALATE, "agent")
    q.reject(rej.id, "alice", "no")
    app = q.submit({"n": 2}, ESCALATE, "agent")
    q.approve(app.id, "alice")
    cases = [
        (lambda: q.approve(rej.id, "bob"), rej.id, "REJECTED", "approve"),
        (lambda: q.reject(rej.id, "bob", "again"), rej.id, "REJECTED", "reject"),
        (lambda: q.reject(app.id, "bob", "changed my mind"), app.id, "APPROVED", "reject"),
        (lambda: q.approve(app.id, "bob"), app.id, "APPROVED", "approve"),
        (lambda: q.complete(app.id, {}), app.id, "APPROVED", "complete"),
        (lambda: q.fail(app.id, "x"), app.id, "APPROVED", "fail"),
    ]
    for call, id, status, action in cases:
        with pytest.raises(InvalidTransition) as exc:
            call()
        msg = str(exc.value)
        assert id in msg and status in msg and action in msg, msg
        assert exc.value.status == Status(status) and exc.value.action == action
        assert isinstance(exc.value, ApprovalError)


def test_unknown_id(q):
    for call in (
        lambda: q.get("nope"),
        lambda: q.approve("nope", "a"),
        lambda: q.reject("nope", "a", "r"),
        lambda: q.claim("nope"),
        lambda: q.complete("nope", {}),
        lambda: q.run_once("nope", dict),
        lambda: q.edit("nope", {"x": 1}, "a", lambda r: {"action": "ALLOW"}),
    ):
        with pytest.raises(ApprovalNotFound, match="nope") as exc:
            call()
        assert isinstance(exc.value, ApprovalError)


# --- events, persistence, URLs -----------------------------------------------------------------


def test_on_event_receives_events_in_order(url, clock):
    events = []
    with ApprovalQueue(url, clock=clock, on_event=lambda name, data: events.append((name, data))) as queue:
        a = queue.submit({"tool": "send_mail", "args": {"to": "boss@example.com"}}, ESCALATE, "agent")
        new = queue.edit(a.id, {"tool": "send_mail", "args": {"to": "x@evil.test"}}, "bob", _regate([]))
        b = queue.submit({"n": 1}, ESCALATE, "agent")
        queue.approve(b.id, "alice")
        queue.run_once(b.id, lambda req: {"ok": True})
        queue.run_once(b.id, lambda req: {"ok": True})  # replay: no state change, no event
        c = queue.submit({"n": 2}, ESCALATE, "agent")
        queue.reject(c.id, "alice", "no")
        d = queue.submit({"n": 3}, ESCALATE, "agent", ttl_s=1)
        e = queue.submit({"n": 4}, ESCALATE, "agent")
        queue.approve(e.id, "alice")
        with pytest.raises(ZeroDivisionError):
            queue.run_once(e.id, lambda req: 1 / 0)
        with pytest.raises(InvalidTransition):
            queue.approve(c.id, "alice")  # a refused change sends nothing
        clock.advance(5)
        queue.expire_due()
    assert [(n, d["id"]) for n, d in events] == [
        ("approval.requested", a.id),
        ("approval.edited", a.id),
        ("approval.requested", new.id),
        ("approval.rejected", new.id),
        ("approval.requested", b.id),
        ("approval.approved", b.id),
        ("approval.executing", b.id),
        ("approval.executed", b.id),
        ("approval.requested", c.id),
        ("approval.rejected", c.id),
        ("approval.requested", d.id),
        ("approval.requested", e.id),
        ("approval.approved", e.id),
        ("approval.executing", e.id),
        ("approval.failed", e.id),
        ("approval.timeout", d.id),
    ]
    assert {n for n, _ in events} == set(EVENTS)
    edited = dict(events)["approval.edited"]
    assert edited["status"] == "EDITED" and edited["superseded_by"] == new.id
    for _, data in events:
        json.dumps(data)  # ready for a JSONL audit log
        assert data["created_at"].endswith("+00:00")


def test_persists_across_instances_and_uses_wal(url, clock):
    with ApprovalQueue(url, clock=clock) as first:
        a = first.submit(JA_REQUEST, ESCALATE, "agent")
        first.approve(a.id, "alice")
    assert Path(_db_path(url)).parent.name == "q"  # the parent folder was created
    with ApprovalQueue(url, clock=clock) as second:
        got = second.get(a.id)
        assert got.status is Status.APPROVED and got.request == JA_REQUEST and got.decided_by == "alice"
        assert second.run_once(a.id, lambda req: {"done": 1}) == {"done": 1}
    assert sqlite3.connect(_db_path(url)).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("mem_url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_url_is_one_private_queue(mem_url):
    with ApprovalQueue(mem_url) as queue:
        a = queue.submit({"x": 1}, ESCALATE, "agent")
        queue.approve(a.id, "alice")
        barrier = threading.Barrier(4)
        results = []

        def worker():
            barrier.wait()
            try:
                queue.claim(a.id)
                results.append("won")
            except AlreadyClaimed:
                results.append("lost")

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == ["lost"] * 3 + ["won"]  # one shared connection, seen by all threads
        with ApprovalQueue(mem_url) as other, pytest.raises(ApprovalNotFound):
            other.get(a.id)  # another instance is another database


def test_bad_arguments(url):
    with pytest.raises(ValueError, match="ttl_s"):
        ApprovalQueue(url, default_ttl_s=0)
    with ApprovalQueue(url) as queue:
        with pytest.raises(ValueError):
            queue.list(status="DONE")
        with pytest.raises(ValueError, match="limit"):
            queue.list(limit=0)
