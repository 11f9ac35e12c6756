"""Peak GPU memory of one training step, estimated from the config alone (no weights loaded).

Used by `so8t train --dry-run`: `estimate_memory(cfg, model_config_for(cfg.model))`, then
`.format()` for the table and `.fits(cfg.gpu_memory_gb)` for the budget check.

The model is a Llama-style decoder (Llama, Mistral, Qwen2, SmolLM2): per block the attention
projections q/k/v/o, a gated MLP gate/up/down and two RMSNorms. The estimate is the sum of

- weights: the frozen body;
- lora_and_optimizer: the LoRA adapter with its gradients and optimizer states;
- activations: what autograd keeps for backward inside the blocks (+ the gradients alive
  while one block's backward runs);
- logits: the LM head output and the fp32 cross-entropy tensors;
- pet: what the PET term keeps for backward;
- safety_head: the fp32 head with its gradients and optimizer states;
- overhead: CUDA context + allocator fragmentation.

It is an estimate of the peak, deliberately on the safe side where the real figure depends
on details (`amp` is ignored: autocast only makes some tensors smaller; LM logits are counted
for all T positions although the recipe may start them at the end of the shortest prompt).
Which blocks build an autograd graph: with `lora_layers` and no gradient checkpointing only the
adapted top blocks do (nothing below them requires grad); gradient checkpointing makes the
embedding output require grad, so then every block does. Biases (Qwen2's q/k/v)
and other sub-0.1% terms are left out. Sizes are in bytes; the table is in GiB (2**30).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from so8t.config import TrainConfig

GIB = 2**30

# NF4 with double quantization (QLoRA): 4 bits per weight, one 8-bit absmax per block of 64
# weights, and one fp32 scale per 256 of those absmax values -> 0.5 + 1/64 + 4/(64*256).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # ~0.5159

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Per trainable fp32 parameter: weight 4 + gradient 4 + AdamW's two moments (2 x 4 bytes in
# fp32, 2 x 1 byte for bitsandbytes' 8-bit paged AdamW).
OPTIM_STATE_BYTES = {"adamw": 8, "paged_adamw_8bit": 2}

CUDA_CONTEXT_BYTES = GIB // 2  # CUDA context + cuBLAS/cuDNN workspaces, before any tensor
FRAGMENTATION = 0.10  # caching allocator: blocks reserved but not reusable at the peak

# Configs of the presets' models, so a dry-run needs neither the network nor the weights.
# (model_type, hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
KNOWN_CONFIGS: dict[str, tuple[str, int, int, int, int, int, int, bool]] = {
    "embedded": ("llama", 576, 1536, 30, 9, 3, 49152, True),  # SmolLM2-135M-Instruct
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral", 4096, 14336, 32, 32, 8, 32768, False),
    "meta-llama/Llama-3.2-3B-Instruct": ("llama", 3072, 8192, 28, 24, 8, 128256, True),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", 4096, 14336, 32, 32, 8, 128256, False),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training step, in bytes, by part."""

    weights: int
    lora_and_optimizer: int
    activations: int
    logits: int
    pet: int
    safety_head: int
    overhead: int
    description: str = ""

    PARTS: ClassVar[tuple[str, ...]] = (
        "weights",
        "lora_and_optimizer",
        "activations",
        "logits",
        "pet",
        "safety_head",
        "overhead",
    )

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in self.PARTS)

    def fits(self, budget_gb: float) -> bool:
        """True when the total is within `budget_gb` GiB (a "12 GB" RTX 3060 has 12 GiB)."""
        return self.total <= budget_gb * GIB

    def format(self) -> str:
        lines = [f"peak GPU memory estimate{': ' + self.description if self.description else ''}"]
        for name in self.PARTS:  # the field names, so a line can be matched to the docs above
            lines.append(f"  {name:<18}{getattr(self, name) / GIB:8.2f} GiB")
        lines.append(f"  {'-' * 30}")
        lines.append(f"  {'total':<18}{self.total / GIB:8.2f} GiB")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Dims:
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every linear layer of one block, by module name."""
        h, i, q, kv = self.hidden, self.inter, self.q_dim, self.kv_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


# Fused names some architectures use (Phi-3); LoRA may target these instead of the split ones.
def _lora_shapes(d: _Dims) -> dict[str, tuple[int, int]]:
    shapes = d.projections()
    shapes["qkv_proj"] = (d.hidden, d.q_dim + 2 * d.kv_dim)
    shapes["gate_up_proj"] = (d.hidden, 2 * d.inter)
    return shapes


def _dims(model_config: Any) -> _Dims:
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = int(c.num_attention_heads)
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return _Dims(
        int(c.hidden_size),
        int(c.intermediate_size),
        int(c.num_hidden_layers),
        heads,
        int(kv),
        int(head_dim),
        int(c.vocab_size),
        bool(getattr(c, "tie_word_embeddings", False)),
    )


def estimate_memory(cfg: TrainConfig, model_config: Any) -> MemoryEstimate:
    """Estimate the peak GPU memory of one training step of `cfg` on a model with `model_config`.

    `model_config` is a transformers PretrainedConfig (or anything with hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
    tie_word_embeddings). Pure: reads no files and loads nothing.
    """
    d = _dims(model_config)
    H, L, V = d.hidden, d.layers, d.vocab
    B, T = cfg.micro_batch, cfg.max_length
    tokens = B * T
    if cfg.load_in_4bit:
        s = 2  # bitsandbytes dequantizes to the bf16 compute dtype; activations are bf16
    else:
        try:
            s = DTYPE_BYTES[cfg.dtype]
        except KeyError:
            raise ValueError(f"dtype: {cfg.dtype!r} is not one of {', '.join(DTYPE_BYTES)}") from None

    # --- weights: the block linears are the bulk (NF4 under QLoRA); embeddings, lm_head and the
    # norms are not quantized by bitsandbytes and stay in the 16-bit dtype.
    block_linear = L * sum(i * o for i, o in d.projections().values())
    unquantized = V * H * (1 if d.tied else 2) + (2 * L + 1) * H  # embed (+ lm_head) + norms
    if cfg.load_in_4bit:
        weights = block_linear * NF4_BYTES_PER_PARAM + unquantized * 2
    else:
        weights = (block_linear + unquantized) * s

    # --- LoRA: A is r x in, B is out x r, per targeted projection in each adapted block; fp32.
    shapes = _lora_shapes(d)
    unknown = [t for t in cfg.lora_targets if t not in shapes]
    if unknown:
        raise ValueError(f"lora_targets: cannot size {unknown} (the estimate knows {', '.join(shapes)})")
    adapted = min(cfg.lora_layers, L) if cfg.lora_layers else L
    graph_layers = L if cfg.gradient_checkpointing else adapted  # blocks whose activations autograd keeps
    lora_params = adapted * sum(cfg.lora_r * sum(shapes[t]) for t in cfg.lora_targets)
    per_trainable = 4 + 4 + OPTIM_STATE_BYTES[cfg.optim]
    lora_and_optimizer = lora_params * per_trainable

    # --- activations. Every block's input stays alive either way: output_hidden_states returns
    # all L+1 of them (they are also what gradient checkpointing saves), s bytes per element.
    # On top of that, one block's working set while it is recomputed and back-propagated (with
    # checkpointing) or every block's (without). The final norm before lm_head keeps its fp32
    # input and its output.
    hidden_states = (L + 1) * tokens * H * s
    final_norm = tokens * H * (4 + s)
    working = tokens * _layer_working_set_per_token(cfg, d, s)
    activations = hidden_states + final_norm + working * (1 if cfg.gradient_checkpointing else graph_layers)

    # --- logits: N x V from lm_head in the compute dtype, the fp32 log-softmax the cross
    # entropy keeps for backward (sft_loss_at upcasts) and its fp32 gradient, for the N scored
    # positions only (the response tokens: at most sft_response_tokens per example; the whole
    # length where that is 0, the worst case). With 128k-152k vocabularies this is GiBs: the
    # reason 8B models do not fit 12 GiB at 2k tokens.
    scored = B * (min(T, cfg.sft_response_tokens) if cfg.sft_response_tokens else T)
    logits = scored * V * (s + 4 + 4)

    # --- PET: each block's second difference d2 (B x T x H, fp32) is kept by d2.pow(2) for
    # backward (only in blocks with a graph); checkpointed, only the layer being recomputed holds one.
    pet = (1 if cfg.pet_checkpoint else graph_layers) * tokens * H * 4

    # --- safety head: Linear(H, H/2) + Linear(H/2, 3) in fp32 with gradient and optimizer
    # states; its activations (B x H) are negligible.
    head_params = H * (H // 2) + H // 2 + (H // 2) * 3 + 3
    safety_head = head_params * per_trainable

    parts = [weights, lora_and_optimizer, activations, logits, pet, safety_head]
    overhead = CUDA_CONTEXT_BYTES + FRAGMENTATION * sum(parts)
    quant = "4-bit NF4" if cfg.load_in_4bit else cfg.dtype
    desc = (
        f"{cfg.model}, {quant}, B={B} x T={T}, LoRA r={cfg.lora_r}, {cfg.optim}, "
        f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}, "
        f"PET checkpoint {'on' if cfg.pet_checkpoint else 'off'}"
    )
    return MemoryEstimate(
        round(weights),
        round(lora_and_optimizer),
        round(activations),
        round(logits),
        round(pet),
        round(safety_head),
        round(overhead),
        description=desc,
    )


def _layer_working_set_per_token(cfg: TrainConfig, d: _Dims, s: int) -> int:
    """Bytes per token one decoder block keeps for its backward, plus its backward's gradients.

    The frozen base linears need only their weight for the input gradient, so what is saved
    is what the non-linear ops and the LoRA branches need.
    """
    H, I, q = d.hidden, d.inter, d.q_dim  # noqa: E741 - the formulas' names: hidden, intermediate, q width
    # Two RMSNorms: each keeps its fp32 input for the rsqrt backward and emits a normalized
    # output (the projections' / LoRA A's input).
    norms = 2 * (4 + s) * H
    # SDPA (flash / memory-efficient kernels) keeps q, k, v (after RoPE) and the output, plus
    # an fp32 log-sum-exp per head: no T x T score matrix. k and v are counted at the full head
    # count because with a padding mask transformers' SDPA path repeats the kv heads.
    attention = 4 * q * s + d.heads * 4
    # Gated MLP: gate and up outputs, act(gate) and act(gate) * up (down's input).
    mlp = 4 * I * s
    # LoRA: with dropout each adapted projection keeps its own dropped-out input copy (s) and
    # mask (1 byte) for A, plus A's r-wide output for B.
    shapes = _lora_shapes(d)
    lora = sum((s + 1) * shapes[t][0] * (cfg.lora_dropout > 0) + cfg.lora_r * s for t in cfg.lora_targets)
    # While the block's backward runs: gradients of the residual stream and the normalized
    # input (H each) and of up to three MLP-wide tensors.
    backward = (2 * H + 3 * I) * s
    return norms + attention + mlp + lora + backward


def model_config_for(ref: str) -> Any:
    """The transformers config of a model reference, without loading (or converting) weights.

    'embedded' and the presets' hub ids come from KNOWN_CONFIGS (works offline); a local
    folder is read with AutoConfig; a .gguf file through its metadata; any other hub id is
    fetched with AutoConfig (needs network; offline the error says what to do instead).
    """
    from transformers import AutoConfig

    from so8t.model.loading import ModelLoadError

    if ref in KNOWN_CONFIGS:
        model_type, h, i, layers, heads, kv, vocab, tied = KNOWN_CONFIGS[ref]
        return AutoConfig.for_model(
            model_type,
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            vocab_size=vocab,
            tie_word_embeddings=tied,
        )
    path = Path(ref).expanduser()
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is a folder but has no config.json: not a Hugging Face model folder")
            return AutoConfig.from_pretrained(str(path))
        if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
            raise ModelLoadError(f"model path not found: {path}")
        return AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not read the config of {ref!r} for the memory estimate: {exc}\n"
            "A hub id needs network access to the hub; pass a local model folder instead, or one of the "
            f"ids known offline: {', '.join(KNOWN_CONFIGS)}"
        ) from exc
