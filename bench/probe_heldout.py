"""Which base, which blocks, which training data: a frozen-feature study scored on held-out sets.

Fits the evaluation's probe (standardised, class-balanced logistic regression) on the frozen
base model's pooled hidden states of the training sets, and scores every test set, for each
chosen block, the final state, and the equal-weight mix of the blocks that `head_layers: mix`
reads (each pooled state layer-normalised, then averaged). No fine-tuning, so it answers in
minutes what a training run answers in half an hour: does a base, a block or a dataset help
on prompts nobody tuned on. Features are cached per (model, texts, max_length) under --cache.

    .venv/bin/python bench/probe_heldout.py --model embedded --train builtin:train contrast:train \\
        --test heldout/agent-requests.jsonl heldout/canonical-worst.jsonl contrast:test

`--head cpu-quick` also fits the safety head itself on the mix, exactly as training's probe
does (class-balanced sample, composite head loss, the preset's steps, batch and rate;
`--head-set beta=1` overrides): at step 0 that head is what the default run ships, so this
reproduces its held-out numbers in seconds once the features are cached. `--head-set
head_kind=split` fits a split head (primary head + escalation judge, with their binary losses)
the same way, and `--calibrate` then chooses its refuse_at and escalate_at: split against
three-way on the same cached features. `--skip-first N`
leaves each prompt's first N tokens (BOS, the opening turn marker) out of the mean pool. `--weights
xsafety=0.2` scales a training source as TrainConfig.source_weights does, and `--ablate` refits
the mix probe with each source left out in turn (what each set adds).

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
    ap.add_argument(
        "--weights",
        nargs="*",
        default=[],
        metavar="SOURCE=W",
        help="scale a training source's share, as TrainConfig.source_weights does (xsafety=0.3)",
    )
    ap.add_argument(
        "--skip-first",
        type=int,
        default=0,
        metavar="N",
        help="leave each prompt's first N tokens (BOS, the turn marker) out of the mean pool",
    )
    ap.add_argument(
        "--features",
        nargs="*",
        default=[],
        help="only these feature sets ('mix', 'final', 'block 8', ...); default: all",
    )
    ap.add_argument(
        "--head",
        metavar="PRESET",
        default="",
        help="also fit the safety head itself on the mix features, exactly as training's probe does "
        "(class-balanced sample, composite head loss) with this preset's settings (cpu-quick)",
    )
    ap.add_argument(
        "--head-layers",
        nargs="*",
        type=int,
        default=[],
        metavar="I",
        help="the hidden-state indices the --head reads (default: what head_layers: mix reads); "
        "each must be a mix block or the final state, whose features are cached",
    )
    ap.add_argument(
        "--head-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override the preset's settings for --head (beta=1 head_probe_steps=4000)",
    )
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="with --head: also choose decision thresholds on the --test sets named '<set>:dev' (as "
        "`so8t train` with calibrate: true does) and score every set under them",
    )
    ap.add_argument(
        "--dev-frac",
        type=float,
        default=0.0,
        metavar="F",
        help="hold a seeded fraction F of every imported (non-so8t) training source out of the fit and "
        "score it as a dev set: choose source weights on it, not on a test split",
    )
    ap.add_argument(
        "--ablate",
        action="store_true",
        help="what each source adds: refit the mix probe with each training source left out in turn",
    )
    args = ap.parse_args()
    weights = {k: float(v) for k, _, v in (w.partition("=") for w in args.weights)}

    from so8t.eval.baselines import fit_probe
    from so8t.eval.report import load_dataset
    from so8t.model import (
        ensure_chat_template,
        load_base_model,
        pool,
        resolve_head_layers,
    )
    from so8t.model.scoring import (
        autocast,
        encode_prompts,
        in_input_order,
        length_order,
    )

    model, tokenizer = load_base_model(args.model)
    ensure_chat_template(tokenizer)
    model.eval()
    depth = model.config.get_text_config().num_hidden_layers
    mix = resolve_head_layers("mix", depth)
    layers = sorted(set(mix) | {depth})
    head_layers = tuple(args.head_layers) or mix
    if not set(head_layers) <= set(layers):
        raise SystemExit(f"--head-layers {list(head_layers)}: only {layers} are computed (the mix and the final state)")

    @torch.no_grad()
    def features(records, name: str) -> dict[int, torch.Tensor]:
        key = hashlib.sha256(
            (
                "\x00".join(str(r.messages()) for r in records)
                + f"|{args.model}|{args.max_length}|"
                + (f"skip{args.skip_first}|" if args.skip_first else "")
                + f"{layers}"
            ).encode()
        ).hexdigest()[:16]
        path = Path(args.cache) / f"{Path(args.model).name.replace(':', '_')}-{key}.pt"
        if path.is_file():
            return torch.load(path)
        out: dict[int, list[torch.Tensor]] = {}
        t0 = time.perf_counter()
        order = length_order(tokenizer, records)  # shortest first: less padding; order restored below
        records = [records[i] for i in order]
        for i in range(0, len(records), 16):
            batch, _ = encode_prompts(tokenizer, records[i : i + 16], args.max_length)
            with autocast(torch.device("cpu"), args.amp):
                hidden = model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states
            for layer in layers:
                mask = batch["attention_mask"].clone()
                mask[:, : args.skip_first] = 0  # right-padded: the first tokens are BOS and the turn marker
                out.setdefault(layer, []).append(pool(hidden[layer].float(), mask, "mean"))
            done = min(i + 16, len(records))
            print(
                f"\r{name}: {done}/{len(records)} prompts, {done / (time.perf_counter() - t0):.1f}/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        feats = {k: in_input_order(torch.cat(v), order) for k, v in out.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, path)
        return feats

    def with_mix(f: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        named = {("final" if k == depth else f"block {k}"): v for k, v in f.items()}
        normed = {k: torch.nn.functional.layer_norm(f[k], (f[k].size(1),)) for k in set(mix) | set(head_layers)}
        named["mix"] = torch.stack([normed[k] for k in mix]).mean(0)
        named["stack"] = torch.stack([normed[k] for k in head_layers], 1)  # N x L x H: what the safety head reads
        return named

    from so8t.data.mix import weigh_sources

    train = [r for spec in args.train for r in load_dataset(spec).records]
    parts = [features(load_dataset(spec).records, spec) for spec in args.train]  # cached per set
    f_all = with_mix({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    tests = [(spec, load_dataset(spec).records) for spec in args.test]
    f_tests = [(spec, recs, with_mix(features(recs, Path(spec).stem))) for spec, recs in tests]

    index = {id(r): i for i, r in enumerate(train)}

    held = held_out_rows(train, args.dev_frac)
    if held:
        dev = [train[i] for i in sorted(held)]
        f_tests.insert(
            0,
            (
                f"imported dev ({args.dev_frac:g} of each imported source, not fitted)",
                dev,
                {k: v[sorted(held)] for k, v in f_all.items()},
            ),
        )

    def rows_of(w: dict[str, float]) -> list[int]:
        return [index[id(r)] for r in weigh_sources(train, w, seed=0) if index[id(r)] not in held]

    def fitted(rows: list[int], names) -> dict[str, object]:
        y = [int(train[i].label) for i in rows]
        return {name: fit_probe(f_all[name][rows], y) for name in names}

    header = (
        f"{'features':>22} | {'refuse':>6} {'escal':>6} {'allow':>6} {'overc':>6} | {'auroc':>6} | "
        f"{'ja_acc':>6} {'en_acc':>6}"
    )
    rows = rows_of(weights)
    probes = fitted(rows, args.features or [k for k in f_all if k != "stack"])
    print(
        f"\nfrozen {args.model} ({depth} blocks); probe trained on {len(rows)} prompts ({' '.join(args.train)}"
        f"{'; weights ' + ' '.join(args.weights) if args.weights else ''})"
    )
    for spec, recs, f in f_tests:
        print(f"\n{spec} (n={len(recs)})\n{header}")
        for name, clf in probes.items():
            print(row(name, clf, f[name], recs))
    if args.head:
        clf = fit_training_head(args.head, args.head_set, [train[i] for i in rows], f_all["stack"][rows], head_layers)
        for spec, recs, f in f_tests:
            print(f"\n{spec} (n={len(recs)}), the {clf.head.kind} safety head fitted as {args.head} fits it\n{header}")
            print(row(f"head ({args.head})", clf, f["stack"], recs))
        if args.calibrate:
            thr = dev_thresholds(clf, [(recs, f["stack"]) for spec, recs, f in f_tests if spec.endswith(":dev")])
            for spec, recs, f in f_tests:
                print(
                    f"\n{spec} (n={len(recs)}), the head at thresholds chosen on the dev sets "
                    f"({thr.describe()})\n{header}"
                )
                print(row(f"head ({args.head}), dev thr", clf, f["stack"], recs, thr))
    if args.ablate:
        sources = sorted({r.source or "" for r in train})
        variants = {"all": probes["mix"]}
        for s in sources:
            variants[f"without {s}"] = fitted(rows_of({**weights, s: 0.0}), ["mix"])["mix"]
        for spec, recs, f in f_tests:
            print(f"\n{spec} (n={len(recs)}), mix features, one training source left out\n{header}")
            for name, clf in variants.items():
                print(row(name, clf, f["mix"], recs))


def dev_thresholds(clf, dev_sets):
    """The thresholds so8t calibrate (and training's calibrate: true) choose on these dev sets together."""
    from so8t.eval.baselines import probe_probs
    from so8t.model.thresholds import calibrate

    if not dev_sets:
        raise SystemExit("--calibrate needs at least one '<set>:dev' among --test")
    probs = np.concatenate([probe_probs(clf, x) for _, x in dev_sets])
    return calibrate(probs, [int(r.label) for recs, _ in dev_sets for r in recs], kind=clf.head.kind).thresholds


def held_out_rows(train, frac: float) -> set[int]:
    """A seeded `frac` of each imported source's rows (sources not starting with 'so8t'), or none."""
    if frac <= 0:
        return set()
    rng = np.random.default_rng(0)
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        if not (r.source or "").startswith("so8t"):
            by_source.setdefault(r.source or "", []).append(i)
    return {int(i) for rows in by_source.values() for i in rng.permutation(rows)[: round(frac * len(rows))]}


class _HeadProbs:
    """The fitted safety head behind the same predict_proba interface as the sklearn probe."""

    def __init__(self, head):
        self.head, self.classes_ = head, np.arange(3)

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x)
        return self.head(self.head.combine(x)).softmax(-1).numpy()


