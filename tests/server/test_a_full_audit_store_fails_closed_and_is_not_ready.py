"""Issue 13, item 9, over real HTTP (uvicorn on loopback): the audit log's filesystem fills up (a
real 64 KiB tmpfs where mount is permitted, and /dev/full, always).

Before: an escalated chat was committed as PENDING with no audit record, an approval answered 500
yet moved to APPROVED (and then stayed EXECUTING forever), and /readyz said ready. Now a request
that needs a record gets 503 with Retry-After and changes nothing, /readyz is 503 naming the
audit store, and everything works again once the store has room."""

import json
import time

import httpx
import pytest

from so8t.agent.approvals import Status
from so8t.agent.audit import verify
from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

from full_filesystem import FILLER_EVENT, KINDS, full_filesystem

TOKEN = "full-store-admin-token"
ASK = {"messages": [{"role": "user", "content": "Forward the board minutes to partner@example.com"}]}


@pytest.fixture(params=KINDS)
def server(request, run_with_thresholds, tmp_path, monkeypatch):
    store = next(gen := full_filesystem(request.param, tmp_path))
    monkeypatch.setenv("SO8T_ADMIN_TOKEN", TOKEN)
    cfg = ServerConfig(
        run=str(run_with_thresholds(1.0, 1.0)),
        approvals_url=f"sqlite:///{tmp_path}/approvals.db",
        audit_path=str(store.log),
        max_tokens=6,
        worker_interval_s=0.2,
        self_test=False,
    )
    svc = build_service(cfg)
    handle = serve_in_thread(create_app(svc))
    yield handle.url, svc, store
    handle.stop()
    gen.close()


def _chat(url):
    return httpx.post(f"{url}/v1/chat/completions", json=ASK, headers={"X-So8t-User": "alice"}, timeout=60)


def test_a_full_audit_store_refuses_what_it_cannot_record_and_is_not_ready(server):
    url, svc, store = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/readyz").status_code == 200

    store.fill()
    r = _chat(url)  # was: 200 "pending", no record
    assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
    assert (
        r.json()["error"]["type"] == "audit_unavailable" and "nothing was run, queued" in r.json()["error"]["message"]
    )
    assert svc.approvals.list() == []  # nothing committed as PENDING
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["audit"] != "ok"

    store.free()
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["audit"] == "ok", ready.text
    pending = _chat(url).json()["so8t"]
    assert pending["outcome"] == "pending"
    approval_id = pending["approval_id"]

    store.fill()
    r = httpx.post(f"{url}/admin/approvals/{approval_id}/approve", headers=auth, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["type"] == "audit_unavailable", r.text  # was: 500
    assert svc.approvals.get(approval_id).status is Status.PENDING  # was: APPROVED, then EXECUTING forever
    time.sleep(0.5)  # the worker runs: nothing to run
    assert httpx.get(f"{url}/v1/approvals/{approval_id}").json()["status"] == "PENDING"

    store.free()
    r = httpx.post(f"{url}/admin/approvals/{approval_id}/approve", headers=auth, timeout=60)
    assert r.status_code == 303, r.text
    deadline = time.time() + 30
    while time.time() < deadline and svc.approvals.get(approval_id).status is not Status.EXECUTED:
        time.sleep(0.2)
    assert svc.approvals.get(approval_id).status is Status.EXECUTED
    events = [json.loads(x)["event"] for x in store.log.read_text(encoding="utf-8").splitlines()]
    events = [e for e in events if e != FILLER_EVENT]
    assert events.count("approval.requested") == 1 and events.count("approval.approved") == 1
    assert events[-2:] == ["approval.executing", "approval.executed"] and "audit.restored" in events
    assert verify(store.log).ok
