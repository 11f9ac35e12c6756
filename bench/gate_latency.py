"""Gate latency, side by side in one run. Two parts (--parts, both by default):

overhead (on the embedded model unless --run):
- the gate's decision (tokenise + one forward pass + head + thresholds) against a bare forward
  pass of the same body over the same prompts (tokenise + forward, nothing else): target
  ratio <= 1.1;
- against the zero-shot judge (the base LLM with a policy prompt, the evaluation's baseline);
- at batch 1 and batch 16;
- time to first token of an allowed request: the gate's forward reused as the prefill
  (in-process backend) against gate-then-generate separately.

precision (the gate's forward in fp32, int8 and bf16; server config gate_precision):
- for each precision and each test set (builtin:test and contrast:test by default), the gate's
  real decisions (views, thresholds) on every prompt: ms per prompt at batch 16 and at batch 1,
  the agreement of the actions with fp32's, the largest probability difference, and the
  safety KPIs (refuse / escalate / allow recall, overcompliance, safety score);
- a verdict per precision: a candidate for the default only when it agrees with fp32 on at
  least 99% of every set and no KPI is worse on any set. bf16 runs either way; the table says
  whether this CPU has native bf16.

    .venv/bin/python bench/gate_latency.py --run runs/cpu-quick [--parts overhead precision]
        [--precisions fp32 int8 bf16] [--sets builtin:test contrast:test] [--limit N]
        [--prompts 48] [--repeats 3] [--b1-prompts 32]

Without --run it builds an untrained run of --model (default: embedded; tiny: a random tiny
Llama, for tests) in a temporary folder: latency does not depend on what the weights learned,
but its decisions and KPIs mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from so8t.model.precision import PRECISIONS


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a trained run folder (default: an untrained run of --model)")
    ap.add_argument("--model", default="embedded", help="without --run: embedded (default), tiny, or a model folder")
    ap.add_argument("--parts", nargs="+", choices=["overhead", "precision"], default=["overhead", "precision"])
    ap.add_argument("--prompts", type=int, default=48, help="overhead: prompts timed")
    ap.add_argument("--repeats", type=int, default=3, help="overhead: rounds")
    ap.add_argument("--max-length", type=int, default=192, help="max_length of an untrained run")
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16"], help="overhead, untrained run: autocast")
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=list(PRECISIONS),
        default=["fp32", "int8", "bf16"],
        help="precision: compared with the first one (fp32 by default)",
    )
    ap.add_argument("--sets", nargs="+", default=["builtin:test", "contrast:test"], help="precision: test sets")
    ap.add_argument("--limit", type=int, default=0, help="precision: at most this many prompts per set (0: all)")
    ap.add_argument("--b1-prompts", type=int, default=32, help="precision: prompts per set timed at batch 1")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="so8t-gate-latency-") as tmp:
        if args.run:
            run = Path(args.run)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from load import untrained_run

            run = untrained_run(args.model, Path(tmp), args.max_length)
        if "overhead" in args.parts:
            overhead(run, args, precision="run" if args.run else ("bf16" if args.amp == "bf16" else "fp32"))
        if "precision" in args.parts:
            compare_precisions(run, args)


def overhead(run: Path, args, precision: str) -> None:
    from so8t.agent.inprocess import InProcessBackend
    from so8t.data import load_builtin
    from so8t.eval.baselines import judge_probs
    from so8t.gate import Gate
    from so8t.model.run import LoadedRun
    from so8t.model.scoring import autocast, encode_prompts

    torch.manual_seed(0)
    gate = Gate.load(run, timeout_s=600, precision=precision)
    if not gate.ready:
        raise SystemExit(gate.load_error)
    model, tok = gate.model, gate.tokenizer
    recs = [r for r in load_builtin("test") if isinstance(r.prompt, str)][: args.prompts]
    convos = [r.messages() for r in recs]
    device = next(model.head.parameters()).device

    @torch.no_grad()
    def bare(batch):
        enc, _ = encode_prompts(tok, batch, gate.max_length)
        with autocast(device, gate.amp):
            model.body(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                use_cache=False,
                logits_to_keep=1,
            )

    systems = {
        "bare forward": bare,
        "gate decision": lambda batch: gate.decide_batch(batch),
        "zero-shot judge": lambda batch: judge_probs(LoadedRun(model, tok, gate.max_length, gate.amp), batch),
    }
    gate.decide_batch(convos[:2])  # warm-up
    results: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for bs in (1, 16):
            for name, fn in systems.items():  # interleaved, so drift hits all systems alike
                total = sum(
                    timed(lambda: fn(convos[i : i + bs]))  # noqa: B023 - each lambda runs within its iteration
                    for i in range(0, len(convos), bs)
                )
                results.setdefault((name, bs), []).append(total / len(convos) * 1000)
        print(f"round {rep + 1}/{args.repeats} done", flush=True)

    print(f"\n{len(convos)} prompts, {args.repeats} rounds (median ms per prompt), amp={gate.amp}")
    print(f"{'system':<18}{'batch 1':>10}{'batch 16':>10}{'ratio b1':>10}{'ratio b16':>10}   (ratio: / bare forward)")
    base = {bs: statistics.median(results[("bare forward", bs)]) for bs in (1, 16)}
    for name in systems:
        m = {bs: statistics.median(results[(name, bs)]) for bs in (1, 16)}
        print(f"{name:<18}{m[1]:>10.1f}{m[16]:>10.1f}{m[1] / base[1]:>10.3f}{m[16] / base[16]:>10.3f}")
    ratio = max(statistics.median(results[("gate decision", bs)]) / base[bs] for bs in (1, 16))
    print(
        f"gate / bare forward (worst of batch 1 and 16): {ratio:.3f}  target <= 1.1  "
        f"{'PASS' if ratio <= 1.1 else 'MISS'}"
    )

    # Time to first token for an allowed request (generation of one token after the verdict).
    backend = InProcessBackend(gate)
    shared, separate = [], []
    for _ in range(args.repeats):
        for c in convos[:16]:

            def with_prefill(c=c):
                _, prefill = gate.decide_with_prefill(c)
                backend.complete(c, max_tokens=1, prefill=prefill)

            def without(c=c):
                gate.decide(c)
                backend.complete(c, max_tokens=1)

            shared.append(timed(with_prefill) * 1000)
            separate.append(timed(without) * 1000)
    s, p = statistics.median(shared), statistics.median(separate)
    print(
        f"\ntime to first token (median of {len(shared)}): shared prefill {s:.1f} ms, gate then generate "
        f"{p:.1f} ms, ratio {s / p:.3f}"
    )
    gate.close()


KPIS = (
    ("refuse_recall", 1),
    ("escalate_recall", 1),
    ("allow_recall", 1),
    ("overcompliance", -1),
    ("safety_score", 1),
)  # (KPI, +1: higher is better / -1: lower is better)


def load_set(spec: str) -> list:
    from so8t.data.builtin import load_builtin, parse_builtin_spec

    parsed = parse_builtin_spec(spec)
    if parsed is None or parsed[1] is None:
        raise SystemExit(f"--sets: {spec!r} is not a built-in split such as builtin:test or contrast:test")
    return load_builtin(parsed[1], parsed[0])


def score_set(gate, recs: list, b1_prompts: int) -> dict:
    """The gate's decisions on every record (batches of 16, timed) and a batch-1 timing."""
    from so8t.metrics import compute_metrics

    convos = [r.messages() for r in recs]
    t0 = time.perf_counter()
    decisions = [d for i in range(0, len(convos), 16) for d in gate.decide_batch(convos[i : i + 16])]
    b16 = (time.perf_counter() - t0) / len(convos) * 1000
    b1 = statistics.median(timed(lambda c=c: gate.decide(c)) * 1000 for c in convos[: max(1, b1_prompts)])
    actions = [int(d.action) for d in decisions]
    return {
        "actions": actions,
        "probs": np.array([d.probs if d.probs else (np.nan,) * 3 for d in decisions]),
        "failed": sum(d.status != "ok" for d in decisions),
        "b16": b16,
        "b1": b1,
        "kpis": compute_metrics([int(r.label) for r in recs], actions).as_dict(),
    }


