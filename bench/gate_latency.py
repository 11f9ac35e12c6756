"""Gate latency on the embedded model, side by side in one run:

- the gate's decision (tokenise + one forward pass + head + thresholds) against a bare forward
  pass of the same body over the same prompts (tokenise + forward, nothing else): target
  ratio <= 1.1;
- against the zero-shot judge (the base LLM with a policy prompt, the evaluation's baseline);
- at batch 1 and batch 16;
- time to first token of an allowed request: the gate's forward reused as the prefill
  (in-process backend) against gate-then-generate separately.

    .venv/bin/python bench/gate_latency.py [--run RUN] [--prompts 48] [--repeats 3]

Without --run it builds the gate from the embedded model with a fresh LoRA adapter and head:
latency does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a trained run folder (default: embedded model, untrained adapter and head)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    args = ap.parse_args()

    from so8t.agent.inprocess import InProcessBackend
    from so8t.config import TrainConfig
    from so8t.data import load_builtin
    from so8t.eval.baselines import judge_probs
    from so8t.gate import Gate
    from so8t.model.scoring import autocast, encode_prompts

    torch.manual_seed(0)
    if args.run:
        gate = Gate.load(args.run, timeout_s=600)
        if not gate.ready:
            raise SystemExit(gate.load_error)
    else:
        from so8t.train.recipe import build_model

        model, tok, _ = build_model(TrainConfig(model="embedded", max_length=args.max_length))
        gate = Gate(model.eval(), tok, max_length=args.max_length, amp=args.amp, timeout_s=600,
                    model_version="embedded+fresh-adapter")
    model, tok = gate.model, gate.tokenizer
    recs = [r for r in load_builtin("test") if isinstance(r.prompt, str)][: args.prompts]
    convos = [r.messages() for r in recs]
    device = next(model.head.parameters()).device

    @torch.no_grad()
    def bare(batch):
        enc, _ = encode_prompts(tok, batch, gate.max_length)
        with autocast(device, gate.amp):
            model.body(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                       use_cache=False, logits_to_keep=1)

    systems = {
        "bare forward": bare,
        "gate decision": lambda batch: gate.decide_batch(batch),
        "zero-shot judge": lambda batch: judge_probs(model, tok, batch, gate.max_length, gate.amp),
    }
    gate.decide_batch(convos[:2])  # warm-up
    results: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for bs in (1, 16):
            for name, fn in systems.items():  # interleaved, so drift hits all systems alike
                total = sum(timed(lambda: fn(convos[i:i + bs])) for i in range(0, len(convos), bs))
                results.setdefault((name, bs), []).append(total / len(convos) * 1000)
        print(f"round {rep + 1}/{args.repeats} done", flush=True)

    print(f"\n{len(convos)} prompts, {args.repeats} rounds (median ms per prompt), amp={gate.amp}")
    print(f"{'system':<18}{'batch 1':>10}{'batch 16':>10}{'ratio b1':>10}{'ratio b16':>10}   (ratio: / bare forward)")
    base = {bs: statistics.median(results[("bare forward", bs)]) for bs in (1, 16)}
    for name in systems:
        m = {bs: statistics.median(results[(name, bs)]) for bs in (1, 16)}
        print(f"{name:<18}{m[1]:>10.1f}{m[16]:>10.1f}{m[1] / base[1]:>10.3f}{m[16] / base[16]:>10.3f}")
    ratio = max(statistics.median(results[("gate decision", bs)]) / base[bs] for bs in (1, 16))
    print(f"gate / bare forward (worst of batch 1 and 16): {ratio:.3f}  target <= 1.1  "
          f"{'PASS' if ratio <= 1.1 else 'MISS'}")

    # Time to first token for an allowed request (generation of one token after the verdict).
    backend = InProcessBackend(gate)
    shared, separate = [], []
    for _ in range(args.repeats):
        for c in convos[:16]:
            def with_prefill():
                _, prefill = gate.decide_with_prefill(c)
                backend.complete(c, max_tokens=1, prefill=prefill)

            def without():
                gate.decide(c)
                backend.complete(c, max_tokens=1)
            shared.append(timed(with_prefill) * 1000)
            separate.append(timed(without) * 1000)
    s, p = statistics.median(shared), statistics.median(separate)
    print(f"\ntime to first token (median of {len(shared)}): shared prefill {s:.1f} ms, gate then generate "
          f"{p:.1f} ms, ratio {s / p:.3f}")


if __name__ == "__main__":
    main()
