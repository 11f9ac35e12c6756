"""OpenAIBackend against real HTTP servers on localhost: so8t's LLM server and a misbehaving one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from so8t.agent.backends import BackendError, ChatBackend, OpenAIBackend
from so8t.model import render_prompt
from so8t.server.llm_server import serve_in_thread

HI = [{"role": "user", "content": "Please list the files in my reports folder."}]
FAST = {"timeout_s": 0.3, "backoff_s": 0.01}


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def llm_url(tiny_llm_server):
    return tiny_llm_server.url + "/v1"


# -- a misbehaving OpenAI-compatible server -----------------------------------------------------


class Script:
    """What the fake server does, per scenario; reset before each test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_first = 0
        self.seen: list[dict] = []

    def count(self, scenario: str) -> int:
        with self.lock:
            self.calls[scenario] += 1
            return self.calls[scenario]


def ok(content: str) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


def fake_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/{scenario}/v1/chat/completions")
    async def chat(scenario: str, request: Request):
        n = script.count(scenario)
        body = await request.json()
        script.seen.append({"body": body, "auth": request.headers.get("authorization")})
        echo = ok(body["messages"][-1]["content"])
        if scenario == "echo":
            return echo
        if scenario == "flaky":
            return (
                JSONResponse({"error": {"message": "warming up"}}, status_code=503) if n <= script.fail_first else echo
            )
        if scenario == "down":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if scenario == "ratelimited":
            return (
                JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "3600"})
                if n == 1
                else echo
            )
        if scenario == "bad":
            return JSONResponse({"error": {"message": "model 'nope' not found"}}, status_code=400)
        if scenario == "auth":
            return (
                echo if request.headers.get("authorization") == "Bearer s3cret" else JSONResponse({}, status_code=401)
            )
        if scenario == "malformed":
            return {"choices": []}
        if scenario == "nullcontent":
            return {"choices": [{"message": {"role": "assistant", "content": None}}]}
        if scenario == "notjson":
            return PlainTextResponse("<html>proxy error</html>")
        if scenario == "slow":
            await asyncio.sleep(1.0)
            return echo
        raise AssertionError(scenario)

    @app.get("/{scenario}/v1/models")
    async def models(scenario: str):
        if scenario == "malformed":
            return {"data": [{"name": "no id"}]}
        return {"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b", "object": "model"}]}

    return app


@pytest.fixture(scope="module")
def fake():
    script = Script()
    with serve_in_thread(fake_app(script)) as handle:
        yield handle.url, script


@pytest.fixture
def script(fake):
    fake[1].reset()  # fresh counters for each test
    return fake[1]


def backend(fake, scenario: str, **kw) -> OpenAIBackend:
    url, _ = fake
    return OpenAIBackend(f"{url}/{scenario}/v1", "m", **{**FAST, **kw})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- against so8t's own LLM server --------------------------------------------------------------


