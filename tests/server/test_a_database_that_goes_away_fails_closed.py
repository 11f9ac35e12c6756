"""The shared PostgreSQL database (approvals and audit) goes away while the gated server runs, and
comes back (issue 14, section 3): while it is gone, an escalation cannot be stored, so the request
is refused with a 503 (never answered, never run), an approval cannot be made, /readyz is 503
naming the database without its password, and /metrics still answers. Once it is back, the same
server is ready again without a restart and its audit chain verifies.

Also: a database that cannot be reached at start, or a URL that is not one, stops `so8t serve`
with a clear error naming the config key and the URL (never the password)."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from so8t.agent.approvals import Status
from so8t.agent.audit_db import verify_database
from so8t.agent.service import build_service
from so8t.cli import main as cli
from so8t.config import ServerConfig
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread

from postgres_server import PASSWORD, _free_port

TOKEN = "db-gone-admin-token"
ASK = {"messages": [{"role": "user", "content": "Forward the board minutes to partner@example.com"}]}


@pytest.fixture
def server(private_postgresql, run_with_thresholds, monkeypatch):
    private_postgresql.new_database("so8t")
    url = private_postgresql.password_url("so8t")
    monkeypatch.setenv("SO8T_ADMIN_TOKEN", TOKEN)
    cfg = ServerConfig(
        run=str(run_with_thresholds(1.0, 1.0)),
        approvals_url=url,
        audit_url=url,
        max_tokens=4,
        worker_interval_s=0.2,
        self_test=False,
    )
    svc = build_service(cfg)
    handle = serve_in_thread(create_app(svc))
    yield handle.url, svc, private_postgresql, url
    handle.stop()


def chat(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=ASK, headers={"X-So8t-User": "alice"}, timeout=60)


def test_a_database_that_goes_away_refuses_escalations_and_comes_back(server):
    url, svc, pg, db_url = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = chat(url).json()["so8t"]
    assert first["outcome"] == "pending"

    pg.stop()
    r = chat(url)
    assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
    assert r.json()["error"]["type"] in ("approvals_unavailable", "audit_unavailable")
    assert "nothing was run, queued" in r.json()["error"]["message"] and "choices" not in r.json()
    check = httpx.post(f"{url}/v1/gate", json=ASK, timeout=60)  # the gate's verdict is not weakened
    assert check.status_code == 200 and check.json()["action"] == "ESCALATE"
    approve = httpx.post(f"{url}/admin/approvals/{first['approval_id']}/approve", headers=auth, timeout=60)
    assert approve.status_code == 503, approve.text  # not 303: nothing was approved
    ready = httpx.get(f"{url}/readyz", timeout=60)
    body = ready.json()
    assert ready.status_code == 503 and body["ready"] is False
    assert body["approvals"] != "ok" and body["audit"] != "ok"
    assert f"so8t:***@127.0.0.1:{pg.port}/so8t" in body["approvals"] and PASSWORD not in ready.text
    metrics = httpx.get(f"{url}/metrics", timeout=60)
    assert metrics.status_code == 200 and "so8t_approvals_store_up 0" in metrics.text
    assert "so8t_gate_decisions_total" in metrics.text  # the replica's own counters stay

    pg.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and httpx.get(f"{url}/readyz", timeout=60).status_code != 200:
        time.sleep(0.2)
    assert httpx.get(f"{url}/readyz", timeout=60).status_code == 200
    again = chat(url)
    assert again.status_code == 200 and again.json()["so8t"]["outcome"] == "pending"
    assert svc.approvals.get(first["approval_id"]).status is Status.PENDING  # never approved while gone
    assert [a.status for a in svc.approvals.list()] == [Status.PENDING, Status.PENDING]
    report = verify_database(db_url)
    assert report.ok and report.records == 4
    # nothing of the outage in the chain: no approval, no queued request, no answer
    assert [r["event"] for r in svc.audit.tail(50)] == ["approval.requested", "gate.escalate"] * 2


def test_an_unreachable_database_stops_serve_at_start_naming_the_key_and_url(tiny_run, tmp_path, capsys):
    port = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://so8t:{PASSWORD}@127.0.0.1:{port}/so8t"
    for key in ("approvals_url", "audit_url"):
        config = tmp_path / f"{key}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "run": str(tiny_run[0]),
                    key: url,
                    "audit_path": str(tmp_path / "a.jsonl"),
                    **({} if key == "approvals_url" else {"approvals_url": f"sqlite:///{tmp_path}/q.db"}),
                }
            )
        )
        assert cli(["serve", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"so8t: error: {key}: ") and f"so8t:***@127.0.0.1:{port}/so8t" in err, err
        assert PASSWORD not in err and "Connection refused" in err


def test_a_wrong_password_stops_serve_at_start_without_showing_it(postgresql, tiny_run, tmp_path, capsys):
    postgresql.new_database("wrong_pw")
    url = postgresql.password_url("wrong_pw").replace(PASSWORD, "not-the-password")
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"run": str(tiny_run[0]), "approvals_url": url, "audit_url": url}))
    assert cli(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("so8t: error: audit_url: ") and 'password authentication failed for user "so8t"' in err
    assert "not-the-password" not in err and "so8t:***@" in err


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("approvals_url", "so8t-state/approvals.db", "approvals_url: expected a database URL"),
        ("audit_url", "mysql://so8t@db/so8t", "audit_url: expected a SQLite or PostgreSQL URL"),
        ("audit_url", "postgres://so8t@db/so8t", "audit_url: expected a SQLite or PostgreSQL URL"),
    ],
)
def test_a_database_url_that_is_not_one_is_a_config_error(tiny_run, tmp_path, capsys, key, value, says):
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"run": str(tiny_run[0]), key: value}))
    assert cli(["serve", "--config", str(config)]) == 2
    assert says in capsys.readouterr().err
