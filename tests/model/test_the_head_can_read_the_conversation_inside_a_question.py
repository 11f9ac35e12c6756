"""head_prompt: "question" -- the safety head reads the conversation inside a fixed question about
harm, in a forward pass of its own; the LLM's prompt (and its answer) stay the chat prompt. Tiny
random model: what is checked is the plumbing (what is encoded, saved, loaded and scored), not
whether the features are better (README, "What the head reads")."""

import json

import pytest
import torch

from so8t.config import ConfigError, TrainConfig, from_dict
from so8t.data import load_builtin
from so8t.model import load_base_model, load_run, prompt_outputs
from so8t.model.prompt import (
    QUESTION_AFTER,
    QUESTION_BEFORE,
    encode_head_prompt,
    encode_prompt,
    ensure_chat_template,
    head_prompt_length,
    render_conversation,
)
from so8t.model.scoring import encode_prompts
from so8t.train.batching import collate, encode_record
from so8t.train.recipe import build_model, load_run_config, loss_parts, train


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    _, tokenizer = load_base_model(str(tiny_model_dir))
    ensure_chat_template(tokenizer)
    return tokenizer


def _text(tok, ids):
    return tok.decode(ids, skip_special_tokens=True)


def test_the_chat_style_is_exactly_the_llms_prompt(tok):
    msgs = [{"role": "user", "content": "List the files in my reports folder."}]
    ids, cut = encode_head_prompt(tok, msgs, "chat", 64)
    assert ids == encode_prompt(tok, msgs) and not cut


def test_the_question_wraps_the_cleaned_conversation_with_every_role_named(tok):
    msgs = [
        {"role": "user", "content": "ｃａｒｄ dumps\u200b please"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "continue"},
    ]
    ids, cut = encode_head_prompt(tok, msgs, "question", 512)
    text = _text(tok, ids)
    assert not cut
    assert render_conversation(msgs) == "User: card dumps please\nAssistant: Sure.\nUser: continue"
    assert text.startswith(QUESTION_BEFORE.strip()[:40]) and text.rstrip().endswith("Answer (yes or no):")
    assert "Assistant: Sure." in text and "card dumps please" in text
    conversation_ids = tok(render_conversation(msgs), add_special_tokens=False)["input_ids"]
    assert head_prompt_length(tok, msgs, "question") == len(conversation_ids)


def test_a_long_conversation_keeps_its_end_and_the_whole_question(tok):
    long = " ".join(f"word{i}" for i in range(400)) + " FINAL-REQUEST"
    ids, cut = encode_head_prompt(tok, [{"role": "user", "content": long}], "question", 32)
    text = _text(tok, ids)
    assert cut
    assert "FINAL-REQUEST" in text and "word0 " not in text
    assert text.rstrip().endswith("Answer (yes or no):") and "Below is a message" in text
    before = tok(QUESTION_BEFORE, add_special_tokens=False)["input_ids"]
    after = tok(QUESTION_AFTER, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 32 + len(before) + len(after) + 1  # max_length counts the conversation only


def test_an_unknown_head_prompt_is_an_error_that_names_the_key():
    with pytest.raises(ConfigError, match="head_prompt"):
        from_dict(TrainConfig, {"head_prompt": "quiz"}).validate()


def test_a_training_batch_carries_the_heads_own_prompt_only_for_the_question(tok):
    rec = load_builtin("train")[0]
    chat = encode_record(rec, tok, 64, head_prompt="chat")
    question = encode_record(rec, tok, 64, head_prompt="question")
    assert chat.head_ids is None and "head_input_ids" not in collate([chat], tok.pad_token_id)
    assert question.input_ids == chat.input_ids  # the SFT example is unchanged
    batch = collate([question, question], tok.pad_token_id)
    assert batch["head_input_ids"].shape == batch["head_attention_mask"].shape
    assert batch["head_input_ids"][0, : len(question.head_ids)].tolist() == question.head_ids


def test_the_losses_read_the_head_from_its_own_pass(tiny_model_dir, tok):
    cfg = TrainConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=64)
    cfg.head_prompt = "question"
    model, tokenizer, _ = build_model(cfg)
    model.eval()
    recs = [r for r in load_builtin("train") if r.lang == "en"][:4]
    batch = collate([encode_record(r, tokenizer, 64, head_prompt="question") for r in recs], tokenizer.pad_token_id)
    y = batch["y"]
    parts = loss_parts(model, batch, [0, 1, 2], cfg, None, pet_active=False)
    with torch.no_grad():
        m = batch["head_attention_mask"]
        own = model(batch["head_input_ids"], m, m, logits_from=None).head_logits
        chat = model(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"], logits_from=None).head_logits
    expect = torch.nn.functional.cross_entropy(own.float(), y)
    other = torch.nn.functional.cross_entropy(chat.float(), y)
    assert not torch.allclose(expect, other)
    assert parts["safety_ce"].item() == pytest.approx(expect.item(), rel=1e-4)


def test_a_question_run_trains_saves_loads_and_the_gate_scores_the_question(tiny_run, tmp_path):
    from so8t.gate import Gate

    cfg = load_run_config(tiny_run[0])  # the shared tiny run's recipe and data, reading the question instead
    cfg.head_prompt = "question"
    cfg.validate()
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    assert json.loads((run / "head.json").read_text())["head_prompt"] == "question"

    model, tokenizer, _ = load_run(run)
    assert model.prompt == "question"
    convo = "Delete the users table in the production database."
    batch, _ = encode_prompts(tokenizer, [convo], 64, "question")
    with torch.no_grad():
        m = batch["attention_mask"]
        expected = model(batch["input_ids"], m, m, logits_from=None).head_logits.softmax(-1)[0]
    _, probs = prompt_outputs(model, tokenizer, [convo], 64)
    assert torch.allclose(probs[0], expected, atol=1e-5)

    gate = Gate.load(run)
    try:
        assert gate.ready and gate.model.prompt == "question"
        d = gate.decide(convo)
        assert d.ok and d.probs == pytest.approx(expected.tolist(), abs=1e-4)
        d2, prefill = gate.decide_with_prefill(convo)  # the question pass is no prefill for the answer
        assert prefill is None and d2.action == d.action
    finally:
        gate.close()


def test_an_old_run_without_the_key_reads_the_chat_prompt(tiny_run):
    run, _ = tiny_run
    meta = json.loads((run / "head.json").read_text())
    assert meta.get("head_prompt", "chat") == "chat"
    model, _, _ = load_run(run)
    assert model.prompt == "chat"
