import pytest

from so8t.cli import main
from so8t.config import TrainConfig
from so8t.train.memory import GIB, NF4_BYTES, estimate_memory, model_config_for
from so8t.train.presets import preset


def cfg_for(name, **kw):
    values = {**preset(name), **kw} if name else kw
    return TrainConfig(**values)


def test_parts_hand_computed_for_a_tiny_model():
    c = model_config_for("embedded")
    cfg = TrainConfig(max_length=10, micro_batch=2, lora_r=2, lora_targets=["q_proj", "v_proj"], amp="none")
    est = estimate_memory(cfg, c)
    # q: 576 -> 576, v: 576 -> 3 * 64 = 192; r = 2; 30 layers; 16 bytes per LoRA parameter
    assert est.lora_and_optimizer == 30 * (2 * (576 + 576) + 2 * (576 + 192)) * 16
    assert est.logits == 2 * 10 * 49152 * (4 + 4 + 4)
    assert est.pet == 2 * 10 * 576 * 4 * 30
    assert est.weights == (30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536) + 49152 * 576) * 4


def test_more_tokens_need_more_memory_and_checkpointing_saves_it():
    c = model_config_for("mistralai/Mistral-7B-Instruct-v0.3")
    base = cfg_for("rtx3060-7b")
    assert estimate_memory(cfg_for("rtx3060-7b", max_length=4096), c).total > estimate_memory(base, c).total
    no_ckpt = estimate_memory(cfg_for("rtx3060-7b", gradient_checkpointing=False), c)
    assert no_ckpt.activations > estimate_memory(base, c).activations


def test_public_ballparks():
    mistral = estimate_memory(cfg_for("rtx3060-7b", micro_batch=1), model_config_for("mistralai/Mistral-7B-Instruct-v0.3"))
    assert 6 * GIB < mistral.total < 10 * GIB  # public figure: about 8-8.7 GiB
    assert estimate_memory(cfg_for("rtx3060-7b"), model_config_for("mistralai/Mistral-7B-Instruct-v0.3")).fits(12)
    llama8 = estimate_memory(cfg_for("rtx3060-7b", model="meta-llama/Llama-3.1-8B-Instruct"),
                             model_config_for("meta-llama/Llama-3.1-8B-Instruct"))
    assert not llama8.fits(12)  # the 128k vocabulary's logits alone are several GiB
    assert estimate_memory(cfg_for("rtx3060-3b"), model_config_for("meta-llama/Llama-3.2-3B-Instruct")).fits(12)
    one = cfg_for("rtx3060-7b", micro_batch=1, pet_checkpoint=False)
    kept = estimate_memory(one, model_config_for("mistralai/Mistral-7B-Instruct-v0.3")).pet
    assert kept == pytest.approx(1 * GIB)  # 32 layers x 2048 x 4096 x 4 bytes
    assert NF4_BYTES == pytest.approx(0.5159, abs=1e-3)


def test_dry_run_prints_the_breakdown_and_refuses_a_plan_over_budget(capsys):
    assert main(["train", "--preset", "rtx3060-7b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "lora_and_optimizer", "activations", "logits", "pet", "total"):
        assert part in out
    code = main(["train", "--preset", "rtx3060-7b", "--set", "model=meta-llama/Llama-3.1-8B-Instruct", "--dry-run"])
    assert code == 3
    assert "more than the 12 GiB GPU budget" in capsys.readouterr().err
