"""Issue 17, item 2: the README's `curl -d '{...}'` got a bare 400 ("Input should be a valid
dictionary"), because curl sends `Content-Type: application/x-www-form-urlencoded` with -d. A JSON
route now answers a body of any other type (or none) with a 415 that names application/json and
the curl flag; nothing is scored or recorded. A body without a Content-Type is still not read as
JSON: a web page can send one cross-origin without a CORS preflight (FastAPI's strict default)."""

import httpx
import pytest

from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

BODY = '{"input": "hello"}'


@pytest.fixture
def server(run_with_thresholds, tmp_path):
    cfg = ServerConfig(
        run=str(run_with_thresholds(0.0, 0.5)),
        approvals_url=f"sqlite:///{tmp_path}/approvals.db",
        audit_path=str(tmp_path / "audit.jsonl"),
        max_tokens=4,
        self_test=False,
    )
    svc = build_service(cfg)
    with serve_in_thread(create_app(svc, start_worker=False)) as h:
        yield h.url, svc


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_json_route_sent_another_content_type_is_a_415_that_names_application_json(server, content_type):
    url, svc = server
    headers = {"Content-Type": content_type} if content_type else {}
    for route in ("/v1/gate", "/v1/chat/completions"):
        r = httpx.post(f"{url}{route}", content=BODY, headers=headers, timeout=30)
        assert r.status_code == 415, (route, r.text)
        err = r.json()["error"]
        assert (
            "Content-Type: application/json" in err["message"]
            and "-H 'Content-Type: application/json'" in err["message"]
            and err["param"] == "Content-Type"
            and err["type"] == "unsupported_media_type"
        )
        assert (repr(content_type) if content_type else "no Content-Type") in err["message"]
    assert sum(svc.gate.decisions.values()) == 0  # nothing was scored


def test_curls_default_content_type_is_named_as_what_curl_d_sends(server):
    url, _ = server
    r = httpx.post(f"{url}/v1/gate", content=BODY, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "curl -d" in r.json()["error"]["message"]


def test_a_cross_origin_page_posting_without_a_content_type_runs_nothing(server):
    """The request a page on another site can send without a preflight: no Content-Type, its Origin."""
    url, svc = server
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content='{"messages":[{"role":"user","content":"hi"}]}',
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        timeout=30,
    )
    assert r.status_code == 415 and sum(svc.gate.decisions.values()) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.so8t+json"],
)
def test_a_json_content_type_with_any_parameters_is_read(server, content_type):
    url, _ = server
    r = httpx.post(f"{url}/v1/gate", content=BODY.encode(), headers={"Content-Type": content_type}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "REFUSE"


def test_a_bodyless_post_is_still_the_usual_400_not_a_415(server):
    url, _ = server
    r = httpx.post(f"{url}/v1/gate", timeout=30)
    assert r.status_code == 400, r.text
