"""The safety head and the pooling that feeds it.

The head is a separate module: it shares no weight with the LM head and is kept in fp32 (at a
1e-5 learning rate most bf16 updates would round to zero). It reads hidden states that the
plain forward returns anyway (`output_hidden_states=True`), pooled over the prompt tokens:
either the final state after the final norm (layers = (-1,), the seed's choice), or several
blocks' states, each pooled and layer-normalised without parameters so blocks of different
scale weigh alike, then combined in one of two ways:

- combine='concat' (the default): the pooled states side by side (L x H features), so the
  head's first layer weighs every block's every feature on its own;
- combine='mix': averaged with softmax weights that train with the head (H features).

Middle blocks separate dangerous from harmless look-alikes better than the last one in our
frozen-probe study (bench/probe_layers.py), which is why several blocks are read. Concatenation
beat the learned mix on every dev split (README, "Which head"): an average lets one block's
features cancel another's, a concatenation keeps them apart.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from so8t.labels import ACTIONS

Pooling = Literal["mean", "last"]
Combine = Literal["concat", "mix"]
COMBINES = ("concat", "mix")
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
# From a third of the depth to the end, every ~tenth of it: what `head_layers: mix` reads.
MIX_FRACTIONS = (0.33, 0.44, 0.56, 0.67, 0.78, 0.89, 1.0)


def resolve_head_layers(spec: str | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """'last' -> (-1,); 'mix' -> block indices spread over the upper two thirds (hidden_states
    index i is block i's output; num_blocks is the final state after the final norm); a list
    of ints is taken as hidden_states indices (negative counts from the end)."""
    if spec == "last":
        return (-1,)
    if spec == "mix":
        return tuple(sorted({max(1, round(num_blocks * f)) for f in MIX_FRACTIONS}))
    if isinstance(spec, str):
        raise ValueError(f"head_layers: expected 'last', 'mix' or a list of layer indices, got {spec!r}")
    layers = tuple(int(i) for i in spec)
    bad = [i for i in layers if not -(num_blocks + 1) <= i <= num_blocks]
    if not layers or bad:
        raise ValueError(f"head_layers: {list(layers)} must be non-empty indices in [-{num_blocks + 1}, {num_blocks}]")
    return layers


class SafetyHead(nn.Module):
    """(pooled layers, concatenated or mixed) -> hidden/2 -> GELU -> 3 (ALLOW, ESCALATE, REFUSE)."""

    def __init__(self, hidden_size: int, num_labels: int = len(ACTIONS), layers: Sequence[int] = (-1,),
                 combine: Combine = "concat"):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"head combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        self.hidden_size = hidden_size
        self.layers = tuple(int(i) for i in layers)
        # One layer: both ways read that layer as it is (no mix weights, H features).
        self.combine_mode: Combine = combine if len(self.layers) > 1 else "concat"
        if self.combine_mode == "mix":
            self.mix = nn.Parameter(torch.zeros(len(self.layers)))
        features = hidden_size * len(self.layers) if self.combine_mode == "concat" else hidden_size
        self.net = nn.Sequential(nn.Linear(features, hidden_size // 2), nn.GELU(), nn.Linear(hidden_size // 2, num_labels))
        self.float()

    def read(self, hidden_states: Sequence[torch.Tensor], prompt_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
        """B x F (F = L*H concatenated, H mixed): what the head reads from the body's hidden states (embeddings + every block)."""
        return self.combine(self.pool_layers(hidden_states, prompt_mask, pooling))

    def pool_layers(self, hidden_states: Sequence[torch.Tensor], prompt_mask: torch.Tensor,
                    pooling: Pooling) -> torch.Tensor:
        """B x L x H: each chosen layer pooled (and layer-normalised when there are several);
        what the frozen-feature probe caches, so it can fit the mix weights too."""
        if len(self.layers) == 1:
            return pool(hidden_states[self.layers[0]], prompt_mask, pooling).unsqueeze(1)
        return torch.stack([F.layer_norm(pool(hidden_states[i], prompt_mask, pooling).float(), (self.hidden_size,))
                            for i in self.layers], 1)

    def combine(self, pooled_layers: torch.Tensor) -> torch.Tensor:
        """B x L x H -> B x L*H side by side, or B x H with the learned softmax weights."""
        if self.combine_mode == "concat":
            return pooled_layers.flatten(1)
        return (pooled_layers * self.mix.softmax(0)[None, :, None]).sum(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled.float())


def pool(hidden: torch.Tensor, prompt_mask: torch.Tensor, mode: Pooling = "mean") -> torch.Tensor:
    """Pool B x T x H hidden states over the positions where prompt_mask is 1.

    mean: masked mean over the prompt tokens; last: the last prompt token (works with left or
    right padding because it is found from the mask, not from the length).
    """
    mask = prompt_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if mode == "last":
        positions = torch.arange(hidden.size(1), device=hidden.device).expand_as(prompt_mask)
        last = torch.where(prompt_mask.bool(), positions, torch.full_like(positions, -1)).max(1).values
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp_min(0)]
    raise ValueError(f"unknown pooling {mode!r}; expected 'mean' or 'last'")


def save_head(head: SafetyHead, folder: str | Path, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_WEIGHTS))
    config = {"hidden_size": head.hidden_size, "labels": list(ACTIONS), "layers": list(head.layers),
              "combine": head.combine_mode, **meta}
    (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def load_head(folder: str | Path) -> tuple[SafetyHead, dict]:
    folder = Path(folder)
    config = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    if config.get("labels") != list(ACTIONS):
        raise ValueError(f"{folder / HEAD_CONFIG}: label map {config.get('labels')} differs from {list(ACTIONS)}")
    # Runs saved before 'combine' existed mixed their layers (one layer: either reads it as it is).
    head = SafetyHead(int(config["hidden_size"]), layers=config.get("layers", [-1]), combine=config.get("combine", "mix"))
    head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
    return head, config
