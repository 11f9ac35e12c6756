"""Two real `so8t serve` processes (replicas, on two ports) sharing one PostgreSQL database for
approvals and the audit chain, as behind a load balancer (issue 14, section 3).

Every chat escalates (thresholds 1/1), so approvals wait. Then two operators approve the same items
at the same moment, one on each replica; both replicas' workers race to run what was approved and
to expire what nobody answered. Each item is approved once, runs once and expires once, and the
audit chain, written by both replicas, verifies. What stays per replica is shown too: the gate's
counters in /metrics, and the operators' sign-in sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from so8t.agent.approvals import ApprovalQueue
from so8t.agent.audit_db import DatabaseAuditLog
from so8t.agent.service import approval_audit_record
from so8t.cli import main as cli

from postgres_server import PASSWORD, _free_port

TOKEN = "replica-admin-token-5c1e"
SRC = str(Path(__file__).resolve().parents[2] / "src")


class Replica:
    def __init__(self, config: Path, log: Path, **env_extra: str):
        self.port, self.log = _free_port(), log
        env = {
            **os.environ,
            "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "SO8T_ADMIN_TOKEN": TOKEN,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            **env_extra,
        }
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "so8t", "serve", "--config", str(config), "--port", str(self.port)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"so8t serve exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"so8t serve on {self.url} not ready: {self.log.read_text()[-3000:]}")

    def chat(self, text: str) -> str:
        r = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": text}]},
            headers={"X-So8t-User": "alice"},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["so8t"]["outcome"] == "pending", r.text
        return r.json()["so8t"]["approval_id"]

    def approve(self, approval_id: str, who: str) -> int:
        return httpx.post(
            f"{self.url}/admin/approvals/{approval_id}/approve",
            data={"by": who},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        ).status_code

    def metric(self, name: str) -> str:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return "\n".join(line for line in text.splitlines() if line.startswith(name))

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.log.read_text()


@pytest.fixture(scope="module")
def replicas(postgresql, tiny_run, tmp_path_factory):
    """Two `so8t serve` processes on one PostgreSQL database, shared by this module's tests
    (starting them is most of its time). The first has the password in its URL, the second's URL
    has none and libpq reads it from PGPASSWORD (the server checks it)."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    (run / "thresholds.json").write_text(json.dumps({"thresholds": {"refuse_at": 1.0, "allow_at": 1.0}}))  # ESCALATE
    postgresql.new_database("replicas")
    url = postgresql.password_url("replicas")
    without = url.replace(f":{PASSWORD}@", "@")
    configs = []
    for i, db in enumerate((url, without)):
        configs.append(tmp_path / f"replica{i}.yaml")
        configs[-1].write_text(
            yaml.safe_dump(
                {
                    "run": str(run),
                    "approvals_url": db,
                    "audit_url": db,
                    "self_test": False,
                    "max_tokens": 4,
                    "worker_interval_s": 0.3,
                }
            )
        )
    started = [
        Replica(configs[0], tmp_path / "replica0.log"),
        Replica(configs[1], tmp_path / "replica1.log", PGPASSWORD=PASSWORD),
    ]
    try:
        deadline = time.monotonic() + 120
        for r in started:
            r.wait_ready(deadline)
        yield started[0], started[1], url
    finally:
        logs = [r.stop() for r in started]
        assert not any(PASSWORD in log for log in logs), "a replica logged the database password"


def audit_records(url: str) -> list[dict]:
    store = DatabaseAuditLog(url)
    try:
        return store.tail(100_000)
    finally:
        store.close()


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_two_replicas_approve_run_and_expire_each_request_once(replicas, capsys):
    a, b, url = replicas
    ids = [
        a.chat("Send the salary sheet to everyone"),
        b.chat("Wire 5000 EUR to this account"),
        a.chat("Delete the old backups"),
        b.chat("Email the board minutes outside"),
    ]
    # the queue's gauges are read from the shared database: both replicas see all four
    assert a.metric("so8t_approvals_pending ") == b.metric("so8t_approvals_pending ") == "so8t_approvals_pending 4"

    # Two operators approve every item at the same moment, one on each replica.
    codes: dict[str, list[int]] = {i: [] for i in ids}
    for approval_id in ids:
        barrier = threading.Barrier(2)

        def approve(replica, who, approval_id=approval_id, barrier=barrier):
            barrier.wait()
            codes[approval_id].append(replica.approve(approval_id, who))

        threads = [threading.Thread(target=approve, args=(r, w)) for r, w in ((a, "carol"), (b, "dave"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert all(sorted(c) == [303, 409] for c in codes.values()), codes  # one approval, one "it is APPROVED"

    # Both workers race to run them: each runs once, and either replica shows the answer.
    def status(approval_id: str) -> str:
        return httpx.get(f"{b.url}/v1/approvals/{approval_id}", timeout=30).json()["status"]

    assert wait_for(lambda: all(status(i) == "EXECUTED" for i in ids)), [status(i) for i in ids]
    assert all(httpx.get(f"{a.url}/v1/approvals/{i}", timeout=30).json()["answer"] is not None for i in ids)

    # An item nobody answers: both workers expire due items every 0.3 s; it times out once.
    audit = DatabaseAuditLog(url)
    queue = ApprovalQueue(
        url, write_ahead=lambda ev: audit.append_batch([(n, approval_audit_record(d)) for n, d in ev])
    )
    late = queue.submit(
        {"kind": "chat", "messages": [{"role": "user", "content": "hi"}]}, {"action": "ESCALATE"}, "bob", ttl_s=0.5
    )
    assert wait_for(lambda: status(late.id) == "TIMEOUT")
    time.sleep(1.0)  # a few more rounds of both workers
    queue.close()
    audit.close()

    records = audit_records(url)
    events = Counter((r["event"], r["data"].get("id")) for r in records if r["event"].startswith("approval."))
    for i in ids:
        assert [
            events[(e, i)]
            for e in ("approval.requested", "approval.approved", "approval.executing", "approval.executed")
        ] == [1, 1, 1, 1], i
    assert events[("approval.timeout", late.id)] == 1
    # records from both replicas, in one chain: each escalation was recorded by the replica it came to
    escalated = [r["data"]["approval_id"] for r in records if r["event"] == "gate.escalate"]
    assert Counter(escalated) == Counter(ids)
    assert cli(["audit", "verify", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {len(records)} records") and PASSWORD not in out

    # /metrics: the queue's gauges come from the shared database, the gate's counters per replica
    assert a.metric("so8t_approvals_pending ") == b.metric("so8t_approvals_pending ") == "so8t_approvals_pending 0"
    assert a.metric("so8t_approvals_store_up") == "so8t_approvals_store_up 1"
    for r in (a, b):
        assert r.metric("so8t_gate_decisions_total") == 'so8t_gate_decisions_total{action="ESCALATE",status="ok"} 2'


def test_an_operator_session_belongs_to_the_replica_that_signed_it_in(replicas):
    a, b, _ = replicas
    client = httpx.Client(base_url=a.url, timeout=30, follow_redirects=False)
    r = client.post("/admin/login", data={"token": TOKEN}, headers={"Origin": a.url, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303
    cookie = client.cookies.get("so8t_session")
    assert client.get("/admin/api/approvals").status_code == 200
    other = httpx.get(f"{b.url}/admin/api/approvals", cookies={"so8t_session": cookie}, timeout=30)
    assert other.status_code == 401  # sessions live in each process
    bearer = httpx.get(f"{b.url}/admin/api/approvals", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert bearer.status_code == 200  # the token works on every replica