def test_round_trip_through_the_llm_server(llm_url, lm):
    _, tok = lm
    with OpenAIBackend(llm_url, "tiny") as b:
        assert isinstance(b, ChatBackend) and "tiny" in b.name and llm_url in b.name
        text = b.complete(HI, max_tokens=8)
        assert isinstance(text, str)
        assert b.complete(HI, max_tokens=8) == text  # greedy
        assert b.list_models() == ["tiny"]
    # the same request over plain HTTP: usage agrees with the tokenizer
    r = httpx.post(f"{llm_url}/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 8}).json()
    assert r["choices"][0]["message"]["content"] == text
    assert r["usage"]["prompt_tokens"] == len(tok(render_prompt(tok, HI), add_special_tokens=False)["input_ids"])
    assert r["usage"]["completion_tokens"] <= 8


def test_trailing_slash_and_sampling_arguments_reach_the_server(llm_url):
    with OpenAIBackend(llm_url + "/", "tiny") as b, OpenAIBackend(llm_url, "tiny") as plain:
        assert b.base_url == llm_url
        assert b.complete(HI, max_tokens=4) == plain.complete(HI, max_tokens=4)
        assert isinstance(b.complete(HI, max_tokens=4, temperature=0.8), str)


def test_llm_server_400_is_not_retried_and_is_explained(llm_url):
    with OpenAIBackend(llm_url, "tiny", **FAST) as b, pytest.raises(BackendError) as err:
        b.complete([], max_tokens=4)
    assert err.value.status == 400 and "HTTP 400" in str(err.value) and "at least 1 item" in str(err.value)
    assert "attempts" not in str(err.value)


# -- the payload and the retry policy, against the misbehaving server ----------------------------


def test_payload_is_openai_shaped_and_japanese_round_trips(fake, script):
    ja = [
        {"role": "system", "content": "日本語で答えて"},
        {"role": "user", "content": "ファイル一覧を表示してください。"},
    ]
    with backend(fake, "echo") as b:
        assert b.complete(ja, max_tokens=7, temperature=0.5) == "ファイル一覧を表示してください。"
    assert script.seen[0]["body"] == {
        "model": "m",
        "messages": ja,
        "max_tokens": 7,
        "temperature": 0.5,
        "stream": False,
    }
    assert script.seen[0]["auth"] is None


def test_api_key_is_sent_as_bearer_and_never_shown(fake, script):
    with backend(fake, "auth", api_key="s3cret") as b:
        assert b.complete(HI) == HI[-1]["content"]
        assert "s3cret" not in repr(b)
    with backend(fake, "auth", api_key="wrong") as b, pytest.raises(BackendError) as err:
        b.complete(HI)
    assert err.value.status == 401 and "wrong" not in str(err.value)


def test_503_then_success_is_retried(fake, script):
    script.fail_first = 2
    with backend(fake, "flaky", retries=2) as b:
        assert b.complete(HI) == HI[-1]["content"]
    assert script.calls["flaky"] == 3


def test_retries_run_out(fake, script):
    with backend(fake, "down", retries=2) as b, pytest.raises(BackendError) as err:
        b.complete(HI)
    msg = str(err.value)
    assert script.calls["down"] == 3 and err.value.status == 503
    assert "HTTP 503" in msg and "overloaded" in msg and "[3 attempts]" in msg and "/down/v1/chat/completions" in msg


def test_429_retry_after_is_honoured_up_to_the_cap(fake, script):
    start = time.monotonic()
    with backend(fake, "ratelimited", retries=1, max_retry_after_s=0.05) as b:
        assert b.complete(HI) == HI[-1]["content"]
    assert script.calls["ratelimited"] == 2 and time.monotonic() - start < 2  # not 3600 s


def test_400_is_never_retried_and_names_the_status(fake, script):
    with backend(fake, "bad", retries=3) as b, pytest.raises(BackendError) as err:
        b.complete(HI)
    assert script.calls["bad"] == 1
    assert err.value.status == 400 and "HTTP 400" in str(err.value) and "not found" in str(err.value)
    assert "'m'" in str(err.value)  # the model is named


@pytest.mark.parametrize(
    "scenario, says",
    [
        ("malformed", "malformed response"),
        ("nullcontent", "malformed response"),
        ("notjson", "not JSON"),
    ],
)
def test_a_malformed_body_is_a_backend_error(fake, script, scenario, says):
    with backend(fake, scenario, retries=2) as b, pytest.raises(BackendError, match=says):
        b.complete(HI)
    assert script.calls[scenario] == 1  # a broken body is not transient


def test_timeout_is_retried_then_reported(fake, script):
    start = time.monotonic()
    with backend(fake, "slow", retries=1) as b, pytest.raises(BackendError) as err:
        b.complete(HI)
    assert "timed out after 0.3 s" in str(err.value) and "[2 attempts]" in str(err.value)
    assert script.calls["slow"] == 2 and time.monotonic() - start < 1.5


def test_closed_port_fails_after_retries(script):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with OpenAIBackend(url, "m", retries=2, **FAST) as b, pytest.raises(BackendError) as err:
        b.complete(HI)
    msg = str(err.value)
    assert url in msg and "connection failed" in msg and "[3 attempts]" in msg and err.value.status is None


def test_list_models(fake, script):
    with backend(fake, "echo") as b:
        assert b.list_models() == ["a", "b"]
    with backend(fake, "malformed") as b, pytest.raises(BackendError, match="data"):
        b.list_models()


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"base_url": "localhost:11434/v1"}, "http"),
        ({"model": ""}, "model"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, says):
    args = {"base_url": "http://localhost:11434/v1", "model": "m", **kwargs}
    with pytest.raises(ValueError, match=says):
        OpenAIBackend(args.pop("base_url"), args.pop("model"), **args)
