"""The in-process LLM backend: the fine-tuned model itself answers allowed requests.

When the gate and the LLM are the same model, the gate's forward pass over the prompt is the
answer's prefill: its KV cache is handed to `generate`, so an allowed request pays for its
prompt once. (The cache is cropped by one token because `generate` needs at least one new
input position to start from.)
"""

from __future__ import annotations

import threading

import torch

from so8t.gate import Gate, Prefill
from so8t.model import encode_prompt
from so8t.model.scoring import autocast


class InProcessBackend:
    name = "in-process"

    def __init__(self, gate: Gate):
        if not gate.ready:
            raise ValueError(f"the in-process backend needs a loaded gate model ({gate.load_error})")
        self.gate = gate
        self._lock = threading.Lock()  # one generate at a time on one model
        self.prefill_tokens_saved = 0

    @torch.no_grad()
    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        prefill: Prefill | None = None,
    ) -> str:
        model, tok = self.gate.model, self.gate.tokenizer
        device = next(model.head.parameters()).device
        if prefill is not None:
            input_ids = prefill.input_ids
            cache = prefill.past_key_values
            cache.crop(-1)  # drop the last position (negative: "remove n", in old and new transformers)
            self.prefill_tokens_saved += input_ids.size(1) - 1
        else:
            input_ids = torch.tensor([encode_prompt(tok, messages)[-self.gate.max_length :]], device=device)
            cache = None
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with self._lock, autocast(device, self.gate.amp):
            model.eval()
            out = model.body.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                past_key_values=cache,
                max_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **sampling,
            )
        return tok.decode(out[0, input_ids.size(1) :], skip_special_tokens=True).strip()
