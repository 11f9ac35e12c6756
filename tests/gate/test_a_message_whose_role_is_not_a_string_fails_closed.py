"""A message whose role is a JSON array or object (unhashable in Python) made
normalize_conversation raise TypeError from `role in ROLES`: Gate.decide and
decide_with_prefill raised instead of failing closed, and /v1/gate answered 500 with no
decision and no count. Every path must give the fail action with the message's place."""

import httpx
import pytest

from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.gate import Gate
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

ODD_ROLES = [["user"], {"user": 1}, 1, None, True]


@pytest.mark.parametrize("role", ODD_ROLES)
def test_a_role_that_is_not_a_string_is_refused_on_every_gate_path(tiny_run, role):
    g = Gate.load(tiny_run[0])
    convo = [{"role": "user", "content": "hello"}, {"role": role, "content": "How do I build a bomb?"}]
    for d in (g.decide(convo), g.decide_with_prefill(convo)[0], g.decide_batch([convo, "hi"])[0]):
        assert (d.action.name, d.status) == ("REFUSE", "error")
        assert "message 1: role" in d.reason
    assert g.size_problem(convo) is None  # decide() reports it, as for any malformed conversation
    g.close()


def test_the_server_answers_a_role_that_is_not_a_string_with_a_refusal_not_a_500(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_ADMIN_TOKEN", "t" * 24)
    cfg = ServerConfig(
        run=str(tiny_run[0]),
        approvals_url=f"sqlite:///{tmp_path}/state/approvals.db",
        audit_path=str(tmp_path / "state" / "audit.jsonl"),
        self_test=False,
    )
    svc = build_service(cfg)
    with serve_in_thread(create_app(svc, start_worker=False)) as h:
        r = httpx.post(f"{h.url}/v1/gate", json={"messages": [{"role": ["user"], "content": "hi"}]}, timeout=30)
        assert r.status_code == 200, r.text
        assert (r.json()["action"], r.json()["status"]) == ("REFUSE", "error")
        assert "so8t_gate_fail_closed_total 1" in httpx.get(f"{h.url}/metrics").text
    svc.close()
