"""so8t.data.mix: source weights scale a source's share of the training split, and nothing else."""

from __future__ import annotations

from collections import Counter

import pytest

from so8t.config import ConfigError, TrainConfig, from_dict
from so8t.data.io import write_jsonl
from so8t.data.mix import assemble, weigh_sources
from so8t.data.schema import Record
from so8t.labels import Action


def rows(source: str, n: int) -> list[Record]:
    return [
        Record(
            prompt=f"{source} prompt number {i} about topic {i * 7}",
            label=Action(i % 3),
            source=source,
            id=f"{source}-{i}",
        )
        for i in range(n)
    ]


def test_a_fractional_weight_keeps_that_share_of_the_source_and_leaves_the_others_whole():
    recs = rows("big", 200) + rows("small", 30)
    out = weigh_sources(recs, {"big": 0.25}, seed=0)
    by = Counter(r.source for r in out)
    assert by == {"big": 50, "small": 30}
    assert len({r.id for r in out}) == len(out)  # no copies below weight 1


def test_a_weight_above_one_repeats_rows_and_is_reproducible():
    recs = rows("a", 10) + rows("b", 10)
    out = weigh_sources(recs, {"a": 2.5}, seed=3)
    assert Counter(r.source for r in out) == {"a": 25, "b": 10}
    assert [r.id for r in out] == [r.id for r in weigh_sources(recs, {"a": 2.5}, seed=3)]
    assert [r.id for r in out][:20] == [r.id for r in recs]  # first copies keep the input order


def test_a_weight_of_zero_removes_the_source():
    out = weigh_sources(rows("a", 5) + rows("b", 5), {"a": 0})
    assert {r.source for r in out} == {"b"}


def test_a_weight_for_a_missing_source_names_the_closest_one():
    with pytest.raises(ValueError, match=r"'xsafty'.*did you mean 'xsafety'"):
        weigh_sources(rows("xsafety", 3), {"xsafty": 0.5})


def test_assemble_weighs_only_the_training_split(tmp_path):
    path = tmp_path / "public.jsonl"
    write_jsonl(path, rows("public", 300))
    plain = assemble(["builtin", str(path)])
    weighted = assemble(["builtin", str(path)], source_weights={"public": 0.5})
    count = lambda recs: Counter(r.source for r in recs)  # noqa: E731
    assert count(weighted.train)["public"] == round(count(plain.train)["public"] * 0.5)
    assert count(weighted.train)["so8t-builtin"] == count(plain.train)["so8t-builtin"]
    assert [r.id for r in weighted.dev] == [r.id for r in plain.dev]
    assert [r.id for r in weighted.test] == [r.id for r in plain.test]


def test_train_config_reads_source_weights_and_rejects_bad_ones():
    assert from_dict(TrainConfig, {"source_weights": {"xsafety": 1}}).source_weights == {"xsafety": 1.0}
    with pytest.raises(ConfigError, match="source_weights.xsafety: expected a number"):
        from_dict(TrainConfig, {"source_weights": {"xsafety": "lots"}})
    with pytest.raises(ConfigError, match="source_weights: weights must be finite numbers >= 0"):
        from_dict(TrainConfig, {"source_weights": {"xsafety": float("nan")}})
