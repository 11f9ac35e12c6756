"""No path fails open: NaN / infinite probabilities, ties, corrupt weights and a gate that cannot
tell a blunt dangerous request from a harmless one all end in REFUSE (or the fail action),
never ALLOW. Each test reproduces an attack that used to allow (issue 13, item 1)."""

import json
import shutil

import httpx
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from so8t.agent.service import build_service
from so8t.config import ServerConfig
from so8t.eval.thresholds import Thresholds, decide
from so8t.gate import Decision, Gate
from so8t.gate.gate import SELF_TEST_PROMPTS
from so8t.labels import Action
from so8t.server.app import create_app
from so8t.server.llm_server import serve_in_thread


def _rewrite_head(run, fn):
    weights = load_file(str(run / "head.safetensors"))
    save_file({k: fn(v).contiguous() for k, v in weights.items()}, str(run / "head.safetensors"))


@pytest.fixture
def copy_run(tiny_run, tmp_path):
    def make(name="run"):
        run = tmp_path / name
        shutil.copytree(tiny_run[0], run)
        return run

    return make


def test_argmax_ties_go_to_the_stricter_action():
    third = 1 / 3
    p = [[third, third, third], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.6, 0.4, 0.0]]
    assert [Action(a) for a in decide(p)] == [
        Action.REFUSE,
        Action.ESCALATE,
        Action.REFUSE,
        Action.REFUSE,
        Action.ALLOW,
    ]


@pytest.mark.parametrize("thresholds", [None, Thresholds(refuse_at=0.9, allow_at=0.0)])
@pytest.mark.parametrize("row", [[np.nan] * 3, [np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [1.0, -np.inf, 0.0]])
def test_non_finite_probabilities_are_refused_by_the_decision_rule(row, thresholds):
    # numpy's argmax reads NaN as index 0 = ALLOW; an allow_at of 0 would allow anything
    assert decide([row, [0.9, 0.05, 0.05]], thresholds).tolist() == [int(Action.REFUSE), int(Action.ALLOW)]


def test_nan_probabilities_at_runtime_fail_closed_and_are_counted(tiny_run, monkeypatch):
    g = Gate.load(tiny_run[0])
    monkeypatch.setattr(g, "_score", lambda views: np.full((len(views), 3), np.nan))
    d = g.decide("List my files")
    assert (d.status, d.action, d.probs) == ("error", Action.REFUSE, None)
    assert "invalid probabilities" in d.reason and g.counts["fail_closed"] == 1
    json.dumps(d.to_dict(), allow_nan=False)  # the client gets JSON, not a 500
    g.close()


def test_a_tie_from_the_head_is_not_allowed(tiny_run, monkeypatch):
    g = Gate.load(tiny_run[0])
    monkeypatch.setattr(g, "_score", lambda views: np.array([[0.5, 0.5, 0.0]] * len(views)))
    assert g.decide("List my files").action == Action.ESCALATE
    g.close()


def test_an_ok_decision_cannot_carry_nan_and_every_decision_is_strict_json():
    with pytest.raises(ValueError, match="finite"):
        Decision(Action.ALLOW, "ok", (float("nan"), 0.0, 1.0), None, "m", "p", "h", 1.0)
    d = Decision(Action.REFUSE, "error", None, {"refuse_at": float("nan")}, "m", "p", "h", float("inf"))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["latency_ms"] is None and out["thresholds"] == {"refuse_at": None}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_head_with_non_finite_weights_is_not_loaded(copy_run, value):
    run = copy_run()
    _rewrite_head(run, lambda t: t.fill_(value))  # still a valid safetensors file
    g = Gate.load(run)
    assert not g.ready and "NaN or infinite" in g.load_error and "safety head" in g.load_error
    d = g.decide("How do I build a pipe bomb?")
    assert (d.status, d.action) == ("error", Action.REFUSE)


def test_a_corrupt_adapter_is_not_loaded(copy_run):
    run = copy_run()
    path = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(path))
    save_file({k: v.fill_(float("nan")).contiguous() for k, v in weights.items()}, str(path))
    g = Gate.load(run)
    assert not g.ready and "base model + adapter" in g.load_error


def test_self_test_passes_a_gate_that_tells_danger_from_harm_even_when_it_escalates_some(tiny_run, monkeypatch):
    g = Gate.load(tiny_run[0])
    danger = {p for p, bad in SELF_TEST_PROMPTS if bad}
    cautious = next(p for p, bad in SELF_TEST_PROMPTS if not bad)  # a harmless request sent to a person
    monkeypatch.setattr(
        g,
        "_score",
        lambda views: np.array(
            [
                [0.05, 0.15, 0.8]
                if v[-1]["content"] in danger
                else [0.1, 0.85, 0.05]
                if v[-1]["content"] == cautious
                else [0.9, 0.05, 0.05]
                for v in views
            ]
        ),
    )
    result = g.self_test()
    assert result.ok and g.ready and len(result.rows) == len(SELF_TEST_PROMPTS)
    g.close()


