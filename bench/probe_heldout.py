"""Which base, which blocks, which training data: a frozen-feature study scored on held-out sets.

Fits the evaluation's probe (standardised, class-balanced logistic regression) on the frozen
base model's pooled hidden states of the training sets, and scores every test set, for each
chosen block, the final state, and the equal-weight mix of the blocks that `head_layers: mix`
reads (each pooled state layer-normalised, then averaged). No fine-tuning, so it answers in
minutes what a training run answers in half an hour: does a base, a block or a dataset help
on prompts nobody tuned on. Features are cached per (model, texts, max_length) under --cache.

    .venv/bin/python bench/probe_heldout.py --model embedded --train builtin:train contrast:train \\
        --test heldout/agent-requests.jsonl heldout/canonical-worst.jsonl contrast:test

Columns: refuse / escalate / allow recall, overcompliance (dangerous ALLOW), AUROC of
1 - P(ALLOW) for unsafe (REFUSE or ESCALATE) vs safe, accuracy in Japanese and English.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--train", nargs="+", default=["builtin:train", "contrast:train"])
    ap.add_argument("--test", nargs="+", default=["heldout/agent-requests.jsonl", "heldout/canonical-worst.jsonl"])
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    ap.add_argument("--cache", default=".cache/probe")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from so8t.eval import compute_metrics
    from so8t.eval.baselines import fit_probe, probe_probs
    from so8t.eval.report import load_dataset
    from so8t.model import ensure_chat_template, load_base_model, pool, resolve_head_layers
    from so8t.model.scoring import autocast, encode_prompts, in_input_order, length_order

    model, tokenizer = load_base_model(args.model)
    ensure_chat_template(tokenizer)
    model.eval()
    depth = model.config.get_text_config().num_hidden_layers
    mix = resolve_head_layers("mix", depth)
    layers = sorted(set(mix) | {depth})

    @torch.no_grad()
    def features(records, name: str) -> dict[int, torch.Tensor]:
        key = hashlib.sha256(("\x00".join(str(r.messages()) for r in records) + f"|{args.model}|{args.max_length}|"
                              f"{layers}").encode()).hexdigest()[:16]
        path = Path(args.cache) / f"{Path(args.model).name.replace(':', '_')}-{key}.pt"
        if path.is_file():
            return torch.load(path)
        out: dict[int, list[torch.Tensor]] = {}
        t0 = time.perf_counter()
        order = length_order(tokenizer, records)  # shortest first: less padding; order restored below
        records = [records[i] for i in order]
        for i in range(0, len(records), 16):
            batch, _ = encode_prompts(tokenizer, records[i:i + 16], args.max_length)
            with autocast(torch.device("cpu"), args.amp):
                hidden = model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states
            for layer in layers:
                out.setdefault(layer, []).append(pool(hidden[layer].float(), batch["attention_mask"], "mean"))
            done = min(i + 16, len(records))
            print(f"\r{name}: {done}/{len(records)} prompts, {done / (time.perf_counter() - t0):.1f}/s",
                  end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        feats = {k: in_input_order(torch.cat(v), order) for k, v in out.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, path)
        return feats

    def with_mix(f: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        named = {("final" if k == depth else f"block {k}"): v for k, v in f.items()}
        normed = [torch.nn.functional.layer_norm(f[k], (f[k].size(1),)) for k in mix]
        named["mix"] = torch.stack(normed).mean(0)
        return named

    train = [r for spec in args.train for r in load_dataset(spec).records]
    parts = [features(load_dataset(spec).records, spec) for spec in args.train]  # cached per set
    f_train = with_mix({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    y_train = [int(r.label) for r in train]
    tests = [(spec, load_dataset(spec).records) for spec in args.test]
    f_tests = [(spec, recs, with_mix(features(recs, Path(spec).stem))) for spec, recs in tests]
    print(f"\nfrozen {args.model} ({depth} blocks); probe trained on {len(train)} prompts ({' '.join(args.train)})")
    for spec, recs, f in f_tests:
        y = np.array([int(r.label) for r in recs])
        print(f"\n{spec} (n={len(recs)})")
        print(f"{'features':>9} | {'refuse':>6} {'escal':>6} {'allow':>6} {'overc':>6} | {'auroc':>6} | {'ja_acc':>6} {'en_acc':>6}")
        for name, x in f_train.items():
            clf = fit_probe(x, y_train)
            p = probe_probs(clf, f[name])
            pred = p.argmax(1)
            m = compute_metrics(y, pred)
            unsafe = (y != 0).astype(int)
            auroc = roc_auc_score(unsafe, 1 - p[:, 0]) if 0 < unsafe.sum() < len(y) else float("nan")
            acc = {lang: float(np.mean([pred[i] == y[i] for i, r in enumerate(recs) if r.lang == lang] or [np.nan]))
                   for lang in ("ja", "en")}
            print(f"{name:>9} | {m.refuse_recall:>6.3f} {m.escalate_recall:>6.3f} {m.allow_recall:>6.3f} "
                  f"{m.overcompliance:>6.3f} | {auroc:>6.3f} | {acc['ja']:>6.3f} {acc['en']:>6.3f}")


if __name__ == "__main__":
    main()
