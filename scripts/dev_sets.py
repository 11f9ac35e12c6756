"""Write the two dev sets that chose the round-3 default (README, "What the round-3 rows did").

    .venv/bin/python scripts/dev_sets.py [--out runs/dev]

- `public-train-sample.jsonl`: 940 rows of the public sets' *training* split
  (`imported/split/train.jsonl`, made by `so8t data split`; never the test split): 200 AdvBench,
  120 StrongREJECT, 150 Do-Not-Answer REFUSE and 60 ALLOW, 60 BeaverTails, 100 CoCoNot REFUSE
  and 100 ALLOW, 150 CoCoNot contrast, drawn with seed 7. An outside dev signal: these rows are
  written by other people, and the default trains on no public row.
- `wide-dev-r2.jsonl`: the `wide` dev split as it was before the round-3 rows (commit 58628b5),
  so the former and the new default are compared on rows both had as dev.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = {
    ("advbench", "REFUSE"): 200,
    ("strongreject", "REFUSE"): 120,
    ("do-not-answer", "REFUSE"): 150,
    ("beavertails", "REFUSE"): 60,
    ("coconot", "REFUSE"): 100,
    ("coconot-contrast", "ALLOW"): 150,
    ("coconot", "ALLOW"): 100,
    ("do-not-answer", "ALLOW"): 60,
}
ROUND_2 = "58628b5"


def public_train_sample(train: Path) -> list[dict]:
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(7)
    picked: list[dict] = []
    for key, n in SAMPLE.items():
        group = [r for r in rows if (r.get("source"), r["label"]) == key]
        rng.shuffle(group)
        picked += group[:n]
    return picked


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=ROOT / "imported" / "split" / "train.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "dev")
    args = ap.parse_args()
    if not args.train.exists():
        raise SystemExit(
            f"{args.train} does not exist: scripts/import_public.sh ../shared/data imported && "
            "so8t data split imported/*.jsonl -o imported/split"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    sample = public_train_sample(args.train)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample)
    (args.out / "public-train-sample.jsonl").write_text(text, encoding="utf-8")
    old = subprocess.run(
        ["git", "show", f"{ROUND_2}:src/so8t/data/builtin/wide-dev.jsonl"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    (args.out / "wide-dev-r2.jsonl").write_bytes(old)
    n_old = len(old.splitlines())
    print(f"{args.out}/public-train-sample.jsonl: {len(sample)} rows; {args.out}/wide-dev-r2.jsonl: {n_old} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
