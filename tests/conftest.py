"""Shared fixtures: a tiny random Llama with a real (tiny, trained-here) BPE tokenizer.

Unit tests use it so they run in milliseconds; tests marked e2e use the embedded model.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before transformers / huggingface_hub are imported (they read it once): no hub calls in tests,
# so a hub id fails at once with so8t's hint instead of after minutes of network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handler's annotations here

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Action: ALLOW",
    "Action: ESCALATE",
    "Action: REFUSE",
    "Rationale: routine request.",
    "Please list the files in my reports folder.",
    "Delete the production table now.",
    "How do I make a bomb?",
    "ファイル一覧を表示してください。",
    "本番DBのテーブルを削除して。",
    "Send the board minutes to an outside address.",
    "I'll do that with the file tool.",
    "メールを送信する前に承認が必要です。",
    "The quick brown fox jumps over the lazy dog.",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama folder with tokenizer and chat template: a stand-in for a HF checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Unit tests get an empty cache; e2e tests share the user's cache (the conversion is slow)."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("SO8T_CACHE_DIR", str(tmp_path / "so8t-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A run trained for 2 steps on the tiny model: (run folder, folder with train/dev JSONL)."""
    from so8t.config import TrainConfig
    from so8t.data import load_builtin, write_jsonl
    from so8t.train.recipe import train

    d = tmp_path_factory.mktemp("evaldata")
    recs = load_builtin("train")
    pick = lambda label, lang, k, skip=0: [r for r in recs if r.label.name == label and r.lang == lang][skip : skip + k]  # noqa: E731
    train_recs = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, "en", 5) + pick(lab, "ja", 2)]
    dev_recs = [
        r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, "en", 3, skip=10) + pick(lab, "ja", 1, skip=5)
    ]
    write_jsonl(d / "train.jsonl", train_recs)
    write_jsonl(d / "dev.jsonl", dev_recs)
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        data=[str(d / "train.jsonl")],
        dev_data=[str(d / "dev.jsonl")],
        test_data=[str(d / "dev.jsonl")],
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        micro_batch=4,
        grad_accum=1,
        max_steps=2,
        eval_every=2,
        head_probe_steps=20,
    )
    cfg.validate()
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(cfg, run, progress=False)
    return run, d


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """(model, tokenizer) of the tiny Llama, loaded once."""
    from so8t.model import load_base_model

    return load_base_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_llm_server(tiny_lm):
    """A real OpenAI-compatible server (uvicorn on localhost) for the tiny model, named 'tiny'."""
    from so8t.server.llm_server import create_llm_app, serve_in_thread

    model, tok = tiny_lm
    with serve_in_thread(create_llm_app(model, tok, model_name="tiny")) as handle:
        yield handle


@pytest.fixture
def run_with_thresholds(tiny_run, tmp_path):
    """A copy of the tiny run with calibrated thresholds set, so the real gate path gives the
    action a test needs: (0, x) -> always REFUSE, (1, 1) -> ESCALATE, (1, 0) -> ALLOW."""
    import json
    import shutil

    def make(refuse_at: float, allow_at: float) -> Path:
        run = tmp_path / f"run-{refuse_at}-{allow_at}"
        if not run.exists():
            shutil.copytree(tiny_run[0], run)
            (run / "thresholds.json").write_text(
                json.dumps({"thresholds": {"refuse_at": refuse_at, "allow_at": allow_at}})
            )
        return run

    return make


@pytest.fixture
def scripted_llm():
    """Factory: an OpenAI-compatible app that answers with the given turns in order (text
    and/or tool calls) and records every request; returns (app, seen requests)."""
    import json

    def make(turns):
        app, seen = FastAPI(), []

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            seen.append(await request.json())
            turn = turns[len(seen) - 1]
            message = {"role": "assistant", "content": turn.get("content")}
            if "calls" in turn:
                message["tool_calls"] = [
                    {
                        "id": f"c{k}",
                        "type": "function",
                        "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False)},
                    }
                    for k, (n, a) in enumerate(turn["calls"])
                ]
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }

        return app, seen

    return make


# Tests that need a service beyond Python carry its marker, so `-m "not postgres"` (or chromium,
# smtp) deselects them. These are marked by the fixture that starts the service (a fixture they
# use through another counts too: pytest's closure); the Chromium ones are marked where they
# launch it, and a test that starts one in its body (LocalSmtp) is marked by hand.
SERVICE_FIXTURES = {"postgresql": "postgres", "private_postgresql": "postgres", "smtp": "smtp"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in sorted({SERVICE_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in SERVICE_FIXTURES}):
            item.add_marker(marker)


# Throwaway PostgreSQL servers (initdb + pg_ctl in a temporary folder): see tests/postgres_server.py.
from postgres_server import postgresql, private_postgresql  # noqa: E402, F401