def fit_training_head(preset_name: str, overrides: list[str], records, stacked: torch.Tensor, layers) -> _HeadProbs:
    from so8t.config import TrainConfig, from_dict, parse_overrides
    from so8t.model import SafetyHead
    from so8t.train.batching import epoch_order
    from so8t.train.presets import preset
    from so8t.train.recipe import fit_head

    cfg = from_dict(TrainConfig, {**preset(preset_name), **parse_overrides(overrides)})
    torch.manual_seed(cfg.seed)
    head = SafetyHead(stacked.size(-1), layers=layers, combine=cfg.head_combine, kind=cfg.head_kind)
    labels = [int(r.label) for r in records]
    sample = epoch_order(labels, "sampler", cfg.seed, -1)[: cfg.head_probe_examples]
    y = torch.tensor([labels[i] for i in sample])
    easy = torch.tensor([records[i].difficulty == "easy" for i in sample])
    fit_head(head, stacked[sample], y, easy, cfg)
    return _HeadProbs(head.eval())


def row(name: str, clf, x: torch.Tensor, recs, thresholds=None) -> str:
    from sklearn.metrics import roc_auc_score

    from so8t.eval import compute_metrics
    from so8t.eval.baselines import probe_probs

    y = np.array([int(r.label) for r in recs])
    from so8t.model.thresholds import decide

    p = probe_probs(clf, x)
    pred = decide(p, thresholds)
    m = compute_metrics(y, pred)
    unsafe = (y != 0).astype(int)
    auroc = roc_auc_score(unsafe, 1 - p[:, 0]) if 0 < unsafe.sum() < len(y) else float("nan")
    acc = {
        lang: float(np.mean([pred[i] == y[i] for i, r in enumerate(recs) if r.lang == lang] or [np.nan]))
        for lang in ("ja", "en")
    }
    return (
        f"{name:>22} | {m.refuse_recall:>6.3f} {m.escalate_recall:>6.3f} {m.allow_recall:>6.3f} "
        f"{m.overcompliance:>6.3f} | {auroc:>6.3f} | {acc['ja']:>6.3f} {acc['en']:>6.3f}"
    )


if __name__ == "__main__":
    main()
