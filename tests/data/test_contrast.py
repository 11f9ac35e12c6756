"""The built-in contrast set: pairs of a safe prompt and an unsafe twin, kept whole per split."""

from collections import Counter, defaultdict

from so8t.data import SPLITS, load_builtin, near_duplicate_pairs
from so8t.labels import parse_response

KINDS = {
    "homonym",
    "figurative",
    "safe_target",
    "safe_context",
    "definition",
    "history",
    "privacy",
    "medicine",
    "agent_work",
}
ALL = {s: load_builtin(s, "contrast") for s in SPLITS}
RECORDS = [r for s in SPLITS for r in ALL[s]]


def test_at_least_600_pairs_every_kind_and_40_percent_japanese():
    pairs = {r.meta["pair"] for r in RECORDS}
    assert len(pairs) >= 600 and len(RECORDS) == 2 * len(pairs)
    assert {r.meta["kind"] for r in RECORDS} == KINDS
    assert sum(r.lang == "ja" for r in RECORDS) / len(RECORDS) >= 0.40
    per_kind = Counter(r.meta["kind"] for r in RECORDS)
    assert min(per_kind.values()) >= 2 * 60


def test_every_pair_is_a_safe_allow_and_an_unsafe_twin_on_the_same_kind():
    pairs = defaultdict(list)
    for r in RECORDS:
        pairs[r.meta["pair"]].append(r)
    for pid, (a, b) in pairs.items():
        halves = {a.meta["half"]: a, b.meta["half"]: b}
        assert set(halves) == {"safe", "unsafe"}, pid
        assert halves["safe"].label.name == "ALLOW", pid
        assert halves["unsafe"].label.name in ("REFUSE", "ESCALATE"), pid
        assert a.meta["kind"] == b.meta["kind"] and a.lang == b.lang, pid


def test_no_pair_crosses_a_split():
    where = defaultdict(set)
    for s in SPLITS:
        for r in ALL[s]:
            where[r.meta["pair"]].add(s)
    assert all(len(v) == 1 for v in where.values())


def test_responses_carry_the_label_as_their_tag():
    for r in RECORDS:
        parsed = parse_response(r.response)
        assert parsed is not None and parsed.action == r.label, r.id


def test_no_near_duplicates_within_contrast_or_against_the_builtin_set():
    builtin = [r for s in SPLITS for r in load_builtin(s)]
    texts = [r.prompt_text() for r in RECORDS + builtin]
    assert near_duplicate_pairs(texts, 0.8) == []
