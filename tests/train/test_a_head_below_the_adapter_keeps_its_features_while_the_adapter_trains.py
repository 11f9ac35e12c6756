"""Issue 18 (and 12): when the head reads only hidden states below the adapted blocks, the adapter
cannot move the head's features, so the two are chosen apart.

Before: the adapter was restored from the head's best dev step; with a probed head that no LoRA
step beats, that is step 0, and the run shipped an untrained adapter (the default run's LLM had
format compliance 0). Now such a run trains the adapter for every planned step (no early stop on
the head's dev score), keeps the last step's adapter and the best step's head, and the head's
probabilities are exactly those of the frozen base with the adapter switched off."""

import json

import torch
from safetensors.torch import load_file
from test_recipe import data_kw, tiny_cfg

from so8t.data import load_builtin
from so8t.model import load_run, predict_probs
from so8t.train.recipe import build_model, head_below_adapter, train


def test_the_head_is_below_the_adapter_only_when_no_layer_it_reads_is_adapted(tiny_model_dir):
    # the tiny model has 2 blocks; hidden_states[i] is block i's output (0: the embeddings)
    cases = {
        (1, (1,)): True,
        (1, (0, 1)): True,
        (1, (2,)): False,
        (1, (-1,)): False,
        (1, (-2,)): True,
        (0, (1,)): False,
    }
    for (lora_layers, layers), expected in cases.items():
        cfg = tiny_cfg(tiny_model_dir, lora_layers=lora_layers, head_layers=list(layers))
        model, _, _ = build_model(cfg)
        assert head_below_adapter(model, cfg) is expected, (lora_layers, layers)


def _train(model_dir, data_files, tmp_path, **kw):
    """A tiny run with the top block adapted, the head not learning (head_lr 0) and a dev
    evaluation every step: (TrainResult, final.json)."""
    cfg = tiny_cfg(model_dir, lora_layers=1, head_lr=0.0, eval_every=1, **kw, **data_kw(data_files))
    result = train(cfg, tmp_path / "run", progress=False)
    return result, json.loads((tmp_path / "run/metrics/final.json").read_text())


def test_the_adapter_trains_every_step_and_the_head_is_kept_from_its_best_step(tiny_model_dir, data_files, tmp_path):
    # head_lr 0: the probed head never improves on dev after step 0; patience 1 would stop at step 1
    result, final = _train(
        tiny_model_dir, data_files, tmp_path, head_layers=[1], head_probe_steps=5, lr=1e-2, max_steps=5, patience=1
    )
    assert result.steps == 5 and not final["stopped_early"] and result.adapter_step == 5
    assert final["best_step"] == 0 and final["adapter_step"] == 5
    adapter = load_file(str(tmp_path / "run/adapter/adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # trained (peft starts lora_B at zero)

    model, tok, meta = load_run(tmp_path / "run")
    prompts = load_builtin("test")[:6]
    with_adapter = predict_probs(model, tok, prompts, meta["max_length"])
    with model.body.disable_adapter():
        frozen = predict_probs(model, tok, prompts, meta["max_length"])
    assert torch.allclose(with_adapter, frozen, atol=1e-6)


def test_a_head_that_reads_adapted_blocks_still_stops_early_and_keeps_the_best_steps_adapter(
    tiny_model_dir, data_files, tmp_path
):
    result, final = _train(tiny_model_dir, data_files, tmp_path, head_layers=[2], lr=1e-12, max_steps=10, patience=2)
    assert result.steps == 3 and final["stopped_early"] and final["adapter_step"] == final["best_step"] == 1
    assert result.adapter_step is None  # not chosen apart
