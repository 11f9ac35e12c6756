"""Issue 18 (A): an OpenAI-compatible backend that is down, hangs, answers garbage or an error
status, or stops mid-answer gives the client a 5xx in OpenAI's error shape (504 for a timeout,
502 otherwise), for `stream: true` too, never a 200 with finish_reason "stop". The gate's
decision and an llm.error audit record naming the failure are still written.

Every backend here is a real HTTP server on a free loopback port (http.server in a thread), and
the gated server is a real uvicorn: no mocks of httpx.
"""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

CHAT = {"messages": [{"role": "user", "content": "Please list the files in my reports folder."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def upstream(behaviour: str):
    """A misbehaving OpenAI-compatible server: yields (base URL with /v1, requests seen)."""
    release = threading.Event()  # lets a hanging handler finish at teardown
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.path)
            if behaviour == "hang":
                release.wait(10)
                return
            if behaviour == "stop":  # headers and half a body, then the server goes away
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "500")
                self.end_headers()
                self.wfile.write(b'{"choices": [{"message": {"content": "half an ans')
                self.wfile.flush()
                self.server.socket.close()  # no retry finds it either
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            status, ctype, body = {
                "garbage": (200, "text/html", b"<html><body>502 Bad Gateway (nginx)</body></html>"),
                "wrong_shape": (200, "application/json", b'{"result": "not a chat completion"}'),
                "error_status": (500, "application/json", b'{"error": {"message": "model crashed"}}'),
                "not_found": (404, "application/json", b'{"error": {"message": "model not found"}}'),
            }[behaviour]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        release.set()
        if behaviour != "stop":
            server.shutdown()
        server.server_close()


@pytest.fixture
def gated(run_with_thresholds, tmp_path):
    """Factory: the gated server (ALLOW for every chat, ALLOW audited) in front of backend_url."""
    from so8t.agent.service import build_service
    from so8t.config import ServerConfig
    from so8t.server.app import create_app
    from so8t.server.llm_server import serve_in_thread

    handles = []

    def start(backend_url: str, **kw):
        state = tmp_path / f"state{len(handles)}"
        options = {"backend_retries": 0, "backend_timeout_s": 1.0, **kw}
        cfg = ServerConfig(
            run=str(run_with_thresholds(1.0, 0.0)),
            approvals_url=f"sqlite:///{state}/approvals.db",
            audit_path=str(state / "audit.jsonl"),
            self_test=False,
            audit_allow=True,
            backend="openai",
            backend_url=backend_url,
            backend_model="m",
            **options,
        )
        svc = build_service(cfg)
        h = serve_in_thread(create_app(svc, start_worker=False))
        handles.append(h)
        return h.url, svc

    yield start
    for h in handles:
        h.stop()


def events(svc) -> list[dict]:
    return [json.loads(line) for line in open(svc.config.audit_path, encoding="utf-8")]


def check_failure(url: str, svc, status: int, code: str) -> None:
    """Both the plain and the streamed chat are `status` with OpenAI's error body; each left a
    gate.allow record and an llm.error record naming `code`."""
    for stream in (False, True):
        r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=60)
        assert r.status_code == status, (stream, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), "an error, not an event stream"
        body = r.json()
        assert "choices" not in body, body
        err = body["error"]
        assert {"message", "type", "code"} <= set(err) and err["code"] == code, err
        assert "allowed by the gate but nothing was answered" in err["message"]
        assert "127.0.0.1" not in err["message"], "the backend's address stays in the server log"
        assert body["so8t"]["outcome"] == "failed" and body["so8t"]["action"] == "ALLOW"
    log = events(svc)
    assert [e["event"] for e in log] == ["gate.allow", "llm.error"] * 2
    for e in log[1::2]:
        data = e.get("data", e)
        assert data["failure"] == code and data["http_status"] == status, e
        assert data["decision"]["action"] == "ALLOW"


def test_a_backend_that_is_not_running_is_a_502(gated):
    url, svc = gated(f"http://127.0.0.1:{free_port()}/v1")
    check_failure(url, svc, 502, "backend_unreachable")


def test_a_backend_that_answers_garbage_is_a_502(gated):
    with upstream("garbage") as (base, seen):
        url, svc = gated(base)
        check_failure(url, svc, 502, "backend_bad_response")
    assert len(seen) == 2  # one call per chat: a 200 that is not JSON is not retried


def test_a_backend_reply_that_is_not_a_chat_completion_is_a_502(gated):
    with upstream("wrong_shape") as (base, _):
        url, svc = gated(base)
        check_failure(url, svc, 502, "backend_bad_response")


def test_a_backend_error_status_is_a_502_after_its_retries(gated):
    with upstream("error_status") as (base, seen):
        url, svc = gated(base, backend_retries=1)
        check_failure(url, svc, 502, "backend_http_error")
    assert len(seen) == 4  # a 500 is retried once per chat
    with upstream("not_found") as (base, _):
        url, svc = gated(base)
        check_failure(url, svc, 502, "backend_http_error")


def test_a_backend_that_hangs_past_the_timeout_is_a_504(gated):
    with upstream("hang") as (base, _):
        url, svc = gated(base, backend_timeout_s=0.5)
        check_failure(url, svc, 504, "backend_timeout")


def test_a_backend_stopped_mid_answer_is_a_502(gated):
    with upstream("stop") as (base, seen):
        url, svc = gated(base, backend_retries=1)
        check_failure(url, svc, 502, "backend_unreachable")
    assert len(seen) == 1  # the retry and the second chat find nothing listening
