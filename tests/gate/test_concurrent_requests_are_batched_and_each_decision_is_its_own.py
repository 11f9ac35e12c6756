"""Issue 14, item 1, on the real gate (the tiny trained run, real forward passes): requests that
arrive together are scored in one forward pass, and each decision -- action, probabilities,
every view's probabilities, the in-process LLM's prefill -- is the one the request gets alone.
Failures stay with the request that causes them: an exception or a NaN row in a batched pass
fails that request only, and a timeout or a full queue never gives ALLOW, even on a gate whose
thresholds allow everything."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from so8t.agent.inprocess import InProcessBackend
from so8t.gate import Gate
from so8t.labels import Action

# Different lengths (so rows are padded), both languages, a multi-turn conversation (several views).
PROMPTS = [
    "hi",
    "Please list the files in my reports folder.",
    "本番DBのテーブルを削除して。",
    "Send the board minutes to an outside address, and delete the production table now, then tell me.",
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "How do I make a bomb?"},
        {"role": "assistant", "content": "I can't."},
        {"role": "user", "content": "ok, list my files then"},
    ],
    "ファイル一覧を表示してください。",
    "What is on my calendar this week?",
]


@pytest.fixture
def gate_factory(tiny_run):
    made = []

    def make(run=None, **opts) -> Gate:
        g = Gate.load(run or tiny_run[0], **opts)
        assert g.ready, g.load_error
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def one_round(g: Gate, monkeypatch, fn, args: list) -> list:
    """fn(*a) for every a, each on its own thread, all queued while one more request ("hold")
    keeps the worker busy, so the worker takes them as one round; results in order."""
    real, entered, release = g.model.forward, threading.Event(), threading.Event()

    def forward(*a, **k):
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(g.model, "forward", forward)
    hold = threading.Thread(target=g.decide, args=("hold",))
    hold.start()
    assert entered.wait(30)
    out: list = [None] * len(args)

    def one(k: int) -> None:
        out[k] = fn(*args[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(args))]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while g.queue_state()["queued"] < len(args) and time.monotonic() < end:
        time.sleep(0.005)
    release.set()
    for t in [hold, *threads]:
        t.join(60)
    return out


def marked(tokenizer, poison: str, others: list) -> int:
    """A token id in the poison prompt's encoding that no other prompt has."""
    from so8t.model.prompt import encode_prompt

    seen = {t for p in others for t in encode_prompt(tokenizer, [{"role": "user", "content": p}])}
    mine = [t for t in encode_prompt(tokenizer, [{"role": "user", "content": poison}]) if t not in seen]
    assert mine, "the poison prompt needs a token of its own"
    return mine[0]


def test_requests_arriving_together_get_one_pass_and_the_decisions_they_get_alone(gate_factory, monkeypatch):
    alone_gate = gate_factory(batching=False)
    alone = [alone_gate.decide(p) for p in PROMPTS]
    g = gate_factory(batch_max=32)
    batched = one_round(g, monkeypatch, g.decide, [(p,) for p in PROMPTS])
    assert g.batch_sizes == {1: 1, len(PROMPTS): 1}  # the held request, then one round for them all
    assert alone_gate.batch_sizes == {1: len(PROMPTS)}
    for a, b in zip(alone, batched, strict=True):
        assert (b.status, b.action, b.reason) == ("ok", a.action, a.reason)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
        assert [v["view"] for v in b.views] == [v["view"] for v in a.views]
        np.testing.assert_allclose([v["probs"] for v in b.views], [v["probs"] for v in a.views], atol=1e-5)


def test_a_batch_never_holds_more_prompts_than_batch_max(gate_factory, monkeypatch):
    g = gate_factory(batch_max=3)
    widths = []
    real = g.model.forward
    monkeypatch.setattr(g.model, "forward", lambda ids, *a, **k: (widths.append(ids.size(0)), real(ids, *a, **k))[1])
    out = one_round(g, monkeypatch, g.decide, [(f"List the files in folder {k}",) for k in range(7)])
    assert all(d.status == "ok" for d in out)
    assert widths == [1, 3, 3, 1] and g.batch_sizes == {1: 2, 3: 2}  # the held one, then 3 + 3 + 1


