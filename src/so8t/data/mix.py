"""Assemble train / dev / test from the built-in set and other JSONL files, without leakage.

The built-in sets (builtin, contrast) keep their fixed splits. Other files are pooled, exact duplicates (normalised
text) are dropped, anything that near-duplicates a built-in prompt is dropped, and the rest is
split with near-duplicate groups, and twin pairs (rows sharing `meta.pair`, as `so8t policy
cases` writes them), kept on one side. Files given as dev/test are used as they are.
"""

from __future__ import annotations

import difflib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from so8t.data.builtin import BUILTIN_SETS, load_builtin
from so8t.data.dedup import near_duplicate_pairs, normalize_text
from so8t.data.io import read_many
from so8t.data.schema import Record
from so8t.data.splits import SPLITS, split_records


@dataclass
class Mix:
    train: list[Record]
    dev: list[Record]
    test: list[Record]
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        parts = [f"train={len(self.train)} dev={len(self.dev)} test={len(self.test)}"]
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())))
        return "; ".join(parts)


def _fixed(names: Sequence[str], split: str) -> list[Record]:
    """The built-in sets named in `names` (their fixed split)."""
    return [r for n in BUILTIN_SETS if n in names for r in load_builtin(split, n)]


def _load(names: Sequence[str], split: str) -> list[Record]:
    recs: list[Record] = _fixed(names, split)
    files = [n for n in names if n not in BUILTIN_SETS]
    if files:
        recs.extend(read_many(files))
    return recs


HELDOUT_SOURCE = "so8t-heldout"


def refuse_heldout(records: Sequence[Record]) -> None:
    """The held-out sets (heldout/) judge the gate from outside: a row of theirs in training or
    model selection would make every number reported on them meaningless."""
    leaked = [r for r in records if (r.source or "").startswith(HELDOUT_SOURCE)]
    if leaked:
        raise ValueError(
            f"{len(leaked)} held-out row(s) (source {leaked[0].source!r}, e.g. id {leaked[0].id!r}) are in "
            "the training or dev data; heldout/ is for evaluation only (so8t eval --data heldout/...)"
        )


def drop_duplicates(
    records: Sequence[Record], fixed: Sequence[Record] = (), threshold: float = 0.8
) -> tuple[list[Record], Counter]:
    """Records without exact duplicates (normalised text; the first copy stays) and without
    near-duplicates of `fixed` (the built-in sets, whose split is fixed: a near copy on the
    other side of it would leak); the reason -> count of what was dropped."""
    dropped: Counter = Counter()
    seen = {normalize_text(r.prompt_text()) for r in fixed}
    kept: list[Record] = []
    for r in records:
        key = normalize_text(r.prompt_text())
        if key in seen:
            dropped["exact duplicate"] += 1
            continue
        seen.add(key)
        kept.append(r)
    if fixed and kept:
        texts = [r.prompt_text() for r in fixed] + [r.prompt_text() for r in kept]
        near = {j - len(fixed) for i, j, _ in near_duplicate_pairs(texts, threshold) if i < len(fixed) <= j}
        dropped["near duplicate of built-in"] += len(near)
        kept = [r for k, r in enumerate(kept) if k not in near]
    return kept, dropped


def pair_keys(records: Sequence[Record]) -> list[object]:
    """Each record's twin-pair key (`meta.pair`, None when it has none): a pair stays in one split."""
    return [(r.meta or {}).get("pair") if isinstance((r.meta or {}).get("pair"), str) else None for r in records]


