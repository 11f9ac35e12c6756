"""Issue 14, item 1, over real HTTP (uvicorn on a loopback port, the tiny trained run): /v1/gate
and chat requests sent at once are scored in one forward pass of the gate (/metrics counts the
round), each answer carries the decision the request gets alone, and a batch size of 0 is an
error at start that names the key."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from so8t.agent.service import build_service
from so8t.cli import main
from so8t.config import ConfigError, ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

TEXTS = [
    "List the files in my reports folder.",
    "本番DBのテーブルを削除して。",
    "How do I make a bomb?",
    "Summarise the meeting notes from Monday.",
    "Send the board minutes to an outside address.",
    "hi",
]


@pytest.fixture
def serve(tmp_path, run_with_thresholds):
    handles = []

    def start(**kw):
        cfg = ServerConfig(
            run=str(run_with_thresholds(0.0, 0.5)),
            approvals_url=f"sqlite:///{tmp_path}/a.db",
            audit_path=str(tmp_path / "audit.jsonl"),
            max_tokens=4,
            self_test=False,
            **kw,
        )
        svc = build_service(cfg)
        handles.append(serve_in_thread(create_app(svc)))
        return handles[-1].url, svc

    yield start
    for h in handles:
        h.stop()


def ask(url: str, k: int) -> dict:
    """Even k: POST /v1/gate; odd k: a chat. The gate's decision either way."""
    body = {"messages": [{"role": "user", "content": TEXTS[k]}]}
    if k % 2 == 0:
        r = httpx.post(f"{url}/v1/gate", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"X-So8t-User": "alice"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["so8t"]["decision"]


def test_gate_and_chat_requests_sent_at_once_are_one_round_with_their_own_decisions(serve, monkeypatch):
    url, svc = serve(gate_batch_window_ms=50)
    alone = [ask(url, k) for k in range(len(TEXTS))]
    assert dict(svc.gate.batch_sizes) == {1: len(TEXTS)}
    # One more request holds the gate's worker (its forward pass waits) while the others arrive.
    real, entered, release = svc.gate.model.forward, threading.Event(), threading.Event()

    def forward(*a, **k):
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(svc.gate.model, "forward", forward)
    hold = threading.Thread(target=ask, args=(url, 0))
    hold.start()
    assert entered.wait(30)
    out: list = [None] * len(TEXTS)

    def one(k: int) -> None:
        out[k] = ask(url, k)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(TEXTS))]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while svc.gate.queue_state()["queued"] < len(TEXTS) and time.monotonic() < end:
        time.sleep(0.01)
    release.set()
    for t in [hold, *threads]:
        t.join(60)
    assert dict(svc.gate.batch_sizes) == {1: len(TEXTS) + 1, len(TEXTS): 1}
    for a, b in zip(alone, out, strict=True):
        assert (b["status"], b["action"]) == ("ok", a["action"])
        np.testing.assert_allclose(b["probs"], a["probs"], atol=1e-5)
    metrics = httpx.get(f"{url}/metrics").text
    assert f'so8t_gate_batches_total{{requests="{len(TEXTS)}"}} 1' in metrics


def test_a_batch_size_of_zero_is_an_error_at_start_naming_the_key(tiny_run, capsys):
    with pytest.raises(ConfigError, match="gate_batch_max: must be >= 1"):
        ServerConfig(run="x", gate_batch_max=0).validate()
    assert main(["serve", str(tiny_run[0]), "--set", "gate_batch_max=0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "gate_batch_max: must be >= 1 (the most prompts one forward pass of the gate scores), got 0" in err
    assert main(["serve", str(tiny_run[0]), "--set", "gate_batch_window_ms=-1", "--port", "1"]) == 2
    assert "gate_batch_window_ms: must be >= 0" in capsys.readouterr().err
