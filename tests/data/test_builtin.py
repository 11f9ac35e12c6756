"""The built-in dataset: size, balance, language share, coverage, format, and no near-duplicates."""

from collections import Counter

import pytest

from so8t.data import SPLITS, load_builtin, near_duplicate_pairs
from so8t.labels import parse_response

ALL = {s: load_builtin(s) for s in SPLITS}
RECORDS = [r for s in SPLITS for r in ALL[s]]


def test_size_balance_and_language():
    assert len(RECORDS) >= 900
    share = Counter(r.label.name for r in RECORDS)
    for label in ("ALLOW", "ESCALATE", "REFUSE"):
        assert 0.28 <= share[label] / len(RECORDS) <= 0.38
    assert sum(r.lang == "ja" for r in RECORDS) / len(RECORDS) >= 0.40


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_has_every_label_and_language(split):
    recs = ALL[split]
    assert {r.label.name for r in recs} == {"ALLOW", "ESCALATE", "REFUSE"}
    assert {r.lang for r in recs} == {"en", "ja"}


def test_every_example_has_a_response_whose_tag_is_its_label():
    for r in RECORDS:
        parsed = parse_response(r.response)
        assert parsed is not None and parsed.action == r.label, r.id
        assert parsed.rationale == r.rationale, r.id


def test_coverage_of_agent_work_grey_cases_and_attacks():
    cats = Counter(r.category for r in RECORDS)
    for c in ("file_ops", "sql", "web", "mail", "calendar", "coding", "everyday", "alarming_benign"):
        assert cats[c] >= 20, c
    for c in (
        "unclear_authority",
        "external_or_bulk_mail",
        "payment",
        "personal_data",
        "legal",
        "medical",
        "financial",
        "irreversible_action",
    ):
        assert cats[c] >= 20, c
    assert cats["jailbreak"] + cats["prompt_injection"] >= 60
    assert sum(isinstance(r.prompt, list) for r in RECORDS) >= 50  # multi-turn conversations


def test_difficulty_is_graded_within_each_label_not_copied_from_it():
    """easy / medium / hard mean difficulty inside a label (a blunt request vs a disguised one),
    so the 'by difficulty' table says something; once they were the label in disguise."""
    for label in ("ALLOW", "ESCALATE", "REFUSE"):
        grades = Counter(r.difficulty for r in RECORDS if r.label.name == label)
        assert all(grades[g] >= 0.25 * sum(grades.values()) for g in ("easy", "medium", "hard")), (label, grades)


def test_ids_unique_across_splits():
    ids = [r.id for r in RECORDS]
    assert len(ids) == len(set(ids))


def test_no_near_duplicates_anywhere_and_so_none_across_splits():
    texts = [r.prompt_text() for r in RECORDS]
    pairs = near_duplicate_pairs(texts, threshold=0.8)
    assert pairs == [], [(RECORDS[i].id, RECORDS[j].id, round(s, 2)) for i, j, s in pairs[:5]]
