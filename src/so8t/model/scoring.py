"""Prompt -> pooled state -> head probabilities: the one path that training's evaluation,
`so8t eval` and the gate share (a change here changes all three).

Only the prompt is encoded: attention is causal, so a response could not change what the
head reads, and the gate never has one.

Progress: given a `desc`, a pass shows a tqdm bar (prompts scored of the total) that removes
itself when the pass ends; without one (the gate, the default) it prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from so8t.model.prompt import HeadPrompt, encode_head_prompt
from so8t.model.safety_model import SafetyModel

Conversation = list[dict[str, str]]


def autocast(device: torch.device, amp: str):
    """Mixed precision for the body's matmuls; the head and the losses still run in fp32."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def as_conversation(item) -> Conversation:
    """A Record (anything with .messages()), a list of chat messages, or a plain string."""
    if hasattr(item, "messages"):
        return item.messages()
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    return list(item)


def encode_prompts(
    tokenizer, items: Sequence, max_length: int, style: HeadPrompt = "chat"
) -> tuple[dict[str, torch.Tensor], int]:
    """Right-padded batch of what the head reads (`style`, model/prompt.py) and the number of
    prompts cut to max_length. A long prompt keeps its end: the latest turn and the assistant
    header are what the decision is about."""
    encoded = [encode_head_prompt(tokenizer, as_conversation(it), style, max_length) for it in items]
    return pad_right([ids for ids, _ in encoded], tokenizer.pad_token_id), sum(cut for _, cut in encoded)


def pad_right(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask for token id lists of different lengths."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(list(x))
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def prompt_outputs(
    model: SafetyModel,
    tokenizer,
    items: Sequence,
    max_length: int,
    batch_size: int = 16,
    amp: str = "none",
    between_batches: Callable[[], None] | None = None,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled states N x H, head probabilities N x 3) for records, conversations or strings.

    `between_batches` is called before each batch; whatever it raises stops the scoring there
    (the gate raises once its request has timed out, so abandoned work ends within one batch).
    `desc`: show a progress bar with this label, gone when the pass ends."""
    was_training = model.training
    model.eval()
    device = next(model.head.parameters()).device
    pooled, probs = [], []
    order = length_order(tokenizer, items)
    items = [items[i] for i in order]
    bar = _bar(desc, len(items))
    try:
        for i in range(0, len(items), batch_size):
            if between_batches is not None:
                between_batches()
            batch, _ = encode_prompts(tokenizer, items[i : i + batch_size], max_length, model.prompt)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, amp):
                res = model(batch["input_ids"], batch["attention_mask"], batch["attention_mask"], logits_from=None)
            pooled.append(res.pooled.float().cpu())
            probs.append(res.head_logits.float().softmax(-1).cpu())
            if bar is not None:
                bar.update(len(batch["input_ids"]))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if not pooled:
        return torch.zeros(0, model.head.hidden_size), torch.zeros(0, 3)
    return in_input_order(torch.cat(pooled), order), in_input_order(torch.cat(probs), order)


def _bar(desc: str | None, total: int):
    """A tqdm bar over `total` prompts that leaves no line behind; None without a label."""
    if desc is None or not total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", leave=False, dynamic_ncols=True)


def length_order(tokenizer, items: Sequence) -> list[int]:
    """Indices of items from shortest to longest prompt (by characters), so a batch pads to
    lengths alike: on a CPU, padding a short prompt to its neighbour's 192 tokens is wasted work.
    Right padding with masks makes the result independent of batch composition."""

    def size(item) -> int:
        return sum(len(m["content"]) for m in as_conversation(item))

    return sorted(range(len(items)), key=lambda i: size(items[i]))


def predict_probs(
    model: SafetyModel,
    tokenizer,
    items: Sequence,
    max_length: int,
    batch_size: int = 16,
    amp: str = "none",
    desc: str | None = None,
) -> torch.Tensor:
    return prompt_outputs(model, tokenizer, items, max_length, batch_size, amp, desc=desc)[1]


def in_input_order(rows: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """Rows computed in `order` (length_order's indices) put back in the items' own order."""
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(list(order), dtype=torch.long)] = torch.arange(len(order))
    return rows[back]
