"""Step time and peak memory of the full so8t recipe against plain LoRA SFT, same model, same batches.

    .venv/bin/python bench/train_overhead.py [--model embedded] [--steps 6] [--micro-batch 4] [--max-length 128]

Each variant runs in its own process (so peak memory is its own): 'plain' is a standard LoRA
SFT step (the model's own loss over the response tokens); 'so8t' adds the safety head, every
block's hidden states, PET (active, lambda 1), the dangerous-ALLOW and escalate terms. Prints
median step time, peak memory above the loaded model, and the ratios so8t / plain (target <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def peak_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    import torch

    from so8t.config import TrainConfig
    from so8t.data import load_builtin
    from so8t.model import tag_token_ids
    from so8t.model.scoring import autocast
    from so8t.train import losses
    from so8t.train.batching import collate, encode_record, epoch_order
    from so8t.train.recipe import build_model, loss_parts, weights_of

    torch.manual_seed(0)
    cfg = TrainConfig(model=args.model, max_length=args.max_length, amp=args.amp, lora_layers=args.lora_layers)
    model, tok, _ = build_model(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    tags, weights = tag_token_ids(tok), weights_of(cfg)
    recs = load_builtin("train")
    enc = [encode_record(r, tok, cfg.max_length) for r in recs]
    order = epoch_order([e.y for e in enc], "sampler", 0, 0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes()
    times = []
    for step in range(args.steps + 1):  # the first step warms up and is not timed
        batch = collate(
            [enc[i] for i in order[step * args.micro_batch : (step + 1) * args.micro_batch]], tok.pad_token_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        start = time.perf_counter()
        with autocast(device, cfg.amp):
            if variant == "plain":
                loss = model.body(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    use_cache=False,
                ).loss
            else:
                loss = losses.composite(loss_parts(model, batch, tags, cfg, None, pet_active=True), weights, 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "step_s": statistics.median(times),
        "peak_above_model_mib": (peak_bytes() - base) / 2**20,
        "peak_total_mib": peak_bytes() / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-layers", type=int, default=0)
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16", "fp16"])
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for variant in ("plain", "so8t"):
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    p, s = results["plain"], results["so8t"]
    print(
        f"model={args.model} micro_batch={args.micro_batch} max_length={args.max_length} amp={args.amp} "
        f"timed steps={args.steps}"
    )
    print(f"{'variant':<8}{'step (s)':>10}{'peak above model (MiB)':>24}{'peak total (MiB)':>18}")
    for r in (p, s):
        print(f"{r['variant']:<8}{r['step_s']:>10.3f}{r['peak_above_model_mib']:>24.0f}{r['peak_total_mib']:>18.0f}")
    print(
        f"ratio so8t/plain: step time {s['step_s'] / p['step_s']:.3f}, "
        f"peak memory (total) {s['peak_total_mib'] / p['peak_total_mib']:.3f}  (target <= 1.15)"
    )


if __name__ == "__main__":
    main()
