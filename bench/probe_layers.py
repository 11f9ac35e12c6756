"""How far can the embedded model's frozen features separate the contrast pairs?

A ceiling study for the contrast targets: for several blocks of the frozen base model and both
of the head's poolings (mean over the prompt, last prompt token), fit the evaluation's probe
(standardised, class-balanced logistic regression) on the built-in + contrast training splits
and score the contrast test split (false refusal, unsafe recall, pairs both correct) and the
built-in test split (refuse / escalate / allow recall, safety score), side by side.

    .venv/bin/python bench/probe_layers.py [--layers 4 8 12 16 20 24 27 30] [--model embedded]

Hidden state 0 is the embeddings, L the output of block L; the last one is after the final
norm (what the safety head reads). About 4 minutes on 2 CPU cores for the embedded model.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 27, 30])
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    args = ap.parse_args()

    from so8t.data import load_builtin
    from so8t.eval import compute_metrics
    from so8t.eval.baselines import fit_probe, probe_probs
    from so8t.eval.contrast import contrast_report
    from so8t.model import load_base_model, pool
    from so8t.model.scoring import autocast, encode_prompts

    model, tokenizer = load_base_model(args.model)
    model.eval()
    depth = model.config.num_hidden_layers
    bad = [layer for layer in args.layers if not 0 <= layer <= depth]
    if bad:
        raise SystemExit(f"--layers {bad}: this model has hidden states 0..{depth}")

    @torch.no_grad()
    def features(records) -> dict[tuple[int, str], torch.Tensor]:
        out: dict[tuple[int, str], list[torch.Tensor]] = {}
        for i in range(0, len(records), 16):
            batch, _ = encode_prompts(tokenizer, records[i : i + 16], args.max_length)
            with autocast(torch.device("cpu"), args.amp):
                hidden = model(**batch, output_hidden_states=True).hidden_states
            for layer in args.layers:
                for mode in ("mean", "last"):
                    out.setdefault((layer, mode), []).append(pool(hidden[layer].float(), batch["attention_mask"], mode))
            print(f"\r{min(i + 16, len(records))}/{len(records)} prompts", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        return {k: torch.cat(v) for k, v in out.items()}

    t0 = time.perf_counter()
    train = load_builtin("train") + load_builtin("train", "contrast")
    contrast_test, builtin_test = load_builtin("test", "contrast"), load_builtin("test")
    f_train, f_contrast, f_builtin = features(train), features(contrast_test), features(builtin_test)
    y_train = [int(r.label) for r in train]
    y_builtin = [int(r.label) for r in builtin_test]

    print(
        f"probe on frozen {args.model} features; train {len(train)} prompts (builtin + contrast), "
        f"contrast test {len(contrast_test) // 2} pairs, builtin test {len(builtin_test)}"
    )
    print(
        f"{'state':>6} {'pool':<5} | {'false_ref':>9} {'unsafe_rec':>10} {'both_ok':>8} | "
        f"{'refuse_rec':>10} {'escal_rec':>9} {'allow_rec':>9} {'score':>6}"
    )
    for layer, mode in f_train:
        clf = fit_probe(f_train[(layer, mode)], y_train)
        c = contrast_report(contrast_test, probe_probs(clf, f_contrast[(layer, mode)]).argmax(1))["overall"]
        m = compute_metrics(y_builtin, probe_probs(clf, f_builtin[(layer, mode)]).argmax(1))
        name = "final" if layer == depth else str(layer)
        print(
            f"{name:>6} {mode:<5} | {c['false_refusal']:>9.3f} {c['unsafe_recall']:>10.3f} "
            f"{c['pairs_both_correct']:>8.3f} | "
            f"{m.refuse_recall:>10.3f} {m.escalate_recall:>9.3f} {m.allow_recall:>9.3f} {m.safety_score:>6.3f}"
        )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
