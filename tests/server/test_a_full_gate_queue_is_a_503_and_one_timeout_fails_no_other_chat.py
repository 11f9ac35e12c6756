"""Issue 13, item 7, over real HTTP (uvicorn on a loopback port, the tiny trained run made slow
by sleeping in its real forward pass): one chat whose gate times out used to cancel every chat
queued behind it (40% of 120 concurrent chats failed closed with CancelledError). Now a timeout
fails closed that chat only, and a full gate queue answers 503 with Retry-After at once,
without scoring, queueing an approval or writing an audit record."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread


class SlowForward:
    """The model's real forward, after sleeping delays[k] (or default) before the k-th pass."""

    def __init__(self, model, monkeypatch, default: float, delays: dict[int, float] | None = None):
        self.real, self.default, self.delays, self.n = model.forward, default, delays or {}, 0
        self.lock = threading.Lock()
        monkeypatch.setattr(model, "forward", self)

    def __call__(self, *args, **kwargs):
        with self.lock:
            k, self.n = self.n, self.n + 1
        time.sleep(self.delays.get(k, self.default))
        return self.real(*args, **kwargs)


@pytest.fixture
def serve(tmp_path, run_with_thresholds):
    handles = []

    def start(**kw):
        cfg = ServerConfig(
            run=str(run_with_thresholds(0.0, 0.5)),
            approvals_url=f"sqlite:///{tmp_path}/approvals.db",
            audit_path=str(tmp_path / "audit.jsonl"),
            max_tokens=4,
            worker_interval_s=0.2,
            self_test=False,
            **kw,
        )
        svc = build_service(cfg)
        handles.append(serve_in_thread(create_app(svc)))
        return handles[-1].url, svc

    yield start
    for h in handles:
        h.stop()


def chat(url: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": text}]},
        headers={"X-So8t-User": "alice"},
        timeout=60,
    )


def in_parallel(fn, args: list) -> list:
    out: list = [None] * len(args)

    def one(k):
        out[k] = fn(*args[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_one_timeout_fails_closed_only_its_own_chat(serve, monkeypatch):
    url, svc = serve(gate_timeout_s=3.0)
    SlowForward(svc.gate.model, monkeypatch, default=0.0, delays={0: 5.0})  # the first chat's pass hangs 5 s
    first: list = []
    t = threading.Thread(target=lambda: first.append(chat(url, "Delete the production table now.")))
    t.start()
    time.sleep(1.0)  # eight more chats queue behind it
    rest = in_parallel(chat, [(url, f"List the files in folder {k}") for k in range(8)])
    t.join(60)
    assert first[0].status_code == 200 and first[0].json()["so8t"]["status"] == "timeout"
    got = [(r.status_code, r.json()["so8t"]["status"], r.json()["so8t"]["decision"]["reason"]) for r in rest]
    # Before the fix: [(200, 'error', 'fail-closed: CancelledError: '), ...] for every queued chat.
    assert all(code == 200 and status == "ok" for code, status, _ in got), got
    assert svc.gate.counts["fail_closed"] == 1


def test_a_full_queue_is_a_503_with_retry_after_and_nothing_is_queued_or_audited(serve, monkeypatch, tmp_path):
    url, svc = serve(gate_queue_max=2, gate_timeout_s=30.0, fail_action="ESCALATE")
    SlowForward(svc.gate.model, monkeypatch, default=1.0)
    rs = in_parallel(chat, [(url, f"List the files in folder {k}") for k in range(6)])
    busy = [r for r in rs if r.status_code == 503]
    served = [r for r in rs if r.status_code == 200]
    assert len(busy) >= 3 and len(busy) + len(served) == 6, [r.status_code for r in rs]
    for r in busy:
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["type"] == "server_busy" and "gate_queue_max" in err["message"]
    assert all(r.json()["so8t"]["status"] == "ok" for r in served)
    # ESCALATE is the fail action, yet a turned-away chat never reaches the approval queue
    assert svc.approvals.pending_count() == 0
    audit = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    assert audit.count('"gate.refuse"') == len(served) and '"gate.error"' not in audit
    # /v1/gate too, and the metrics show the queue
    rs = in_parallel(lambda u: httpx.post(f"{u}/v1/gate", json={"input": "hi"}, timeout=60), [(url,)] * 5)
    assert any(r.status_code == 503 and "Retry-After" in r.headers for r in rs)
    assert svc.gate.wait_idle(10) and "so8t_gate_queue_pending 0" in httpx.get(f"{url}/metrics").text
