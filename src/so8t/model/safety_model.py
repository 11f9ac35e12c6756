"""The body (base model, optionally with a LoRA adapter) and the safety head, side by side.

Nothing inside the body is replaced or patched: the head reads `hidden_states[-1]` (the
final hidden state after the final norm) that the plain forward returns anyway. Training
and the gate both call `forward` here, so prompt -> pooled state is one code path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from so8t.model.head import Pooling, SafetyHead, pool


@dataclass
class SafetyOutput:
    logits: torch.Tensor | None           # LM logits (B x T x V), None when not asked for
    hidden_states: tuple[torch.Tensor, ...]  # embeddings + every block's output
    head_logits: torch.Tensor             # B x 3


class SafetyModel(nn.Module):
    def __init__(self, body: nn.Module, head: SafetyHead, pooling: Pooling = "mean"):
        super().__init__()
        self.body = body
        self.head = head
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_mask: torch.Tensor,
                with_logits: bool = True) -> SafetyOutput:
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        use_cache=False, logits_to_keep=0 if with_logits else 1)
        pooled = pool(out.hidden_states[-1], prompt_mask, self.pooling)
        return SafetyOutput(out.logits if with_logits else None, out.hidden_states, self.head(pooled))
