"""The gated server on a real uvicorn (a free loopback port) for the admin-surface tests, with
helpers that sign in and read the hidden fields off the approvals page as a browser would."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest

ADMIN_TOKEN = "admin-token-for-tests-9f3c"


@dataclass
class AdminServer:
    url: str
    svc: object  # so8t.agent.service.Service
    app: object  # the FastAPI app (app.state.admin_sessions: the session store)

    @property
    def origin(self) -> str:
        return self.url

    def escalate(self, content: str = "Send the salary sheet to everyone") -> str:
        """A chat the gate escalates (thresholds 1/1): the id of its PENDING approval."""
        r = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": content}]},
            headers={"X-So8t-User": "alice"},
            timeout=60,
        ).json()
        assert r["so8t"]["outcome"] == "pending", r
        return r["so8t"]["approval_id"]

    def operator(self) -> httpx.Client:
        """A client signed in the way the page does it (POST /admin/login), holding the cookie."""
        client = httpx.Client(base_url=self.url, timeout=60, follow_redirects=False)
        r = client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=self.same_origin)
        assert r.status_code == 303, r.text
        return client

    @property
    def same_origin(self) -> dict[str, str]:
        """The headers a browser sends with a form posted from this server's own page."""
        return {"Origin": self.origin, "Sec-Fetch-Site": "same-origin"}

    def status(self, approval_id: str) -> str:
        return self.svc.approvals.get(approval_id).status.value

    token = ADMIN_TOKEN

    @staticmethod
    def fields(html_text: str, approval_id: str, action: str = "approve") -> dict[str, str]:
        return page_fields(html_text, approval_id, action)


def page_fields(html_text: str, approval_id: str, action: str = "approve") -> dict[str, str]:
    """The hidden fields of one decision form on the approvals page (csrf_token, request_hash)."""
    q = "['\"]"  # as served ('), or as a browser serialises the page (")
    form = re.search(
        rf"<form method={q}post{q} action={q}/admin/approvals/{approval_id}/{action}{q}>(.*?)</form>",
        html_text,
        re.DOTALL,
    )
    assert form, f"no {action} form for {approval_id}"
    return dict(re.findall(rf"<input type={q}hidden{q} name={q}(\w+){q} value={q}([^'\"]*){q}>", form.group(1)))


@pytest.fixture
def admin_server(run_with_thresholds, tmp_path, monkeypatch):
    """Factory: start the gated server (ESCALATE for every chat, so approvals wait), return an
    AdminServer; the worker is off, so an approved item stays APPROVED for the test to see."""
    from so8t.agent.service import build_service
    from so8t.config import ServerConfig
    from so8t.server.app import create_app
    from so8t.server.llm_server import serve_in_thread

    handles = []

    def start(**kw) -> AdminServer:
        monkeypatch.setenv("SO8T_ADMIN_TOKEN", ADMIN_TOKEN)
        state = tmp_path / f"state{len(handles)}"
        cfg = ServerConfig(
            run=str(run_with_thresholds(1.0, 1.0)),
            approvals_url=f"sqlite:///{state}/approvals.db",
            audit_path=str(state / "audit.jsonl"),
            max_tokens=4,
            self_test=False,
            **kw,
        )
        svc = build_service(cfg)
        app = create_app(svc, start_worker=False)
        h = serve_in_thread(app)
        handles.append(h)
        return AdminServer(h.url, svc, app)

    yield start
    for h in handles:
        h.stop()
