"""Text normalisation, exact dedup, and near-duplicate detection (character 5-gram Jaccard).

Near-duplicates are found exactly (no sampling) with a prefix filter: two sets with Jaccard
>= t must share one of the rarest |A| - ceil(t*|A|) + 1 grams of each, so only those are indexed.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: 'ＡＢＣ  x' and 'abc x' are the same text."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def char_ngrams(text: str, n: int = 5) -> frozenset[str]:
    s = normalize_text(text)
    if len(s) <= n:
        return frozenset([s])
    return frozenset(s[i : i + n] for i in range(len(s) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.8, n: int = 5) -> list[tuple[int, int, float]]:
    """All pairs (i, j, score) with i < j and character n-gram Jaccard >= threshold."""
    grams = [char_ngrams(t, n) for t in texts]
    freq = Counter(g for gs in grams for g in gs)
    index: dict[str, list[int]] = defaultdict(list)
    pairs: list[tuple[int, int, float]] = []
    for i, gs in enumerate(grams):
        ordered = sorted(gs, key=lambda g: (freq[g], g))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        candidates: set[int] = set()
        for g in prefix:
            candidates.update(index[g])
        for j in sorted(candidates):
            # size filter: Jaccard <= min/max of the sizes
            small, big = sorted((len(gs), len(grams[j])))
            if small < threshold * big:
                continue
            score = jaccard(gs, grams[j])
            if score >= threshold:
                pairs.append((j, i, score))
        for g in prefix:
            index[g].append(i)
    return sorted(pairs)


def duplicate_groups(texts: Sequence[str], threshold: float = 0.8, links: Iterable[tuple[int, int]] = ()) -> list[int]:
    """A group id per text; texts linked by near-duplication, or by an extra (i, j) in `links`
    (a twin pair), share a group, transitively."""
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in itertools.chain(((i, j) for i, j, _ in near_duplicate_pairs(texts, threshold)), links):
        parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]