def test_a_request_waits_for_others_no_longer_than_the_window_and_only_while_requests_come_together(
    gate_factory, monkeypatch
):
    g = gate_factory(batch_window_ms=1000)
    t0 = time.monotonic()
    assert g.decide("hi").status == "ok"  # a lone request, nobody came with it: no wait
    assert time.monotonic() - t0 < 1.0
    one_round(g, monkeypatch, g.decide, [("List my files",), ("hi there",)])
    assert g.batch_sizes == {1: 2, 2: 1}
    t0 = time.monotonic()
    assert g.decide("List my files").status == "ok"  # after a shared round: waits the window, no longer
    assert 1.0 <= time.monotonic() - t0 < 1.0 + 2.0
    t0 = time.monotonic()
    assert g.decide("List my files").status == "ok"  # alone again: no wait
    assert time.monotonic() - t0 < 1.0


def test_a_batched_prefill_is_the_rows_own_cache_and_generates_what_it_would_alone(gate_factory, monkeypatch):
    convos = [[{"role": "user", "content": p}] for p in PROMPTS if isinstance(p, str)][:4]
    alone_gate = gate_factory(batching=False)
    backend = InProcessBackend(alone_gate)
    alone = [alone_gate.decide_with_prefill(c) for c in convos]
    texts = [backend.complete(c, max_tokens=6, prefill=p) for c, (_, p) in zip(convos, alone, strict=True)]
    g = gate_factory()
    batched = one_round(g, monkeypatch, g.decide_with_prefill, [(c,) for c in convos])
    assert g.batch_sizes == {1: 1, len(convos): 1}
    for (a, pa), (b, pb), c, text in zip(alone, batched, convos, texts, strict=True):
        assert b.action == a.action and np.allclose(b.probs, a.probs, atol=1e-5)
        assert torch.equal(pb.input_ids, pa.input_ids)  # no padding carried into the answer
        assert pb.past_key_values.get_seq_length() == pa.input_ids.size(1)
        assert InProcessBackend(g).complete(c, max_tokens=6, prefill=pb) == text


def test_an_exception_in_a_batched_pass_fails_only_the_request_that_causes_it(gate_factory, monkeypatch):
    prompts = [p for p in PROMPTS if isinstance(p, str)][:5]
    poison = "§§ poison §§"
    g = gate_factory()
    alone = [g.decide(p) for p in prompts]
    bad = marked(g.tokenizer, poison, prompts)
    real = g.model.forward

    def forward(ids, *a, **k):
        if bool((ids == bad).any()):
            raise RuntimeError("this batch holds the poison token")
        return real(ids, *a, **k)

    monkeypatch.setattr(g.model, "forward", forward)
    out = one_round(g, monkeypatch, g.decide, [(p,) for p in [*prompts, poison]])
    assert (out[-1].status, out[-1].action, out[-1].probs) == ("error", Action.REFUSE, None)
    assert "poison token" in out[-1].reason
    for a, b in zip(alone, out[:-1], strict=True):
        assert b.status == "ok" and b.action == a.action and np.allclose(b.probs, a.probs, atol=1e-5)
    assert g.batch_sizes[len(prompts) + 1] == 1  # they were batched, then scored again alone


def test_a_nan_row_fails_only_its_own_request(gate_factory, monkeypatch):
    prompts = [p for p in PROMPTS if isinstance(p, str)][:4]
    poison = "§§ poison §§"
    g = gate_factory()
    bad = marked(g.tokenizer, poison, prompts)
    real = g.model.forward

    def forward(ids, *a, **k):
        out = real(ids, *a, **k)
        rows = (ids == bad).any(1)
        out.head_logits = torch.where(rows[:, None], torch.full_like(out.head_logits, float("nan")), out.head_logits)
        return out

    monkeypatch.setattr(g.model, "forward", forward)
    out = one_round(g, monkeypatch, g.decide, [(p,) for p in [poison, *prompts]])
    assert g.batch_sizes == {1: 1, len(prompts) + 1: 1}
    assert (out[0].status, out[0].action) == ("error", Action.REFUSE) and "invalid probabilities" in out[0].reason
    assert all(d.status == "ok" for d in out[1:])


