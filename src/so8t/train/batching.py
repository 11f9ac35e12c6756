"""Records -> token ids with the masks the losses need, and the order batches are drawn in."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from so8t.data import Record
from so8t.labels import ACTION_PREFIX, Action
from so8t.model import encode_prompt
from so8t.model.prompt import HeadPrompt, encode_head_prompt
from so8t.model.scoring import pad_right
from so8t.train.losses import IGNORE


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    prompt_len: int  # the first prompt_len tokens are the prompt (what the head pools)
    labels: list[int]  # IGNORE on the prompt: SFT learns the response only
    tag_pos: int  # index of the first token of the action word, -1 if truncated away
    y: int
    easy: bool
    truncated: bool
    pair: str | None = None  # contrast pair id (meta.pair), None when not in a pair
    half: int = -1  # 0 safe half, 1 unsafe twin
    head_ids: list[int] | None = None  # head_prompt "question": what the head reads, a pass of its own


def encode_record(
    rec: Record,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    response_tokens: int = 0,
    head_prompt: HeadPrompt = "chat",
) -> Encoded:
    """response_tokens > 0 keeps only the response's first tokens (the tag and the start of the
    text): attention is causal, so what the safety head reads of the prompt is unchanged, and a
    262k-vocabulary LM head costs far less on a CPU budget."""
    assert rec.label is not None
    prompt = encode_prompt(tokenizer, rec.messages())
    # Records without a response (imported public sets) still teach the tag.
    response = rec.response if rec.response is not None else f"{ACTION_PREFIX}{rec.label.name}"
    head, rest = ACTION_PREFIX.rstrip(), response[len(ACTION_PREFIX.rstrip()) :]
    # Tokenised in two parts so the tag's first token sits at a known index.
    prefix_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    rest_ids = tokenizer(rest + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    response_ids = prefix_ids + rest_ids
    if response_tokens:
        response_ids = response_ids[: max(response_tokens, len(prefix_ids) + 2)]
    truncated = len(prompt) + len(response_ids) > max_length
    if truncated:
        keep_resp = min(len(response_ids), max(len(prefix_ids) + 2, max_length - len(prompt), max_length // 4))
        response_ids = response_ids[:keep_resp]
        # Keep the end of the prompt: the latest turn and the assistant header matter most.
        prompt = prompt[-(max_length - keep_resp) :]
    ids = prompt + response_ids
    labels = [IGNORE] * len(prompt) + response_ids
    tag_pos = len(prompt) + len(prefix_ids)
    meta = rec.meta or {}
    return Encoded(
        ids,
        len(prompt),
        labels,
        tag_pos if tag_pos < len(ids) else -1,
        int(rec.required_label()),
        rec.difficulty == "easy",
        truncated,
        meta.get("pair"),
        {"safe": 0, "unsafe": 1}.get(str(meta.get("half")), -1),
        None if head_prompt == "chat" else encode_head_prompt(tokenizer, rec.messages(), head_prompt, max_length)[0],
    )


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; prompt_mask marks the prompt tokens the head pools over."""
    width = max(len(e.input_ids) for e in batch)
    out = {
        "input_ids": torch.full((len(batch), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
        "prompt_mask": torch.zeros((len(batch), width), dtype=torch.long),
        "labels": torch.full((len(batch), width), IGNORE, dtype=torch.long),
    }
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        out["input_ids"][i, :n] = torch.tensor(e.input_ids)
        out["attention_mask"][i, :n] = 1
        out["prompt_mask"][i, : e.prompt_len] = 1
        out["labels"][i, :n] = torch.tensor(e.labels)
    out["tag_pos"] = torch.tensor([e.tag_pos for e in batch])
    out["y"] = torch.tensor([e.y for e in batch])
    out["easy"] = torch.tensor([e.easy for e in batch])
    local = {p: k for k, p in enumerate(dict.fromkeys(e.pair for e in batch if e.pair is not None))}
    out["pair"] = torch.tensor([local.get(e.pair, -1) if e.pair is not None else -1 for e in batch])
    out["half"] = torch.tensor([e.half for e in batch])
    if batch[0].head_ids is not None:  # the head's own prompt (head_prompt "question"), padded alike
        head = pad_right([e.head_ids or [] for e in batch], pad_id)
        out["head_input_ids"], out["head_attention_mask"] = head["input_ids"], head["attention_mask"]
    return out


def epoch_order(labels: Sequence[int], mode: str, seed: int, epoch: int) -> list[int]:
    """Example indices for one epoch. 'sampler': every class oversampled to the largest class's
    count (so a rare REFUSE class is not drowned by CE); otherwise a plain shuffle."""
    rng = random.Random(seed * 1_000_003 + epoch)
    if mode != "sampler":
        order = list(range(len(labels)))
        rng.shuffle(order)
        return order
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    target = max(len(v) for v in by_class.values())
    order = []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        order.extend((idx * (target // len(idx) + 1))[:target])
    rng.shuffle(order)
    return order


def keep_twins_together(order: Sequence[int], pairs: Sequence[str | None]) -> list[int]:
    """Reorder so each contrast example is followed by its twin (the pair-margin term needs
    both halves in one micro-batch). A twin placed early skips its own later turn, so every
    example is still seen about as often as the sampler chose."""
    twin: dict[int, int] = {}
    by_pair: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if p is not None:
            by_pair.setdefault(p, []).append(i)
    for members in by_pair.values():
        if len(members) == 2:
            twin[members[0]], twin[members[1]] = members[1], members[0]
    out: list[int] = []
    skip: Counter = Counter()
    for i in order:
        if skip[i]:
            skip[i] -= 1
            continue
        out.append(i)
        if i in twin:
            out.append(twin[i])
            skip[twin[i]] += 1
    return out


def class_weights(labels: Sequence[int], num_classes: int = len(Action)) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (used when class_balance='weights')."""
    counts = Counter(labels)
    w = torch.tensor([len(labels) / (num_classes * max(counts.get(c, 0), 1)) for c in range(num_classes)])
    return w / w.mean()
