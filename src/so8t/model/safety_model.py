"""The body (base model, optionally with a LoRA adapter) and the safety head, side by side.

Nothing inside the body is replaced or patched: the head reads hidden states that the plain
forward returns anyway (the final one after the final norm, or several blocks' states side
by side or mixed: `SafetyHead.read`). Training
and the gate both call `forward` here, so prompt -> pooled state is one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from so8t.model.head import Pooling, SafetyHead
from so8t.model.prompt import HeadPrompt


@dataclass
class SafetyOutput:
    logits: torch.Tensor | None  # LM logits for positions logits_offset.. (B x T' x V)
    hidden_states: tuple[torch.Tensor, ...]  # embeddings + every block's output
    head_logits: torch.Tensor  # B x 3
    logits_offset: int = 0  # sequence index of logits[:, 0]
    pooled: torch.Tensor | None = None  # B x H: what the head read
    past_key_values: object | None = None  # the body's KV cache when asked for (use_cache=True)


class SafetyModel(nn.Module):
    def __init__(self, body: nn.Module, head: SafetyHead, pooling: Pooling = "mean", prompt: HeadPrompt = "chat"):
        super().__init__()
        self.body = body
        self.head = head
        self.pooling = pooling
        self.prompt = prompt  # what the head reads (model/prompt.py): the chat prompt or the question

    def lm_logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """The LM's logits for final hidden states (hidden_states[-1]: after the final norm), as
        the body's own forward computes them (its output projection, then its logit soft-cap
        where the config has one). Training projects only the positions it scores: the
        vocabulary projection is most of a step (Gemma 3: 262k columns), and most positions of
        a batch are prompt or padding."""
        body: Any = self.body  # a transformers model (or PEFT's wrapper): nn.Module types its attributes loosely
        logits = body.get_output_embeddings()(final_hidden)
        cap = getattr(body.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_mask: torch.Tensor,
        logits_from: int | None = 0,
        use_cache: bool = False,
    ) -> SafetyOutput:
        """logits_from: first sequence position whose LM logits are needed (None: none). Training
        passes the shortest prompt's last position, so the vocabulary projection skips the prompts.
        use_cache: keep the KV cache, so generation can continue from this pass (the gate's
        forward doubles as the answer's prefill)."""
        seq = input_ids.size(1)
        keep = 1 if logits_from is None else seq - logits_from  # transformers: keep the last `keep` positions
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=use_cache,
            logits_to_keep=0 if keep >= seq else keep,
        )
        pooled = self.head.read(out.hidden_states, prompt_mask, self.pooling)
        if logits_from is None:
            return SafetyOutput(
                None, out.hidden_states, self.head(pooled), seq, pooled, out.past_key_values if use_cache else None
            )
        return SafetyOutput(
            out.logits,
            out.hidden_states,
            self.head(pooled),
            seq - out.logits.size(1),
            pooled,
            out.past_key_values if use_cache else None,
        )