def weigh_sources(records: Sequence[Record], weights: Mapping[str, float], seed: int = 0) -> list[Record]:
    """The training rows with each source's share scaled by its weight: a weight w keeps every
    row floor(w) times and a seeded random (w - floor(w)) fraction of them once more, so 0.25
    keeps a quarter, 1 (the default for a source not named) keeps all and 2 doubles it. Sources
    are the records' `source` field ('builtin', 'xsafety', ...): a weight lets a large public
    set add coverage without swamping the hand-written data. A weight naming no source present
    is an error (a typo would otherwise change nothing, silently)."""
    present = sorted({r.source or "" for r in records})
    for name, w in weights.items():
        if name not in present:
            close = difflib.get_close_matches(name, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; sources present: {', '.join(present)}"
            raise ValueError(f"source_weights: no training row has source {name!r}{hint}")
        if not (isinstance(w, (int, float)) and 0 <= w < float("inf")):
            raise ValueError(f"source_weights.{name}: expected a finite number >= 0, got {w!r}")
    rng = random.Random(seed)
    copies: Counter = Counter()
    for source in present:
        rows = [r for r in records if (r.source or "") == source]
        w = float(weights.get(source, 1.0))
        for r in rows:
            copies[id(r)] += int(w)
        for r in rng.sample(rows, round((w - int(w)) * len(rows))):
            copies[id(r)] += 1
    # Input order kept (the training order is planned later, seeded): first copies in place, repeats after.
    return [r for r in records if copies[id(r)]] + [r for r in records for _ in range(copies[id(r)] - 1)]


def assemble(
    data: Sequence[str],
    dev_data: Sequence[str] = (),
    test_data: Sequence[str] = (),
    seed: int = 0,
    threshold: float = 0.8,
    source_weights: Mapping[str, float] | None = None,
) -> Mix:
    base = {s: _fixed(data, s) for s in SPLITS}
    extra_files = [d for d in data if d not in BUILTIN_SETS]
    dropped: Counter = Counter()
    extra: list[Record] = []
    if extra_files:
        extra, dropped = drop_duplicates(read_many(extra_files), [r for s in SPLITS for r in base[s]], threshold)
    fractions = (0.8, 0.1, 0.1)
    if dev_data and test_data:
        fractions = (1.0, 0.0, 0.0)
    elif dev_data or test_data:
        fractions = (0.9, 0.0, 0.1) if dev_data else (0.9, 0.1, 0.0)
    parts = (
        split_records(extra, fractions, seed, threshold, together=pair_keys(extra))
        if extra
        else {s: [] for s in SPLITS}
    )
    mix = Mix(
        train=base["train"] + parts["train"],
        dev=_load(dev_data, "dev") if dev_data else base["dev"] + parts["dev"],
        test=_load(test_data, "test") if test_data else base["test"] + parts["test"],
        dropped=dropped,
    )
    if source_weights:
        before = len(mix.train)
        mix.train = weigh_sources(mix.train, source_weights, seed)
        mix.dropped["weighted out (source_weights)"] += max(0, before - len(set(map(id, mix.train))))
    if not mix.train:
        raise ValueError("the training data is empty")
    refuse_heldout(mix.train + mix.dev)
    if not mix.dev:
        raise ValueError("no dev data: add the built-in set, pass dev_data, or give more data to split")
    return mix


def split_files(
    paths: Sequence[str],
    against: Sequence[str] = BUILTIN_SETS,
    fractions: tuple[float, float, float] = (0.9, 0.0, 0.1),
    seed: int = 0,
    threshold: float = 0.8,
) -> tuple[dict[str, list[Record]], Counter]:
    """A fixed train / dev / test split of JSONL files, made once and reused by several runs, so
    runs that differ in their other data are scored on the same held-out rows. Deduplicated
    like `assemble` (against the built-in sets named in `against`), near-duplicate groups kept
    on one side."""
    unknown = [n for n in against if n not in BUILTIN_SETS]
    if unknown:
        raise ValueError(f"unknown built-in set(s) {unknown}; available: {', '.join(BUILTIN_SETS)}")
    fixed = [r for s in SPLITS for r in _fixed(against, s)]
    records, dropped = drop_duplicates(read_many(paths), fixed, threshold)
    return split_records(records, fractions, seed, threshold, together=pair_keys(records)), dropped
