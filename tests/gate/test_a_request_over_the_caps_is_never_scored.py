"""Issue 13, item 6, in the library API: a conversation over the gate's caps (turns,
characters, tokens, views) fails closed as "input too long" without one forward pass, and
`size_problem` names the cap, the value and the server config key (the HTTP layer's 413)."""

from __future__ import annotations

import time

import pytest

from so8t.gate import Gate
from so8t.labels import Action


@pytest.fixture(scope="module")
def gate(tiny_run):
    g = Gate.load(tiny_run[0], max_turns=100, max_chars=20_000, max_tokens=3_000, max_views=16)
    assert g.ready, g.load_error
    yield g
    g.close()


@pytest.fixture
def forwards(gate, monkeypatch):
    calls = []
    real = gate.model.forward
    monkeypatch.setattr(gate.model, "forward", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


def turns(n: int, text: str = "please list the files in my reports folder") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"turn {i}: {text}"} for i in range(n)]


@pytest.mark.parametrize(
    "convo, what, key",
    [
        (turns(3000), "messages", "gate_max_turns"),  # the attack: 3,000 turns
        ([{"role": "user", "content": "a" * 20_001}], "characters", "gate_max_chars"),
        ([{"role": "user", "content": "本番 " * 2_500}], "tokens", "gate_max_tokens"),
        (turns(40), "views", "gate_max_views"),  # 41 views > 16
    ],
)
def test_over_a_cap_fails_closed_before_any_forward_pass(gate, forwards, convo, what, key):
    t0 = time.monotonic()
    big = gate.size_problem(convo)
    assert big is not None and (big.what, big.key) == (what, key) and big.value > big.limit
    assert key in big.message() and str(big.limit) in big.message()
    d = gate.decide(convo)
    assert (d.status, d.action) == ("error", Action.REFUSE) and "input too long" in d.reason and key in d.reason
    d2, prefill = gate.decide_with_prefill(convo)
    assert d2.status == "error" and prefill is None
    assert forwards == [] and time.monotonic() - t0 < 5


def test_under_the_caps_nothing_is_reported_and_the_request_is_scored(gate, forwards):
    convo = turns(3)
    assert gate.size_problem(convo) is None
    assert gate.decide(convo).status == "ok" and forwards


def test_a_malformed_conversation_is_left_to_decide(gate):
    assert gate.size_problem([{"role": "assistant", "content": "x"}]) is None
    assert gate.decide([{"role": "assistant", "content": "x"}]).status == "error"


def test_caps_must_be_positive():
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        Gate(max_turns=0)
