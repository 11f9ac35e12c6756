"""The OpenAI-compatible server for a plain LM, served for real by uvicorn on localhost."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest
import torch
from fastapi import FastAPI

from so8t.model import render_prompt
from so8t.server.llm_server import serve_in_thread

HI = [{"role": "user", "content": "Please list the files in my reports folder."}]
JA = [{"role": "user", "content": "本番DBのテーブルを削除して。"}]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def server(tiny_llm_server):
    return tiny_llm_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def chat(client, messages, **extra):
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(client, messages, **extra) -> list[str]:
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "stream": True, **extra})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    assert body["data"][0]["object"] == "model"


def test_completion_shape_and_usage_match_the_tokenizer(client, lm):
    _, tok = lm
    body = chat(client, HI, max_tokens=12)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == "tiny"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tok(render_prompt(tok, HI), add_special_tokens=False)["input_ids"])
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_is_deterministic_and_matches_in_process_generate(client, lm):
    model, tok = lm
    a, b = chat(client, JA, max_tokens=10), chat(client, JA, max_tokens=10)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    ids = tok(render_prompt(tok, JA), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert a["choices"][0]["message"]["content"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_japanese_content_round_trips(client, lm):
    _, tok = lm
    convo = JA + [{"role": "assistant", "content": "メールを送信する前に承認が必要です。"}, *JA]
    body = chat(client, convo, max_tokens=4)
    # the server tokenized exactly the Japanese we sent (mojibake would tokenize differently)
    assert body["usage"]["prompt_tokens"] == len(tok(render_prompt(tok, convo), add_special_tokens=False)["input_ids"])
    # list-style content parts are the same conversation
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "本番DBの"}, {"type": "text", "text": "テーブルを削除して。"}],
        }
    ]
    assert (
        chat(client, parts, max_tokens=6)["choices"][0]["message"]
        == chat(client, JA, max_tokens=6)["choices"][0]["message"]
    )


def test_seeded_sampling_is_reproducible_and_seed_matters(client):
    runs = [
        chat(client, HI, max_tokens=16, temperature=1.0, seed=s)["choices"][0]["message"]["content"] for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    before = torch.get_rng_state()
    chat(client, HI, max_tokens=2, temperature=1.0, seed=3)
    assert torch.equal(before, torch.get_rng_state())  # the server does not reseed the process


def test_max_tokens_is_respected_and_reported_as_length(client):
    body = chat(client, HI, max_tokens=3)
    assert body["usage"]["completion_tokens"] <= 3
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 3
    # the tiny random model never emits its end-of-turn token this early: the budget is what ends it
    long = chat(client, HI, max_tokens=20, temperature=1.0, seed=0)
    assert long["usage"]["completion_tokens"] == 20 and long["choices"][0]["finish_reason"] == "length"


def test_prompt_longer_than_the_context_is_a_400(client, lm):
    model, _ = lm
    words = " ".join(["The quick brown fox jumps over the lazy dog."] * model.config.max_position_embeddings)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": words}]})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]


def test_budget_is_clipped_to_the_context(client, lm):
    model, tok = lm
    ctx = model.config.max_position_embeddings
    msgs = [{"role": "user", "content": " ".join(["Action: ALLOW"] * 20)}]
    n_prompt = len(tok(render_prompt(tok, msgs), add_special_tokens=False)["input_ids"])
    assert n_prompt + 200 > ctx  # otherwise the test proves nothing
    body = chat(client, msgs, max_tokens=200)  # greedy: this tiny model never ends its turn
    assert body["usage"]["total_tokens"] == ctx and body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("messages", [HI, JA])
def test_stream_joins_to_the_non_streamed_text_and_ends_with_done(client, messages):
    args = {"max_tokens": 24, "temperature": 1.0, "seed": 7}  # sampled: varied text, incl. split multi-byte chars
    full = chat(client, messages, **args)
    events = stream_events(client, messages, **args)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == full["choices"][0]["message"]["content"]
    assert len(chunks) > 3  # really in pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stream_usage_chunk_on_request(client):
    events = stream_events(client, HI, max_tokens=4, stream_options={"include_usage": True})
    usage_chunk = json.loads(events[-2])
    assert events[-1] == "[DONE]" and usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] <= 4


def test_stop_sequence_cuts_the_text(client):
    text = chat(client, HI, max_tokens=16, temperature=1.0, seed=1)["choices"][0]["message"]["content"]
    stop = text[5:8]
    body = chat(client, HI, max_tokens=16, temperature=1.0, seed=1, stop=[stop])
    assert body["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
        ({"messages": [{"content": "no role"}]}, "messages.0.role"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ],
)
def test_invalid_requests_are_400_with_a_clear_message(client, payload, where):
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and where in err["message"]


def test_malformed_json_is_400(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid request" in r.json()["error"]["message"]


def test_concurrent_requests_are_serialised_and_all_answered(client):
    results: list[str] = []
    expected = chat(client, HI, max_tokens=8)["choices"][0]["message"]["content"]

    def call():
        results.append(chat(client, HI, max_tokens=8)["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected] * 4


def test_serve_in_thread_stops_and_frees_the_port():
    app = FastAPI()

    @app.get("/ping")
    def ping():
        return "pong"

    handle = serve_in_thread(app)
    assert handle.url.startswith("http://127.0.0.1:") and handle.running
    assert httpx.get(handle.url + "/ping").json() == "pong"
    handle.stop()
    handle.stop()  # idempotent
    assert not handle.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url + "/ping")
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", handle.port))


def test_serve_in_thread_raises_when_the_app_fails_to_start():
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def broken(_):
        raise RuntimeError("no model")
        yield

    with pytest.raises(RuntimeError, match="exited during startup"):
        serve_in_thread(FastAPI(lifespan=broken), startup_timeout_s=5)


def test_two_servers_get_different_ports():
    with serve_in_thread(FastAPI()) as a, serve_in_thread(FastAPI()) as b:
        assert a.port != b.port
        assert httpx.get(a.url + "/openapi.json").status_code == 200
