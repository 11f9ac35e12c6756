"""What the head reads: the chat prompt or the conversation inside a question (README, "What the
head reads"). A logistic-regression probe on the mean of the mixed blocks of a frozen base,
fitted on the built-in training splits, scored on dev rows only (the built-in dev splits and,
when present, the public training sample that scripts/dev_sets.py writes).

    python scripts/head_prompt_study.py [--model embedded:gemma3-270m] [--max-length 192]

Features go through the product's own encoding (so8t.model.scoring.encode_prompts with each
head_prompt style) and are cached under --cache; the first run takes about 75 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

TRAIN = ["builtin:train", "contrast:train", "wide:train"]
DEV = ["builtin:dev", "contrast:dev", "wide:dev", "runs/dev/public-train-sample.jsonl"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:gemma3-270m")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--cache", default=".cache/head-prompt")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from so8t.eval.baselines import fit_probe, probe_probs
    from so8t.eval.report import load_dataset
    from so8t.model import ensure_chat_template, load_base_model, pool, resolve_head_layers
    from so8t.model.scoring import encode_prompts, in_input_order, length_order

    model, tok = load_base_model(args.model)
    ensure_chat_template(tok)
    model.eval()
    mix = resolve_head_layers("mix", model.config.get_text_config().num_hidden_layers)

    @torch.no_grad()
    def features(records, style: str, name: str) -> dict[str, torch.Tensor]:
        key = hashlib.sha256(
            ("\x00".join(str(r.messages()) for r in records) + f"|{args.model}|{args.max_length}|{style}").encode()
        ).hexdigest()[:16]
        path = Path(args.cache) / f"{style}-{key}.pt"
        if path.is_file():
            return torch.load(path)
        order = length_order(tok, records)
        recs = [records[i] for i in order]
        means, lasts, t0 = [], [], time.perf_counter()
        for i in range(0, len(recs), 16):
            batch, _ = encode_prompts(tok, recs[i : i + 16], args.max_length, style)
            hidden = model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states
            mask = batch["attention_mask"]
            norm = lambda x: torch.nn.functional.layer_norm(x.float(), (x.size(-1),))  # noqa: E731
            means.append(torch.stack([norm(pool(hidden[k].float(), mask, "mean")) for k in mix], 1).mean(1))
            lasts.append(torch.stack([norm(pool(hidden[k].float(), mask, "last")) for k in mix], 1).mean(1))
            done = i + len(batch["input_ids"])
            rate = done / (time.perf_counter() - t0)
            print(f"\r{style} {name}: {done}/{len(recs)}, {rate:.1f}/s", end="", file=sys.stderr)
        print(file=sys.stderr)
        out = {"mean": in_input_order(torch.cat(means), order), "last": in_input_order(torch.cat(lasts), order)}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        return out

    dev = [s for s in DEV if ":" in s or Path(s).is_file()]
    train = [r for s in TRAIN for r in load_dataset(s).records]
    y = np.array([int(r.label) for r in train])
    print("| what the probe reads | " + " | ".join(f"{Path(s).stem} AUROC" for s in dev) + " |")
    print("|---" * (len(dev) + 1) + "|")
    for style in ("chat", "question"):
        f_train = [features(load_dataset(s).records, style, s) for s in TRAIN]
        f_dev = {s: features(load_dataset(s).records, style, Path(s).stem) for s in dev}
        for kind in ("mean", "last", "both"):

            def x(f: dict[str, torch.Tensor], kind: str = kind) -> torch.Tensor:
                return torch.cat([f["mean"], f["last"]], 1) if kind == "both" else f[kind]

            clf = fit_probe(torch.cat([x(f) for f in f_train]), y)
            cells = []
            for s in dev:
                yy = np.array([int(r.label) for r in load_dataset(s).records])
                p = probe_probs(clf, x(f_dev[s]))
                cells.append(f"{roc_auc_score(yy != 0, 1 - p[:, 0]):.3f}")
            print(f"| {style}, {kind} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