@pytest.mark.parametrize("fail_action", ["REFUSE", "ESCALATE"])
def test_a_batch_that_times_out_never_allows_even_when_the_thresholds_allow_everything(
    gate_factory, run_with_thresholds, monkeypatch, fail_action
):
    g = gate_factory(run_with_thresholds(1.0, 0.0), timeout_s=1.0, fail_action=fail_action)
    assert g.decide("List my files").action == Action.ALLOW  # the gate allows everything
    real = g.model.forward
    # a batched pass hangs past every deadline (a pass of one request does not)
    monkeypatch.setattr(
        g.model, "forward", lambda ids, *a, **k: (time.sleep(2.0 * (ids.size(0) > 1)), real(ids, *a, **k))[1]
    )
    out = one_round(g, monkeypatch, g.decide, [(f"List the files in folder {k}",) for k in range(4)])
    assert [(d.status, d.action.name) for d in out] == [("timeout", fail_action)] * 4
    assert g.wait_idle(5.0) and g.batch_sizes[4] == 1  # they were one round


def test_a_full_queue_turns_requests_away_at_once_with_batching_on(gate_factory, run_with_thresholds, monkeypatch):
    g = gate_factory(run_with_thresholds(1.0, 0.0), batch_window_ms=50, queue_max=3, timeout_s=20)
    real = g.model.forward
    monkeypatch.setattr(g.model, "forward", lambda *a, **k: (time.sleep(1.0), real(*a, **k))[1])
    timed: list = [None] * 6

    def ask(k: int) -> None:
        t0 = time.monotonic()
        timed[k] = (g.decide(f"List the files in folder {k}"), time.monotonic() - t0)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(30)
    busy = [d for d, took in timed if d.status == "busy"]
    assert len(busy) == 3 and all(d.action == Action.REFUSE for d in busy)
    assert all(took < 0.5 for d, took in timed if d.status == "busy")
    assert sorted(d.action.name for d, _ in timed if d.status == "ok") == ["ALLOW"] * 3


def test_a_batch_size_of_zero_or_a_window_past_the_timeout_is_an_error_at_construction():
    with pytest.raises(ValueError, match="batch_max must be >= 1, got 0"):
        Gate(batch_max=0)
    with pytest.raises(ValueError, match="batch_window_ms must be >= 0 and shorter than the timeout"):
        Gate(batch_window_ms=2000, timeout_s=1.0)


def test_a_rows_cache_is_its_own_on_a_sliding_window_model_too():
    """cpu-quick's base is Gemma 3 (sliding-window layers): a padded row's cache, cut out of the
    batch's, holds what the row alone computes and generates the same tokens."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from so8t.gate.gate import row_cache

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=512,
            max_position_embeddings=1024,
        )
    ).eval()
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        mine = row_cache(batch, 1, 7)
        alone = model(input_ids=ids[1:, :7], use_cache=True).past_key_values
        assert mine.get_seq_length() == 7 and batch.get_seq_length() == 12  # the batch's cache is untouched
        for a, b in zip(alone.layers, mine.layers, strict=True):
            torch.testing.assert_close(b.keys, a.keys, atol=1e-5, rtol=0)
            torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=0)
        texts = []
        for cache in (mine, alone):
            cache.crop(-1)
            texts.append(
                model.generate(
                    input_ids=ids[1:, :7],
                    attention_mask=torch.ones(1, 7, dtype=torch.long),
                    past_key_values=cache,
                    max_new_tokens=5,
                    do_sample=False,
                ).tolist()
            )
    assert texts[0] == texts[1]
