import itertools
import random

from so8t.data import Record, near_duplicate_pairs, normalize_text, split_records
from so8t.data.dedup import char_ngrams, jaccard


def test_normalize_text():
    assert normalize_text("  ＡＢＣ\t Def\n") == "abc def"


def test_jaccard_hand_computed():
    a, b = char_ngrams("abcdef"), char_ngrams("abcdeg")  # {abcde, bcdef} vs {abcde, bcdeg}
    assert jaccard(a, b) == 1 / 3


def test_near_duplicates_match_brute_force():
    rng = random.Random(0)
    words = "list files delete table send mail calendar meeting 削除 送信 会議 予定 ファイル".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(120)]
    texts += [t + " please" for t in texts[:10]]
    for threshold in (0.5, 0.8):
        fast = {(i, j) for i, j, _ in near_duplicate_pairs(texts, threshold)}
        grams = [char_ngrams(t) for t in texts]
        brute = {
            (i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(grams[i], grams[j]) >= threshold
        }
        assert fast == brute


def test_split_keeps_near_duplicates_together_and_is_reproducible():
    recs = []
    for i in range(60):
        label = ["ALLOW", "ESCALATE", "REFUSE"][i % 3]
        base = f"request number {i} about topic {i * 7919 % 1000} with words {'x' * (i % 5)}"
        recs.append(Record(prompt=base, label=label, id=f"a{i}"))
        recs.append(Record(prompt=base + "!", label=label, id=f"b{i}"))  # a near copy
    a = split_records(recs, seed=1)
    b = split_records(recs, seed=1)
    assert {k: [r.id for r in v] for k, v in a.items()} == {k: [r.id for r in v] for k, v in b.items()}
    where = {r.id: s for s, rs in a.items() for r in rs}
    assert all(where[f"a{i}"] == where[f"b{i}"] for i in range(60))
    assert sum(len(v) for v in a.values()) == 120
    assert len(a["train"]) > len(a["dev"]) > 0 and len(a["test"]) > 0


def test_split_keeps_records_with_the_same_key_together_even_when_they_differ():
    """Twin pairs (a safe and an unsafe request on one theme) share a key, not their words."""
    recs = [
        Record(
            prompt=f"distinct request {i} on theme {i * 31 % 97} {'y' * (i % 7)}",
            label=["ALLOW", "ESCALATE", "REFUSE"][i % 3],
            id=f"r{i}",
        )
        for i in range(90)
    ]
    keys = [i // 3 if i % 2 else None for i in range(90)]
    parts = split_records(recs, seed=2, together=keys)
    where = {r.id: s for s, rs in parts.items() for r in rs}
    for key in set(k for k in keys if k is not None):
        assert len({where[f"r{i}"] for i, k in enumerate(keys) if k == key}) == 1
    assert sum(len(v) for v in parts.values()) == 90 and all(parts.values())
