"""Issue 13, item 6, over real HTTP (uvicorn on a loopback port, the tiny trained run): 3,000
user turns used to be judged until the 10 s timeout while the abandoned work burnt a core for
minutes. A conversation over the gate's caps is now a 413 that names the cap, the value and the
server config key, answered before anything is scored: no forward pass, no audit record, no
approval, and the gate's worker is idle afterwards."""

from __future__ import annotations

import time

import httpx
import pytest

from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread


@pytest.fixture
def server(tmp_path, run_with_thresholds, monkeypatch):
    cfg = ServerConfig(
        run=str(run_with_thresholds(0.0, 0.5)),
        approvals_url=f"sqlite:///{tmp_path}/approvals.db",
        audit_path=str(tmp_path / "audit.jsonl"),
        max_tokens=4,
        worker_interval_s=0.2,
        self_test=False,
        fail_action="ESCALATE",
    )  # a tiny random model cannot pass the self-test
    svc = build_service(cfg)
    forwards = []
    real = svc.gate.model.forward
    monkeypatch.setattr(svc.gate.model, "forward", lambda *a, **k: (forwards.append(1), real(*a, **k))[1])
    handle = serve_in_thread(create_app(svc))
    yield handle.url, svc, forwards, tmp_path / "audit.jsonl"
    handle.stop()


def audit_lines(path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def turns(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"turn {i}: list the files in my reports folder"} for i in range(n)]


@pytest.mark.parametrize(
    "route, body, what",
    [
        ("/v1/chat/completions", {"messages": turns(3000)}, ("3000 messages", "512", "gate_max_turns")),
        ("/v1/gate", {"messages": turns(3000)}, ("3000 messages", "512", "gate_max_turns")),
        ("/v1/gate", {"input": "x" * 250_000}, ("250000 characters", "200000", "gate_max_chars")),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "ファイル " * 40_000}]},
            ("tokens", "50000", "gate_max_tokens"),
        ),  # 200,000 characters: under that cap
        ("/v1/chat/completions", {"messages": turns(100)}, ("at least", "views", "gate_max_views")),
    ],
)
def test_over_a_cap_is_a_413_that_names_it_and_nothing_runs(server, route, body, what):
    url, svc, forwards, audit = server
    before = (audit_lines(audit), dict(svc.gate.decisions))
    t0 = time.monotonic()
    r = httpx.post(url + route, json=body, timeout=60)
    took = time.monotonic() - t0
    assert r.status_code == 413, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "request_too_large" and all(w in err["message"] for w in what), err
    assert took < 5, f"the 413 took {took:.1f} s"
    assert forwards == [] and svc.gate.queue_state() == {"pending": 0, "queued": 0, "running": 0, "retired": 0}
    assert (audit_lines(audit), dict(svc.gate.decisions)) == before and svc.approvals.pending_count() == 0
    ok = httpx.post(f"{url}/v1/gate", json={"input": "List my files"}, timeout=60).json()
    assert ok["status"] == "ok" and forwards  # the server carries on


def test_the_caps_are_server_config(tmp_path, run_with_thresholds):
    cfg = ServerConfig(
        run=str(run_with_thresholds(0.0, 0.5)),
        approvals_url=f"sqlite:///{tmp_path}/a.db",
        audit_path=str(tmp_path / "audit.jsonl"),
        self_test=False,
        gate_max_turns=4,
    )
    svc = build_service(cfg)
    handle = serve_in_thread(create_app(svc))
    try:
        r = httpx.post(f"{handle.url}/v1/chat/completions", json={"messages": turns(5)}, timeout=60)
        assert r.status_code == 413 and "5 messages; the limit is 4 (server config gate_max_turns)" in r.text
        assert (
            httpx.post(f"{handle.url}/v1/chat/completions", json={"messages": turns(4)}, timeout=60).status_code == 200
        )
    finally:
        handle.stop()