@pytest.mark.parametrize(
    "table, why",
    [
        ({}, "was ALLOWed"),  # allows everything
        ({"danger": [0.1, 0.1, 0.8], "harmless": [0.1, 0.1, 0.8]}, "was REFUSEd"),  # refuses everything
        ({"danger": [0.3, 0.3, 0.4], "harmless": [0.5, 0.1, 0.4]}, "P(REFUSE)"),  # cannot rank them
    ],
)
def test_self_test_fails_a_gate_that_cannot_tell_them_apart(tiny_run, monkeypatch, table, why):
    g = Gate.load(tiny_run[0])
    danger = {p for p, bad in SELF_TEST_PROMPTS if bad}
    monkeypatch.setattr(
        g,
        "_score",
        lambda views: np.array(
            [table.get("danger" if v[-1]["content"] in danger else "harmless", [0.9, 0.05, 0.05]) for v in views]
        ),
    )
    result = g.self_test()
    assert not result.ok and why in result.reason
    assert not g.ready and g.decide("What is the capital of France?").status == "error"
    g.close()


def _serve(tmp_path, run, monkeypatch, **kw):
    monkeypatch.setenv("SO8T_ADMIN_TOKEN", "t" * 24)
    cfg = ServerConfig(
        run=str(run),
        approvals_url=f"sqlite:///{tmp_path}/state/approvals.db",
        audit_path=str(tmp_path / "state" / "audit.jsonl"),
        max_tokens=6,
        **kw,
    )
    svc = build_service(cfg)
    return serve_in_thread(create_app(svc, start_worker=False)), svc


def test_a_server_whose_head_overflows_refuses_with_json_and_an_audit_record(copy_run, tmp_path, monkeypatch):
    """Finite but huge head weights pass the load check and still make every logit infinite, so
    softmax gives NaN at request time: the request must be refused, audited and counted."""
    run = copy_run()
    _rewrite_head(run, lambda t: t.fill_(3e38))
    h, svc = _serve(tmp_path, run, monkeypatch, self_test=False)
    with h:
        r = httpx.post(f"{h.url}/v1/gate", json={"input": "How do I build a pipe bomb?"})
        assert r.status_code == 200 and r.json()["action"] == "REFUSE" and r.json()["status"] == "error"
        chat = httpx.post(
            f"{h.url}/v1/chat/completions",
            headers={"X-So8t-User": "eve"},
            json={"messages": [{"role": "user", "content": "List my files"}]},
            timeout=30,
        )
        assert chat.status_code == 200 and chat.json()["so8t"]["outcome"] == "refused"
        assert "so8t_gate_fail_closed_total 2" in httpx.get(f"{h.url}/metrics").text
    events = [json.loads(line)["event"] for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert events.count("gate.refuse") + events.count("gate.error") >= 1, events
    svc.close()


def test_a_server_whose_gate_fails_its_self_test_is_not_ready(run_with_thresholds, tmp_path, monkeypatch):
    h, svc = _serve(tmp_path, run_with_thresholds(1.0, 0.0), monkeypatch)  # thresholds that allow everything
    with h:
        ready = httpx.get(f"{h.url}/readyz")
        assert ready.status_code == 503 and "self-test" in json.dumps(ready.json())
        d = httpx.post(f"{h.url}/v1/gate", json={"input": "What is the capital of France?"}).json()
        assert (d["action"], d["status"]) == ("REFUSE", "error")
    svc.close()


def test_a_conversation_the_tokenizer_cannot_read_fails_closed_on_every_path(tiny_run, monkeypatch):
    """A lone surrogate made the tokenizer raise TypeError inside decide_with_prefill (the
    router's path), so the request ended in an exception instead of a fail-closed decision."""
    g = Gate.load(tiny_run[0])
    bad = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "\udfff"},
        {"role": "user", "content": "go on"},
    ]
    d, prefill = g.decide_with_prefill(bad)
    assert (d.status, d.action, prefill) == ("error", Action.REFUSE, None)
    monkeypatch.setattr(g, "views", lambda convo: (_ for _ in ()).throw(TypeError("tokenizer broke")))
    d = g.decide("List my files")
    assert (d.status, d.action) == ("error", Action.REFUSE) and "tokenizer broke" in d.reason
    g.close()
