"""The safety head and the pooling that feeds it.

The head is a separate module: it shares no weight with the LM head, is kept in fp32 (at a
1e-5 learning rate most bf16 updates would round to zero), and reads the final hidden state
after the final norm, pooled over the prompt tokens.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from so8t.labels import ACTIONS

Pooling = Literal["mean", "last"]
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


class SafetyHead(nn.Module):
    """hidden -> hidden/2 -> GELU -> 3 (ALLOW, ESCALATE, REFUSE)."""

    def __init__(self, hidden_size: int, num_labels: int = len(ACTIONS)):
        super().__init__()
        self.hidden_size = hidden_size
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.GELU(), nn.Linear(hidden_size // 2, num_labels))
        self.float()

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
    config = {"hidden_size": head.hidden_size, "labels": list(ACTIONS), **meta}
    (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def load_head(folder: str | Path) -> tuple[SafetyHead, dict]:
    folder = Path(folder)
    config = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    if config.get("labels") != list(ACTIONS):
        raise ValueError(f"{folder / HEAD_CONFIG}: label map {config.get('labels')} differs from {list(ACTIONS)}")
    head = SafetyHead(int(config["hidden_size"]))
    head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
    return head, config
