"""A peak-memory estimate for one training step: what `so8t train --dry-run` prints.

Coarse on purpose (within ~20% of public figures): its job is to refuse a plan that cannot
fit a 12 GB card before a model is downloaded, and to show which part to shrink.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace

from so8t.config import TrainConfig

GIB = 2**30
# NF4 weights: 4 bits, plus double-quantized absmax (8-bit per 64 weights, fp32 per 256 blocks).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = 0.5 * GIB
FRAGMENTATION = 0.10
# Activation bytes per token per hidden unit for one decoder block with a fused attention
# kernel (no T x T score matrix), in 16-bit: Korthikanti et al.'s 34 * s * b * h.
BLOCK_ACTIVATION = 34

# Configs of the presets' models, so a dry run works offline (no hub download needed).
KNOWN = {
    "embedded": (576, 1536, 30, 9, 3, 49152, True),
    "mistralai/Mistral-7B-Instruct-v0.3": (4096, 14336, 32, 32, 8, 32768, False),
    "meta-llama/Llama-3.2-3B-Instruct": (3072, 8192, 28, 24, 8, 128256, True),
    "meta-llama/Llama-3.1-8B-Instruct": (4096, 14336, 32, 32, 8, 128256, False),
    "Qwen/Qwen2.5-7B-Instruct": (3584, 18944, 28, 28, 4, 152064, False),
}


def model_config_for(ref: str):
    """A config with the sizes the estimate needs, without loading any weights."""
    if ref in KNOWN:
        h, i, n, heads, kv, v, tied = KNOWN[ref]
        return SimpleNamespace(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                               num_key_value_heads=kv, vocab_size=v, tie_word_embeddings=tied)
    from transformers import AutoConfig

    from so8t.model import resolve_reference

    cfg = AutoConfig.from_pretrained(str(resolve_reference(ref)))
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


@dataclass
class MemoryEstimate:
    weights: float
    lora_and_optimizer: float
    activations: float
    logits: float
    pet: float
    safety_head: float
    overhead: float

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def fits(self, budget_gb: float) -> bool:
        return self.total <= budget_gb * GIB

    def format(self) -> str:
        rows = [f"{f.name:<20}{getattr(self, f.name) / GIB:>8.2f} GiB" for f in fields(self)]
        return "\n".join(["estimated peak memory per training step", *rows, "-" * 32,
                          f"{'total':<20}{self.total / GIB:>8.2f} GiB"])


def _projections(c) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer in one decoder block."""
    h, i = c.hidden_size, c.intermediate_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def estimate_memory(cfg: TrainConfig, c) -> MemoryEstimate:
    h, n, v = c.hidden_size, c.num_hidden_layers, c.vocab_size
    b, t = cfg.micro_batch, cfg.max_length
    compute_bytes = 2 if (cfg.load_in_4bit or cfg.amp != "none" or cfg.dtype != "float32") else 4
    weight_bytes = 4 if cfg.dtype == "float32" and not cfg.load_in_4bit else 2
    proj = _projections(c)
    block_params = n * sum(i * o for i, o in proj.values())
    embed_params = v * h * (1 if c.tie_word_embeddings else 2)
    # 4-bit quantizes the block linears only; embeddings and the LM head stay 16-bit.
    weights = block_params * (NF4_BYTES if cfg.load_in_4bit else weight_bytes) + embed_params * weight_bytes

    lora_layers = cfg.lora_layers or n
    lora_params = lora_layers * sum(cfg.lora_r * (i + o) for k, (i, o) in proj.items() if k in cfg.lora_targets)
    # fp32 weight + fp32 grad + AdamW's two fp32 moments (paged 8-bit: two 1-byte moments)
    lora_and_optimizer = lora_params * (4 + 4 + (2 if cfg.optim == "paged_adamw_8bit" else 8))

    token_h = b * t * h
    if cfg.gradient_checkpointing:  # each block's input is kept; one block is recomputed at a time
        activations = n * token_h * compute_bytes + BLOCK_ACTIVATION * token_h * compute_bytes / 2
    else:
        activations = n * BLOCK_ACTIVATION * token_h * compute_bytes / 2
    # logits in the compute dtype, their fp32 upcast for the cross-entropy, and its gradient
    logits = b * t * v * (compute_bytes + 4 + 4)
    # fp32 second differences kept for backward: every layer's, or one at a time when checkpointed
    pet = token_h * 4 * (1 if cfg.pet_checkpoint else n)
    head_params = h * (h // 2) + h // 2 + (h // 2) * 3 + 3
    safety_head = head_params * 16
    subtotal = weights + lora_and_optimizer + activations + logits + pet + safety_head
    return MemoryEstimate(weights, lora_and_optimizer, activations, logits, pet, safety_head,
                          CUDA_CONTEXT + FRAGMENTATION * subtotal)
