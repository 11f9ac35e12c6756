"""Counts and token-length percentiles: what `so8t data stats` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from so8t.data.schema import Record


@dataclass
class DataStats:
    total: int
    by_label: Counter = field(default_factory=Counter)
    by_combo: Counter = field(default_factory=Counter)  # (label, difficulty, lang, source)
    by_lang: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    token_percentiles: dict[int, float] | None = None

    def format(self) -> str:
        lines = [f"records: {self.total}"]
        for title, counter in (("label", self.by_label), ("lang", self.by_lang), ("source", self.by_source)):
            parts = ", ".join(f"{k}={v} ({v / self.total:.1%})" for k, v in sorted(counter.items()))
            lines.append(f"by {title}: {parts}")
        lines.append("label x difficulty x lang x source:")
        for (lab, diff, lang, src), n in sorted(self.by_combo.items()):
            lines.append(f"  {lab:<9} {diff:<7} {lang:<4} {src:<24} {n:>6}")
        if self.token_percentiles:
            pct = ", ".join(f"p{k}={v:.0f}" for k, v in self.token_percentiles.items())
            lines.append(f"prompt tokens (chat template applied): {pct}")
        return "\n".join(lines)


def compute_stats(records: Sequence[Record], count_tokens: Callable[[Record], int] | None = None) -> DataStats:
    s = DataStats(total=len(records))
    for r in records:
        lab = r.label.name if r.label is not None else "-"
        s.by_label[lab] += 1
        s.by_lang[r.lang or "-"] += 1
        s.by_source[r.source or "-"] += 1
        s.by_combo[(lab, r.difficulty or "-", r.lang or "-", r.source or "-")] += 1
    if count_tokens is not None and records:
        lengths = np.array([count_tokens(r) for r in records])
        s.token_percentiles = {p: float(np.percentile(lengths, p)) for p in (50, 90, 95, 99, 100)}
    return s
