"""The LM side of a trained run: does the fine-tuned model say what the head decides?

- lm_tag_probs: P(tag) at the tag position after the prompt (teacher-forced 'Action:'),
  cheap enough for every example;
- generate_responses: free generation on a sample, checked for the output format
  (a parsable tag and a rationale) and for agreement with the label and with the head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from so8t.eval.baselines import tag_probs
from so8t.labels import ACTION_PREFIX, parse_response
from so8t.metrics import Labels
from so8t.model import render_prompt
from so8t.model.run import LoadedRun
from so8t.model.scoring import as_conversation, autocast


def lm_tag_probs(scorer: LoadedRun, items: Sequence, between_batches: Callable[[], None] | None = None) -> np.ndarray:
    tok = scorer.tokenizer
    texts = [render_prompt(tok, as_conversation(it)) + ACTION_PREFIX.rstrip() for it in items]
    return tag_probs(
        scorer.model, tok, texts, scorer.max_length + 8, amp=scorer.amp, adapter=True, between_batches=between_batches
    )


@dataclass
class Generated:
    text: str
    action: int | None  # parsed tag, None when the output is not in the format
    stopped: bool = True  # ended with end-of-sequence, not cut at max_new_tokens


# Room for a whole answer in the format (tag, text, rationale): the built-in responses run 60-95
# tokens (90th percentile) and up to about 210 with Gemma 3's tokenizer. With 64, the former
# limit, most answers were cut before their rationale and counted as out of format.
MAX_NEW_TOKENS = 224


@torch.no_grad()
def generate_responses(
    scorer: LoadedRun,
    items: Sequence,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
    between_batches: Callable[[], None] | None = None,
) -> list[Generated]:
    """Greedy generation after the prompt."""
    model, max_length, amp = scorer.model, scorer.max_length, scorer.amp
    # untyped on purpose: the PEFT body's generate and a tokenizer's decode are typed loosely upstream
    body: Any = model.body
    tokenizer: Any = scorer.tokenizer
    device = next(model.head.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    # left padding: every row continues its own prompt; left truncation keeps the assistant header
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    out: list[Generated] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(items), batch_size):
            if between_batches is not None:
                between_batches()
            texts = [render_prompt(tokenizer, as_conversation(it)) for it in items[i : i + batch_size]]
            enc = tokenizer(
                texts,
                add_special_tokens=False,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            with autocast(device, amp):
                gen = body.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in gen[:, enc["input_ids"].size(1) :]:
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                parsed = parse_response(text)
                stopped = bool((row == tokenizer.eos_token_id).any())
                out.append(Generated(text, int(parsed.action) if parsed else None, stopped))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        model.train(was_training)
    return out


def generation_summary(gen: list[Generated], labels: Labels | None, head_pred: Labels) -> dict:
    """Format compliance, and agreement of the generated tag with the label and with the head
    (agreements are over the outputs that parsed)."""
    n = len(gen)
    parsed = [k for k, g in enumerate(gen) if g.action is not None]
    summary = {
        "n": n,
        "format_compliance": len(parsed) / n if n else float("nan"),
        "stopped": float(np.mean([g.stopped for g in gen])) if n else float("nan"),
        "tag_agrees_with_head": (
            float(np.mean([gen[k].action == int(head_pred[k]) for k in parsed])) if parsed else float("nan")
        ),
    }
    if labels is not None:
        summary["tag_agrees_with_label"] = (
            float(np.mean([gen[k].action == int(labels[k]) for k in parsed])) if parsed else float("nan")
        )
    return summary
