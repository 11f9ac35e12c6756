"""Leakage-free train / dev / test splits.

Near-duplicate prompts are grouped first and a whole group goes to one split, so no
normalised prompt (or a near copy of it) is on both sides. Groups are assigned per label
(stratified) by a seeded shuffle, so the split is reproducible.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from so8t.data.dedup import duplicate_groups
from so8t.data.schema import Record

SPLITS = ("train", "dev", "test")


def split_records(
    records: Sequence[Record],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    threshold: float = 0.8,
    together: Sequence[object] | None = None,
    strata: Sequence[str] | None = None,
) -> dict[str, list[Record]]:
    """`together`: an optional key per record (None for none); records sharing a key (a twin
    pair) go to one split, as near-duplicates do. `strata`: an optional key per record to
    stratify by instead of the label (a policy's rule id, so every rule is in every split)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    first: dict[object, int] = {}
    links = [(i, first.setdefault(key, i)) for i, key in enumerate(together or ()) if key is not None]
    groups = duplicate_groups([r.prompt_text() for r in records], threshold, links)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    # A group's stratum is the label (or the given stratum) of its first member.
    by_label: dict[str, list[int]] = defaultdict(list)
    for g, idx in members.items():
        lab = records[idx[0]].label
        by_label[strata[idx[0]] if strata is not None else lab.name if lab is not None else "?"].append(g)
    rng = random.Random(seed)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for stratum in sorted(by_label):
        gs = sorted(by_label[stratum])
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        cut_train, cut_dev = fractions[0] * total, (fractions[0] + fractions[1]) * total
        seen = 0
        for g in gs:
            split = "train" if seen < cut_train else "dev" if seen < cut_dev else "test"
            out[split].extend(records[i] for i in members[g])
            seen += len(members[g])
    return out
