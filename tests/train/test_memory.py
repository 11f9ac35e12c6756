"""The peak-memory estimate: parts against hand-computed values, monotonicity, public ballparks."""

import dataclasses

import pytest
from transformers import LlamaConfig

from so8t.cli import main
from so8t.config import TrainConfig, resolve
from so8t.model import ModelLoadError
from so8t.train import memory
from so8t.train.memory import (
    GIB,
    NF4_BYTES_PER_PARAM,
    MemoryEstimate,
    estimate_memory,
    model_config_for,
)
from so8t.train.presets import preset

# hidden 64, MLP 128, 2 blocks, 4 heads of 16, 2 kv heads (kv dim 32), vocab 100, untied
TINY = LlamaConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    tie_word_embeddings=False,
)


def tiny_cfg(**kw) -> TrainConfig:
    base = {
        "model": "tiny",
        "load_in_4bit": False,
        "dtype": "bfloat16",
        "max_length": 16,
        "micro_batch": 2,
        "lora_r": 4,
        "lora_targets": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "gradient_checkpointing": True,
        "optim": "adamw",
        "pet_checkpoint": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def qlora(model: str, **kw) -> TrainConfig:
    base = {
        "model": model,
        "load_in_4bit": True,
        "dtype": "bfloat16",
        "max_length": 2048,
        "micro_batch": 2,
        "lora_r": 16,
        "gradient_checkpointing": True,
    }
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- parts by hand


def test_weights_by_hand():
    # per block: q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate/up/down 3 * 64*128 = 12288 + 24576 = 36864
    block_linear = 2 * 36864
    unquantized = 2 * 100 * 64 + (2 * 2 + 1) * 64  # embed + untied lm_head + 5 RMSNorms
    assert estimate_memory(tiny_cfg(), TINY).weights == (block_linear + unquantized) * 2
    assert estimate_memory(tiny_cfg(dtype="float32"), TINY).weights == (block_linear + unquantized) * 4
    # QLoRA: only the block linears are NF4; embeddings, lm_head and norms stay bf16
    q = estimate_memory(tiny_cfg(load_in_4bit=True, dtype="float32"), TINY).weights
    assert q == round(block_linear * NF4_BYTES_PER_PARAM + unquantized * 2)
    assert NF4_BYTES_PER_PARAM == pytest.approx(0.5159, abs=1e-4)


def test_lora_and_optimizer_by_hand():
    # r=4 on q (64 -> 64) and v (64 -> 32) in 2 blocks: 2 * 4 * (128 + 96) = 1792 fp32 params
    params = 2 * 4 * ((64 + 64) + (64 + 32))
    assert estimate_memory(tiny_cfg(), TINY).lora_and_optimizer == params * (4 + 4 + 8)
    assert estimate_memory(tiny_cfg(optim="paged_adamw_8bit"), TINY).lora_and_optimizer == params * (4 + 4 + 2)
    # adapting only the top block halves it
    assert estimate_memory(tiny_cfg(lora_layers=1), TINY).lora_and_optimizer == params // 2 * 16


def test_logits_pet_and_head_by_hand():
    tokens = 2 * 16
    est = estimate_memory(tiny_cfg(), TINY)
    assert est.logits == tokens * 100 * (2 + 4 + 4)  # bf16 logits + fp32 log-softmax + fp32 gradient
    assert est.pet == 2 * tokens * 64 * 4  # one fp32 B x T x H difference per block
    assert estimate_memory(tiny_cfg(pet_checkpoint=True), TINY).pet == tokens * 64 * 4
    head_params = 64 * 32 + 32 + 32 * 3 + 3
    assert est.safety_head == head_params * 16


def test_activations_by_hand():
    tokens, s, H, I, q = 2 * 16, 2, 64, 128, 64  # noqa: E741 - the names in memory.py's formulas
    hidden_states = 3 * tokens * H * s  # embeddings + 2 block outputs
    final_norm = tokens * H * (4 + s)
    per_token = (
        2 * (4 + s) * H  # two RMSNorms: fp32 input + output
        + 4 * q * s
        + 4 * 4  # SDPA: q, k, v, out + fp32 log-sum-exp per head
        + 4 * I * s  # gate, up, act, act*up
        + 2 * 4 * s  # LoRA A outputs (r=4) of q and v; no dropout copies at dropout 0
        + (2 * H + 3 * I) * s
    )  # gradients alive during the block's backward
    est = estimate_memory(tiny_cfg(), TINY)
    assert est.activations == hidden_states + final_norm + tokens * per_token
    no_ckpt = estimate_memory(tiny_cfg(gradient_checkpointing=False), TINY)
    assert no_ckpt.activations == hidden_states + final_norm + 2 * tokens * per_token
    # without checkpointing, only the adapted top blocks build a graph (nothing below requires grad);
    # with it, the embeddings require grad and every block does
    top = estimate_memory(tiny_cfg(gradient_checkpointing=False, lora_layers=1), TINY)
    assert top.activations == hidden_states + final_norm + tokens * per_token
    assert top.pet == tokens * H * 4
    assert estimate_memory(tiny_cfg(lora_layers=1), TINY).pet == 2 * tokens * H * 4
    # dropout: each adapted projection keeps a dropped-out copy of its input and a mask
    with_dropout = estimate_memory(tiny_cfg(lora_dropout=0.1), TINY)
    assert with_dropout.activations - est.activations == tokens * 2 * (s + 1) * H


def test_overhead_total_fits_and_format():
    est = estimate_memory(tiny_cfg(), TINY)
    tensors = est.weights + est.lora_and_optimizer + est.activations + est.logits + est.pet + est.safety_head
    assert est.overhead == round(GIB / 2 + 0.10 * tensors)
    assert est.total == tensors + est.overhead
    assert est.fits(1.0) and not est.fits(0.5)
    text = est.format()
    for label in ("weights", "lora_and_optimizer", "activations", "logits", "pet", "safety_head", "overhead", "total"):
        assert label in text
    assert f"{est.total / GIB:.2f} GiB" in text


def test_unknown_lora_target_is_named():
    with pytest.raises(ValueError, match="c_attn"):
        estimate_memory(tiny_cfg(lora_targets=["q_proj", "c_attn"]), TINY)


# ----------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize(
    ("field", "values"), [("max_length", [128, 512, 2048, 4096]), ("micro_batch", [1, 2, 4]), ("lora_r", [8, 16, 64])]
)
def test_more_tokens_or_rank_needs_more_memory(field, values):
    mc = model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    totals = [estimate_memory(qlora("m", **{field: v}), mc).total for v in values]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_memory_savers_save_memory():
    mc = model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    base = estimate_memory(qlora("m"), mc)
    assert estimate_memory(qlora("m", gradient_checkpointing=False), mc).activations > 5 * base.activations
    assert estimate_memory(qlora("m", pet_checkpoint=True), mc).pet < base.pet
    assert estimate_memory(qlora("m", optim="paged_adamw_8bit"), mc).lora_and_optimizer < base.lora_and_optimizer
    assert estimate_memory(qlora("m", load_in_4bit=False), mc).weights > 3 * base.weights


