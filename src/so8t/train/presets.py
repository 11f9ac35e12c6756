"""Named starting points for `so8t train --preset NAME`; any field can still be overridden."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The default: Gemma 3 270M base (multilingual; a frozen probe on its middle blocks beat
    # SmolLM2-135M's best block on the held-out agent set, AUROC 0.84 vs 0.77) on all three
    # built-in sets (office work, contrast pairs, the wide hazard taxonomy), sized for ~30 minutes
    # on 2 CPU cores. The head reads blocks across the upper two thirds (side by side), is
    # first fitted on frozen features of the whole training set (LP-FT; scored at step 0 and
    # kept if no LoRA step beats it on dev), then LoRA on the top 6 of 18 blocks learns at 1e-3.
    # The probe fit: 4000 steps of 256 examples with a cosine-decayed rate. With 2000 steps of
    # 32 at a constant rate, three seeds put the ALLOW boundary anywhere between allow recall
    # 0.62 and 0.85 on the held-out agent set (bench/probe_heldout.py --head); decayed, with
    # larger batches, they agree within 5 points. Dangerous-ALLOW weight 5 (was 3): at the
    # steadier boundary it kept held-out refuse recall at 0.84 instead of 0.82.
    # SFT sees the response's first 48 tokens (tag + start of the answer): the 262k-vocabulary
    # LM head would otherwise double the step time. Checkpoints are selected on the dev safety
    # score (the seed's choice): selected on macro F1 an earlier run kept its last step, with
    # dev refuse recall 0.67 and overcompliance 0.12 against 0.81 and 0.04 for the probed head
    # at step 0 (README, "Train a gate").
    # LoRA gets one short chance (dev evaluation after 10 steps, patience 1): in the three runs
    # before, no LoRA step beat the probed head on dev and 20 of 40 minutes went to steps that
    # were thrown away. Training goes on (up to 100 steps) while every evaluation improves on dev.
    # The head reads the blocks side by side (head_combine: concat, the TrainConfig default),
    # not their learned average: dev AUROC rose on all three dev splits for three seeds
    # (README, "Which head"). At the end the decision thresholds are chosen on dev
    # (calibrate: true), as `so8t calibrate --apply` would; `so8t calibrate RUN --reset` undoes it.
    # The probe sample (every class oversampled to the largest) is capped above the built-in
    # training sets' size, so no written row is left out of the head's fit; each distinct row
    # costs one forward pass however often the sampler repeats it.
    "cpu-quick": {
        "model": "embedded:gemma3-270m",
        "data": ["builtin", "contrast", "wide"],
        "max_length": 192,
        "amp": "bf16",
        "head_layers": "mix",
        "lora_layers": 6,
        "lora_r": 8,
        "lora_alpha": 16,
        "micro_batch": 8,
        "grad_accum": 1,
        "max_steps": 100,
        "lr": 1e-3,
        "head_lr": 1e-3,
        "head_freeze_at": 0.67,
        "warmup_ratio": 0.05,
        "eval_every": 10,
        "head_probe_steps": 4000,
        "head_probe_examples": 12288,
        "head_probe_batch": 256,
        "sft_response_tokens": 48,
        "beta": 5.0,
        "pair_margin": 5.0,
        "early_stop_metric": "safety_score",
        "patience": 1,
        "calibrate": True,
    },
    # The built-in and contrast sets plus the public sets imported from ../shared/data
    # (scripts/import_public.sh, then --data builtin contrast imported/*.jsonl), with the same
    # contrast-pair terms as cpu-quick. Dev stays the built-in dev splits (252 prompts) so
    # evaluations stay cheap; the test split is theirs plus 10% of the imported sets. Sized for
    # about an hour on 2 cores.
    "cpu-full": {
        "model": "embedded",
        "data": ["builtin", "contrast"],
        "dev_data": ["builtin", "contrast"],
        "max_length": 192,
        "amp": "bf16",
        "lora_layers": 10,
        "lora_r": 16,
        "lora_alpha": 32,
        "micro_batch": 8,
        "grad_accum": 4,
        "max_steps": 160,
        "lr": 2e-4,
        "head_lr": 1e-3,
        "head_freeze_at": 0.7,
        "warmup_ratio": 0.03,
        "eval_every": 20,
        "head_probe_steps": 400,
        "beta": 3.0,
        "pair_margin": 5.0,
        "early_stop_metric": "macro_f1",
    },
    # The seed's 20% / 60% PET boundaries (section 6), otherwise the defaults.
    "pet-20-60": {"pet_boundaries": [0.2, 0.6], "pet_values": [0.0, 0.15, 1.0]},
    # RTX 3060 12 GB: Mistral-7B QLoRA (NF4 + double quantization), r=16, 2k tokens, gradient
    # checkpointing, micro-batch 2 x accumulation 16, bf16 compute, paged 8-bit AdamW. The data
    # default includes the contrast pairs; the pair margin is on, the seed's dangerous-ALLOW
    # weight kept (a larger model may separate the twins without lowering it; not measured).
    "rtx3060-7b": {
        "model": "mistralai/Mistral-7B-Instruct-v0.3",
        "load_in_4bit": True,
        "dtype": "bfloat16",
        "amp": "bf16",
        "gpu_memory_gb": 12.0,
        "max_length": 2048,
        "lora_r": 16,
        "lora_alpha": 32,
        "micro_batch": 2,
        "grad_accum": 16,
        "gradient_checkpointing": True,
        "optim": "paged_adamw_8bit",
        "pet_checkpoint": True,
        "epochs": 3.0,
        "eval_every": 50,
        "pair_margin": 5.0,
    },
    "rtx3060-3b": {
        "model": "meta-llama/Llama-3.2-3B-Instruct",
        "load_in_4bit": True,
        "dtype": "bfloat16",
        "amp": "bf16",
        "gpu_memory_gb": 12.0,
        "max_length": 2048,
        "lora_r": 32,
        "lora_alpha": 32,
        "micro_batch": 2,
        "grad_accum": 16,
        "gradient_checkpointing": True,
        "optim": "paged_adamw_8bit",
        "pet_checkpoint": True,
        "epochs": 3.0,
        "eval_every": 50,
        "pair_margin": 5.0,
    },
}


# The same recipe on SmolLM2-135M-Instruct (Apache-2.0, about half the time): for slower
# machines and for the side-by-side of the two bases (README, "Which base").
PRESETS["cpu-quick-smollm"] = {**PRESETS["cpu-quick"], "model": "embedded", "lora_layers": 10}


def preset(name: str) -> dict[str, Any]:
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
