"""A scorer (the model's forward pass, a quantised or patched body, a future backend) that gave
back more or fewer probability rows than the views it was given made Gate.decide raise
ValueError from a strict zip, so the server answered 500 instead of a decision, and nothing was
counted as a failure. Scores that cannot be read as decisions now fail closed like any other
gate error."""

import numpy as np
import pytest

from so8t.gate import Gate

TURNS = [
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"},
]


@pytest.mark.parametrize(
    "score",
    [
        lambda v: np.full((len(v) - 1, 3), 0.1) + [0.8, 0, 0],
        lambda v: np.full((len(v) + 1, 3), 0.1) + [0.8, 0, 0],
        lambda v: np.array([0.8, 0.1, 0.1]),  # one row, not a batch
    ],
    ids=["fewer rows", "more rows", "a flat row"],
)
@pytest.mark.parametrize("convo", ["hello", TURNS], ids=["one view", "several views"])
def test_scores_that_do_not_match_the_views_fail_closed(tiny_run, monkeypatch, score, convo):
    g = Gate.load(tiny_run[0])
    monkeypatch.setattr(g, "_score", score)
    d = g.decide(convo)
    assert (d.action.name, d.status) == ("REFUSE", "error") and d.reason.startswith("fail-closed:")
    assert g.counts["fail_closed"] == 1
    g.close()


@pytest.mark.parametrize("row", [[np.inf, 0.0, 0.0], [1.0, -np.inf, 0.0], [np.inf, np.inf, np.inf]])
def test_infinite_probabilities_from_the_scorer_fail_closed_on_both_paths(tiny_run, monkeypatch, row):
    # held before (only NaN had a runtime test): an infinity is not a distribution, never ALLOW
    g = Gate.load(tiny_run[0])
    monkeypatch.setattr(g, "_score", lambda v: np.tile(row, (len(v), 1)))
    monkeypatch.setattr(g, "_score_with_cache", lambda convo: (np.array(row), None))
    for d in (g.decide(TURNS), g.decide("hello"), g.decide_with_prefill("hello")[0]):
        assert (d.action.name, d.status) == ("REFUSE", "error") and "invalid probabilities" in d.reason
    g.close()