# ----------------------------------------------------------------------------- public ballparks


def test_mistral_7b_qlora_batch1_2k_matches_public_figure():
    # public: ~8-8.7 GiB for Mistral-7B QLoRA, batch 1, 2k tokens, gradient checkpointing
    est = estimate_memory(
        qlora("mistralai/Mistral-7B-Instruct-v0.3", micro_batch=1),
        model_config_for("mistralai/Mistral-7B-Instruct-v0.3"),
    )
    assert 7 * GIB < est.total < 10 * GIB


def test_llama_8b_at_2k_batch2_does_not_fit_12gb():
    est = estimate_memory(
        qlora("meta-llama/Llama-3.1-8B-Instruct", optim="paged_adamw_8bit", pet_checkpoint=True),
        model_config_for("meta-llama/Llama-3.1-8B-Instruct"),
    )
    assert est.logits > 4 * GIB  # the 128k vocabulary
    assert not est.fits(12)


@pytest.mark.parametrize("name", ["rtx3060-7b", "rtx3060-3b"])
def test_rtx3060_presets_fit_12gb(name):
    cfg = resolve(TrainConfig, (preset(name), name))
    est = estimate_memory(cfg, model_config_for(cfg.model))
    assert est.fits(cfg.gpu_memory_gb), est.format()


def test_3b_at_2k_batch2_fits_12gb():
    est = estimate_memory(
        qlora("meta-llama/Llama-3.2-3B-Instruct"), model_config_for("meta-llama/Llama-3.2-3B-Instruct")
    )
    assert est.fits(12), est.format()


def test_pet_without_checkpoint_costs_about_1gib_for_a_7b():
    mc = model_config_for("mistralai/Mistral-7B-Instruct-v0.3")  # H 4096, 32 blocks
    on = estimate_memory(qlora("m", micro_batch=1, pet_checkpoint=False), mc)
    off = estimate_memory(qlora("m", micro_batch=1, pet_checkpoint=True), mc)
    assert on.pet == 32 * 2048 * 4096 * 4 == GIB
    assert 0.9 * GIB < on.total - off.total < 1.2 * GIB  # + the fragmentation margin on it


# ----------------------------------------------------------------------------- model_config_for


@pytest.mark.parametrize(
    ("ref", "dims"),
    [
        ("embedded", (576, 1536, 30, 9, 3, 49152, True)),
        ("mistralai/Mistral-7B-Instruct-v0.3", (4096, 14336, 32, 32, 8, 32768, False)),
        ("meta-llama/Llama-3.2-3B-Instruct", (3072, 8192, 28, 24, 8, 128256, True)),
        ("meta-llama/Llama-3.1-8B-Instruct", (4096, 14336, 32, 32, 8, 128256, False)),
        ("Qwen/Qwen2.5-7B-Instruct", (3584, 18944, 28, 28, 4, 152064, False)),
    ],
)
def test_known_configs_offline(ref, dims):
    c = model_config_for(ref)
    got = (
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.tie_word_embeddings,
    )
    assert got == dims
    assert estimate_memory(TrainConfig(model=ref), c).total > 0


def test_local_folder_config(tmp_path):
    TINY.save_pretrained(tmp_path)
    c = model_config_for(str(tmp_path))
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (64, 2, 100)
    assert estimate_memory(tiny_cfg(), c) == estimate_memory(tiny_cfg(), TINY)


def test_bad_references_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no config.json"):
        model_config_for(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not found"):
        model_config_for(str(tmp_path / "missing"))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="local model folder"):
        model_config_for("someone/some-model")


def test_estimate_is_a_plain_frozen_record():
    est = estimate_memory(tiny_cfg(), TINY)
    assert isinstance(est, MemoryEstimate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.weights = 0  # type: ignore[misc]
    assert set(memory.MemoryEstimate.PARTS) <= {f.name for f in dataclasses.fields(est)}


def test_cli_dry_run_prints_the_breakdown_and_refuses_a_plan_over_budget(capsys):
    assert main(["train", "--preset", "rtx3060-7b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "lora_and_optimizer", "activations", "logits", "pet", "total"):
        assert part in out
    code = main(["train", "--preset", "rtx3060-7b", "--set", "model=meta-llama/Llama-3.1-8B-Instruct", "--dry-run"])
    assert code == 3
    assert "more than the 12 GiB GPU budget" in capsys.readouterr().err
