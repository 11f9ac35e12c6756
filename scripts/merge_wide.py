"""Merge newly written slices of the `wide` set into its train / dev / test files.

    .venv/bin/python scripts/merge_wide.py staging/wide-blunt.jsonl staging/wide-twins.jsonl [--dry-run]

Every row is validated by the data schema (an error names the file, line and field). A row
that near-duplicates (character 5-gram Jaccard >= 0.8) any built-in row or any held-out row is
dropped and listed, never merged. The new rows are split 80 / 10 / 10 per label with a fixed
seed; a twin group (the writer's integer field `pair`, removed here) and a near-duplicate
group go to one split together, so no pair crosses from training into dev or test. The
existing rows are not moved: only new rows are appended.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from so8t.data import SPLITS, load_builtin, near_duplicate_pairs, read_jsonl, split_records, write_jsonl
from so8t.data.builtin import builtin_path
from so8t.data.schema import DataError, Problem, check_row

ROOT = Path(__file__).resolve().parents[1]


def read_slice(path: Path) -> tuple[list, list]:
    """The records of one staging file and each one's twin key (None when it has no 'pair')."""
    records, keys, problems = [], [], []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem(str(path), line, "", f"not JSON: {exc.msg}"))
            continue
        pair = obj.pop("pair", None) if isinstance(obj, dict) else None
        rec, found = check_row(obj, str(path), line)
        problems += found
        if rec is not None:
            records.append(rec)
            keys.append(None if pair is None else (path.name, pair))
    if problems:
        raise DataError(problems)
    return records, keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="report what would be merged; write nothing")
    args = ap.parse_args()

    new, keys = [], []
    for path in args.files:
        recs, ks = read_slice(path)
        new += recs
        keys += ks
    existing = [r for name in ("builtin", "contrast", "wide") for s in SPLITS for r in load_builtin(s, name)]
    held = [r for f in sorted((ROOT / "heldout").glob("*.jsonl")) for r in read_jsonl(f)]
    ids = Counter(r.id for r in new + existing)
    if clashes := [i for i, n in ids.items() if i and n > 1]:
        print(f"duplicate ids: {clashes[:10]}", file=sys.stderr)
        return 1

    texts = [r.prompt_text() for r in new] + [r.prompt_text() for r in existing + held]
    drop = {i for i, j, _ in near_duplicate_pairs(texts, 0.8) if i < len(new) <= j}
    for i in sorted(drop):
        print(f"dropped (near-duplicates an existing or held-out row): {new[i].id}: {new[i].prompt_text()[:70]!r}")
    kept = [(r, k) for i, (r, k) in enumerate(zip(new, keys, strict=True)) if i not in drop]
    parts = split_records([r for r, _ in kept], seed=0, together=[k for _, k in kept])
    for split in SPLITS:
        print(f"{split}: +{len(parts[split])} ({dict(Counter(r.label.name for r in parts[split]))})")
        if not args.dry_run:
            path = builtin_path(split, "wide")
            write_jsonl(path, load_builtin(split, "wide") + parts[split])
    return 0


if __name__ == "__main__":
    sys.exit(main())