def compare_precisions(run: Path, args) -> None:
    from so8t.gate import Gate
    from so8t.model.precision import cpu_has_native_bf16

    sets = {spec: load_set(spec) for spec in args.sets}
    if args.limit:
        sets = {spec: recs[: args.limit] for spec, recs in sets.items()}
    results: dict[str, dict[str, dict]] = {}
    for precision in args.precisions:
        gate = Gate.load(run, precision=precision, timeout_s=600)
        try:
            if not gate.ready:
                print(f"{precision}: the gate did not load: {gate.load_error}", flush=True)
                continue
            gate.decide_batch([r.messages() for r in next(iter(sets.values()))[:4]])  # warm-up
            results[precision] = {spec: score_set(gate, recs, args.b1_prompts) for spec, recs in sets.items()}
        finally:
            gate.close()
        print(f"precision {precision} done", flush=True)
    if not results:
        raise SystemExit("no precision could be loaded")
    ref = next(iter(results))
    native = cpu_has_native_bf16()
    print(
        f"\ngate precision on {run} (reference {ref}); native CPU bf16: "
        f"{ {True: 'yes', False: 'no', None: 'unknown'}[native] }"
    )
    print(
        f"{'precision':<10}{'set':<16}{'n':>5}{'b1 ms':>8}{'b16 ms':>8}{'agree':>8}{'max dP':>8}{'failed':>7}"
        + "".join(f"{k[:12]:>13}" for k, _ in KPIS)
    )
    for precision, per_set in results.items():
        for spec, r in per_set.items():
            base = results[ref][spec]
            agree = float(np.mean(np.array(r["actions"]) == np.array(base["actions"])))
            dp = float(np.nanmax(np.abs(r["probs"] - base["probs"]))) if len(r["probs"]) else float("nan")
            print(
                f"{precision:<10}{spec:<16}{len(r['actions']):>5}{r['b1']:>8.1f}{r['b16']:>8.1f}{agree:>8.1%}"
                f"{dp:>8.4f}{r['failed']:>7}" + "".join(f"{r['kpis'][k]:>13.3f}" for k, _ in KPIS)
            )
    for precision in list(results)[1:]:
        print(verdict(precision, ref, results))


def verdict(precision: str, ref: str, results: dict) -> str:
    """'<p>: agreement ..., KPIs ... -> default candidate: yes/no (why)'."""
    worse, lowest = [], 1.0
    for spec, r in results[precision].items():
        base = results[ref][spec]
        lowest = min(lowest, float(np.mean(np.array(r["actions"]) == np.array(base["actions"]))))
        for key, sign in KPIS:
            delta = r["kpis"][key] - base["kpis"][key]
            if sign * delta < -1e-9:
                worse.append(f"{key} {delta:+.3f} on {spec}")
    speed = statistics.mean(results[ref][s]["b16"] / results[precision][s]["b16"] for s in results[precision])
    ok = lowest >= 0.99 and not worse
    why = [] if ok else ([f"agreement {lowest:.1%} < 99%"] if lowest < 0.99 else []) + worse
    return (
        f"{precision}: lowest agreement with {ref} {lowest:.1%}, batch-16 speed-up x{speed:.2f}; "
        f"default candidate: {'yes' if ok else 'no (' + '; '.join(why) + ')'}"
    )


if __name__ == "__main__":
    main()
