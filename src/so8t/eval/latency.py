"""Gate latency: the head's path only (one forward pass over the prompt, no generation),
per prompt at batch 1 and as throughput at batch 1 and batch 16."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from so8t.model.run import LoadedRun
from so8t.model.scoring import prompt_outputs


def measure_latency(scorer: LoadedRun, items: Sequence, batch_sizes: Sequence[int] = (1, 16)) -> dict:
    """p50 / p95 milliseconds per prompt at batch 1, and prompts per second per batch size.
    One warm-up pass first, so lazy initialisation is not billed to the first prompt."""
    model, tokenizer, max_length, amp = scorer.model, scorer.tokenizer, scorer.max_length, scorer.amp
    items = list(items)
    if not items:
        raise ValueError("no prompts to time")
    prompt_outputs(model, tokenizer, items[:2], max_length, batch_size=2, amp=amp)
    per_prompt = []
    for it in items:
        t0 = time.perf_counter()
        prompt_outputs(model, tokenizer, [it], max_length, batch_size=1, amp=amp)
        per_prompt.append((time.perf_counter() - t0) * 1000)
    throughput = {"1": len(items) / (sum(per_prompt) / 1000)}
    out = {
        "n": len(items),
        "p50_ms": float(np.percentile(per_prompt, 50)),
        "p95_ms": float(np.percentile(per_prompt, 95)),
        "throughput": throughput,
    }
    for b in batch_sizes:
        if b == 1:
            continue
        t0 = time.perf_counter()
        prompt_outputs(model, tokenizer, items, max_length, batch_size=b, amp=amp)
        throughput[str(b)] = len(items) / (time.perf_counter() - t0)
    return out
